"""Witness: records every command AI agents send to protected backends, on the connection."""

__version__ = "0.1.0"
