"""JSONL: one trail event a line, with every field its hash covers, so that the export can be
checked as the trail is (``witness verify --jsonl``)."""

from __future__ import annotations

import json
from typing import Any

import orjson

from appliance.export.record import Record
from appliance.trail.query import iso
from appliance.trail.verify import Row

__all__ = ["FIELDS", "Row", "line", "row"]
from appliance.trail.walk import Fault

FIELDS = ("seq", "ts", "type", "session", "payload", "prev_hash", "hash")


def line(record: Record) -> bytes:
    """The event as one JSON object: ``payload`` is the payload's text exactly as stored and
    hashed (a string holding JSON), ``time`` the ``ts`` (microseconds) for people."""
    return orjson.dumps(
        {
            "seq": record.seq,
            "time": iso(record.ts),
            "ts": record.ts,
            "type": record.type,
            "session": record.session,
            "payload": record.text,
            "prev_hash": record.prev_hash,
            "hash": record.hash,
        }
    )


def row(text: str | bytes, number: int) -> Row:
    """Line ``number`` of an export as a row for the walk; Fault if it is not an event."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or any(key not in data for key in FIELDS):
        raise Fault(None, f"line {number} is not an exported event (JSON with {', '.join(FIELDS)})")
    seq, ts, type, session, payload, prev_hash, digest = (data[key] for key in FIELDS)
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(ts, int):
        raise Fault(None, f"line {number}: seq and ts must be integers")
    return seq, ts, type, session, payload, prev_hash, digest
