"""The serving side: listeners, HTTP, WebSocket and SSE streams, and the fan-out."""
