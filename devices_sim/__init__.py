"""Device simulator fleet (see issue 5): device models, fleet scheduler, transports."""
