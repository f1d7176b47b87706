"""Syslog framing: RFC 5424 and RFC 3164 headers, octet counting on TCP."""

from __future__ import annotations

from appliance.export import syslog

TS = 1_700_000_000_123_456  # 2023-11-14T22:13:20.123456Z


def test_rfc5424() -> None:
    data = syslog.message(b"CEF:0|x", ts=TS, host="bastion 1", msgid="command", framing="rfc5424")
    assert data == b"<134>1 2023-11-14T22:13:20.123456Z bastion1 witness - command - CEF:0|x"


def test_rfc3164() -> None:
    data = syslog.message(b"CEF:0|x", ts=TS, host="b", msgid="command", framing="rfc3164")
    assert data == b"<134>Nov 14 22:13:20 b witness: CEF:0|x"
    early = syslog.message(b"m", ts=TS - 10 * 86400 * 10**6, host="b", msgid="", framing="rfc3164")
    assert early.startswith(b"<134>Nov  4 22:13:20 b ")


def test_octet_counting_on_tcp_only() -> None:
    assert syslog.frame(b"<134>1 x", "tcp") == b"8 <134>1 x"
    assert syslog.frame(b"<134>1 x", "udp") == b"<134>1 x"
