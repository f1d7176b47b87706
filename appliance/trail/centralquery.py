"""Operators' questions asked of the central store: the sessions of every bastion, one
session in full, and a search of the commands. The answers are the ones a local trail gives
(:mod:`appliance.trail.query`), each marked with the bastion that shipped it.

The store keeps each payload as the text its hash covers; these queries read it as jsonb.
Sessions are told apart by bastion and id (ids are unique on a bastion, not across them).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg

from appliance.trail.query import (
    Event,
    Match,
    SessionDetail,
    SessionInfo,
    UnknownSession,
    detail_of,
    identity_from_json,
    identity_label,
    one_of,
    payload_of,
    session_of,
)

_LIST = """
SELECT s.bastion, s.session, s.ts, s.seq, s.payload, e.ts, e.seq, e.payload,
       coalesce((e.payload::jsonb ->> 'commands')::bigint,
                (SELECT count(*) FROM witness.events c
                  WHERE c.bastion = s.bastion AND c.trail = s.trail
                    AND c.session = s.session AND c.type = 'command'))
FROM witness.events s
LEFT JOIN witness.events e
  ON e.bastion = s.bastion AND e.trail = s.trail AND e.session = s.session
 AND e.type = 'session_end'
WHERE s.type = 'session_start'
  AND (%(bastion)s::text IS NULL OR s.bastion = %(bastion)s)
  AND (%(until)s::bigint IS NULL OR s.ts <= %(until)s)
  AND (%(since)s::bigint IS NULL OR e.ts IS NULL OR e.ts >= %(since)s)
  AND (%(user)s::text IS NULL OR s.payload::jsonb ->> 'db_user' = %(user)s
       OR s.payload::jsonb -> 'owner' ->> 'uid' = %(user)s)
  AND (%(backend)s::text IS NULL OR s.payload::jsonb -> 'backend' ->> 'name' = %(backend)s)
  AND (%(identity)s::text IS NULL
       OR s.payload::jsonb -> 'identity' ->> 'subject' = %(identity)s
       OR lower(s.payload::jsonb -> 'identity' ->> 'email') = lower(%(identity)s))
  AND (%(group)s::text IS NULL
       OR coalesce(s.payload::jsonb -> 'identity' -> 'groups', '[]') ? %(group)s)
ORDER BY s.ts, s.bastion, s.seq
"""

_SEARCH = """
SELECT c.bastion, c.seq, c.ts, c.type, c.session, c.payload,
       (SELECT r.payload FROM witness.events r
         WHERE r.bastion = c.bastion AND r.trail = c.trail AND r.session = c.session
           AND r.type = 'result' AND r.seq > c.seq
           AND r.payload::jsonb -> 'n' = c.payload::jsonb -> 'n'
         ORDER BY r.seq LIMIT 1),
       coalesce(c.payload::jsonb -> 'identity',
                (SELECT s.payload::jsonb -> 'identity' FROM witness.events s
                  WHERE s.bastion = c.bastion AND s.trail = c.trail
                    AND s.session = c.session AND s.type = 'session_start' LIMIT 1))::text
FROM witness.events c
WHERE c.type = 'command'
  AND (strpos(lower(c.payload::jsonb ->> 'text'), %(needle)s) > 0
       OR EXISTS (SELECT 1 FROM jsonb_array_elements(
                     CASE WHEN jsonb_typeof(c.payload::jsonb -> 'prepared') = 'array'
                          THEN c.payload::jsonb -> 'prepared' ELSE '[]' END) p
                   WHERE strpos(lower(p ->> 'text'), %(needle)s) > 0))
  AND (%(bastion)s::text IS NULL OR c.bastion = %(bastion)s)
ORDER BY c.ts, c.bastion, c.seq
"""


def list_sessions(
    conn: psycopg.Connection[Any],
    *,
    since: int | None = None,
    until: int | None = None,
    user: str | None = None,
    backend: str | None = None,
    identity: str | None = None,
    group: str | None = None,
    bastion: str | None = None,
) -> list[SessionInfo]:
    """As :func:`query.list_sessions`, across bastions (or of ``bastion``), oldest first.
    An identity's email is matched ignoring case as PostgreSQL's ``lower`` does."""
    rows = conn.execute(
        _LIST,
        {
            "since": since,
            "until": until,
            "user": user,
            "backend": backend,
            "identity": identity,
            "group": group,
            "bastion": bastion,
        },
    ).fetchall()
    return [session_of(tuple(row[1:]), bastion=str(row[0])) for row in rows]


def session_detail(
    conn: psycopg.Connection[Any], prefix: str, bastion: str | None = None
) -> SessionDetail:
    """The session named by ``prefix`` (a unique prefix of its id, across bastions)."""
    if not prefix:
        raise UnknownSession("give a session id (or a unique prefix of one)")
    rows = conn.execute(
        "SELECT DISTINCT bastion, trail, session FROM witness.events"
        " WHERE type = 'session_start' AND session >= %s AND session < %s"
        " AND (%s::text IS NULL OR bastion = %s) LIMIT 6",
        (prefix, prefix + "\U0010ffff", bastion, bastion),
    ).fetchall()
    named = {f"{b}/{s}": (str(b), str(t), str(s)) for b, t, s in rows}
    sessions = [s for _, _, s in named.values()]
    if len(set(sessions)) == 1 and len(named) > 1:
        shown = ", ".join(sorted(named))
        raise UnknownSession(
            f"{prefix!r} is a session of several bastions ({shown}): give --bastion"
        )
    sid = one_of(prefix, sessions)
    who, trail, _ = next(v for v in named.values() if v[2] == sid)
    events = [
        Event.from_row(row)
        for row in conn.execute(
            "SELECT seq, ts, type, session, payload FROM witness.events"
            " WHERE bastion = %s AND trail = %s AND session = %s ORDER BY seq",
            (who, trail, sid),
        )
    ]
    return detail_of(sid, events, who)


def search(conn: psycopg.Connection[Any], text: str, bastion: str | None = None) -> list[Match]:
    """Commands whose text (or a prepared statement they ran) contains ``text``, ignoring
    case as PostgreSQL's ``lower`` does, across bastions; oldest first."""
    rows = conn.execute(_SEARCH, {"needle": text.lower(), "bastion": bastion}).fetchall()
    out = []
    for who, seq, ts, type_, session, payload, result_text, identity in rows:
        result = None if result_text is None else payload_of(seq, result_text)
        status = None if result is None else result.get("status")
        command = Event.from_row((seq, ts, type_, session, payload))
        label = identity_label(identity_from_json(identity))
        out.append(Match(command, status, label, result, bastion=str(who)))
    return out


def replay_rows(
    conn: psycopg.Connection[Any], until: int | None, bastion: str | None = None
) -> Iterator[tuple[int, int, str, str | None, str]]:
    """What ``witness policy test`` replays (see :func:`replay.events`), from every bastion's
    chain in turn: sessions named ``bastion/id``, read from a server-side cursor."""
    with conn.transaction(), conn.cursor(name="witness_replay") as cursor:
        cursor.itersize = 10_000
        cursor.execute(
            "SELECT seq, ts, type, bastion || '/' || session, payload FROM witness.events"
            " WHERE type IN ('session_start', 'session_end', 'command')"
            " AND (%(until)s::bigint IS NULL OR ts <= %(until)s)"
            " AND (%(bastion)s::text IS NULL OR bastion = %(bastion)s)"
            " ORDER BY bastion, trail, seq",
            {"until": until, "bastion": bastion},
        )
        yield from cursor
