"""The central store: every bastion's events, in one PostgreSQL, each trail's chain intact.

A bastion's role may only add rows, and only under its own name (the store fills in the
bastion and the time of arrival); readers (auditors) have a role of their own. The events
table is partitioned by day of the events' own time, so that retention drops whole days;
each drop is recorded, with where every trail's chain stood at the cut, so that the chain
can still be checked from there on. Partitions are made ahead of time by ``witness central
maintain``, run as the store's owner (daily, from a timer): an event for a day with no
partition is refused, stays on its bastion, and is shipped once the partition exists.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from appliance.config import AnchorSettings
from appliance.trail.anchor import ROLES, AnchorError, connect, where

# The roles are cluster-wide, the schema per database. Every statement can be run again.
SCHEMA = """\
-- The Witness central store: every event of every bastion's trail, as its chain holds it.
-- Run this as a superuser, or the database's owner, in the store's database, then
-- `witness central maintain` (as the same role) to make the days' partitions.
BEGIN;
CREATE SCHEMA IF NOT EXISTS witness;
CREATE TABLE IF NOT EXISTS witness.events (
    -- the role that shipped it (the bastion, as it logged in), and the trail's id
    bastion   name    NOT NULL DEFAULT session_user,
    trail     text    NOT NULL CHECK (trail ~ '^[0-9a-f]{32}$'),
    -- the chain's own fields, exactly as the bastion's trail holds them
    seq       bigint  NOT NULL CHECK (seq > 0),
    ts        bigint  NOT NULL,      -- unix time, microseconds (the bastion's clock)
    type      text    NOT NULL,
    session   text,
    payload   text    NOT NULL,      -- canonical JSON, the text the hash covers
    prev_hash text    NOT NULL,
    hash      text    NOT NULL,
    received  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bastion, trail, seq, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX IF NOT EXISTS events_session ON witness.events (session, seq);
-- What retention dropped: one row per trail per dropped day, with the last event of that
-- trail the day held, so that the chain is checked from there on.
CREATE TABLE IF NOT EXISTS witness.retention (
    partition  text        NOT NULL,
    day        date        NOT NULL,
    bastion    name        NOT NULL,
    trail      text        NOT NULL,
    events     bigint      NOT NULL,
    last_seq   bigint      NOT NULL,
    last_hash  text        NOT NULL,
    dropped_at timestamptz NOT NULL DEFAULT now(),
    dropped_by name        NOT NULL DEFAULT session_user,
    PRIMARY KEY (partition, bastion, trail)
);
-- What a bastion may ask of the store about its own trail, though it cannot read it: whether
-- the store holds events first to last whole. Every hash is recomputed from the event's own
-- fields (as `witness verify` does), every link checked, and only counts and the two end
-- hashes are returned, so that the bastion can delete its local copy knowing the store
-- holds exactly what it has.
CREATE OR REPLACE FUNCTION witness.held(p_trail text, p_first bigint, p_last bigint)
RETURNS TABLE (events bigint, distinct_seqs bigint, broken bigint, first_prev text,
               last_hash text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH mine AS (
        SELECT seq, session, prev_hash, hash, lag(hash) OVER (ORDER BY seq) AS before,
               encode(sha256(convert_to(prev_hash || seq || E'\n' || ts || E'\n' || type
                   || E'\n' || coalesce(session, '') || E'\n' || payload, 'UTF8')), 'hex')
                   AS computed
        FROM witness.events
        WHERE bastion = session_user AND trail = p_trail AND seq BETWEEN p_first AND p_last
    )
    SELECT count(*), count(DISTINCT seq),
           -- an empty session hashes as no session does: a row the bastion never made
           count(*) FILTER (WHERE computed <> hash OR before <> prev_hash OR session = ''),
           min(prev_hash) FILTER (WHERE seq = p_first),
           min(hash) FILTER (WHERE seq = p_last)
    FROM mine
$$;
{ROLES}REVOKE ALL ON SCHEMA witness FROM PUBLIC;
REVOKE ALL ON witness.events, witness.retention FROM PUBLIC;
GRANT USAGE ON SCHEMA witness TO witness_bastion, witness_auditor;
-- A bastion adds events and nothing else: it names neither itself nor the time of arrival.
GRANT INSERT (trail, seq, ts, type, session, payload, prev_hash, hash) ON witness.events
    TO witness_bastion;
GRANT SELECT ON witness.events, witness.retention TO witness_auditor;
REVOKE ALL ON FUNCTION witness.held(text, bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION witness.held(text, bigint, bigint) TO witness_bastion;
ALTER TABLE witness.events ENABLE ROW LEVEL SECURITY;
-- session_user, not current_user: SET ROLE cannot make a bastion ship as another.
DROP POLICY IF EXISTS bastion_adds_its_own ON witness.events;
CREATE POLICY bastion_adds_its_own ON witness.events FOR INSERT TO witness_bastion
    WITH CHECK (bastion = session_user);
DROP POLICY IF EXISTS auditor_reads_all ON witness.events;
CREATE POLICY auditor_reads_all ON witness.events FOR SELECT TO witness_auditor USING (true);
COMMIT;
""".replace("{ROLES}", ROLES)

_INSERT = (
    "INSERT INTO witness.events (trail, seq, ts, type, session, payload, prev_hash, hash)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
_COLUMNS = "seq, ts, type, session, payload, prev_hash, hash"
_DAY_US = 86_400_000_000


class CentralError(AnchorError):
    """The central store cannot be reached or used; the message says which and why."""


Row = tuple[int, int, str, str | None, str, str, str]  # seq, ts, type, session, payload, ...


def ship(
    conn: psycopg.Connection[Any], settings: AnchorSettings, trail: str, rows: Sequence[Row]
) -> None:
    """Add ``rows`` of trail ``trail``, in one transaction; a row the store holds already
    is left as it is, so shipping again after a failure or a restart is harmless."""
    try:
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(_INSERT, [(trail, *row) for row in rows])
    except psycopg.Error as exc:
        raise CentralError(f"central store {where(settings)}: cannot ship: {_why(exc)}") from None


def held(
    conn: psycopg.Connection[Any],
    settings: AnchorSettings,
    trail: str,
    *,
    first: int,
    last: int,
    ends: tuple[str, str],
) -> str | None:
    """Why the store does not hold events ``first`` to ``last`` of ``trail`` exactly as the
    bastion does, whose first event follows ``ends[0]`` and whose last hashes to ``ends[1]``
    (None: it holds them, each hash recomputed and each link checked by the store)."""
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT * FROM witness.held(%s, %s, %s)", (trail, first, last)
            ).fetchone()
    except psycopg.Error as exc:
        raise CentralError(
            f"central store {where(settings)}: cannot check what it holds: {_why(exc)}"
            " (run witness central schema there again: it adds witness.held)"
        ) from None
    assert row is not None
    count, seqs, broken, first_prev, last_hash = row
    wanted = last - first + 1
    if count != wanted or seqs != wanted:
        return f"it holds {seqs} of events {first} to {last} ({count} rows), not {wanted}"
    if broken:
        return f"{broken} of events {first} to {last} do not match their hash or link"
    if (first_prev, last_hash) != ends:
        return f"its events {first} to {last} are not the ones this bastion holds"
    return None


@dataclass(frozen=True, slots=True)
class Cut:
    """Where retention cut a trail's chain: its events up to ``seq`` (whose hash is
    ``hash``) were dropped with the day ``day``."""

    seq: int
    hash: str
    day: date


def trails(conn: psycopg.Connection[Any], bastion: str | None = None) -> list[tuple[str, str]]:
    """(bastion, trail) of every trail the store holds (of ``bastion`` only, if given)."""
    query = "SELECT DISTINCT bastion, trail FROM witness.events"
    args: tuple[Any, ...] = ()
    if bastion is not None:
        query += " WHERE bastion = %s"
        args = (bastion,)
    rows = conn.execute(query + " ORDER BY 1, 2", args).fetchall()
    cut = "SELECT DISTINCT bastion, trail FROM witness.retention"
    rows += [r for r in conn.execute(cut).fetchall() if r not in rows and bastion in (None, r[0])]
    return sorted((str(b), str(t)) for b, t in rows)


def cut(conn: psycopg.Connection[Any], bastion: str, trail: str) -> Cut | None:
    """The newest cut retention made in the chain of ``trail`` shipped by ``bastion``."""
    row = conn.execute(
        "SELECT last_seq, last_hash, day FROM witness.retention"
        " WHERE bastion = %s AND trail = %s ORDER BY last_seq DESC LIMIT 1",
        (bastion, trail),
    ).fetchone()
    return None if row is None else Cut(int(row[0]), str(row[1]), row[2])


def events(
    conn: psycopg.Connection[Any], bastion: str, trail: str, after: int = 0
) -> Iterator[Row]:
    """The events of ``trail`` shipped by ``bastion`` after ``after``, in seq order (every
    copy of a seq, if a bastion shipped two), read in batches from a server-side cursor."""
    with conn.transaction(), conn.cursor(name="witness_walk") as cursor:
        cursor.itersize = 10_000
        cursor.execute(
            f"SELECT {_COLUMNS} FROM witness.events WHERE bastion = %s AND trail = %s"
            " AND seq > %s ORDER BY seq, ts",
            (bastion, trail, after),
        )
        yield from cursor


def anchored(conn: psycopg.Connection[Any], bastion: str, trail: str) -> list[tuple[int, str]]:
    """(seq, hash) of each checkpoint of ``trail`` that ``bastion`` published to an anchor in
    the same database, if there is one there (``witness anchor schema``)."""
    try:
        with conn.transaction():
            rows = conn.execute(
                "SELECT seq, hash FROM witness.checkpoints WHERE trail = %s AND bastion = %s",
                (trail, bastion),
            ).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege):
        return []
    return [(int(seq), str(digest)) for seq, digest in rows]


def event_hash(conn: psycopg.Connection[Any], bastion: str, trail: str, seq: int) -> str | None:
    row = conn.execute(
        "SELECT hash FROM witness.events WHERE bastion = %s AND trail = %s AND seq = %s",
        (bastion, trail, seq),
    ).fetchone()
    return None if row is None else str(row[0])


# --- the store's owner: partitions and retention ----------------------------------------


def _partition(day: date) -> str:
    return f"events_{day:%Y%m%d}"


def _bounds(day: date) -> tuple[int, int]:
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000
    return start, start + _DAY_US


@dataclass(frozen=True, slots=True)
class Maintained:
    created: list[str]
    dropped: list[str]


def maintain(
    conn: psycopg.Connection[Any],
    *,
    today: date,
    ahead: int = 7,
    behind: int = 2,
    retain: int | None = None,
) -> Maintained:
    """Make the partitions of the days from ``behind`` days ago to ``ahead`` days on; with
    ``retain``, drop the days older than that many days, recording where each trail's chain
    stood at the cut, in the same transaction as the drop."""
    created: list[str] = []
    dropped: list[str] = []
    existing = _partitions(conn)
    with conn.transaction():
        for offset in range(-behind, ahead + 1):
            day = today + timedelta(days=offset)
            name = _partition(day)
            if name in existing:
                continue
            start, end = _bounds(day)
            conn.execute(
                f"CREATE TABLE witness.{name} PARTITION OF witness.events"
                f" FOR VALUES FROM ({start}) TO ({end})"
            )
            created.append(name)
        if retain is not None:
            oldest = today - timedelta(days=retain)
            for name, day in sorted(existing.items(), key=lambda item: item[1]):
                if day >= oldest:
                    continue
                conn.execute(
                    "INSERT INTO witness.retention"
                    " (partition, day, bastion, trail, events, last_seq, last_hash)"
                    f" SELECT %s, %s, bastion, trail, count(*), max(seq),"
                    f" (array_agg(hash ORDER BY seq DESC))[1] FROM witness.{name}"
                    " GROUP BY bastion, trail",
                    (name, day),
                )
                conn.execute(f"ALTER TABLE witness.events DETACH PARTITION witness.{name}")
                conn.execute(f"DROP TABLE witness.{name}")
                dropped.append(name)
    return Maintained(created, dropped)


def _partitions(conn: psycopg.Connection[Any]) -> dict[str, date]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'witness.events'::regclass"
    ).fetchall()
    found: dict[str, date] = {}
    for (name,) in rows:
        try:
            found[str(name)] = datetime.strptime(str(name)[7:], "%Y%m%d").replace(tzinfo=UTC).date()
        except ValueError:
            continue
    return found


def open_store(settings: AnchorSettings) -> psycopg.Connection[Any]:
    """A connection to the central store (CentralError if there is none)."""
    try:
        return connect(settings)
    except AnchorError as exc:
        raise CentralError(str(exc).replace("anchor", "central store", 1)) from None


def _why(exc: psycopg.Error) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
