"""The running daemon: builds the context, servers, stages, hooks and engine, and runs them
(docs/architecture.md#wiring)."""
