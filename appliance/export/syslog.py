"""Syslog framing, sans-io: an export's message as RFC 5424 or RFC 3164 says, and as a TCP
stream carries it (octet counting, RFC 6587)."""

from __future__ import annotations

from datetime import UTC, datetime

FACILITY = 16  # local0
INFO = 6
APP = "witness"


def message(
    body: bytes, *, ts: int, host: str, msgid: str, framing: str, severity: int = INFO
) -> bytes:
    """``body`` (one line, UTF-8) as a syslog message of the event at ``ts`` (microseconds)."""
    pri = f"<{FACILITY * 8 + severity}>"
    moment = datetime.fromtimestamp(ts / 1e6, UTC)
    host = _token(host)
    if framing == "rfc3164":
        stamp = f"{moment:%b} {moment.day:2d} {moment:%H:%M:%S}"
        return f"{pri}{stamp} {host} {APP}: ".encode() + body
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{pri}1 {stamp} {host} {APP} - {_token(msgid)} - ".encode() + body


def frame(data: bytes, transport: str) -> bytes:
    """A message as it goes on the wire: a datagram alone, or counted on a TCP stream."""
    if transport == "tcp":
        return b"%d " % len(data) + data
    return data


def _token(value: str) -> str:
    """A header field: printable ASCII without spaces, at most 48 characters, or "-"."""
    kept = "".join(c for c in value if "!" <= c <= "~")[:48]
    return kept or "-"
