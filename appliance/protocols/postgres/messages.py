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

# What the server gets in place of a blocked command: a text its grammar refuses at once,
# before it looks at anything, in any transaction state. The server answers with an error
# where the command's answer would have been, and so does just what it does for any failed
# command (a transaction block is aborted, an extended-protocol batch skipped to its Sync);
# that error is then replaced by the one naming the rule. Its server log shows this text.
BLOCKED = "WITNESS BLOCKED THIS COMMAND"
BLOCKED_STATEMENT = "witness_blocked"  # named: the client's unnamed statement is left alone


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


def notice_response(code: str, message: str, hint: str | None = None) -> bytes:
    """A NoticeResponse: news for the client that answers nothing it sent."""
    body = (
        _field(b"S", "NOTICE")
        + _field(b"V", "NOTICE")
        + _field(b"C", code)
        + _field(b"M", message)
        + (_field(b"H", hint) if hint else b"")
        + b"\0"
    )
    return _message(b"N", body)


def query_message(text: str) -> bytes:
    return _message(b"Q", text.encode() + b"\0")


def parse_message(name: str, text: str | bytes, oids: tuple[int, ...] = ()) -> bytes:
    """A Parse of ``text`` (bytes as the client sent them, or ``str`` in UTF-8) as statement
    ``name``, with parameter types ``oids``."""
    raw = text if isinstance(text, bytes) else text.encode()
    types = len(oids).to_bytes(2, "big") + b"".join(o.to_bytes(4, "big") for o in oids)
    return _message(b"P", name.encode() + b"\0" + raw + b"\0" + types)


def close_message(kind: str, name: str) -> bytes:
    """A Close of statement (``S``) or portal (``P``) ``name``."""
    return _message(b"C", kind.encode() + name.encode() + b"\0")


def ready_for_query(status: str = "I") -> bytes:
    if status not in ("I", "T", "E"):
        raise ValueError(f"transaction status {status!r}; expected 'I', 'T' or 'E'")
    return _message(b"Z", status.encode())


WITHHELD = b"[withheld: the session's results are masked]"


def without_detail(body: bytes) -> bytes | None:
    """An ErrorResponse's or NoticeResponse's body with the text of its DETAIL field (which
    may quote a row: ``Failing row contains (...)``, ``Key (ssn)=(...)``) replaced by
    :data:`WITHHELD`; None when it has no DETAIL."""
    fields = body.split(b"\0")
    changed = False
    for i, field in enumerate(fields):
        if field[:1] == b"D":
            fields[i] = b"D" + WITHHELD
            changed = True
    return b"\0".join(fields) if changed else None
