"""Read-only questions operators ask of the trail: which sessions, what they ran, where."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from appliance.model import Command, Decoding, Prepared
from appliance.trail import db
from appliance.trail.db import TrailError

_COLUMNS = "seq, ts, type, session, payload"


class UnknownSession(TrailError):
    """No session, or more than one, matches the id given."""


def identity_of(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The OIDC identity an event's payload names, or None (none bound, or an older trail)."""
    identity = payload.get("identity")
    return identity if isinstance(identity, dict) else None


def identity_label(identity: dict[str, Any] | None) -> str | None:
    """A short name for people: the identity's email, else its subject."""
    if identity is None:
        return None
    label = identity.get("email") or identity.get("subject")
    return None if label is None else str(label)


def iso(us: int | None) -> str | None:
    """Microseconds since the epoch as ISO 8601 in UTC."""
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    ts: int
    type: str
    session: str | None
    payload: dict[str, Any]

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Event:
        seq, ts, type, session, text = row
        return cls(int(seq), int(ts), str(type), session, payload_of(seq, text))


def payload_of(seq: Any, text: Any) -> dict[str, Any]:
    """An event's payload text as a dict (orjson, which reads a payload in a third of the
    stdlib's time; the stdlib for what it refuses); TrailError if it is not a JSON object."""
    try:
        payload = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError):
        try:
            payload = json.loads(text)
        except (TypeError, ValueError):
            payload = None
    if not isinstance(payload, dict):
        raise TrailError(f"event {seq} has a malformed payload; run witness verify")
    return payload


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One session as its start and end events describe it."""

    id: str
    start: int
    end: int | None
    commands: int
    start_payload: dict[str, Any]
    end_payload: dict[str, Any] | None
    bastion: str | None = None
    """The bastion that shipped it, for a session read from the central store."""

    @property
    def duration(self) -> float | None:
        """Seconds from start to end; None while the session is open (or was never closed)."""
        return None if self.end is None else (self.end - self.start) / 1e6

    @property
    def identity(self) -> dict[str, Any] | None:
        """The identity bound when the session started; None if none was (or the trail is older)."""
        return identity_of(self.start_payload)

    @property
    def refused(self) -> dict[str, Any] | None:
        """Why the connection was refused at connect time (its code and message), or None."""
        refused = self.start_payload.get("refused")
        return refused if isinstance(refused, dict) else None

    def as_dict(self) -> dict[str, Any]:
        start, end = self.start_payload, self.end_payload or {}
        return {
            **({} if self.bastion is None else {"bastion": self.bastion}),
            "id": self.id,
            "start": iso(self.start),
            "end": iso(self.end),
            "duration_s": self.duration,
            "client": start.get("client"),
            "listener": start.get("listener"),
            "identity": self.identity,
            "refused": self.refused,
            "owner": start.get("owner"),
            "db_user": start.get("db_user"),
            "database": start.get("database"),
            "application_name": start.get("application_name"),
            "backend": start.get("backend"),
            "destination": start.get("destination"),
            "diverted": start.get("diverted", False),
            "commands": self.commands,
            "bytes_in": end.get("bytes_in"),
            "bytes_out": end.get("bytes_out"),
            "end_reason": end.get("reason"),
            "backend_pid": end.get("backend_pid"),
        }


@dataclass(frozen=True, slots=True)
class CommandView:
    """A command event and the result that answered it, if one was recorded."""

    command: Event
    result: Event | None = None
    session_identity: dict[str, Any] | None = None
    approval: tuple[Event, ...] = ()
    """The steps of the hold it waited in, if a rule held it."""

    def held(self) -> str | None:
        """The hold in one line for people: its id, how it ended, by whom, after how long."""
        if not self.approval:
            return None
        last = self.approval[-1].payload
        line = f"held for approval {last.get('id')}: {last.get('step')}"
        if last.get("why"):
            line += f" ({last['why']})"
        waited = last.get("waited_ms")
        if isinstance(waited, int | float):
            line += f", after {waited / 1000.0:.1f} s"
        return line

    @property
    def identity(self) -> dict[str, Any] | None:
        """The identity the command was recorded under: its own, else its session's."""
        if "identity" in self.command.payload:
            return identity_of(self.command.payload)
        return self.session_identity

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.command.payload)
        out["identity"] = self.identity
        out["seq"] = self.command.seq
        out["time"] = iso(self.command.ts)
        out["result"] = None if self.result is None else self.result.payload
        if self.approval:
            steps = self.approval
            out["approval"] = [{"seq": e.seq, "time": iso(e.ts), **e.payload} for e in steps]
        return out


@dataclass(frozen=True, slots=True)
class SessionDetail:
    info: SessionInfo
    commands: list[CommandView] = field(default_factory=list)
    errors: list[Event] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "session": self.info.as_dict(),
            "commands": [c.as_dict() for c in self.commands],
            "errors": [{"seq": e.seq, "time": iso(e.ts), **e.payload} for e in self.errors],
        }


@dataclass(frozen=True, slots=True)
class Match:
    """A command whose text (or a prepared statement it ran, or its corrected reading)
    matched a search."""

    command: Event
    status: str | None
    identity: str | None = None
    """The label (email, else subject) of the identity the command ran under, if any."""
    result: dict[str, Any] | None = None
    """The payload of the result that answered the command, if one was recorded."""
    bastion: str | None = None

    def as_dict(self) -> dict[str, Any]:
        payload = self.command.payload
        out = {
            **({} if self.bastion is None else {"bastion": self.bastion}),
            "session": self.command.session,
            "identity": self.identity,
            "seq": self.command.seq,
            "time": iso(self.command.ts),
            "n": payload.get("n"),
            "kind": payload.get("kind"),
            "text": payload.get("text"),
            "text_known": text_known(payload),
            "status": self.status,
            "refused": payload.get("refused"),
        }
        for key in ("prepared", "decoding"):
            if key in payload:
                out[key] = payload[key]
        reading = None if self.result is None else self.result.get("reading")
        if reading is not None:
            out["reading"] = reading
        return out


def text_known(payload: dict[str, Any]) -> bool:
    """Whether a command's record vouches for what the backend ran (older trails always do)."""
    return payload.get("text_known", True) is not False


def prepared_of(entry: dict[str, Any]) -> Prepared:
    """A prepared statement as a command's record has it, typed as the record is (a damaged
    trail must not crash its readers)."""
    return Prepared(
        str(entry.get("name", "")),
        _optional_str(entry.get("text")),
        str(entry.get("how", "parsed")),
        _optional_int(entry.get("defined")),
        _optional_str(entry.get("doubt")),
        _optional_int(entry.get("changed_by")),
        str(entry.get("kind", "statement")),
    )


def command_of(payload: dict[str, Any]) -> Command:
    """The command a record describes (without its parameters), as the recorder had it
    when it recorded it: what a policy is asked about."""
    prepared = tuple(prepared_of(p) for p in payload.get("prepared") or () if isinstance(p, dict))
    raw = payload.get("decoding")
    decoding = None
    if isinstance(raw, dict):
        decoding = Decoding(
            str(raw.get("encoding")), raw.get("raw") is True, _optional_int(raw.get("changed_by"))
        )
    command = Command(
        str(payload.get("kind", "query")),
        str(payload.get("text", "")),
        prepared=prepared,
        decoding=decoding,
    )
    if command.text_known and not text_known(payload):
        # The record says the text is in doubt for a reason not rebuilt here: keep the doubt.
        command.decoding = Decoding(decoding.encoding if decoding else "unknown", raw=True)
    return command


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def list_sessions(
    conn: sqlite3.Connection,
    *,
    since: int | None = None,
    until: int | None = None,
    user: str | None = None,
    backend: str | None = None,
    identity: str | None = None,
    group: str | None = None,
) -> list[SessionInfo]:
    """Sessions active at some time in [since, until] (microseconds), oldest first.

    ``user`` matches the database user or the owner's uid; ``backend`` the backend's name;
    ``identity`` the bound identity's email (ignoring case) or its subject (exactly);
    ``group`` one of the identity's groups. Every filter reads only the session_start events.
    """
    email = None if identity is None else identity.casefold()

    def folded(value: object) -> str | None:
        return value.casefold() if isinstance(value, str) else None

    conn.create_function("witness_casefold", 1, folded, deterministic=True)
    # The start and end events are looked up by seq first (each a key lookup, in every
    # sealed segment too), then joined: a join on the events view itself would copy it.
    rows = conn.execute(
        """
        WITH s AS MATERIALIZED (
                SELECT seq, ts, payload FROM events
                WHERE seq IN (SELECT start_seq FROM sessions)),
             e AS MATERIALIZED (
                SELECT seq, ts, payload FROM events
                WHERE seq IN (SELECT end_seq FROM sessions WHERE end_seq IS NOT NULL))
        SELECT x.id, s.ts, s.seq, s.payload, e.ts, e.seq, e.payload,
               json_extract(e.payload, '$.commands')
        FROM sessions x
        JOIN s ON s.seq = x.start_seq
        LEFT JOIN e ON e.seq = x.end_seq
        WHERE (:until IS NULL OR s.ts <= :until)
          AND (:since IS NULL OR e.ts IS NULL OR e.ts >= :since)
          AND (:user IS NULL OR json_extract(s.payload, '$.db_user') = :user
               OR CAST(json_extract(s.payload, '$.owner.uid') AS TEXT) = :user)
          AND (:backend IS NULL OR json_extract(s.payload, '$.backend.name') = :backend)
          AND (:identity IS NULL
               OR json_extract(s.payload, '$.identity.subject') = :identity
               OR witness_casefold(json_extract(s.payload, '$.identity.email')) = :email)
          AND (:group IS NULL
               OR EXISTS (SELECT 1 FROM json_each(s.payload, '$.identity.groups') g
                           WHERE g.type = 'text' AND g.value = :group))
        ORDER BY x.start_seq
        """,
        {
            "since": since,
            "until": until,
            "user": user,
            "backend": backend,
            "identity": identity,
            "email": email,
            "group": group,
        },
    )
    return [session_of(_counted(conn, row)) for row in rows.fetchall()]


def _counted(conn: sqlite3.Connection, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The row with its commands counted, for a session whose end does not say how many
    (still open, or cut short): a scan of the events from its start on."""
    if row[7] is not None:
        return row
    (count,) = conn.execute(
        "SELECT count(*) FROM events WHERE seq > ? AND session = ? AND type = 'command'",
        (row[2], row[0]),
    ).fetchone()
    return (*row[:7], count)


def session_of(row: tuple[Any, ...], bastion: str | None = None) -> SessionInfo:
    """A session from (id, start ts, start seq, start payload, end ts, end seq, end payload,
    commands)."""
    sid, start, start_seq, start_text, end, end_seq, end_text, commands = row
    return SessionInfo(
        id=sid,
        start=int(start),
        end=None if end is None else int(end),
        commands=int(commands),
        start_payload=payload_of(start_seq, start_text),
        end_payload=None if end_text is None else payload_of(end_seq, end_text),
        bastion=bastion,
    )


def resolve(conn: sqlite3.Connection, prefix: str) -> str:
    """The one session id that starts with ``prefix``."""
    if not prefix:
        raise UnknownSession("give a session id (or a unique prefix of one)")
    # U+10FFFF sorts after every other character, so this is a range scan on the key.
    found = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM sessions WHERE id >= ? AND id < ? LIMIT 6",
            (prefix, prefix + "\U0010ffff"),
        )
    ]
    return one_of(prefix, found)


def one_of(prefix: str, found: list[str]) -> str:
    """The session ``prefix`` names among the ``found`` ids that start with it."""
    if prefix in found:
        return prefix
    if not found:
        raise UnknownSession(f"no session matches {prefix!r}")
    if len(found) > 1:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise UnknownSession(f"{prefix!r} matches several sessions ({shown}); give more of the id")
    return str(found[0])


def session_events(conn: sqlite3.Connection, session: str) -> list[Event]:
    """The session's events, found by a scan of its seq range only."""
    span = conn.execute(
        "SELECT start_seq, end_seq FROM sessions WHERE id = ?", (session,)
    ).fetchone()
    if span is None:
        return []
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE seq >= ? AND seq <= ? AND session = ? ORDER BY seq",
        (span[0], span[1] if span[1] is not None else db.last_seq(conn), session),
    )
    return [Event.from_row(row) for row in rows]


def session_detail(conn: sqlite3.Connection, prefix: str) -> SessionDetail:
    """The session named by ``prefix``: its header, its commands paired with their results."""
    sid = resolve(conn, prefix)
    return detail_of(sid, session_events(conn, sid))


def detail_of(sid: str, events: list[Event], bastion: str | None = None) -> SessionDetail:
    """A session's header and commands, from its events in order."""
    start = next((e for e in events if e.type == "session_start"), None)
    end = next((e for e in events if e.type == "session_end"), None)
    commands: list[Event] = []
    results: dict[Any, Event] = {}
    errors: list[Event] = []
    holds: dict[Any, list[Event]] = {}
    for event in events:
        if event.type == "command":
            commands.append(event)
        elif event.type == "approval":
            holds.setdefault(event.payload.get("n"), []).append(event)
        elif event.type == "result":
            results.setdefault(event.payload.get("n"), event)
        elif event.type == "error":
            errors.append(event)
    info = SessionInfo(
        id=sid,
        start=events[0].ts if start is None else start.ts,
        end=None if end is None else end.ts,
        commands=len(commands),
        start_payload={} if start is None else start.payload,
        end_payload=None if end is None else end.payload,
        bastion=bastion,
    )
    identity = info.identity
    views = [
        CommandView(
            c,
            results.get(c.payload.get("n")),
            identity,
            tuple(holds.get(c.payload.get("n"), ())) if c.payload.get("decision") else (),
        )
        for c in commands
    ]
    return SessionDetail(info, views, errors, events)


def search(conn: sqlite3.Connection, text: str) -> list[Match]:
    """Commands whose text contains ``text``, ignoring case (full Unicode case folding); also
    those whose prepared statements' texts do, or whose text as read again in the encoding the
    backend reported (a result's ``reading``) does."""
    needle = text.casefold()

    def contains(haystack: object) -> bool:
        return isinstance(haystack, str) and needle in haystack.casefold()

    conn.create_function("witness_contains", 1, contains, deterministic=True)
    found = {
        row[0]
        for row in conn.execute(
            """
            SELECT c.seq FROM events c
            WHERE c.type = 'command'
              AND (witness_contains(json_extract(c.payload, '$.text'))
                   OR EXISTS (SELECT 1 FROM json_each(c.payload, '$.prepared') p
                               WHERE witness_contains(json_extract(p.value, '$.text'))))
            """
        )
    }
    for session, n, seq in conn.execute(
        """
        SELECT session, json_extract(payload, '$.n'), seq FROM events
        WHERE type = 'result' AND witness_contains(json_extract(payload, '$.reading.text'))
        """
    ).fetchall():
        # Its command: the latest one numbered n before it, in its session's range of seqs.
        row = conn.execute(
            """
            SELECT c.seq FROM events c, sessions x
            WHERE x.id = :session AND c.seq >= x.start_seq AND c.seq < :seq
              AND c.session = :session AND c.type = 'command'
              AND json_extract(c.payload, '$.n') = :n
            ORDER BY c.seq DESC LIMIT 1
            """,
            {"session": session, "seq": seq, "n": n},
        ).fetchone()
        if row is not None:
            found.add(row[0])
    if not found:
        return []
    # A command's own identity, else (older commands) its session's, found by primary key.
    rows = conn.execute(
        f"""
        SELECT {_COLUMNS},
               (SELECT r.payload FROM events r
                 WHERE r.session = c.session AND r.seq > c.seq AND r.type = 'result'
                   AND json_extract(r.payload, '$.n') = json_extract(c.payload, '$.n')
                 ORDER BY r.seq LIMIT 1),
               CASE WHEN json_type(c.payload, '$.identity') IS NULL
                    THEN (SELECT json_extract(s.payload, '$.identity')
                            FROM sessions x JOIN events s ON s.seq = x.start_seq
                           WHERE x.id = c.session)
                    ELSE json_extract(c.payload, '$.identity') END
        FROM events c
        WHERE c.seq IN (SELECT value FROM json_each(:seqs))
        ORDER BY c.seq
        """,
        {"seqs": json.dumps(sorted(found))},
    )
    out = []
    for row in rows:
        result = None if row[5] is None else payload_of(row[0], row[5])
        status = None if result is None else result.get("status")
        identity = identity_label(identity_from_json(row[6]))
        out.append(Match(Event.from_row(row[:5]), status, identity, result))
    return out


def identity_from_json(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str):
        return None
    try:
        identity = json.loads(text)
    except ValueError:
        return None
    return identity if isinstance(identity, dict) else None


_ENDS = ("approved", "denied", "expired", "withdrawn")


def pending_holds(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Holds the trail shows requested and never ended (a recorder stopped while they
    waited), oldest first: each a ``requested`` step's payload with its session. Only
    sessions the trail never saw end can have one, so only their span is read."""
    first = conn.execute("SELECT min(start_seq) FROM sessions WHERE end_seq IS NULL").fetchone()
    if first is None or first[0] is None:
        return []
    open_holds: dict[str, dict[str, Any]] = {}
    rows = conn.execute(
        "SELECT seq, session, payload FROM events WHERE seq >= ? AND type = 'approval'"
        " ORDER BY seq",
        (first[0],),
    )
    for seq, session, text in rows:
        payload = payload_of(seq, text)
        hold_id = payload.get("id")
        step = payload.get("step")
        if not isinstance(hold_id, str):
            continue
        if step == "requested":
            open_holds[hold_id] = {**payload, "session": session}
        elif step in _ENDS:
            open_holds.pop(hold_id, None)
    return list(open_holds.values())
