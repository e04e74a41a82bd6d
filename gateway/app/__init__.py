"""The process: HTTP server, CLI, runtime state, configuration, start-up."""
