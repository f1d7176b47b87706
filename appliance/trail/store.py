"""The recorder's side of the trail: buffered appends, group commits, signed checkpoints."""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.config import TrailSettings
from appliance.trail import chain, db, files, keys
from appliance.trail.checkpoint import Checkpoint, read_file, write_file
from appliance.trail.db import TrailError, TrailFull, TrailWriteError

__all__ = ["Trail", "TrailError", "TrailFull", "TrailWriteError"]

MAX_BACKLOG = 1_000_000
# Only a foreign writer can hold the lock (readers never block a WAL writer), and the relay
# commits on its event loop: fail fast and let it retry rather than freeze every session.
BUSY_TIMEOUT_MS = 200

_INSERT = (
    "INSERT INTO events (seq, ts, type, session, payload, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SESSION_START = "INSERT OR IGNORE INTO sessions (id, start_seq) VALUES (?, ?)"
_SESSION_END = "UPDATE sessions SET end_seq = ? WHERE id = ? AND end_seq IS NULL"
Row = tuple[int, int, str, str | None, str, str, str]


@dataclass(slots=True)
class _Head:
    """Where an existing trail left off."""

    seq: int = 0
    hash: str = chain.GENESIS
    uncovered: int = 0
    checkpoint_ts: int | None = None
    key: str | None = None
    new: bool = True


class Trail:
    """One writer's handle on the trail.

    ``append`` only buffers; ``commit`` writes everything buffered in one transaction.
    It is not thread-safe: the relay uses it from its event loop only.
    """

    max_backlog: int = MAX_BACKLOG

    def __init__(
        self,
        settings: TrailSettings,
        conn: sqlite3.Connection,
        key: Ed25519PrivateKey,
        head: _Head,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._conn: sqlite3.Connection | None = conn
        self._key = key
        self._fingerprint = keys.fingerprint(key.public_key())
        self._clock = clock
        self._seq = head.seq
        self._hash = head.hash
        self._uncovered = head.uncovered
        self._checkpointed_at = (
            head.checkpoint_ts / 1e6 if head.checkpoint_ts is not None else clock()
        )
        self._force = False
        self._valid: set[str] = set()
        self._pending: list[tuple[int, str, str | None, dict[str, Any]]] = []
        self._dropped: dict[str, int] = {}
        self._dropped_ts = (0, 0)

    @classmethod
    def open(cls, settings: TrailSettings, *, clock: Callable[[], float] = time.time) -> Trail:
        """Open (or create) the trail and its signing key, and resume the chain."""
        head = _inspect(settings.path)
        if settings.signing_key.exists() or head.key is None:
            key = _key(settings.signing_key)
        else:
            raise TrailError(
                f"{settings.signing_key}: no such signing key, and {settings.path} was signed"
                f" by key {head.key}; restore that key or start a new trail"
            )
        fingerprint = keys.fingerprint(key.public_key())
        if head.key is not None and head.key != fingerprint:
            raise TrailError(
                f"{settings.signing_key}: key {fingerprint} is not the key {head.key} that"
                f" signed {settings.path}"
            )
        keys.ensure_public(settings.public_key, key)
        _check_checkpoint_file(settings, head)
        conn = _connect(settings, head, fingerprint)
        return cls(settings, conn, key, head, clock)

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

    def commit(self) -> None:
        """Write every buffered event in one transaction, with a checkpoint if one is due.

        On failure nothing is written, the buffer is kept for the next commit to retry, and
        TrailWriteError says why.
        """
        conn = self._conn
        if conn is None:
            raise TrailWriteError(f"{self._settings.path}: the trail is closed")
        pending = self._pending
        n = len(pending)
        now = self._clock()
        uncovered = self._uncovered + n + (1 if self._dropped else 0)
        due = uncovered > 0 and (
            self._force
            or uncovered >= self._settings.checkpoint_events
            or now - self._checkpointed_at >= self._settings.checkpoint_seconds
        )
        if not (n or due or self._dropped):
            return
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
        if self._dropped:
            seq += 1
            prev = self._add(rows, seq, prev, ts=stamp, type="error", payload=self._drop_notice())
        signed = None
        if due:
            signed = Checkpoint.sign(self._key, self._fingerprint, seq, prev)
            seq += 1
            prev = self._add(
                rows, seq, prev, ts=stamp, type=chain.CHECKPOINT, payload=signed.as_dict()
            )
        try:
            cursor = conn.cursor()  # one cursor, where each conn.execute would make its own
            cursor.execute("BEGIN IMMEDIATE")
            cursor.executemany(_INSERT, rows)
            if starts:
                cursor.executemany(_SESSION_START, starts)
            if ends:
                cursor.executemany(_SESSION_END, ends)
            cursor.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise TrailWriteError(
                f"{self._settings.path}: cannot commit {len(rows)} events"
                f" ({len(pending)} kept to retry): {exc}"
            ) from exc
        del pending[:n]
        self._seq, self._hash = seq, prev
        self._dropped = {}
        self._force = False
        if signed is None:
            self._uncovered = uncovered
            return
        self._uncovered = 0
        self._checkpointed_at = now
        self._publish(signed)

    def checkpoint(self) -> None:
        """Sign everything committed or pending now (if anything is unsigned), and commit."""
        self._force = True
        self.commit()

    def close(self) -> None:
        """Checkpoint, commit and close. Safe to call twice.

        If that last commit fails the connection is closed anyway, and the error says how
        many events were lost.
        """
        conn = self._conn
        if conn is None:
            return
        try:
            self.checkpoint()
        except TrailWriteError as exc:
            lost = len(self._pending)
            raise TrailWriteError(f"{exc}; closing anyway, {lost} events lost") from exc
        finally:
            self._conn = None
            conn.close()

    # --- helpers -------------------------------------------------------------------------

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

    def _publish(self, signed: Checkpoint) -> None:
        """Copy the checkpoint outside the trail; a failure is recorded, never raised.

        Raising here would tell the relay the commit failed when it did not.
        """
        try:
            write_file(
                self._settings.checkpoint_file,
                signed,
                sync=self._settings.durability == "power",
            )
        except OSError as exc:
            self.append(
                "error",
                None,
                {
                    "where": "trail",
                    "message": f"cannot write {self._settings.checkpoint_file}: {exc.strerror}",
                },
            )


def _key(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        return keys.load_private(path)
    return keys.create(path)


def _inspect(path: Path) -> _Head:
    """Read where an existing trail left off (read-only: nothing is changed yet)."""
    try:
        if path.stat().st_size == 0:
            return _Head()
    except FileNotFoundError:
        return _Head()
    except OSError as exc:
        raise TrailError(f"{path}: cannot read the trail: {exc.strerror}") from None
    with db.reading(path) as conn:
        head = _Head(new=False, key=db.meta(conn).get("key"))
        conn.execute("BEGIN")
        last = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        if last is not None:
            head.seq, head.hash = int(last[0]), str(last[1])
        signed = conn.execute(
            "SELECT seq, ts FROM events WHERE type = ? ORDER BY seq DESC LIMIT 1",
            (chain.CHECKPOINT,),
        ).fetchone()
        after = 0
        if signed is not None:
            after, head.checkpoint_ts = int(signed[0]), int(signed[1])
        (head.uncovered,) = conn.execute(
            "SELECT count(*) FROM events WHERE seq > ? AND type != ?", (after, chain.CHECKPOINT)
        ).fetchone()
        conn.execute("COMMIT")
    return head


def _check_checkpoint_file(settings: TrailSettings, head: _Head) -> None:
    """Refuse to extend a trail that lacks what its last published checkpoint covered.

    Carrying on would overwrite the checkpoint file, the one thing that shows the tail was
    cut (or the trail replaced).
    """
    path = settings.checkpoint_file
    if not path.exists():
        return
    published = read_file(path)
    found = None
    if not head.new and published.seq <= head.seq:
        with db.reading(settings.path) as conn:
            row = conn.execute("SELECT hash FROM events WHERE seq = ?", (published.seq,)).fetchone()
            found = None if row is None else row[0]
    if found != published.hash:
        raise TrailError(
            f"{settings.path} does not hold event {published.seq} as signed in {path}:"
            " events were cut or the trail was replaced; run witness verify, and move the"
            " checkpoint file aside only to start a new trail on purpose"
        )


def _connect(settings: TrailSettings, head: _Head, fingerprint: str) -> sqlite3.Connection:
    path = settings.path
    files.private_dir(path.parent)
    try:
        with files.private_umask():
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                _prepare(conn, settings, head, fingerprint)
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


def _prepare(
    conn: sqlite3.Connection, settings: TrailSettings, head: _Head, fingerprint: str
) -> None:
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
    if not head.new:
        return
    conn.executescript("BEGIN IMMEDIATE;" + db.SCHEMA)
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [("format", db.FORMAT), ("key", fingerprint), ("created", str(int(time.time())))],
    )
    conn.execute("COMMIT")
