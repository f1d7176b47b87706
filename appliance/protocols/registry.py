"""The factory: the protocol handler for a backend's ``protocol``."""

from __future__ import annotations

from appliance.config import Capture
from appliance.policy.redact import Redactor
from appliance.protocols.handler import Handler
from appliance.protocols.postgres.handler import PostgresHandler


def handler_for(protocol: str, capture: Capture, max_message: int, redactor: Redactor) -> Handler:
    """A new handler for one session of ``protocol``; ValueError for one not built."""
    if protocol == "postgresql":
        return PostgresHandler(
            capture_rows=capture.rows,
            capture_bytes=capture.bytes,
            max_message=max_message,
            redactor=redactor,
        )
    raise ValueError(f"no handler for protocol {protocol!r}: Witness relays postgresql only")
