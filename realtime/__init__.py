"""Transports, sessions, the server and the CLI. Knows nothing of models."""
