"""The recorder's side of the trail: buffered appends, group commits, signed checkpoints."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.config import TrailSettings
from appliance.trail import chain, db, files, keys, segments, walcheck
from appliance.trail.checkpoint import Checkpoint, Head, read_file, write_file
from appliance.trail.db import TrailError, TrailFull, TrailLost, TrailWriteError
from appliance.trail.segments import Segment
from appliance.trail.walk import Fault, Walk, begin

__all__ = ["Trail", "TrailError", "TrailFull", "TrailLost", "TrailWriteError"]

MAX_BACKLOG = 1_000_000
# Only a foreign writer can hold the lock (readers never block a WAL writer), and the relay
# commits on its event loop: fail fast and let it retry rather than freeze every session.
BUSY_TIMEOUT_MS = 200
# After a seal that could not be made (a reader held an old snapshot), none is tried again
# for this long: trying costs the writer a WAL checkpoint.
SEAL_RETRY_SECONDS = 5.0

_INSERT = (
    "INSERT INTO events (seq, ts, type, session, payload, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SESSION_START = "INSERT OR IGNORE INTO sessions (id, start_seq) VALUES (?, ?)"
_SESSION_END = "UPDATE sessions SET end_seq = ? WHERE id = ? AND end_seq IS NULL"
_RETIRED = "INSERT OR REPLACE INTO meta (key, value) VALUES ('retired', ?)"
Row = tuple[int, int, str, str | None, str, str, str]


class Batch:
    """One commit: staged on the event loop, written (in a worker thread, if need be), then
    settled back on the loop. The trail's pending events stay where they are until then.

    (A plain class, not a dataclass: one is made per commit, and mypyc builds a plain
    class's instances natively.)
    """

    def __init__(
        self,
        *,
        taken: int,
        rows: list[Row],
        starts: list[tuple[str | None, int]],
        ends: list[tuple[int, str | None]],
        seq: int,
        hash: str,
        uncovered: int,
        now: float,
        dropped: int,
    ) -> None:
        self.taken = taken  # how many pending events it holds
        self.rows = rows
        self.starts = starts
        self.ends = ends
        self.seq = seq  # the head once written
        self.hash = hash
        self.uncovered = uncovered  # events its checkpoint leaves unsigned (0 with one)
        self.now = now
        self.dropped = dropped  # dropped events its notice accounts for
        self.head: Head | None = None  # the signed head, when it ends with a checkpoint
        self.examine = False  # whether write() checks the files once it has committed
        self.problems: list[str] = []  # what write() could not do besides
        self.lost: str | None = None  # set by write(): committed, but not where readers look
        self.retire: Segment | None = None  # the sealed segment whose retirement it records
        self.retire_seq = 0  # the seq of that record
        self.sealed: tuple[Segment, str] | None = None  # set by write(): the file sealed after it
        self.deleted: Segment | None = None  # set by write(): the retired segment it deleted


class Trail:
    """One writer's handle on the trail.

    ``append`` only buffers; ``commit`` writes everything buffered in one transaction.
    It is not thread-safe: the relay uses it from its event loop, except ``write``, which
    may run in one worker thread while the loop does anything but commit or close.
    """

    max_backlog: int = MAX_BACKLOG

    def __init__(
        self,
        settings: TrailSettings,
        conn: sqlite3.Connection,
        key: Ed25519PrivateKey,
        head: tuple[int, str],
        *,
        trail_id: str,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._conn: sqlite3.Connection | None = conn
        self._key = key
        self._fingerprint = keys.fingerprint(key.public_key())
        self._clock = clock
        self.id = trail_id
        self._seq, self._hash = head
        self._uncovered = 0
        self._checkpointed_at = clock()
        self._unexamined = 0  # commits since the files were last checked
        # Read on every commit: native attributes, not the settings' (a plain dataclass).
        self._checkpoint_events = settings.checkpoint_events
        self._checkpoint_seconds = settings.checkpoint_seconds
        self._examine_commits = settings.examine_commits
        self._force = False
        self._valid: set[str] = set()
        self._pending: list[tuple[int, str, str | None, dict[str, Any]]] = []
        self._dropped: dict[str, int] = {}
        self._dropped_ts = (0, 0)
        # (st_dev, st_ino) of the database and its WAL, taken at the first checkpoint.
        self._files: tuple[tuple[int, int], tuple[int, int]] | None = None
        self._lost: str | None = None
        self._damaged = False  # the WAL is damaged under us: never close (see _keep_open)
        # Called (on the event loop) after each checkpoint is committed.
        self.on_checkpoint: Callable[[], None] | None = None
        self._segment_bytes = settings.segment_bytes
        self._sealed: list[Segment] = []
        self._last_hashes: dict[int, str] = {}  # each sealed segment's last hash, by its last seq
        self._first = 1  # the active file's first event
        self._retired = 0  # the last event retired (its file may yet have to be deleted)
        self._undeleted: str | None = None  # why a retired segment's file is still there
        self._seal_after = 0.0  # no seal is tried before then (one failed: a reader held on)
        self._unsealed: str | None = None  # why the last seal failed
        self._started = 0  # the seq of this start's trail event: older open sessions are dead
        # The last seq the copy named by [trail] retire holds and has verified; set from the
        # courier's thread, read when staging.
        self.retirable = 0

    @classmethod
    def open(cls, settings: TrailSettings, *, clock: Callable[[], float] = time.time) -> Trail:
        """Open (or create) the trail and its signing key, and resume the chain.

        An existing trail is first checked from the newest checkpoint the checkpoint file
        vouches for to its end: a trail that fails is refused, naming the first bad event,
        rather than signed over. Each start is then recorded and signed.
        """
        _finish_seal(settings.path)
        new, signer = _inspect(settings.path)
        if settings.signing_key.exists() or signer is None:
            key = _key(settings.signing_key)
        else:
            raise TrailError(
                f"{settings.signing_key}: no such signing key, and {settings.path} was signed"
                f" by key {signer}; restore that key or start a new trail"
            )
        fingerprint = keys.fingerprint(key.public_key())
        if signer is not None and signer != fingerprint:
            raise TrailError(
                f"{settings.signing_key}: key {fingerprint} is not the key {signer} that"
                f" signed {settings.path}"
            )
        keys.ensure_public(settings.public_key, key)
        if new:
            if settings.checkpoint_file.exists():
                raise TrailError(
                    f"{settings.path}: no trail, but {settings.checkpoint_file} vouches for"
                    " one: events were cut or the trail was replaced; run witness verify, and"
                    " move the checkpoint file aside only to start a new trail on purpose"
                )
            if segments.sealed(settings.path):
                raise TrailError(
                    f"{settings.path}: no trail, but {segments.directory(settings.path)} holds"
                    " sealed segments of one: the active file was removed; run witness verify,"
                    " and move the segments aside only to start a new trail on purpose"
                )
            conn = _connect(settings)
            trail = cls(
                settings, conn, key, (0, chain.GENESIS), trail_id=secrets.token_hex(16), clock=clock
            )
            trail._create()
            return trail
        walk, unsigned = _resume(settings, key)
        if walk.trail is None:  # its genesis and its starts were all retired
            with db.reading(settings.path) as reader:
                walk.trail = db.trail_id(reader)
        assert walk.trail is not None
        conn = _connect(settings)
        trail = cls(settings, conn, key, (walk.seq, walk.prev), trail_id=walk.trail, clock=clock)
        trail._load_segments(walk.retired)
        trail._reopen(unsigned)
        return trail

    def append(self, type: str, session: str | None, payload: dict[str, Any]) -> dict[str, Any]:
        """Buffer one event; ``payload`` is serialized at commit, so it may still be amended.

        With the backlog full, a command raises TrailFull (the relay refuses it: forwarded,
        it would be unrecorded); any other event is dropped, and the loss recorded.
        """
        valid = self._valid
        if type not in valid or (session is not None and session not in valid):
            self._check(type, session)
        ts = int(self._clock() * 1_000_000)
        if len(self._pending) >= self.max_backlog:
            if type == "command":
                raise TrailFull(
                    f"{self._settings.path}: the backlog of {self.max_backlog} events is full"
                    " (the trail cannot commit); the command was not recorded"
                )
            self._drop(ts, type)
        else:
            self._pending.append((ts, type, session, payload))
        return payload

    def _check(self, type: str, session: str | None) -> None:
        """Validate a type or session seen for the first time (each one once, not per event)."""
        if not chain.valid_field(type) or (session is not None and not chain.valid_field(session)):
            raise ValueError(f"bad event type {type!r} or session {session!r}")
        if len(self._valid) > 100_000:
            self._valid.clear()
        self._valid.add(type)
        if session is not None:
            self._valid.add(session)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def head(self) -> tuple[int, str]:
        """The last committed (seq, hash)."""
        return self._seq, self._hash

    @property
    def durability(self) -> str:
        return self._settings.durability

    def commit(self) -> None:
        """Write every buffered event in one transaction, with a checkpoint if one is due.

        On failure nothing is written, the buffer is kept for the next commit to retry, and
        TrailWriteError says why.
        """
        batch = self.stage()
        if batch is not None:
            self.write(batch)
            self.settle(batch)

    def stage(self) -> Batch | None:
        """Chain and hash everything pending (and sign, if a checkpoint is due) without
        writing it; None when there is nothing to write."""
        if self._conn is None:
            raise TrailWriteError(f"{self._settings.path}: the trail is closed")
        if self._lost is not None:
            raise TrailLost(self._lost)
        pending = self._pending
        n = len(pending)
        now = self._clock()
        dropped = sum(self._dropped.values()) if self._dropped else 0
        sealed = self._sealed
        retire = sealed[0] if sealed and self._retired < sealed[0].last <= self.retirable else None
        uncovered = self._uncovered + n + (1 if dropped else 0) + (retire is not None)
        due = uncovered > 0 and (
            self._force
            or uncovered >= self._checkpoint_events
            or now - self._checkpointed_at >= self._checkpoint_seconds
        )
        if not (n or due or dropped or retire):
            return None
        rows: list[Row] = []
        add = rows.append
        text_of = chain.payload_text
        hash_of = chain.event_hash
        seq, prev = self._seq, self._hash
        # The hot loop: one encode, one sha256 and one tuple per event.
        starts: list[tuple[str | None, int]] = []
        ends: list[tuple[int, str | None]] = []
        for ts, type, session, payload in itertools.islice(pending, n):
            seq += 1
            text = text_of(payload)
            digest = hash_of(prev, seq, ts, type, session, text)
            add((seq, ts, type, session, text, prev, digest))
            prev = digest
            if type == "session_start":
                starts.append((session, seq))
            elif type == "session_end":
                ends.append((seq, session))
        stamp = int(now * 1_000_000)
        if dropped:
            seq += 1
            prev = self._add(rows, seq, prev, ts=stamp, type="error", payload=self._drop_notice())
        if retire is not None:
            seq += 1
            prev = self._add(
                rows, seq, prev, ts=stamp, type=chain.TRAIL, payload=self._segment("retire", retire)
            )
        batch = Batch(
            taken=n,
            rows=rows,
            starts=starts,
            ends=ends,
            seq=seq,
            hash=prev,
            uncovered=uncovered,
            now=now,
            dropped=dropped,
        )
        if retire is not None:
            batch.retire, batch.retire_seq = retire, seq
        if due:
            signed = Checkpoint.sign(self._key, self._fingerprint, seq, prev)
            batch.seq += 1
            batch.hash = self._add(
                rows, batch.seq, prev, ts=stamp, type=chain.CHECKPOINT, payload=signed.as_dict()
            )
            batch.head = Head.sign(self._key, self._fingerprint, batch.seq, batch.hash)
            batch.uncovered = 0
        # The files are checked (and the WAL copied into the database) at every timed
        # checkpoint, so within a second, and every examine_commits commits, which keeps
        # the WAL about as small as SQLite's own copying would.
        batch.examine = self._force or self._unexamined + 1 >= self._examine_commits
        return batch

    def write(self, batch: Batch, *, prologue: str = "") -> None:
        """Commit a staged batch (``prologue``: statements run first, in the transaction),
        then publish its signed head. Raises TrailWriteError when nothing was committed."""
        conn = self._conn
        if conn is None:
            raise TrailWriteError(f"{self._settings.path}: the trail is closed")
        rows = batch.rows
        try:
            cursor = conn.cursor()  # one cursor, where each conn.execute would make its own
            if prologue:
                cursor.executescript("BEGIN IMMEDIATE;" + prologue)
            else:
                cursor.execute("BEGIN IMMEDIATE")
            cursor.executemany(_INSERT, rows)
            if batch.starts:
                cursor.executemany(_SESSION_START, batch.starts)
            if batch.ends:
                cursor.executemany(_SESSION_END, batch.ends)
            if batch.retire is not None:
                cursor.execute(_RETIRED, (str(batch.retire_seq),))
            cursor.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise TrailWriteError(
                f"{self._settings.path}: cannot commit {len(rows)} events"
                f" ({len(self._pending)} kept to retry): {exc}"
            ) from exc
        if batch.head is not None:
            self._publish(batch)
        if batch.examine:
            batch.lost = self._examine(conn, batch)
        sealed = self._sealed
        if batch.retire is not None:
            self._delete(batch.retire, batch)
        elif batch.head is not None and sealed and sealed[0].last <= self._retired:
            self._delete(sealed[0], batch)  # retired, but its file could not be deleted
        if batch.head is not None and batch.lost is None and self._seal_due(batch.now):
            self._seal(conn, batch)

    def settle(self, batch: Batch) -> None:
        """Account for a written batch: the head moves on, its events leave the buffer.

        Raises TrailLost when the batch was committed where no reader will find it: the
        relay must not forward what it holds, and nothing more is committed.
        """
        del self._pending[: batch.taken]
        self._seq, self._hash = batch.seq, batch.hash
        if batch.retire is not None:
            self._retired = batch.retire.last
        if batch.deleted is not None:
            self._sealed.remove(batch.deleted)
            self._last_hashes.pop(batch.deleted.last, None)
        if batch.sealed is not None:
            segment, last_hash = batch.sealed
            self._sealed.append(segment)
            self._last_hashes[segment.last] = last_hash
            self._first = segment.last + 1
            self.append(chain.TRAIL, None, self._segment("seal", segment))
        self._unexamined = 0 if batch.examine else self._unexamined + 1
        if batch.dropped:
            self._forget_drops(batch.dropped)
        if batch.head is None:
            self._uncovered = batch.uncovered
        else:
            self._uncovered = 0
            self._checkpointed_at = batch.now
            self._force = False
            if self.on_checkpoint is not None and batch.lost is None:
                self.on_checkpoint()
        for problem in batch.problems:  # rarely any
            self.append("error", None, {"where": "trail", "message": problem})
        if batch.lost is not None:
            self._lost = batch.lost
            raise TrailLost(batch.lost)

    def checkpoint(self) -> None:
        """Sign everything committed or pending now (if anything is unsigned), and commit."""
        self.request_checkpoint()
        self.commit()

    def request_checkpoint(self) -> None:
        """Make the next commit sign, if anything is unsigned by then."""
        self._force = True

    def close(self) -> None:
        """Checkpoint, commit and close. Safe to call twice.

        If that last commit fails the connection is closed anyway, and the error says how
        many events were lost. A trail whose files were lost under it raises TrailLost.
        """
        conn = self._conn
        if conn is None:
            return
        if self._lost is not None:
            self._close_lost(conn)
            return
        try:
            self.checkpoint()
            if self._pending:  # what that commit left to record: the segment it sealed
                self.checkpoint()
        except TrailWriteError as exc:
            lost = len(self._pending)
            raise TrailWriteError(f"{exc}; closing anyway, {lost} events lost") from exc
        finally:
            self._conn = None
            conn.close()

    # --- helpers -------------------------------------------------------------------------

    def _create(self) -> None:
        """Write the schema, the genesis and the checkpoint that signs it in one transaction,
        then the checkpoint file: a trail never exists without its signed genesis."""
        settings = self._settings
        self.append("trail", None, self._describe("create"))
        self.request_checkpoint()
        batch = self.stage()
        assert batch is not None and batch.head is not None
        meta = ", ".join(
            f"('{k}', '{v}')"
            for k, v in (
                ("format", db.FORMAT),
                ("key", self._fingerprint),
                ("created", int(batch.now)),
                ("trail", self.id),
            )
        )
        try:
            self.write(batch, prologue=db.SCHEMA + f"INSERT INTO meta (key, value) VALUES {meta};")
        except TrailWriteError as exc:
            self._abandon()
            raise TrailError(f"{settings.path}: cannot create the trail: {exc}") from None
        if batch.problems:
            self._abandon()
            raise TrailError(f"{settings.path}: cannot create the trail: {batch.problems[0]}")
        self.settle(batch)

    def _reopen(self, unsigned: int) -> None:
        """Record this start, with what it found unsigned, and sign it with everything before.

        Left pending (for the relay's first commit to retry) if the store fails now.
        """
        description = self._describe("open")
        description.update({"after": self._seq, "unsigned": unsigned})
        self._started = self._seq + 1
        self.append("trail", None, description)
        with contextlib.suppress(TrailWriteError):
            self.checkpoint()

    def _describe(self, action: str) -> dict[str, Any]:
        settings = self._settings
        return {
            "action": action,
            "trail": self.id,
            "key": self._fingerprint,
            "format": db.FORMAT,
            "checkpoint_events": settings.checkpoint_events,
            "checkpoint_seconds": settings.checkpoint_seconds,
            "durability": settings.durability,
        }

    def _segment(self, action: str, segment: Segment) -> dict[str, Any]:
        """The trail event that records sealing or retiring ``segment``."""
        description = self._describe(action)
        description.update(
            {
                "segment": segment.path.name,
                "first": segment.first,
                "last": segment.last,
                "hash": self._last_hashes[segment.last],
            }
        )
        if action == "retire":
            description["held_by"] = self._settings.retire
        return description

    def _load_segments(self, retired: int) -> None:
        """Take stock of the sealed segments before the active file, finishing any retirement
        a crash cut short (its record is committed; only the file was left)."""
        path = self._settings.path
        with db.reading(path, check=False) as conn:
            meta = db.meta(conn)
        self._first = int(meta.get("first", "1"))
        self._retired = retired
        for segment in segments.sealed(path):
            if segment.last <= retired:
                try:
                    segment.path.unlink()
                    continue
                except FileNotFoundError:
                    continue
                except OSError:
                    pass  # kept as retired: its deletion is tried again at each checkpoint
            if segment.last < self._first:
                self._sealed.append(segment)
                self._last_hashes[segment.last] = db.segment_ends(segment)[1]
        leftover = self._sealed and self._sealed[0].last <= retired
        expected = self._sealed[0].first if leftover else retired + 1
        for segment in [*self._sealed, Segment(self._first, self._first, path)]:
            if segment.first != expected:
                raise TrailError(
                    f"{path}: FAULT at event {expected}: the sealed segments in"
                    f" {segments.directory(path)} do not run on to {path.name}: events"
                    f" {expected} to {segment.first - 1} are missing, or overlap; the recorder"
                    " extends no trail it cannot vouch for: run witness verify"
                )
            expected = segment.last + 1

    def _seal_due(self, now: float) -> bool:
        if (
            not self._segment_bytes
            or len(self._sealed) >= segments.MAX_SEALED
            or now < self._seal_after
        ):
            return False
        # The database alone: the WAL is copied into it within a second, or every
        # examine_commits commits, and a sealed segment is the database.
        try:
            return os.stat(self._settings.path).st_size >= self._segment_bytes
        except OSError:
            return False

    def _seal(self, conn: sqlite3.Connection, batch: Batch) -> None:
        """Seal the active file, which ends with the batch's checkpoint, and go on in a new
        one. What fails before the active file moves leaves it active (noted in the batch);
        a failure after that, which cannot be undone, loses the trail (``batch.lost``)."""
        settings = self._settings
        path = settings.path
        segment = Segment(self._first, batch.seq, segments.path_of(path, self._first, batch.seq))
        try:
            # Every frame of the WAL copied into the database, without waiting on readers
            # (PASSIVE never waits): one still reading an old snapshot defers the seal.
            (_, wal, copied) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if copied != wal:
                raise OSError(0, "a reader holds an old snapshot of it")
            self._prepare_next(conn, batch)
        except (OSError, sqlite3.Error) as exc:
            with contextlib.suppress(FileNotFoundError):
                segments.next_file(path).unlink()
            self._seal_after = batch.now + SEAL_RETRY_SECONDS
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            message = f"cannot seal {path} yet (it stays active, and is tried again): {why}"
            if message != self._unsealed:  # once, not at every checkpoint
                batch.problems.append(message)
            self._unsealed = message
            return
        self._unsealed = None
        conn.close()
        self._conn = None
        try:
            # The database holds every frame of the WAL: its WAL and index go with the old
            # file (readers still holding them keep them), never to the new one.
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    path.with_name(path.name + suffix).unlink()
            files.private_dir(segment.path.parent)
            os.rename(path, segment.path)
            os.chmod(segment.path, 0o400)
            segments.sync_directory(segment.path.parent)
            os.rename(segments.next_file(path), path)
            segments.sync_directory(path.parent)
            self._conn = _connect(settings)
        except (OSError, TrailError) as exc:
            batch.lost = f"{path}: sealing failed half way, and the trail cannot go on: {exc}"
            return
        self._files = None
        batch.sealed = (segment, batch.hash)

    def _prepare_next(self, conn: sqlite3.Connection, batch: Batch) -> None:
        """Make the next active file: the schema, the meta, and the sessions still open (so
        that their ends are recorded beside them), in one transaction. It is made in
        SQLite's rollback mode, so that no WAL is left under its temporary name."""
        nxt = segments.next_file(self._settings.path)
        with contextlib.suppress(FileNotFoundError):
            nxt.unlink()
        os.close(os.open(nxt, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        meta = {
            "format": db.FORMAT,
            "key": self._fingerprint,
            "created": str(int(batch.now)),
            "trail": self.id,
            "first": str(batch.seq + 1),
        }
        meta.update(
            (str(k), str(v))
            for k, v in conn.execute("SELECT key, value FROM meta WHERE key = 'retired'")
        )
        open_sessions = conn.execute(
            "SELECT id, start_seq FROM sessions WHERE end_seq IS NULL AND start_seq >= ?",
            (self._started,),
        ).fetchall()
        new = sqlite3.connect(nxt, isolation_level=None)
        try:
            sync = "FULL" if self._settings.durability == "power" else "OFF"
            new.executescript(f"PRAGMA synchronous = {sync}; BEGIN;" + db.SCHEMA)
            new.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
            new.executemany(_SESSION_START, open_sessions)
            new.execute("COMMIT")
        finally:
            new.close()

    def _delete(self, segment: Segment, batch: Batch) -> None:
        """Delete a retired segment once its record is committed. A crash in between leaves
        it for the next start to delete; a failure, for the next checkpoint to try again
        (no later segment is retired meanwhile)."""
        try:
            segment.path.unlink()
            segments.sync_directory(segment.path.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            message = f"cannot delete the retired segment {segment.path}: {exc.strerror}"
            if message != self._undeleted:
                batch.problems.append(message)
            self._undeleted = message
            return
        self._undeleted = None
        batch.deleted = segment

    def _examine(self, conn: sqlite3.Connection, batch: Batch) -> str | None:
        """After a commit: why the events this writer committed are not where a new reader
        looks (None: they are, and the WAL is copied into the database).

        SQLite keeps writing to the files it opened: a deleted or replaced WAL or database
        takes every later commit out of sight, and a truncated WAL loses the earlier ones,
        while the writer sees nothing wrong.
        """
        path = self._settings.path
        wal = path.with_name(path.name + "-wal")
        try:
            found = (_file_id(path), _file_id(wal))
        except FileNotFoundError as exc:
            return f"{exc.filename} was deleted under the recorder"
        if self._files is None:
            self._files = found
        elif found != self._files:
            replaced = path if found[0] != self._files[0] else wal
            return f"{replaced} was replaced under the recorder"
        try:
            erased = walcheck.gap(wal)
        except OSError as exc:
            erased = f"{wal} cannot be read: {exc.strerror}"
        if erased is not None:
            self._damaged = True
            return f"{erased}: it was truncated or overwritten under the recorder"
        try:
            last = _newest(path)
            seen = "nothing" if last is None else f"event {last[0]}"
        except sqlite3.Error as exc:
            last, seen = None, f"an error ({exc})"
        if last is None or (last[0], last[1]) != (batch.seq, batch.hash):
            self._damaged = True
            return (
                f"a new reader of {path} finds {seen} at its end, not event {batch.seq} just"
                f" committed: {wal} was truncated or overwritten under the recorder"
            )
        # Only now, with the WAL known good, is it copied into the database (automatic
        # checkpoints are off): a damaged WAL never overwrites good pages.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return None

    def _close_lost(self, conn: sqlite3.Connection) -> None:
        reason = self._lost
        assert reason is not None
        self._conn = None
        if self._damaged:
            _keep_open(conn)
            raise TrailLost(
                f"{reason}; the trail is left open until the recorder exits, so that SQLite"
                " does not copy the damaged WAL over the database"
            )
        # The files this connection holds are whole, only out of sight: a last commit there
        # says what happened, and closing copies it all into the database it opened.
        self._conn, self._lost = conn, None
        self.append(
            "error",
            None,
            {"where": "trail", "message": f"{reason}; every command was refused from then on"},
        )
        with contextlib.suppress(TrailWriteError):
            self.checkpoint()
        self._conn = None
        conn.close()
        raise TrailLost(reason)

    def _abandon(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @staticmethod
    def _add(rows: list[Row], seq: int, prev: str, *, ts: int, type: str, payload: Any) -> str:
        text = chain.payload_text(payload)
        digest = chain.event_hash(prev, seq, ts, type, None, text)
        rows.append((seq, ts, type, None, text, prev, digest))
        return digest

    def _drop(self, ts: int, type: str) -> None:
        # The backlog only grows while commits fail; keeping the oldest events keeps the
        # story contiguous up to the failure.
        if not self._dropped:
            self._dropped_ts = (ts, ts)
        self._dropped[type] = self._dropped.get(type, 0) + 1
        self._dropped_ts = (self._dropped_ts[0], ts)

    def _forget_drops(self, accounted: int) -> None:
        """Forget the drops a written notice accounts for (later ones wait for the next)."""
        if sum(self._dropped.values()) == accounted:
            self._dropped = {}
            return
        for type in list(self._dropped):
            take = min(accounted, self._dropped[type])
            accounted -= take
            self._dropped[type] -= take
            if not self._dropped[type]:
                del self._dropped[type]

    def _drop_notice(self) -> dict[str, Any]:
        count = sum(self._dropped.values())
        return {
            "where": "trail",
            "message": (
                f"the trail could not commit and its backlog of {self.max_backlog} events"
                f" was full: {count} later events were not recorded"
            ),
            "dropped": count,
            "types": dict(self._dropped),
            "first_ts": self._dropped_ts[0],
            "last_ts": self._dropped_ts[1],
        }

    def _publish(self, batch: Batch) -> None:
        """Replace the checkpoint file with the batch's signed head; a failure is noted in the
        batch (and recorded when it settles), never raised: the commit did happen."""
        assert batch.head is not None
        path = self._settings.checkpoint_file
        try:
            write_file(path, batch.head, sync=self._settings.durability == "power")
        except OSError as exc:
            batch.problems.append(f"cannot write {path}: {exc.strerror}")


def _newest(path: Path) -> tuple[int, str] | None:
    """The newest event's (seq, hash) as a new read-only connection finds it (none of the
    checks of :func:`db.reading`: the writer has just checked the files itself)."""
    reader = sqlite3.connect(db.uri(path, mode="ro"), uri=True)
    try:
        row = reader.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        reader.close()
    return None if row is None else (int(row[0]), str(row[1]))


def _finish_seal(path: Path) -> None:
    """Finish or undo a seal that a crash cut short: the next file takes the trail's name
    if the active file had already moved into the sealed segments, else it goes."""
    nxt = segments.next_file(path)
    if not nxt.exists():
        return
    try:
        if path.exists():
            nxt.unlink()
        else:
            os.rename(nxt, path)
            segments.sync_directory(path.parent)
    except OSError as exc:
        raise TrailError(f"{nxt}: cannot finish sealing the trail: {exc.strerror}") from None


def _file_id(path: Path) -> tuple[int, int]:
    found = os.stat(path)
    return found.st_dev, found.st_ino


def _keep_open(conn: sqlite3.Connection) -> None:
    """Never close ``conn``, not even when the process exits.

    The last connection to close copies the WAL into the database. With a truncated WAL that
    copies zeroed pages over good ones and destroys the whole trail; left open, the database
    keeps everything checkpointed before the damage, and the checkpoint file shows the rest
    as cut.
    """
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))


def _key(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        return keys.load_private(path)
    return keys.create(path)


def _inspect(path: Path) -> tuple[bool, str | None]:
    """Whether the trail is new (missing, or with nothing in it), and its key if not."""
    try:
        if path.stat().st_size == 0:
            return True, None
    except FileNotFoundError:
        return True, None
    except OSError as exc:
        raise TrailError(f"{path}: cannot read the trail: {exc.strerror}") from None
    with db.reading(path, check=False) as conn:
        try:
            (tables,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError:
            tables = None  # not a database at all: check_format says so
        if tables == 0:  # a creation that failed before its first commit
            return True, None
        db.check_format(conn, path)
        return False, db.meta(conn).get("key")


def _resume(settings: TrailSettings, key: Ed25519PrivateKey) -> tuple[Walk, int]:
    """Check the trail from the newest checkpoint that can be trusted to its end.

    The genesis and its checkpoint are checked first. The checkpoint file then names the
    head a checkpoint left (its signature made by this key): the trail must hold that
    event, and everything after it must chain on from it, every checkpoint there signed.
    Returns the walk and how many events after the last checkpoint no signature covers.
    """
    path, file = settings.path, settings.checkpoint_file
    head = read_file(file) if file.exists() else None
    walk = Walk(key.public_key())
    with db.reading(path) as conn:
        conn.execute("BEGIN")
        try:
            begin(walk, conn)
            if not walk.retired:
                walk.run(conn, until=2)
                if walk.seq < 2:
                    raise Fault(walk.seq + 1, "the trail ends before the checkpoint of its genesis")
            if head is None:
                if (
                    walk.retired or db.last_seq(conn) != 2
                ):  # only a creation cut short leaves a trail with no file
                    raise Fault(
                        None,
                        f"{file}: no such checkpoint file, although the trail holds events"
                        " signed after its genesis: it was removed",
                    )
            else:
                if head.key != walk.fingerprint or not head.valid(walk.public):
                    raise Fault(None, f"{file} was not signed by this trail's key")
                row = conn.execute("SELECT hash FROM events WHERE seq = ?", (head.seq,)).fetchone()
                if row is None or row[0] != head.hash:
                    raise Fault(
                        head.seq,
                        f"the trail does not hold event {head.seq} as signed in {file}: events"
                        " were cut or the trail was replaced",
                    )
                if head.seq > walk.seq:
                    walk.start_after(head.seq, head.hash)
            walk.run(conn)
            unsigned = walk.tail(conn)[0]
        except Fault as fault:
            at = "" if fault.seq is None else f" at event {fault.seq}"
            raise TrailError(
                f"{path}: FAULT{at}: {fault.reason}; the recorder extends no trail it cannot"
                " vouch for: run witness verify, and move the trail and its checkpoint file"
                " aside only to start a new trail on purpose"
            ) from None
        finally:
            conn.execute("ROLLBACK")
    return walk, unsigned


def _connect(settings: TrailSettings) -> sqlite3.Connection:
    path = settings.path
    files.private_dir(path.parent)
    try:
        with files.private_umask():
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                _prepare(conn, settings)
            except BaseException:
                conn.close()
                raise
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path.with_name(path.name + suffix), 0o600)
    except sqlite3.Error as exc:
        raise TrailError(f"{path}: cannot open the trail for writing: {exc}") from None
    except OSError as exc:
        raise TrailError(f"{path}: cannot open the trail for writing: {exc.strerror}") from None
    return conn


def _prepare(conn: sqlite3.Connection, settings: TrailSettings) -> None:
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode})")
    # "process": a committed transaction is in the kernel's page cache, which survives the
    # recorder being killed; in WAL mode that needs no fsync at all (OFF), and NORMAL would
    # add fsyncs at every WAL checkpoint for no gain against that threat. "power": FULL
    # fsyncs the WAL at every commit.
    sync = "FULL" if settings.durability == "power" else "OFF"
    conn.execute(f"PRAGMA synchronous = {sync}")
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
    # The WAL is copied into the database only after a check finds it whole
    # (Trail._examine), never at a size SQLite picks.
    conn.execute("PRAGMA wal_autocheckpoint = 0")
