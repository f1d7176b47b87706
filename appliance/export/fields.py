"""What the SIEM formats read off a record, whatever their names for it: endpoints, who, what
was decided."""

from __future__ import annotations

import ipaddress
from typing import Any

from appliance.export.record import Record


def endpoint(text: Any) -> tuple[str, int] | None:
    """A recorded "address:port" (an IPv6 address unbracketed) as (address, port)."""
    if not isinstance(text, str):
        return None
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, int(port)


def destination(record: Record) -> tuple[str, int] | None:
    """Where the session went: its destination, else its backend's address."""
    start = record.start
    found = endpoint(start.get("destination"))
    backend = start.get("backend")
    if found is None and isinstance(backend, dict):
        found = endpoint(f"{backend.get('address')}:{backend.get('port')}")
    return found


def owner(record: Record) -> dict[str, Any]:
    """The process that sent it, as the kernel saw it ({} when not known)."""
    found = record.payload.get("owner")
    if not isinstance(found, dict):
        found = record.start.get("owner")
    return found if isinstance(found, dict) else {}


def protocol(record: Record) -> str | None:
    backend = record.start.get("backend")
    value = backend.get("protocol") if isinstance(backend, dict) else None
    return None if value is None else str(value)


def decision(payload: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """What became of a command before it went: ``refused`` (the recorder could not record
    it), ``allow``, ``block`` or ``hold`` (the policy's action), or ``recorded`` (no policy
    decides); with the rule and the reason."""
    if payload.get("refused"):
        return "refused", None, str(payload["refused"])
    found = payload.get("decision")
    if not isinstance(found, dict):
        return "recorded", None, None
    rule, reason = found.get("rule"), found.get("reason")
    return (
        str(found.get("action")),
        None if rule is None else str(rule),
        None if reason is None else str(reason),
    )


def text(value: Any) -> str | None:
    return None if value is None else str(value)
