"""PID 1 for an HAProxy container that validates and persists ACME certificates."""

__version__ = "0.1.0"
