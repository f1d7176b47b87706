"""The factory: the protocol handler for a backend's ``protocol``."""

from __future__ import annotations

from appliance.config import Capture
from appliance.policy.redact import Redactor
from appliance.protocols.handler import Handler
from appliance.protocols.postgres.handler import PostgresHandler


def handler_for(
    protocol: str, capture: Capture, max_message: int, redactor: Redactor, *, certain: bool
) -> Handler:
    """A new handler for one session of ``protocol``; ValueError for one not built.

    ``certain``: a policy decides each command, and so each must be known, where the handler
    can make it so (PostgreSQL parses a prepared statement again before it runs, where code
    may have redefined it since)."""
    if protocol == "postgresql":
        return PostgresHandler(
            capture_rows=capture.rows,
            capture_bytes=capture.bytes,
            max_message=max_message,
            redactor=redactor,
            refresh=certain,
        )
    raise ValueError(f"no handler for protocol {protocol!r}: Witness relays postgresql only")
