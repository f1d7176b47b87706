"""Payload decoders for the PostgreSQL messages Witness reads, and for bind parameter values."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from typing import NamedTuple

from appliance.model import ErrorInfo
from appliance.protocols.postgres.encodings import UTF8, Codec, hexed


class DecodeError(ValueError):
    """A message body does not match its layout. The framer adds which message, peer and phase."""


_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_F32 = struct.Struct("!f")
_F64 = struct.Struct("!d")
_FIELD = struct.Struct("!IhI")  # a RowDescription field's table OID, column number, type OID

Value = str | None
Raw = bytes | None


def _cbytes(body: bytes, pos: int, what: str) -> tuple[bytes, int]:
    end = body.find(b"\0", pos)
    if end < 0:
        raise DecodeError(f"the {what} has no NUL terminator")
    return body[pos:end], end + 1


def _cstring(body: bytes, pos: int, what: str, codec: Codec = UTF8) -> tuple[str, int]:
    raw, pos = _cbytes(body, pos, what)
    return codec.show(raw), pos


def _only_cbytes(body: bytes, what: str) -> bytes:
    end = body.find(b"\0")
    if end < 0:
        raise DecodeError(f"the {what} has no NUL terminator")
    if end != len(body) - 1:
        raise DecodeError(f"{len(body) - end - 1} bytes follow the NUL that ends the {what}")
    return body[:end]


def name(raw: bytes, codec: Codec) -> str:
    """A statement or portal name as a key: its text, or NUL and its hex when undecodable.

    No decoded name holds a NUL (the protocol ends names with one), so an undecodable name
    can never pass for a decodable one that happens to read like its hex.
    """
    if not raw:
        return ""  # the unnamed statement or portal: most names are
    text = codec.text(raw)
    return "\0" + hexed(raw) if text is None else text


def _end(body: bytes, pos: int) -> None:
    if pos != len(body):
        raise DecodeError(f"{len(body) - pos} unexpected bytes follow the last field")


def _count(body: bytes, pos: int, width: int, what: str) -> tuple[int, int]:
    """An int16 count of items at least ``width`` bytes each; it must fit in what is left."""
    if pos + 2 > len(body):
        raise DecodeError(f"the body ends before the {what} count")
    (n,) = _I16.unpack_from(body, pos)
    pos += 2
    if n < 0 or pos + n * width > len(body):
        raise DecodeError(f"{n} {what}s do not fit in the {len(body) - pos} bytes left")
    return n, pos


def _codes(body: bytes, pos: int, what: str) -> tuple[tuple[int, ...], int]:
    """An int16 count, then that many int16 codes; none is the common case, so it is quick."""
    if pos + 2 <= len(body) and body[pos] == body[pos + 1] == 0:
        return (), pos + 2
    n, pos = _count(body, pos, 2, what)
    return struct.unpack_from(f"!{n}h", body, pos), pos + 2 * n


def _values(body: bytes, pos: int, what: str) -> tuple[list[Raw], int]:
    """An int16 count, then that many (int32 length, bytes) values; length -1 is NULL."""
    n, pos = _count(body, pos, 4, what)
    size = len(body)
    unpack = _I32.unpack_from
    out: list[Raw] = []
    for i in range(n):
        if pos + 4 > size:
            raise DecodeError(f"{what} {i + 1} of {n} has no length")
        (length,) = unpack(body, pos)
        pos += 4
        if length < 0:
            if length != -1:
                raise DecodeError(f"{what} {i + 1} has length {length}; only -1 (NULL) is allowed")
            out.append(None)
            continue
        stop = pos + length
        if stop > size:
            raise DecodeError(f"{what} {i + 1} declares {length} bytes but {size - pos} are left")
        out.append(body[pos:stop])
        pos = stop
    return out, pos


# --- client messages ---------------------------------------------------------------------


class Parse(NamedTuple):
    statement: str
    text: bytes  # decoded by the caller, which knows whether the encoding is sure
    oids: tuple[int, ...]


class Bind(NamedTuple):
    portal: str
    statement: str
    formats: tuple[int, ...]
    values: list[Raw]
    result_formats: tuple[int, ...]


class FunctionCall(NamedTuple):
    oid: int
    formats: tuple[int, ...]
    args: list[Raw]


def query(body: bytes) -> bytes:
    """The query text's bytes, decoded by the caller."""
    return _only_cbytes(body, "query text")


def parse(body: bytes, codec: Codec) -> Parse:
    raw, pos = _cbytes(body, 0, "statement name")
    text, pos = _cbytes(body, pos, "query text")
    n, pos = _count(body, pos, 4, "parameter type")
    oids = struct.unpack_from(f"!{n}I", body, pos)
    _end(body, pos + 4 * n)
    return Parse(name(raw, codec), text, oids)


def bind(body: bytes, codec: Codec) -> Bind:
    # Bind is on the hot path of prepared statements, hence the two names read in one go.
    end = body.find(b"\0")
    pos = body.find(b"\0", end + 1) + 1
    if end < 0 or not pos:
        raise DecodeError("the portal and statement names are not both NUL-terminated")
    portal = name(body[:end], codec)
    statement = name(body[end + 1 : pos - 1], codec)
    formats, pos = _codes(body, pos, "parameter format")
    values, pos = _values(body, pos, "parameter")
    result_formats, pos = _codes(body, pos, "result format")
    _end(body, pos)
    return Bind(portal, statement, formats, values, result_formats)


def execute(body: bytes, codec: Codec) -> str:
    """The portal name; the row limit that follows it does not change what is recorded."""
    raw, pos = _cbytes(body, 0, "portal name")
    portal = name(raw, codec)
    if pos + 4 != len(body):
        raise DecodeError(
            f"expected a 4-byte row limit after the portal name, got {len(body) - pos}"
        )
    return portal


def target(body: bytes, codec: Codec) -> tuple[str, str]:
    """Describe and Close: ``S`` (statement) or ``P`` (portal), then a name."""
    kind = body[:1]
    if kind not in (b"S", b"P"):
        raise DecodeError(f"target kind {kind!r}; expected 'S' (statement) or 'P' (portal)")
    raw, pos = _cbytes(body, 1, "name")
    _end(body, pos)
    return kind.decode(), name(raw, codec)


def function_call(body: bytes) -> FunctionCall:
    if len(body) < 4:
        raise DecodeError("the body ends before the function OID")
    (oid,) = _U32.unpack_from(body, 0)
    formats, pos = _codes(body, 4, "argument format")
    args, pos = _values(body, pos, "argument")
    if pos + 2 != len(body):
        raise DecodeError(
            f"expected a 2-byte result format after the arguments, got {len(body) - pos}"
        )
    return FunctionCall(oid, formats, args)


def startup_params(body: bytes) -> dict[str, str]:
    """StartupMessage after its version: name/value string pairs, then one more NUL."""
    params: dict[str, str] = {}
    pos = 4
    while True:
        if pos >= len(body):
            raise DecodeError("the parameter list does not end with an empty name")
        if body[pos] == 0:
            break
        key, pos = _cstring(body, pos, "parameter name")
        params[key], pos = _cstring(body, pos, f"value of parameter {key!r}")
    _end(body, pos + 1)
    return params


def cancel_key(body: bytes) -> tuple[int, int]:
    """CancelRequest after its code: the process id, then a secret of 4 (3.0) to 256 (3.2) bytes."""
    if not 12 <= len(body) <= 8 + 256:
        raise DecodeError(f"a {len(body) + 4}-byte CancelRequest; expected 16 to 268 bytes")
    (pid,) = _I32.unpack_from(body, 4)
    return pid, int.from_bytes(body[8:], "big")


# --- server messages ---------------------------------------------------------------------

_ROW_VERBS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "MOVE", "FETCH"})
_STATUS = {b"I": "I", b"T": "T", b"E": "E"}


_TAGS: dict[bytes, tuple[str, int]] = {}


def command_complete(body: bytes) -> tuple[str, int]:
    """The tag and the rows it reports. Tags repeat ("SELECT 1"), so short ones are cached."""
    known = _TAGS.get(body)
    if known is None:
        tag = _only_cbytes(body, "command tag").decode("utf-8", "replace")
        known = (tag, tag_rows(tag))
        if len(body) <= 64:
            if len(_TAGS) >= 4096:
                _TAGS.clear()
            _TAGS[body] = known
    return known


def tag_rows(tag: str) -> int:
    """Rows a command tag reports: the last word of ``SELECT 5``, ``INSERT 0 3``, ``COPY 10``..."""
    verb, _, rest = tag.partition(" ")
    if verb in _ROW_VERBS:
        count = rest.rpartition(" ")[2]
        if count.isascii() and count.isdigit():
            return int(count)
    return 0


def error_info(body: bytes, codec: Codec = UTF8) -> ErrorInfo:
    fields: dict[int, str] = {}
    pos = 0
    while True:
        if pos >= len(body):
            raise DecodeError("the field list does not end with a zero byte")
        code = body[pos]
        if code == 0:
            break
        fields[code], pos = _cstring(body, pos + 1, f"field {chr(code)!r}", codec)
    _end(body, pos + 1)
    # V is the untranslated severity (9.6+); S may be localized.
    severity = fields.get(ord("V")) or fields.get(ord("S"), "")
    return ErrorInfo(severity, fields.get(ord("C"), ""), fields.get(ord("M"), ""))


def ready_status(body: bytes) -> str:
    status = _STATUS.get(body)
    if status is None:
        raise DecodeError(f"transaction status {body!r}; expected 'I', 'T' or 'E'")
    return status


def backend_key(body: bytes) -> tuple[int, int]:
    if not 8 <= len(body) <= 4 + 256:
        raise DecodeError(f"a {len(body)}-byte body; expected a process id and a 4 to 256-byte key")
    (pid,) = _I32.unpack_from(body, 0)
    return pid, int.from_bytes(body[4:], "big")


def parameter_types(body: bytes) -> tuple[int, ...]:
    n, pos = _count(body, 0, 4, "parameter type")
    oids = struct.unpack_from(f"!{n}I", body, pos)
    _end(body, pos + 4 * n)
    return oids


def parameter_status(body: bytes) -> tuple[str, str]:
    """ParameterStatus: a setting's name and its new value."""
    key, pos = _cstring(body, 0, "parameter name")
    value, pos = _cstring(body, pos, f"value of parameter {key!r}")
    _end(body, pos)
    return key, value


def row_description(body: bytes, codec: Codec) -> tuple[list[str], tuple[int, ...]]:
    """Column names and format codes; each field is a name and 18 bytes of attributes."""
    n, pos = _count(body, 0, 19, "field")
    names: list[str] = []
    formats: list[int] = []
    for i in range(n):
        column, pos = _cstring(body, pos, f"name of field {i + 1}", codec)
        if pos + 18 > len(body):
            raise DecodeError(f"field {i + 1} ({column!r}) is cut short")
        names.append(column)
        formats.append(_I16.unpack_from(body, pos + 16)[0])
        pos += 18
    _end(body, pos)
    return names, tuple(formats)


def fields(body: bytes, codec: Codec) -> list[tuple[str, int, int, int, int]]:
    """A RowDescription's fields: name, table OID, column number, type OID, format code."""
    n, pos = _count(body, 0, 19, "field")
    out: list[tuple[str, int, int, int, int]] = []
    for i in range(n):
        column, pos = _cstring(body, pos, f"name of field {i + 1}", codec)
        if pos + 18 > len(body):
            raise DecodeError(f"field {i + 1} ({column!r}) is cut short")
        table, attnum, oid = _FIELD.unpack_from(body, pos)
        out.append((column, table, attnum, oid, _I16.unpack_from(body, pos + 16)[0]))
        pos += 18
    _end(body, pos)
    return out


def row_values(body: bytes) -> list[Raw]:
    """A DataRow's values, as they came (None is NULL)."""
    values, pos = _values(body, 0, "column")
    _end(body, pos)
    return values


def data_row(body: bytes, formats: Sequence[int], codec: Codec) -> list[Value]:
    values, pos = _values(body, 0, "column")
    _end(body, pos)
    return [
        None if raw is None else codec.show(raw) if fmt == 0 else hexed(raw)
        for raw, fmt in zip(values, expand_formats(formats, len(values)), strict=True)
    ]


# --- values ----------------------------------------------------------------------------------


def expand_formats(formats: Sequence[int], n: int) -> Sequence[int]:
    """The per-value format codes: none means all text, one applies to all, else one each.

    A count that matches none of these is the server's error to report; the values then
    render as hex, which is always faithful.
    """
    if not formats:
        return (0,) * n
    if len(formats) == 1:
        return (formats[0],) * n
    if len(formats) == n:
        return formats
    return (-1,) * n


def render_params(
    formats: Sequence[int], values: Sequence[Raw], oids: Sequence[int], codec: Codec
) -> tuple[tuple[Value, ...], bool]:
    """Parameters as the record shows them, and whether any text among them could not be
    decoded in ``codec`` (it is then ``\\x`` hex, like any value of unknown type)."""
    if not formats:
        out: list[Value] = []
        undecoded = False
        for raw in values:
            if raw is None:
                out.append(None)
                continue
            text = codec.text(raw)
            if text is None:
                undecoded = True
                out.append(hexed(raw))
            else:
                out.append(text)
        return tuple(out), undecoded
    n_oids = len(oids)
    rendered = tuple(
        None if raw is None else render_value(raw, fmt, oids[i] if i < n_oids else 0, codec)
        for i, (raw, fmt) in enumerate(
            zip(values, expand_formats(formats, len(values)), strict=True)
        )
    )
    undecoded = any(
        raw is not None and codec.text(raw) is None for raw in texts(formats, values, oids)
    )
    return rendered, undecoded


def texts(formats: Sequence[int], values: Sequence[Raw], oids: Sequence[int]) -> list[bytes]:
    """The values among ``values`` that are text in the client encoding."""
    if not formats:
        return [raw for raw in values if raw is not None]
    n_oids = len(oids)
    return [
        raw
        for i, (raw, fmt) in enumerate(
            zip(values, expand_formats(formats, len(values)), strict=True)
        )
        if raw is not None
        and (fmt == 0 or (fmt == 1 and (oids[i] if i < n_oids else 0) in _ENCODED))
    ]


def render_value(raw: bytes, fmt: int, oid: int, codec: Codec) -> str:
    """Text format as text; binary by its type OID when known; anything else as ``\\x`` hex."""
    if fmt == 0:
        return codec.show(raw)
    if fmt == 1:
        if oid in _BINARY_TEXT:  # text travels in the client encoding in binary format too
            return codec.show(raw)
        if oid == _JSONB and raw[:1] == b"\x01":  # a version byte, then the text
            return codec.show(raw[1:])
        render = _BINARY.get(oid)
        if render is not None:
            try:
                text = render(raw)
            except (ValueError, OverflowError, struct.error):
                text = None  # out of Python's date range, say: hex still says exactly what was sent
            if text is not None:
                return text
    return hexed(raw)


def _sized(size: int, unpacker: struct.Struct) -> Callable[[bytes], str | None]:
    def render(raw: bytes) -> str | None:
        return str(unpacker.unpack(raw)[0]) if len(raw) == size else None

    return render


def _float_text(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    text = repr(x)
    return text[:-2] if text.endswith(".0") else text


def _float4(raw: bytes) -> str | None:
    if len(raw) != 4:
        return None
    (x,) = _F32.unpack(raw)
    if math.isfinite(x):
        # The shortest decimal that reads back as the same float4, as PostgreSQL prints it.
        for digits in range(1, 10):
            text = f"{x:.{digits}g}"
            if _F32.unpack(_F32.pack(float(text)))[0] == x:
                return text
    return _float_text(x)


def _float8(raw: bytes) -> str | None:
    return _float_text(_F64.unpack(raw)[0]) if len(raw) == 8 else None


_EPOCH_DAY = date(2000, 1, 1)
_EPOCH = datetime(2000, 1, 1)  # naive: timestamptz values are UTC offsets from it too


def _date(raw: bytes) -> str | None:
    if len(raw) != 4:
        return None
    (days,) = _I32.unpack(raw)
    if days in (2**31 - 1, -(2**31)):
        return "infinity" if days > 0 else "-infinity"
    return (_EPOCH_DAY + timedelta(days=days)).isoformat()


def _timestamp(suffix: str) -> Callable[[bytes], str | None]:
    def render(raw: bytes) -> str | None:
        if len(raw) != 8:
            return None
        (micros,) = _I64.unpack(raw)
        if micros in (2**63 - 1, -(2**63)):
            return "infinity" if micros > 0 else "-infinity"
        return (_EPOCH + timedelta(microseconds=micros)).isoformat(" ") + suffix

    return render


def _uuid(raw: bytes) -> str | None:
    if len(raw) != 16:
        return None
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_BINARY: dict[int, Callable[[bytes], str | None]] = {
    16: lambda raw: ("t" if raw[0] else "f") if len(raw) == 1 else None,  # bool
    17: hexed,  # bytea
    20: _sized(8, _I64),  # int8
    21: _sized(2, _I16),  # int2
    23: _sized(4, _I32),  # int4
    26: _sized(4, _U32),  # oid
    700: _float4,
    701: _float8,
    1082: _date,
    1114: _timestamp(""),
    1184: _timestamp("+00"),  # timestamptz travels in UTC
    2950: _uuid,
}
_JSONB = 3802
_BINARY_TEXT = frozenset({25, 114, 1042, 1043})  # text, json, bpchar, varchar
_ENCODED = _BINARY_TEXT | {_JSONB}
