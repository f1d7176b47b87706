"""Following the trail as it is committed: its commands and their results, by seq, read-only.

The reader never writes and never holds a transaction open between polls, so the recorder
commits and copies its WAL as if no one were reading. A trail that no recorder has open is
opened immutable (see :func:`db.reading`), which would not see later commits: when its files
change under it (a recorder starts, the file is replaced) it is opened again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from appliance.trail import db
from appliance.trail.db import TrailError
from appliance.trail.query import Event, identity_of, iso

T = TypeVar("T")

_COLUMNS = "seq, ts, type, session, payload"
_TYPES = "('session_start', 'command', 'result', 'session_end')"
ATTEMPTS = 5
"""Reads in a row that may fail (a reader can meet the writer mid-way) before one is fatal."""
WAITING = 10_000
"""Shown commands of one session whose results are awaited, at most (oldest forgotten first)."""
SESSIONS = 100_000
"""Sessions a tail remembers, at most: those that never ended are forgotten, oldest first."""


class Reader:
    """The trail at ``path``, opened read-only, reopened when its files change under it."""

    def __init__(self, path: Path, *, pause: Callable[[float], None] = time.sleep) -> None:
        self.path = path
        self._pause = pause
        self._stack: contextlib.ExitStack | None = None
        self._conn: sqlite3.Connection | None = None
        self._files: tuple[bool, bool, tuple[int, int] | None] | None = None
        self._trail: str | None = None
        self._opened = False

    def read(self, ask: Callable[[sqlite3.Connection], T]) -> T:
        """``ask`` of the trail as it is now. Once the trail has been opened, a failure to
        open or read it again is retried on a new connection (a reader can meet the writer
        half way, or the file being moved), and only ``ATTEMPTS`` in a row raise TrailError.
        What is wrong with the trail itself (a malformed payload) fails at once."""
        for attempt in range(1, ATTEMPTS + 1):
            last = attempt == ATTEMPTS
            try:
                conn = self._connection()
            except TrailError:
                self.close()
                if last or not self._opened:
                    raise
                self._pause(0.05 * attempt)
                continue
            try:
                return ask(conn)
            except sqlite3.Error as exc:
                self.close()
                if last:
                    raise TrailError(f"{self.path}: cannot read the trail: {exc}") from None
                self._pause(0.05 * attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        stack, self._stack, self._conn = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(sqlite3.Error, TrailError):
                stack.close()

    def _state(self) -> tuple[bool, bool, tuple[int, int] | None]:
        """Whether the WAL and its index exist, and which file the path names."""
        name = self.path.name
        try:
            found = os.stat(self.path)
            file: tuple[int, int] | None = (found.st_dev, found.st_ino)
        except OSError:
            file = None  # moved aside for a moment: go on with the file that is open
        wal = self.path.with_name(name + "-wal").exists()
        return wal, self.path.with_name(name + "-shm").exists(), file

    def _connection(self) -> sqlite3.Connection:
        state = self._state()
        if self._conn is not None and self._files is not None:
            wal, shm, file = self._files
            shared = wal and shm  # a recorder's WAL, read as any reader would: always current
            moved = state[2] is not None and state[2] != file
            if moved or (not shared and state[:2] != (wal, shm)):
                self.close()
        if self._conn is None:
            stack = contextlib.ExitStack()
            try:
                conn = stack.enter_context(db.reading(self.path))
                conn.execute("PRAGMA busy_timeout = 1000")
                trail = db.trail_id(conn)
            except sqlite3.Error as exc:
                stack.close()
                raise TrailError(f"{self.path}: cannot read the trail: {exc}") from None
            except BaseException:
                stack.close()
                raise
            if self._trail is not None and trail != self._trail:
                stack.close()
                raise TrailError(
                    f"{self.path} is now another trail ({trail}, not {self._trail}):"
                    " it was replaced; run witness tail again to follow the new one"
                )
            self._stack, self._conn, self._files, self._trail = stack, conn, state, trail
            self._opened = True
        return self._conn


def events_after(
    conn: sqlite3.Connection, seq: int, *, limit: int, upto: int | None = None
) -> list[Event]:
    """Up to ``limit`` of the events a tail reads (session starts and ends, commands,
    results) after ``seq`` (and up to ``upto``), in order."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE seq > ? AND seq <= ? AND type IN {_TYPES}"
        " ORDER BY seq LIMIT ?",
        (seq, upto if upto is not None else 2**63 - 1, limit),
    ).fetchall()
    return [Event.from_row(row) for row in rows]


def session_start(conn: sqlite3.Connection, session: str) -> dict[str, Any]:
    """The payload of a session's start ({} when the trail does not hold it)."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM sessions x JOIN events s ON s.seq = x.start_seq WHERE x.id = ?",
        (session,),
    ).fetchone()
    return {} if row is None else Event.from_row(row).payload


def matches(identity: dict[str, Any] | None, wanted: str) -> bool:
    """Whether ``wanted`` names the identity: its subject exactly, or its email ignoring case."""
    if identity is None:
        return False
    email = identity.get("email")
    return identity.get("subject") == wanted or (
        isinstance(email, str) and email.casefold() == wanted.casefold()
    )


@dataclass(frozen=True, slots=True)
class Entry:
    """One thing a tail shows: a command as it was committed, or the result that answered one
    it showed; with its session's backend and the identity the command ran under."""

    event: Event
    backend: str | None
    identity: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.event.payload,
            "event": self.event.type,
            "seq": self.event.seq,
            "time": iso(self.event.ts),
            "session": self.event.session,
            "backend": self.backend,
            "identity": self.identity,
        }


class _Session:
    """What a tail keeps of a session: who, where, and which commands await their results."""

    __slots__ = ("backend", "identity", "waiting")

    def __init__(self, start: dict[str, Any]) -> None:
        backend = start.get("backend")
        name = backend.get("name") if isinstance(backend, dict) else None
        self.backend = None if name is None else str(name)
        self.identity = identity_of(start)
        self.waiting: dict[Any, dict[str, Any] | None] = {}  # n -> the command's identity


@dataclass(frozen=True, slots=True)
class Batch:
    """What one read found: the entries to show, the seq read up to, and whether more
    events were already committed after it."""

    entries: list[Entry]
    seq: int
    more: bool


class Tail:
    """The trail's commands that a tail shows (those of an identity, on a backend), with the
    results that answer them, read through ``reader`` in seq order."""

    def __init__(
        self,
        reader: Reader,
        *,
        identity: str | None = None,
        backend: str | None = None,
        batch: int = 1000,
    ) -> None:
        self.reader = reader
        self.identity = identity
        self.backend = backend
        self.batch = batch
        self._sessions: dict[str, _Session] = {}

    def head(self) -> int:
        """The last committed seq."""
        return self.reader.read(db.last_seq)

    def start(self, last: int, count: int) -> int:
        """The seq to read after so that the first entries are the last ``count`` commands
        the filters let through, up to seq ``last``."""
        below = last
        found = 0
        while count > 0 and below > 0:
            page = self.reader.read(functools.partial(_commands_down, seq=below, limit=self.batch))
            for command in page:
                if self.wanted(command) is not None:
                    found += 1
                    if found == count:
                        return command.seq - 1
            if len(page) < self.batch:
                break
            below = page[-1].seq - 1
        return last if count <= 0 else 0

    def read(self, after: int, upto: int | None = None) -> Batch:
        """The entries among the next events after seq ``after`` (up to ``upto``)."""
        events = self.reader.read(
            lambda conn: events_after(conn, after, limit=self.batch, upto=upto)
        )
        seq = events[-1].seq if events else after
        return Batch(list(self.feed(events)), seq, len(events) == self.batch)

    def wanted(self, command: Event) -> Entry | None:
        """The command as an entry, if the filters let it through."""
        session = self._session(command.session)
        payload = command.payload
        identity = identity_of(payload) if "identity" in payload else session.identity
        if self.backend is not None and session.backend != self.backend:
            return None
        if self.identity is not None and not matches(identity, self.identity):
            return None
        return Entry(command, session.backend, identity)

    def feed(self, events: Iterable[Event]) -> Iterator[Entry]:
        """What to show of ``events``, the next ones in seq order."""
        sessions = self._sessions
        for event in events:
            sid = event.session
            if sid is None:
                continue
            if event.type == "session_start":
                self._keep(sid, _Session(event.payload))
            elif event.type == "session_end":
                sessions.pop(sid, None)
            elif event.type == "command":
                entry = self.wanted(event)
                if entry is None:
                    continue
                payload = event.payload
                waiting = sessions[sid].waiting
                if payload.get("kind") != "cancel" and not payload.get("refused"):
                    if len(waiting) >= WAITING:
                        del waiting[next(iter(waiting))]
                    waiting[payload.get("n")] = entry.identity
                yield entry
            elif event.type == "result":
                session = sessions.get(sid)
                n = event.payload.get("n")
                if session is not None and n in session.waiting:
                    yield Entry(event, session.backend, session.waiting.pop(n))

    def _session(self, sid: str | None) -> _Session:
        if sid is None:
            return _Session({})
        found = self._sessions.get(sid)
        if found is None:
            start = self.reader.read(lambda conn: session_start(conn, sid))
            found = self._keep(sid, _Session(start))
        return found

    def _keep(self, sid: str, session: _Session) -> _Session:
        """Remember a session (forgetting the oldest when too many never ended)."""
        if len(self._sessions) >= SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        self._sessions[sid] = session
        return session


def _commands_down(conn: sqlite3.Connection, *, seq: int, limit: int) -> list[Event]:
    """Up to ``limit`` commands at or before ``seq``, newest first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE type = 'command' AND seq <= ?"
        " ORDER BY seq DESC LIMIT ?",
        (seq, limit),
    ).fetchall()
    return [Event.from_row(row) for row in rows]
