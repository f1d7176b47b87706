"""One export of a trail, start to end: the one loop from the trail to a sink."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from appliance.export import stream
from appliance.export.formats import Format
from appliance.export.record import Meta, Record
from appliance.export.select import Selection
from appliance.trail import db


class Sink(Protocol):
    def write(self, record: Record, messages: list[bytes]) -> None: ...


def deliver(records: list[Record], fmt: Format, meta: Meta, sink: Sink) -> int:
    """Render each record and hand its messages to ``sink``; how many there were."""
    count = 0
    for record in records:
        messages = fmt.render(record, meta)
        if messages:
            sink.write(record, messages)
            count += len(messages)
    return count


def export(
    path: Path,
    selection: Selection,
    fmt: Format,
    sink: Sink,
    *,
    host: str,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Export what ``selection`` takes of the trail at ``path``, as it is now (one read
    snapshot), in seq order; how many messages were written. ``progress`` is told (seq
    read, last seq) after each batch."""
    with db.reading(path) as conn:
        conn.execute("BEGIN")
        try:
            last = db.last_seq(conn)
            meta = Meta(db.trail_id(conn), host)
            after, upto = 0, last
            if selection.session is not None:
                after, end = stream.span(conn, selection.session)
                upto = last if end is None else min(end, last)
            reader = stream.Reader(selection)
            count = 0
            while after < upto:
                records, seq = reader.read(conn, after, upto)
                count += deliver(records, fmt, meta, sink)
                if progress is not None:
                    progress(seq, last)
                if seq == after:
                    break
                after = seq
            return count
        finally:
            conn.execute("ROLLBACK")
