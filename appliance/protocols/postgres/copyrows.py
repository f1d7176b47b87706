"""One row of COPY TO STDOUT output (text or CSV format) with some of its fields masked.

PostgreSQL sends each row of a COPY TO in a CopyData message of its own; this reads that
row's fields as the format writes them, replaces the masked ones, and writes the row again.
Fields are split on ASCII bytes only, which never occur inside a multi-byte character of a
server-safe client encoding (UTF-8 and the like). A row whose fields cannot be read as the
COPY's options say has every field masked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from appliance.policy.maskguard import CopyOut

Mask = Callable[[int, str], str]  # column index, value -> masked value

_TEXT_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def _text_fields(line: bytes, delimiter: bytes) -> list[bytes]:
    """The raw fields of a text-format row: split on the delimiter, except where a backslash
    escapes it (a piece that ends in an odd number of backslashes goes on into the next)."""
    pieces = line.split(delimiter)
    if b"\\" not in line:
        return pieces
    fields: list[bytes] = []
    carry: bytes | None = None
    for piece in pieces:
        field = piece if carry is None else carry + delimiter + piece
        trailing = len(field) - len(field.rstrip(b"\\"))
        if trailing % 2:
            carry = field
            continue
        carry = None
        fields.append(field)
    if carry is not None:
        fields.append(carry)
    return fields


_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


def _text_value(raw: str) -> str:
    if "\\" not in raw:
        return raw
    return _ESCAPED.sub(lambda m: _TEXT_ESCAPES.get(m[1], m[1]), raw)


def _text_escape(value: str, delimiter: str) -> str:
    out = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    out = out.replace("\t", "\\t")
    return out.replace(delimiter, "\\" + delimiter) if delimiter not in "\t\\" else out


def _csv_fields(
    line: str, delimiter: str, quote: str, escape: str
) -> list[tuple[str, bool]] | None:
    """(raw text, quoted) for each field; None where the row does not read as CSV."""
    fields: list[tuple[str, bool]] = []
    i, size = 0, len(line)
    while True:
        if i < size and line[i] == quote:
            i += 1
            value: list[str] = []
            while True:
                if i >= size:
                    return None
                ch = line[i]
                if ch == escape and i + 1 < size and line[i + 1] == quote:
                    value.append(quote)
                    i += 2
                elif ch == quote:
                    i += 1
                    break
                else:
                    value.append(ch)
                    i += 1
            fields.append(("".join(value), True))
            if i < size and line[i] != delimiter:
                return None
        else:
            stop = line.find(delimiter, i)
            stop = size if stop < 0 else stop
            fields.append((line[i:stop], False))
            i = stop
        if i >= size:
            return fields
        i += 1  # the delimiter
        if i == size:
            fields.append(("", False))
            return fields


def mask_row(
    data: bytes, copy: CopyOut, masked: Sequence[bool], mask: Mask, encoding: str
) -> bytes:
    """``data`` (one row, its newline included) with the fields ``masked`` says masked; an
    empty ``masked`` masks every field."""
    ending = b"\r\n" if data.endswith(b"\r\n") else b"\n" if data.endswith(b"\n") else b""
    body = data[: len(data) - len(ending)]
    if copy.csv:
        try:
            text: str | None = body.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            text = None
        fields = (
            None if text is None else _csv_fields(text, copy.delimiter, copy.quote, copy.escape)
        )
        everything = fields is None or (bool(masked) and len(fields) != len(masked))
        if fields is None:
            fields = [("", False)] * max(1, len(masked))
        out = []
        for index, (value, quoted) in enumerate(fields):
            if not quoted and value == copy.null:
                out.append(value)
            elif everything or not masked or masked[index]:
                hidden = mask(index, value)
                q = copy.quote
                out.append(q + hidden.replace(q, q + q) + q)
            else:
                out.append(q_field(value, quoted, copy.quote, copy.escape))
        return _encode(copy.delimiter.join(out), encoding) + ending
    delimiter = copy.delimiter.encode("ascii", "replace")[:1] or b"\t"
    raw_fields = _text_fields(body, delimiter)
    everything = bool(masked) and len(raw_fields) != len(masked)
    parts: list[bytes] = []
    null = copy.null.encode("ascii", "replace")
    for index, raw in enumerate(raw_fields):
        if raw == null or (not everything and masked and not masked[index]):
            parts.append(raw)
            continue
        try:
            value = _text_value(raw.decode(encoding))
        except (UnicodeDecodeError, LookupError):
            value = ""
        parts.append(_encode(_text_escape(mask(index, value), copy.delimiter), encoding))
    return delimiter.join(parts) + ending


def q_field(value: str, quoted: bool, quote: str, escape: str) -> str:
    """A CSV field written back as it came."""
    if not quoted:
        return value
    return quote + value.replace(quote, escape + quote) + quote


def _encode(text: str, encoding: str) -> bytes:
    try:
        return text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return text.encode("ascii", "replace")
