"""CEF (ArcSight's Common Event Format): one line per session start and end, command, result,
approval step, binding and error, sans-io.

``CEF:0|Witness|Witness|VERSION|SIGNATURE|NAME|SEVERITY|EXTENSION``. In the header a pipe and
a backslash are escaped; in the extension an equals sign, a backslash, a newline and a
carriage return (``\\=``, ``\\\\``, ``\\n``, ``\\r``), so that no text an agent sends can
end a field or start one. Other control characters (and a newline in the header) are
written as Python writes them (``\\x1b``), their backslash escaped like any other. A
statement longer than 4,000 characters (CEF's length for ``cs1``) is cut there, ending with
``…``; the JSONL export has it whole.
"""

from __future__ import annotations

from typing import Any

from appliance import __version__
from appliance.export import fields
from appliance.export.record import Meta, Record
from appliance.trail.query import identity_label

LONGEST = 4000
_HEADER = str.maketrans({"\\": "\\\\", "|": "\\|"})
_VALUE = str.maketrans({"\\": "\\\\", "=": "\\=", "\n": "\\n", "\r": "\\r"})
# type -> (signature id, name)
_SIGNATURES = {
    "session_start": ("session-start", "Database session started"),
    "command": ("command", "Database command"),
    "result": ("result", "Database command result"),
    "session_end": ("session-end", "Database session ended"),
    "approval": ("approval", "Approval step"),
    "binding": ("binding", "Identity binding"),
    "error": ("error", "Witness error"),
}
_ACTED = {"allow": 3, "recorded": 3, "hold": 5, "block": 7, "refused": 8}


def header_field(value: Any) -> str:
    return _visible(str(value), "").translate(_HEADER)


def extension_value(value: Any) -> str:
    return _visible(str(value), "\n\r").translate(_VALUE)


def _visible(text: str, keep: str) -> str:
    """Control and format characters (but those in ``keep``) as Python writes them: ``\x1b``
    (its backslash then escaped as any other)."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or c in keep else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def lines(record: Record, meta: Meta) -> list[bytes]:
    found = line(record, meta)
    return [] if found is None else [found.encode()]


def line(record: Record, meta: Meta) -> str | None:
    """The CEF line for a record, or None for one it has none (the trail's own events,
    the raw wire messages)."""
    signature = _SIGNATURES.get(record.type)
    if signature is None:
        return None
    severity, extension = _describe(record)
    pairs = [*_common(record, meta), *extension]
    head = "|".join(
        header_field(v) for v in ("CEF:0", "Witness", "Witness", __version__, *signature, severity)
    )
    body = " ".join(f"{k}={extension_value(v)}" for k, v in pairs if v is not None and v != "")
    return f"{head}|{body}"


Pairs = list[tuple[str, Any]]


def _common(record: Record, meta: Meta) -> Pairs:
    identity = record.identity
    owner = fields.owner(record)
    client = fields.endpoint(record.payload.get("client") or record.start.get("client"))
    target = fields.destination(record)
    return [
        ("rt", record.ts // 1000),
        ("dvchost", meta.host),
        ("deviceExternalId", meta.trail),
        ("externalId", record.seq),
        *_labelled("cs5", "session", record.session),
        ("suser", identity_label(identity)),
        *_labelled("cs3", "subject", None if identity is None else identity.get("subject")),
        *_labelled("cs6", "issuer", None if identity is None else identity.get("issuer")),
        ("suid", owner.get("uid")),
        ("spid", owner.get("pid")),
        ("sproc", owner.get("comm")),
        ("src", None if client is None else client[0]),
        ("spt", None if client is None else client[1]),
        ("dst", None if target is None else target[0]),
        ("dpt", None if target is None else target[1]),
        ("destinationServiceName", record.backend),
        ("duser", record.start.get("db_user")),
        *_labelled("cs2", "database", record.start.get("database")),
    ]


def _labelled(key: str, label: str, value: Any) -> Pairs:
    return [] if value is None else [(f"{key}Label", label), (key, value)]


def _describe(record: Record) -> tuple[int, Pairs]:
    """The severity (0 to 10) and the fields of the record's own kind."""
    p = record.payload
    kind = record.type
    if kind == "command":
        action, rule, reason = fields.decision(p)
        text = str(p.get("text", ""))
        if len(text) > LONGEST:
            text = text[: LONGEST - 1] + "…"
        return _ACTED.get(action, 5), [
            *_labelled("cn1", "command", p.get("n")),
            ("act", action),
            *_labelled("cs4", "rule", rule),
            ("reason", reason),
            *_labelled("cs1", "query", text),
        ]
    if kind == "result":
        error = p.get("error")
        status = str(p.get("status"))
        why = f"{error.get('code')} {error.get('message')}" if isinstance(error, dict) else None
        severity = 1 if status == "ok" else 7 if status == "blocked" else 4
        return severity, [
            *_labelled("cn1", "command", p.get("n")),
            ("outcome", status),
            *_labelled("cn2", "rows", p.get("rows")),
            ("out", p.get("bytes")),
            *_labelled("cfp1", "duration_ms", p.get("duration_ms")),
            ("reason", why),
        ]
    if kind == "session_start":
        refused = p.get("refused")
        if isinstance(refused, dict):
            why = f"{refused.get('code')} {refused.get('message')}"
            return 6, [("outcome", "refused"), ("reason", why)]
        return 3, [("outcome", "success"), ("requestClientApplication", p.get("application_name"))]
    if kind == "session_end":
        return 1, [
            ("reason", p.get("reason")),
            ("in", p.get("bytes_in")),
            ("out", p.get("bytes_out")),
            ("cnt", p.get("commands")),
        ]
    if kind == "approval":
        return 5, [
            *_labelled("cn1", "command", p.get("n")),
            ("act", p.get("step")),
            *_labelled("cs4", "rule", p.get("rule")),
            ("reason", p.get("why")),
            ("msg", p.get("id")),
        ]
    if kind == "binding":
        return 3, [("act", p.get("action")), ("reason", p.get("reason"))]
    return 6, [("reason", p.get("where")), ("msg", p.get("message"))]
