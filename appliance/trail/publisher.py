"""Publishing each checkpoint to the anchor as it is made: off the write-before-forward path,
retried with backoff, and resumed after a restart from a small state file beside the trail."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from appliance.config import AnchorSettings, TrailSettings
from appliance.trail import anchor, chain, db, files, shipping
from appliance.trail.anchor import AnchorError
from appliance.trail.checkpoint import Checkpoint
from appliance.trail.db import TrailError

log = logging.getLogger(__name__)

# Checkpoints wake the publisher as they are made; this catches anything a wake missed.
POLL_SECONDS = 5.0
# At most this many checkpoints in one transaction (a long outage leaves one a second).
BATCH = 2000


@dataclass(slots=True)
class State:
    """What the publisher has done for one trail: ``published`` is the seq of the last
    checkpoint event the anchor acknowledged (times are unix seconds)."""

    trail: str
    published: int = 0
    published_at: float | None = None
    attempted_at: float | None = None
    error: str | None = None
    error_at: float | None = None
    verified: int = 0  # the central store's: the last sealed event it holds and verified

    @classmethod
    def load(cls, path: Path, trail: str) -> State:
        """The state kept for ``trail``; a fresh one when there is none, or it is another
        trail's (publishing again from the start is harmless)."""
        try:
            state = cls(**(files.read_state(path) or {}))
        except TypeError:
            return cls(trail)
        return state if state.trail == trail and isinstance(state.published, int) else cls(trail)

    def save(self, path: Path) -> None:
        files.write_state(path, asdict(self))


def unpublished(trail: Path, after: int, limit: int = -1) -> list[tuple[int, int, Checkpoint]]:
    """The checkpoints of the trail after event ``after`` (the first ``limit`` of them):
    (event seq, made, checkpoint)."""
    with db.reading(trail) as conn:
        rows = conn.execute(
            "SELECT seq, ts, payload FROM events WHERE seq > ? AND type = ? ORDER BY seq LIMIT ?",
            (after, chain.CHECKPOINT, limit),
        ).fetchall()
    found = []
    for seq, ts, payload in rows:
        signed = Checkpoint.from_json(payload)
        if signed is None:
            raise TrailError(f"{trail}: checkpoint {seq} is malformed: run witness verify")
        found.append((int(seq), int(ts), signed))
    return found


class Courier(ABC):
    """Carries what the trail holds to a PostgreSQL off the host, from a thread of its own,
    round by round: ``wake`` starts a round at once; a failed round is retried after 1, 2,
    4... seconds, at most ``retry_max`` apart; what the far end acknowledged is kept in
    ``state`` (its file), so a restart resumes from there. Subclasses say what is read
    from the trail, how it is sent, and where the state is kept.
    """

    what = "events"  # for the log
    poll = POLL_SECONDS
    batch = BATCH
    # Told (from the courier's thread) the seq the far end has acknowledged, after each round.
    on_progress: Callable[[int], None] | None = None

    def __init__(
        self,
        trail: TrailSettings,
        settings: AnchorSettings,
        trail_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.trail = trail
        self.settings = settings
        self.clock = clock
        self.state_file = self.state_path(trail)
        self.state = State.load(self.state_file, trail_id)
        self._conn: psycopg.Connection[Any] | None = None
        self._wake = asyncio.Event()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="witness-courier")

    @staticmethod
    @abstractmethod
    def state_path(trail: TrailSettings) -> Path:
        """Where what was sent is kept."""

    @abstractmethod
    def read(self, after: int) -> list[Any]:
        """What waits after event ``after`` (at most ``batch`` items, each a sequence whose
        first element is its event's seq)."""

    @abstractmethod
    def send(self, conn: psycopg.Connection[Any], items: list[Any]) -> None:
        """Hand ``items`` to the far end, in one transaction (AnchorError if it cannot)."""

    def wake(self) -> None:
        self._wake.set()

    def carry(self) -> int:
        """One round, in the calling thread: send what the far end lacks; how many items
        went. Raises AnchorError (or TrailError) when it cannot, and notes why in the
        state file."""
        state = self.state
        state.attempted_at = now = self.clock()
        try:
            pending = self.read(state.published)
            if pending:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                self.send(self._conn, pending)
        except (AnchorError, TrailError) as exc:
            self._disconnect()
            state.error, state.error_at = str(exc), now
            self._save()
            raise
        if pending:
            state.published, state.published_at = pending[-1][0], now
        state.error = None
        self._save()
        if self.on_progress is not None:
            self.on_progress(state.published)
        return len(pending)

    def _connect(self) -> psycopg.Connection[Any]:
        return anchor.connect(self.settings)

    async def run(self) -> None:
        """Carry until cancelled."""
        what = self.what
        await shipping.rounds(
            self.carry,
            self._worker,
            self._wake,
            poll=self.poll,
            retry_max=self.settings.retry_max,
            full=self.batch,
            failed=lambda why: log.warning("cannot send %s: %s; retrying", what, why),
            recovered=lambda count: log.warning("sending %s again (%d sent)", what, count),
        )

    async def finish(self) -> None:
        """One last round (for what was written at shutdown), then let go of the far end."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._worker, self.carry)
        except Exception as exc:
            log.warning("%s left unsent until the next start: %s", self.what, exc)
        finally:
            await loop.run_in_executor(self._worker, self._disconnect)
            self._worker.shutdown()

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _save(self) -> None:
        try:
            self.state.save(self.state_file)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state_file, exc.strerror)


class Publisher(Courier):
    """Publishes the trail's checkpoints to the anchor as they are made (``wake`` is called
    when a checkpoint is committed)."""

    what = "checkpoints to the anchor"

    @staticmethod
    def state_path(trail: TrailSettings) -> Path:
        return trail.anchor_state

    def read(self, after: int) -> list[Any]:
        return unpublished(self.trail.path, after, BATCH)

    def send(self, conn: psycopg.Connection[Any], items: list[Any]) -> None:
        checkpoints = [(made, signed) for _, made, signed in items]
        anchor.publish(conn, self.settings, self.state.trail, checkpoints)

    publish = Courier.carry


@dataclass(frozen=True, slots=True)
class Lag:
    """How far the far end is behind the trail, for ``witness status``: ``published`` is
    the seq of the last event (or checkpoint) it acknowledged, ``unpublished`` how many wait."""

    trail: str | None
    published: int
    unpublished: int
    oldest: float | None  # when the oldest waiting one was written (unix seconds)
    published_at: float | None
    attempted_at: float | None
    error: str | None
    error_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, state: State, trail: str | None, waiting: int, oldest: float | None) -> Lag:
        return cls(
            trail=trail,
            published=state.published,
            unpublished=waiting,
            oldest=oldest,
            published_at=state.published_at,
            attempted_at=state.attempted_at,
            error=state.error,
            error_at=state.error_at,
        )


def lag(settings: TrailSettings) -> Lag:
    """Read from the trail and the state file; TrailError when the trail cannot be read."""
    with db.reading(settings.path) as conn:
        trail = db.trail_id(conn)
    state = State.load(settings.anchor_state, trail or "")
    pending = unpublished(settings.path, state.published)
    return Lag.of(state, trail, len(pending), pending[0][1] / 1e6 if pending else None)
