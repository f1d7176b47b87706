"""Message names for error reports, and the few messages the relay writes to clients itself."""

from __future__ import annotations

CLIENT_MESSAGES = {
    b"Q": "Query",
    b"P": "Parse",
    b"B": "Bind",
    b"D": "Describe",
    b"E": "Execute",
    b"S": "Sync",
    b"C": "Close",
    b"H": "Flush",
    b"F": "FunctionCall",
    b"d": "CopyData",
    b"c": "CopyDone",
    b"f": "CopyFail",
    b"X": "Terminate",
    b"p": "password message",
}

SERVER_MESSAGES = {
    b"R": "Authentication",
    b"K": "BackendKeyData",
    b"S": "ParameterStatus",
    b"Z": "ReadyForQuery",
    b"E": "ErrorResponse",
    b"N": "NoticeResponse",
    b"A": "NotificationResponse",
    b"v": "NegotiateProtocolVersion",
    b"C": "CommandComplete",
    b"I": "EmptyQueryResponse",
    b"T": "RowDescription",
    b"D": "DataRow",
    b"t": "ParameterDescription",
    b"n": "NoData",
    b"1": "ParseComplete",
    b"2": "BindComplete",
    b"3": "CloseComplete",
    b"s": "PortalSuspended",
    b"G": "CopyInResponse",
    b"H": "CopyOutResponse",
    b"W": "CopyBothResponse",
    b"d": "CopyData",
    b"c": "CopyDone",
    b"V": "FunctionCallResponse",
}

NO_ENCRYPTION = b"N"  # the answer to SSLRequest and GSSENCRequest: go on in plain text


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


def _field(code: bytes, value: str) -> bytes:
    return code + value.replace("\0", "").encode() + b"\0"  # a NUL would end the field early


def error_response(severity: str, code: str, message: str) -> bytes:
    """An ErrorResponse; ``severity`` is ERROR or FATAL, ``code`` a SQLSTATE such as 28000."""
    body = (
        _field(b"S", severity)
        + _field(b"V", severity)
        + _field(b"C", code)
        + _field(b"M", message)
        + b"\0"
    )
    return _message(b"E", body)


def ready_for_query(status: str = "I") -> bytes:
    if status not in ("I", "T", "E"):
        raise ValueError(f"transaction status {status!r}; expected 'I', 'T' or 'E'")
    return _message(b"Z", status.encode())
