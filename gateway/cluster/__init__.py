"""`gateway run --workers N`: one ingest in the parent, N serving processes (docs/deployment.md)."""
