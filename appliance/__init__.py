"""Witness: records every command AI agents send to protected backends, on the connection."""

from appliance import native as native  # first: decides whether compiled modules may load

__version__ = "0.1.0"
