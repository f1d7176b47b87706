"""Encoders for PostgreSQL v3 messages, both directions: the parser's playbooks, and the
integration tests that speak the protocol to a real server byte by byte."""

from __future__ import annotations

import struct
from collections.abc import Sequence


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def size(*messages: bytes) -> int:
    return sum(len(m) for m in messages)


def _i16s(values: Sequence[int]) -> bytes:
    return struct.pack(f"!h{len(values)}h", len(values), *values)


def _values(values: Sequence[bytes | None]) -> bytes:
    out = struct.pack("!h", len(values))
    for value in values:
        out += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return out


# --- client ----------------------------------------------------------------------------------


def _untyped(body: bytes) -> bytes:
    return struct.pack("!I", len(body) + 4) + body


def startup(version: tuple[int, int] = (3, 0), /, **params: str) -> bytes:
    pairs = b"".join(cstr(k) + cstr(v) for k, v in params.items())
    return _untyped(struct.pack("!HH", *version) + pairs + b"\0")


def ssl_request() -> bytes:
    return _untyped(struct.pack("!I", 80877103))


def gss_request() -> bytes:
    return _untyped(struct.pack("!I", 80877104))


def cancel_request(pid: int, secret: int) -> bytes:
    return _untyped(struct.pack("!Iii", 80877102, pid, secret))


def query(text: str) -> bytes:
    return message(b"Q", cstr(text))


def parse(name: str, text: str, oids: Sequence[int] = ()) -> bytes:
    return message(b"P", cstr(name) + cstr(text) + struct.pack(f"!h{len(oids)}I", len(oids), *oids))


def bind(
    portal: str,
    statement: str,
    values: Sequence[bytes | None] = (),
    formats: Sequence[int] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    body = cstr(portal) + cstr(statement) + _i16s(formats) + _values(values) + _i16s(result_formats)
    return message(b"B", body)


def describe(kind: str, name: str = "") -> bytes:
    return message(b"D", kind.encode() + cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return message(b"E", cstr(portal) + struct.pack("!i", max_rows))


def sync() -> bytes:
    return message(b"S")


def flush() -> bytes:
    return message(b"H")


def close(kind: str, name: str = "") -> bytes:
    return message(b"C", kind.encode() + cstr(name))


def function_call(
    oid: int, args: Sequence[bytes | None], formats: Sequence[int] = (), result_format: int = 0
) -> bytes:
    body = (
        struct.pack("!I", oid) + _i16s(formats) + _values(args) + struct.pack("!h", result_format)
    )
    return message(b"F", body)


def copy_data(data: bytes) -> bytes:
    return message(b"d", data)


def copy_done() -> bytes:
    return message(b"c")


def copy_fail(reason: str) -> bytes:
    return message(b"f", cstr(reason))


def terminate() -> bytes:
    return message(b"X")


def password(secret: str) -> bytes:
    return message(b"p", cstr(secret))


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", cstr(mechanism) + struct.pack("!i", len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return message(b"p", data)


# --- server ----------------------------------------------------------------------------------


def authentication(code: int, data: bytes = b"") -> bytes:
    return message(b"R", struct.pack("!i", code) + data)


def auth_ok() -> bytes:
    return authentication(0)


def auth_sasl(*mechanisms: str) -> bytes:
    return authentication(10, b"".join(cstr(m) for m in mechanisms) + b"\0")


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return message(b"K", struct.pack("!ii", pid, secret))


def negotiate_protocol_version(minor: int, *options: str) -> bytes:
    body = struct.pack("!ii", minor, len(options)) + b"".join(cstr(o) for o in options)
    return message(b"v", body)


def ready_for_query(status: str = "I") -> bytes:
    return message(b"Z", status.encode())


def row_description(*names: str, formats: Sequence[int] | None = None, oid: int = 25) -> bytes:
    body = struct.pack("!h", len(names))
    for i, name in enumerate(names):
        fmt = formats[i] if formats else 0
        body += cstr(name) + struct.pack("!ihihih", 0, 0, oid, -1, -1, fmt)
    return message(b"T", body)


def data_row(*values: bytes | None) -> bytes:
    return message(b"D", _values(values))


def command_complete(tag: str) -> bytes:
    return message(b"C", cstr(tag))


def empty_query_response() -> bytes:
    return message(b"I")


def _fields(severity: str, code: str, text: str) -> bytes:
    return (
        b"S"
        + cstr(severity)
        + b"V"
        + cstr(severity)
        + b"C"
        + cstr(code)
        + b"M"
        + cstr(text)
        + b"\0"
    )


def error_response(text: str, code: str = "42601", severity: str = "ERROR") -> bytes:
    return message(b"E", _fields(severity, code, text))


def notice_response(text: str) -> bytes:
    return message(b"N", _fields("NOTICE", "00000", text))


def notification_response(pid: int, channel: str, payload: str) -> bytes:
    return message(b"A", struct.pack("!i", pid) + cstr(channel) + cstr(payload))


def parse_complete() -> bytes:
    return message(b"1")


def bind_complete() -> bytes:
    return message(b"2")


def close_complete() -> bytes:
    return message(b"3")


def no_data() -> bytes:
    return message(b"n")


def parameter_description(*oids: int) -> bytes:
    return message(b"t", struct.pack(f"!h{len(oids)}I", len(oids), *oids))


def portal_suspended() -> bytes:
    return message(b"s")


def copy_in_response(columns: int = 1) -> bytes:
    return message(b"G", b"\0" + _i16s([0] * columns))


def copy_out_response(columns: int = 1) -> bytes:
    return message(b"H", b"\0" + _i16s([0] * columns))


def copy_both_response() -> bytes:
    return message(b"W", b"\0" + _i16s([]))


def function_call_response(value: bytes | None) -> bytes:
    return message(
        b"V", struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    )


# A typical trust-free login, as a server sends it after the StartupMessage.
WELCOME = (
    auth_ok(),
    parameter_status("server_version", "15.8"),
    parameter_status("client_encoding", "UTF8"),
    backend_key_data(4242, 99),
    ready_for_query("I"),
)
