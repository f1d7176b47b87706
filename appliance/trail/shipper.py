"""Shipping every committed event to the central store: off the write-before-forward path,
by seq, in bounded batches, idempotent (the store keeps an event once however often it is
sent), and resumed after a restart of either side from a state file beside the trail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from appliance.config import TrailSettings
from appliance.trail import central, db
from appliance.trail.central import Row
from appliance.trail.publisher import Courier, Lag, State

BATCH = 5000  # events in one transaction: bounded memory, whatever the backlog
POLL_SECONDS = 1.0  # how often new events are looked for (checkpoints also wake it)


def unshipped(path: Any, after: int, limit: int = -1) -> list[Row]:
    """The events of the trail after ``after`` (the first ``limit`` of them)."""
    with db.reading(path) as conn:
        rows = conn.execute(
            "SELECT seq, ts, type, session, payload, prev_hash, hash FROM events"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
    return [tuple(row) for row in rows]


class Shipper(Courier):
    """Ships the trail's events to the central store."""

    what = "events to the central store"
    poll = POLL_SECONDS
    batch = BATCH

    @staticmethod
    def state_path(trail: TrailSettings) -> Path:
        return trail.central_state

    def read(self, after: int) -> list[Any]:
        return unshipped(self.trail.path, after, BATCH)

    def send(self, conn: psycopg.Connection[Any], items: list[Any]) -> None:
        central.ship(conn, self.settings, self.state.trail, items)

    def _connect(self) -> psycopg.Connection[Any]:
        return central.open_store(self.settings)


def lag(settings: TrailSettings) -> Lag:
    """Read from the trail and the state file; TrailError when the trail cannot be read."""
    with db.reading(settings.path) as conn:
        trail = db.trail_id(conn)
        state = State.load(settings.central_state, trail or "")
        last = db.last_seq(conn)
        first = conn.execute(
            "SELECT ts FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (state.published,)
        ).fetchone()
    oldest = None if first is None else int(first[0]) / 1e6
    return Lag.of(state, trail, max(0, int(last) - state.published), oldest)
