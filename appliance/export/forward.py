"""Continuous exports (``[[export]]``): the trail's events, as they are committed, to a file
or a syslog server; off the write-before-forward path, in a thread of their own, resumed by
seq after a restart from a small state file beside the trail, with bounded memory."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from appliance.config import ExportSettings, TrailSettings
from appliance.export import formats, jsonl, stream
from appliance.export.record import Meta
from appliance.export.run import deliver
from appliance.export.select import Selection
from appliance.export.sinks import AppendFile, SinkError, Syslog
from appliance.trail import db, files, keys, segments, shipping
from appliance.trail.db import TrailError
from appliance.trail.segments import Segment
from appliance.trail.walk import Fault, Walk

log = logging.getLogger(__name__)

# Checkpoints (at least one a second while events come) wake the exports; this catches
# anything a wake missed.
POLL_SECONDS = 5.0
RETRY_MAX_SECONDS = 60.0
# Rounds a shutdown gives an export to catch up (each reads one batch).
LAST_ROUNDS = 100


@dataclass(slots=True)
class State:
    """How far one export has come in one trail: every event up to ``seq`` was taken or
    passed over, and a file export's file was ``size`` bytes long after it."""

    trail: str
    seq: int = 0
    size: int = 0
    exported_at: float | None = None
    error: str | None = None
    error_at: float | None = None
    # An export that retires sealed segments reads its file back: every event up to
    # ``checked`` (whose hash is ``checked_hash``, and which ends at byte ``checked_size``)
    # was found there whole and in an unbroken chain from event ``checked_from``; the last
    # sealed event it verified is ``verified``.
    checked: int = 0
    checked_hash: str = ""
    checked_size: int = 0
    checked_from: int = 0
    verified: int = 0
    file: list[int] | None = None  # the file's (device, inode), to tell a new one

    @classmethod
    def load(cls, settings: TrailSettings, name: str, trail: str) -> State:
        """The state kept for ``trail``; a fresh one (from the trail's first event) when
        there is none, or it is another trail's."""
        try:
            state = cls(**(files.read_state(settings.export_state(name)) or {}))
        except TypeError:
            return cls(trail)
        good = isinstance(state.seq, int) and isinstance(state.size, int)
        return state if good and state.trail == trail else cls(trail)

    def save(self, settings: TrailSettings, name: str) -> None:
        files.write_state(settings.export_state(name), asdict(self))


class Forwarder:
    """One ``[[export]]``: ``forward`` runs one round in the calling thread; ``run`` rounds
    in a worker thread until cancelled, at once when woken (after each checkpoint), and
    after 1, 2, 4... seconds (at most a minute) while they fail."""

    def __init__(
        self,
        trail: TrailSettings,
        settings: ExportSettings,
        trail_id: str,
        host: str,
        *,
        batch: int = stream.BATCH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.trail = trail
        self.settings = settings
        self.fmt = formats.get(settings.format)
        self.host = host
        self.clock = clock
        self.state = State.load(trail, settings.name, trail_id)
        selection = Selection(identities=settings.identities, backends=settings.backends)
        self.reader = stream.Reader(selection, batch=batch)
        self._syslog: Syslog | None = None
        if settings.syslog is not None:
            self._syslog = Syslog(
                settings.syslog,
                self.fmt,
                transport=settings.transport,
                framing=settings.framing,
                host=host,
            )
        self._wake = asyncio.Event()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"witness-export-{settings.name}")
        # Told (from the export's thread) how far it has come, the last sealed event its file
        # holds and has verified (when it retires segments), and what went wrong that the
        # trail should record.
        self.on_progress: Callable[[int], None] | None = None
        self.on_verified: Callable[[int], None] | None = None
        self.on_refused: Callable[[str], None] | None = None
        self._refused: str | None = None

    def wake(self) -> None:
        self._wake.set()

    @property
    def retires(self) -> bool:
        return self.trail.retire == f"export:{self.settings.name}"

    def forward(self) -> int:
        """One round: export what the selection takes of the next batch of events, then
        save how far it came; how many events it read. Raises TrailError or SinkError when
        it cannot (the state says why, and the next round reads the same events again)."""
        state = self.state
        now = self.clock()
        if self.retires:
            self._restart_if_new()
        try:
            with db.reading(self.trail.path) as conn:
                first = conn.execute("SELECT seq FROM events ORDER BY seq LIMIT 1").fetchone()
                records, seq = self.reader.read(conn, state.seq)
            gap = None
            if state.seq and first is not None and first[0] > state.seq + 1:
                gap = (
                    f"events {state.seq + 1} to {first[0] - 1} were retired from the trail"
                    " before this export sent them; they are where the trail retired them to"
                )
            if seq != state.seq:
                meta = Meta(state.trail, self.host)
                if self._syslog is not None:
                    deliver(records, self.fmt, meta, self._syslog)
                else:
                    assert self.settings.file is not None
                    sink = AppendFile(self.settings.file, self.fmt, state.size)
                    try:
                        deliver(records, self.fmt, meta, sink)
                    finally:
                        sink.close()
                    state.size = sink.size
                    found = os.stat(self.settings.file)
                    state.file = [found.st_dev, found.st_ino]
        except (TrailError, SinkError) as exc:
            state.error, state.error_at = str(exc), now
            self._save()
            raise
        read = seq - state.seq
        if read:
            state.seq, state.exported_at = seq, now
        state.error = None
        if gap is not None:
            self._report(gap)
        if self.retires:
            self.read_back()
        self._save()
        if self.on_progress is not None:
            self.on_progress(state.seq)
        return read

    def _restart_if_new(self) -> None:
        """A file that is not the one written to (rotated, or gone), or shorter than what
        was written (emptied), begins a new chain to read back: the events of the segments
        not yet verified are written to it again, so that it holds each one whole."""
        state = self.state
        assert self.settings.file is not None
        try:
            found = os.stat(self.settings.file)
            same = [found.st_dev, found.st_ino] == state.file and found.st_size >= state.size
        except FileNotFoundError:
            same = False
        if same or not (state.size or state.checked):
            return
        state.seq = min(state.seq, state.verified)
        state.size = state.checked = state.checked_size = state.checked_from = 0
        state.checked_hash = ""
        state.file = None

    def read_back(self) -> None:
        """Check what the file holds since the last check, as ``witness verify --jsonl``
        does (every hash, link and signature), and each sealed segment whose last event it
        reaches against the bastion's own copy. A file found changed is reported (once) and
        retires nothing more until it reads true again."""
        state = self.state
        assert self.settings.file is not None
        if state.checked_size > state.size:
            state.checked_size = 0  # the file was started anew: the chain goes on in it
        pending = {s.last: s for s in segments.sealed(self.trail.path) if s.last > state.verified}
        walk = Walk(keys.load_public(self.trail.public_key))
        if state.checked:
            walk.restart(state.checked + 1, state.checked_hash)
        try:
            with self.settings.file.open("rb") as file:
                file.seek(state.checked_size)
                while (at := file.tell()) < state.size:
                    row = _row(file.readline(), at)
                    if not state.checked:
                        walk.restart(row[0], row[5])
                        state.checked_from = row[0]
                    walk.step(row, lambda _: None)
                    state.checked, state.checked_hash = walk.seq, walk.prev
                    state.checked_size = file.tell()
                    segment = pending.get(walk.seq)
                    if segment is not None:
                        self._verified(segment, walk.prev)
        except (OSError, Fault, TrailError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            self._refuse(f"{self.settings.file} cannot be read back whole: {why}")

    def _verified(self, segment: Segment, digest: str) -> None:
        state = self.state
        if segment.first < state.checked_from or db.segment_ends(segment)[1] != digest:
            self._refuse(
                f"{self.settings.file} does not hold sealed segment {segment.path.name} as"
                " this bastion does"
            )
            return
        state.verified, self._refused = segment.last, None
        if self.on_verified is not None:
            self.on_verified(segment.last)

    def _refuse(self, why: str) -> None:
        self._report(f"{why}; its sealed segments are kept")

    def _report(self, why: str) -> None:
        """Say what went wrong, in the state (for witness status) and, once, in the trail."""
        message = f"export {self.settings.name}: {why}"
        self.state.error, self.state.error_at = message, self.clock()
        if message != self._refused and self.on_refused is not None:
            self.on_refused(message)
        self._refused = message

    async def run(self) -> None:
        """Export until cancelled."""
        name = self.settings.name
        await shipping.rounds(
            self.forward,
            self._worker,
            self._wake,
            poll=POLL_SECONDS,
            retry_max=RETRY_MAX_SECONDS,
            full=self.reader.batch,
            failed=lambda why: log.warning("export %s: %s; retrying", name, why),
            recovered=lambda _: log.warning("export %s goes on (seq %d)", name, self.state.seq),
        )

    async def finish(self) -> None:
        """Catch up with what the trail holds now (the recorder has closed it), then let go."""
        loop = asyncio.get_running_loop()
        try:
            for _ in range(LAST_ROUNDS):
                if not await loop.run_in_executor(self._worker, self.forward):
                    break
        except Exception as exc:
            log.warning("export %s: left for the next start: %s", self.settings.name, exc)
        finally:
            if self._syslog is not None:
                await loop.run_in_executor(self._worker, self._syslog.close)
            self._worker.shutdown()

    def _save(self) -> None:
        try:
            self.state.save(self.trail, self.settings.name)
        except OSError as exc:
            log.warning("export %s: cannot save its state: %s", self.settings.name, exc.strerror)


def _row(line: bytes, at: int) -> jsonl.Row:
    try:
        return jsonl.row(line, 0)
    except Fault:
        raise Fault(None, f"the line at byte {at} is not an exported event") from None


def lag(settings: TrailSettings, export: ExportSettings) -> dict[str, object]:
    """How far the export ``name`` is behind the trail, for ``witness status``: the last
    event it passed, how many wait and since when, and its last error. TrailError when the
    trail cannot be read."""
    with db.reading(settings.path) as conn:
        trail = db.trail_id(conn) or ""
        state = State.load(settings, export.name, trail)
        last = db.last_seq(conn)
        first = conn.execute(
            "SELECT ts FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (state.seq,)
        ).fetchone()
    return {
        "name": export.name,
        "format": export.format,
        "exported": state.seq,
        "waiting": max(0, int(last) - state.seq),
        "seconds_behind": None if first is None else round(time.time() - first[0] / 1e6, 1),
        "exported_at": state.exported_at,
        "error": state.error,
        "error_at": state.error_at,
    }
