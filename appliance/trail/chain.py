"""The pure hash chain: canonical event bytes, event hashes and the checkpoint message."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import orjson

GENESIS = "0" * 64
CHECKPOINT = "checkpoint"
# The recorder's own events about the trail: its genesis ("create", event 1) and each start
# ("open"), with the trail's id, its key and the checkpoint interval in force.
TRAIL = "trail"

# One encoder, built once: json.dumps with keyword arguments builds a new encoder per call,
# which costs more than the encoding itself for small payloads.
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_ASCII_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)
encode_payload = _ENCODER.encode


def payload_text(payload: Any) -> str:
    """The canonical JSON text of a payload, always storable as UTF-8.

    The fast path is orjson with sorted keys (a tenth of the stdlib's cost, and this runs
    twice per statement on the relay's hot path); it writes a non-finite float as null.
    What orjson refuses (integers beyond 64 bits, lone surrogates, bytes, non-string keys)
    goes through the stdlib encoder, and what that refuses too is salvaged rather than
    refused: one bad payload must never block every later commit. verify only parses
    payloads back, so either encoder's output verifies.
    """
    try:
        return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        pass
    try:
        text = encode_payload(payload)
        text.encode()
    except (TypeError, ValueError):
        return _ASCII_ENCODER.encode(_salvage(payload))
    return text


def _salvage(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _salvage(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_salvage(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return repr(value)


def valid_field(value: object) -> bool:
    """Type and session must be printable and non-empty, which keeps the header unambiguous.

    With no newline in either field and no empty session, the newline-separated header can
    be read back one way only (a missing session is the empty string).
    """
    return isinstance(value, str) and value != "" and value.isprintable()


def header(seq: int, ts: int, type: str, session: str | None) -> str:
    """The fields before the payload, one per line."""
    return f"{seq}\n{ts}\n{type}\n{session or ''}\n"


def canonical(seq: int, ts: int, type: str, session: str | None, text: str) -> bytes:
    """The bytes an event's hash covers (besides the previous hash)."""
    return header(seq, ts, type, session).encode() + text.encode()


def event_hash(  # noqa: PLR0917 -- positional: it runs once per event in the commit loop
    prev: str, seq: int, ts: int, type: str, session: str | None, text: str
) -> str:
    """sha256 over the previous hash (64 hex digits) then the canonical event bytes."""
    return hashlib.sha256((prev + header(seq, ts, type, session) + text).encode()).hexdigest()


def checkpoint_message(seq: int, hash: str) -> bytes:
    """What a checkpoint signs; the prefix keeps the signature from meaning anything else."""
    return b"witness-checkpoint\x00%d\x00%s" % (seq, hash.encode())


def head_message(seq: int, hash: str) -> bytes:
    """What the checkpoint file signs: the trail's last event once a checkpoint is committed.

    Its own prefix keeps any checkpoint event of the trail from passing for one, so the file
    cannot be rebuilt, without the key, from what the trail holds.
    """
    return b"witness-head\x00%d\x00%s" % (seq, hash.encode())
