"""The trail's SQLite schema, its errors, and opening a trail strictly read-only."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from appliance.trail import segments

# 2: a trail starts with its signed genesis, and the checkpoint file holds a signed head.
FORMAT = "2"

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,        -- unix time, microseconds
    type TEXT NOT NULL,
    session TEXT,
    payload TEXT NOT NULL,      -- canonical JSON
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
-- Where each session's events lie, for operators' queries. It is derived from the chain,
-- written in the same transaction as the events it points at, and never read by verify.
-- (An index on events.session would cost every commit several B-tree pages; this costs
-- one row per session.)
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    start_seq INTEGER NOT NULL,
    end_seq INTEGER             -- NULL while the session is open
) WITHOUT ROWID;
-- Defence in depth only: anyone who can write the file can drop these. witness verify is
-- the check that matters.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the trail is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the trail is append-only'); END;
"""


class TrailError(Exception):
    """The trail cannot be opened or read: missing, not a trail, unreadable, wrong key."""


class TrailWriteError(Exception):
    """The store could not commit; the message says why (disk full, permission, corrupt)."""


class TrailLost(TrailWriteError):
    """Events this writer committed are not where a new reader finds them: its database or
    WAL file was deleted, replaced or truncated. It commits nothing more."""


class TrailFull(TrailWriteError):
    """A command found the backlog full: it cannot be kept, so it must not be forwarded."""


def uri(path: Path, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{quote(str(path.absolute()))}?{query}"


@contextlib.contextmanager
def reading(path: Path, *, check: bool = True) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the trail at ``path`` that creates and changes nothing.

    SQLite's ``mode=ro`` still creates ``-wal`` and ``-shm`` beside a WAL database, so:
    with no ``-wal`` (no recorder running, cleanly closed) the file is opened immutable;
    with a ``-wal`` and its ``-shm`` (recorder running, or killed) they are shared as any
    reader would; with a ``-wal`` but no ``-shm`` (copied off a host) both are copied to a
    private directory and read there. sqlite3 errors inside become TrailError. With
    ``check`` (the default) a database that is not a trail in a format we read is refused.

    The sealed segments before the active file are attached, and ``events`` and
    ``sessions`` are read across them all (see :func:`join_sealed`).
    """
    if not path.exists() and segments.next_file(path).exists():
        # A segment is being sealed: its successor takes the name in a moment.
        time.sleep(0.05)
    if not path.exists():
        raise TrailError(f"{path}: no such trail file")
    if not path.is_file():
        raise TrailError(f"{path}: not a file")
    wal = path.with_name(path.name + "-wal")
    shm = path.with_name(path.name + "-shm")
    with contextlib.ExitStack() as stack:
        try:
            # SQLite reports an unreadable file only as "unable to open"; ask the OS why.
            path.open("rb").close()
            if not wal.exists():
                conn = sqlite3.connect(uri(path, mode="ro", immutable="1"), uri=True)
            elif shm.exists():
                conn = sqlite3.connect(uri(path, mode="ro"), uri=True)
            else:
                private = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                shutil.copyfile(path, private / path.name)
                shutil.copyfile(wal, private / wal.name)
                conn = sqlite3.connect(uri(private / path.name, mode="ro"), uri=True)
            stack.callback(conn.close)
            if check:
                check_format(conn, path)
                join_sealed(conn, path)
            conn.execute("PRAGMA query_only = 1")
        except sqlite3.Error as exc:
            raise TrailError(f"{path}: cannot read the trail: {exc}") from None
        except OSError as exc:
            raise TrailError(f"{path}: cannot read the trail: {exc.strerror}") from None
        try:
            yield conn
        except sqlite3.Error as exc:
            raise TrailError(f"{path}: cannot read the trail: {exc}") from None


_COLUMNS = "seq, ts, type, session, payload, prev_hash, hash"


def join_sealed(conn: sqlite3.Connection, path: Path) -> None:
    """Attach the sealed segments before the active file ``conn`` reads (which begins at its
    meta ``first``), and shadow ``events`` and ``sessions`` with views across them all.

    A segment sealed after this active file was opened (by a reader that came before the
    rename) starts after ``first`` and is left out: this file holds its events already.
    """
    row = conn.execute("SELECT value FROM meta WHERE key = 'first'").fetchone()
    first = int(row[0]) if row is not None else 1
    before = [s for s in segments.sealed(path) if s.last < first]
    if not before:
        return
    if len(before) > segments.MAX_SEALED:
        raise TrailError(
            f"{path}: {len(before)} sealed segments, more than the {segments.MAX_SEALED} a"
            f" reader can open at once: something other than the recorder sealed them"
        )
    names = []
    for i, segment in enumerate(before):
        try:
            conn.execute(
                f"ATTACH DATABASE ? AS sealed{i}", (uri(segment.path, mode="ro", immutable="1"),)
            )
        except sqlite3.OperationalError:
            if segment.path.exists():
                raise
            continue  # retired as we looked: the trail starts later
        check_format(conn, segment.path, f"sealed{i}")
        names.append(f"sealed{i}")
    names.append("main")
    events = " UNION ALL ".join(f"SELECT {_COLUMNS} FROM {n}.events" for n in names)
    sessions = " UNION ALL ".join(f"SELECT id, start_seq, end_seq FROM {n}.sessions" for n in names)
    conn.execute(f"CREATE TEMP VIEW events AS {events}")
    # A session open across a seal has a row in each file; its end is in the newest.
    conn.execute(
        "CREATE TEMP VIEW sessions AS SELECT id, min(start_seq) AS start_seq,"
        f" max(end_seq) AS end_seq FROM ({sessions}) GROUP BY id"
    )


def check_format(conn: sqlite3.Connection, path: Path, schema: str = "main") -> None:
    """Raise TrailError unless this database is a Witness trail in a format we read."""
    try:
        row = conn.execute(f"SELECT value FROM {schema}.meta WHERE key = 'format'").fetchone()
        conn.execute(f"SELECT {_COLUMNS} FROM {schema}.events LIMIT 0")
    except sqlite3.DatabaseError:
        raise TrailError(f"{path}: not a Witness trail") from None
    if row is None:
        raise TrailError(f"{path}: not a Witness trail (no format version)")
    if row[0] == "1":
        raise TrailError(
            f"{path}: trail format 1 is not supported (expected {FORMAT}): it has no signed"
            " genesis, so nothing shows what was cut from it; move it aside, with its"
            " checkpoint file, and let the recorder start a new trail"
        )
    if row[0] != FORMAT:
        raise TrailError(f"{path}: trail format {row[0]!r} is not supported (expected {FORMAT})")


def meta(conn: sqlite3.Connection) -> dict[str, str]:
    return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}


def trail_id(conn: sqlite3.Connection) -> str | None:
    """The id the trail's genesis names, or (with the genesis retired) the active file's
    meta (not checked here: verify checks it)."""
    row = conn.execute(
        "SELECT json_extract(payload, '$.trail') FROM events WHERE seq = 1"
    ).fetchone()
    if row is None:
        row = conn.execute("SELECT value FROM main.meta WHERE key = 'trail'").fetchone()
    return row[0] if row is not None and isinstance(row[0], str) else None


def last_seq(conn: sqlite3.Connection) -> int:
    """The newest event's seq (0: none). Not max(seq), which reads every row of a view."""
    row = conn.execute("SELECT seq FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    return 0 if row is None else int(row[0])


def segment_ends(segment: segments.Segment) -> tuple[str, str]:
    """The hash a sealed segment's first event follows, and its last event's hash, read as
    every reader reads a segment: immutable, so that no WAL planted beside it counts."""
    try:
        conn = sqlite3.connect(uri(segment.path, mode="ro", immutable="1"), uri=True)
    except sqlite3.Error as exc:
        raise TrailError(f"{segment.path}: cannot read the sealed segment: {exc}") from None
    try:
        with contextlib.closing(conn):
            rows = conn.execute(
                "SELECT prev_hash FROM events WHERE seq = ? UNION ALL"
                " SELECT hash FROM events WHERE seq = ?",
                (segment.first, segment.last),
            ).fetchall()
    except sqlite3.Error as exc:
        raise TrailError(f"{segment.path}: cannot read the sealed segment: {exc}") from None
    if len(rows) != 2:
        raise TrailError(
            f"{segment.path}: the sealed segment does not hold its own first and last events"
        )
    return str(rows[0][0]), str(rows[1][0])


def misnamed(conn: sqlite3.Connection) -> str | None:
    """Why a sealed segment ``conn`` reads does not hold what its name says (None: each
    holds exactly the events its name gives, as the recorder and the couriers take it to)."""
    for _, schema, file in conn.execute("PRAGMA database_list").fetchall():
        if not str(schema).startswith("sealed"):
            continue
        name = Path(file).name
        low = conn.execute(f"SELECT seq FROM {schema}.events ORDER BY seq LIMIT 1").fetchone()
        high = conn.execute(f"SELECT seq FROM {schema}.events ORDER BY seq DESC LIMIT 1").fetchone()
        held = (low[0] if low else None, high[0] if high else None)
        if f"{held[0] or 0:016d}-{held[1] or 0:016d}.db" != name:
            return (
                f"sealed segment {name} holds events {held[0]} to {held[1]}, not those its name"
                " gives: it was renamed or changed"
            )
    return None
