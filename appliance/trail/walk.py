"""Walking the chain in order: each event's place, link, hash and payload, each signature."""

from __future__ import annotations

import functools
import json
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.trail import chain, keys
from appliance.trail.checkpoint import Checkpoint

_COLUMNS = "seq, ts, type, session, payload, prev_hash, hash"
TRAIL_ID = re.compile(r"[0-9a-f]{32}")
# What a trail event records: the genesis, each start of the recorder, each segment sealed
# and each sealed segment retired.
ACTIONS = ("create", "open", "seal", "retire")
PROGRESS_EVERY = 16_384


class Fault(Exception):
    """The first thing wrong, at event ``seq`` (None: a fault of no one event)."""

    def __init__(self, seq: int | None, reason: str) -> None:
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Interval:
    """How often the recorder signed, as a trail event at ``seq`` said when it started."""

    seq: int
    events: int
    seconds: float


@dataclass(slots=True)
class Walk:
    """What the walk has established so far, in seq order.

    ``vouched`` holds what is known from outside the trail (the checkpoint file, the
    anchor): the hash that event ``seq`` must have, and who says so.
    """

    public: Ed25519PublicKey
    fingerprint: str = ""
    vouched: dict[int, tuple[str, str]] = field(default_factory=dict)
    seq: int = 0
    prev: str = chain.GENESIS
    covered: int = 0  # the highest seq a good checkpoint vouches for
    signed: list[int] = field(default_factory=list)  # the seq each checkpoint covers
    trail: str | None = None
    intervals: list[Interval] = field(default_factory=list)
    since: int = 1  # the first event a checkpoint can vouch for: the start of the walk's run
    retired: int = 0  # the last event retired from the trail (held off the host, deleted here)

    def __post_init__(self) -> None:
        self.fingerprint = keys.fingerprint(self.public)

    def vouch(self, seq: int, hash: str, who: str) -> None:
        known = self.vouched.get(seq)
        if known is not None and known[0] != hash:
            raise Fault(seq, f"{who} and {known[1]} disagree about event {seq}")
        self.vouched.setdefault(seq, (hash, who))

    def start_after(self, seq: int, hash: str) -> None:
        """Resume after an event already vouched for (by a signature checked elsewhere)."""
        self.seq, self.prev = seq, hash
        self.covered = max(self.covered, seq)

    def restart(self, seq: int, prev: str) -> None:
        """Go on at event ``seq`` after a gap (a filtered export), taking its ``prev`` hash as
        given: nothing before it is vouched for, and a checkpoint vouches for it and what
        follows only if it comes after it, with no gap between."""
        self.seq, self.prev = seq - 1, prev
        self.since = seq

    def run(
        self,
        conn: sqlite3.Connection,
        until: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Walk every event after ``seq`` (up to ``until``); raise Fault at the first bad one.

        ``progress`` is told the seq reached every ``PROGRESS_EVERY`` events."""
        query = f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq"
        step = self.step
        find = functools.partial(_hash_at, conn)
        for row in conn.execute(query, (self.seq,)):
            step(row, find)
            if until is not None and self.seq >= until:
                return
            if progress is not None and not self.seq % PROGRESS_EVERY:
                progress(self.seq)

    def tail(self, conn: sqlite3.Connection) -> tuple[int, int | None, int | None]:
        """The events walked that no checkpoint covers (checkpoints aside): how many, and
        the first one's seq and time (microseconds)."""
        args = (self.covered, self.seq, chain.CHECKPOINT)
        where = "seq > ? AND seq <= ? AND type != ?"
        (count,) = conn.execute(f"SELECT count(*) FROM events WHERE {where}", args).fetchone()
        first = conn.execute(
            f"SELECT seq, ts FROM events WHERE {where} ORDER BY seq LIMIT 1", args
        ).fetchone()
        if first is None:
            return int(count), None, None
        return int(count), int(first[0]), int(first[1])

    def interval(self) -> Interval | None:
        """The interval in force after the last checkpoint: the newest one signed."""
        signed = [i for i in self.intervals if i.seq <= self.covered]
        return signed[-1] if signed else None

    def step(self, row: tuple[Any, ...], find: Callable[[int], str | None]) -> None:
        """Check the next event, a row of (seq, ts, type, session, payload text, prev_hash,
        hash); ``find`` gives the hash of an earlier event (None: not held)."""
        seq, ts, type, session, text, prev_hash, digest = row
        expected = self.seq + 1
        if seq != expected:
            if isinstance(seq, int) and seq > expected:
                raise Fault(expected, f"event {expected} is missing (the next event is {seq})")
            raise Fault(seq, f"event {seq} is out of sequence (expected {expected})")
        if not (
            isinstance(ts, int)
            and chain.valid_field(type)
            and (session is None or chain.valid_field(session))
            and isinstance(text, str)
            and isinstance(prev_hash, str)
            and isinstance(digest, str)
        ):
            raise Fault(seq, f"event {seq} has a malformed field")
        if prev_hash != self.prev:
            raise Fault(seq, f"event {seq} does not follow event {seq - 1} (its prev_hash differs)")
        if chain.event_hash(prev_hash, seq, ts, type, session, text) != digest:
            raise Fault(seq, f"event {seq} does not match its hash: it was changed")
        payload = _parse(type, text)
        if not isinstance(payload, dict):
            raise Fault(seq, f"event {seq} has a payload that is not a JSON object")
        if seq == 1 and not (type == chain.TRAIL and payload.get("action") == "create"):
            raise Fault(
                1,
                "event 1 is not the trail's genesis: every Witness trail starts with one,"
                " signed when it is created",
            )
        if seq == 2 and type != chain.CHECKPOINT:
            raise Fault(2, "event 2 is not the checkpoint that signs the trail's genesis")
        if type == chain.CHECKPOINT:
            self._checkpoint(seq, payload, find)
        elif type == chain.TRAIL:
            self._trail_event(seq, payload)
        known = self.vouched.get(seq)
        if known is not None and known[0] != digest:
            raise Fault(
                seq,
                f"event {seq} differs from the one {known[1]} vouches for:"
                " the trail was rewritten from there on",
            )
        self.seq, self.prev = seq, digest

    def _checkpoint(
        self, seq: int, payload: dict[str, Any], find: Callable[[int], str | None]
    ) -> None:
        signed = Checkpoint.from_dict(payload)
        if signed is None:
            raise Fault(seq, f"checkpoint {seq} is malformed")
        if not 0 < signed.seq < seq:
            raise Fault(seq, f"checkpoint {seq} vouches for event {signed.seq}, not an earlier one")
        if seq == 2 and signed.seq != 1:
            raise Fault(2, f"checkpoint 2 signs event {signed.seq}, not the genesis")
        if signed.seq == seq - 1:
            covered: str | None = self.prev
        elif signed.seq < self.since:
            covered = signed.hash  # before a gap: it vouches for nothing walked here
        else:
            covered = find(signed.seq)
        if covered != signed.hash:
            raise Fault(
                seq,
                f"checkpoint {seq} signed a different event {signed.seq} than the trail holds:"
                " events up to it were changed and rehashed",
            )
        if signed.key != self.fingerprint:
            raise Fault(
                seq, f"checkpoint {seq} was signed by key {signed.key}, not {self.fingerprint}"
            )
        if not signed.valid(self.public):
            raise Fault(seq, f"the signature of checkpoint {seq} does not verify")
        self.signed.append(signed.seq)
        if signed.seq >= self.since:
            self.covered = max(self.covered, signed.seq)

    def _trail_event(self, seq: int, payload: dict[str, Any]) -> None:
        action, trail, key = payload.get("action"), payload.get("trail"), payload.get("key")
        events, seconds = payload.get("checkpoint_events"), payload.get("checkpoint_seconds")
        if not (
            action in ACTIONS
            and isinstance(trail, str)
            and TRAIL_ID.fullmatch(trail)
            and isinstance(events, int)
            and not isinstance(events, bool)
            and events > 0
            and isinstance(seconds, int | float)
            and not isinstance(seconds, bool)
            and seconds > 0
        ):
            raise Fault(seq, f"trail event {seq} is malformed")
        if action == "create":
            if seq != 1:
                raise Fault(seq, f"event {seq} is a second genesis: trails are not spliced")
            self.trail = trail
        elif self.trail is None and seq > 1:
            self.trail = trail  # a walk that began after the genesis (an export's run)
        elif trail != self.trail:
            raise Fault(seq, f"trail event {seq} names trail {trail}, not {self.trail}")
        if key != self.fingerprint:
            raise Fault(seq, f"trail event {seq} names key {key}, not {self.fingerprint}")
        if action in ("seal", "retire"):
            _segment(seq, payload)
        self.intervals.append(Interval(seq, events, float(seconds)))


def _segment(seq: int, payload: dict[str, Any]) -> None:
    """A seal or a retirement names the segment's events, the last one's hash, and the file."""
    first, last, digest = payload.get("first"), payload.get("last"), payload.get("hash")
    if not (
        isinstance(first, int)
        and isinstance(last, int)
        and 0 < first <= last < seq
        and isinstance(digest, str)
        and isinstance(payload.get("segment"), str)
    ):
        raise Fault(seq, f"trail event {seq} is malformed")


def begin(walk: Walk, conn: sqlite3.Connection) -> None:
    """Start ``walk`` where the trail begins: at its genesis, or after the sealed segments
    that were retired from it, as the newest retirement recorded in the trail says.

    The active file's meta only says where that retirement is; the retirement itself is an
    event of the chain, walked and signed like any other. A retired segment still on the
    disk (the recorder stopped before it could delete it) is passed over.
    """
    row = conn.execute("SELECT seq, prev_hash FROM events ORDER BY seq LIMIT 1").fetchone()
    if row is None:
        return
    first, prev = int(row[0]), str(row[1])
    found = conn.execute("SELECT value FROM main.meta WHERE key = 'retired'").fetchone()
    if found is None:
        if first == 1:
            return
        raise Fault(
            1,
            f"events 1 to {first - 1} are missing, and no retirement recorded in the trail"
            " accounts for them: they were cut",
        )
    retire = None
    if str(found[0]).isdigit():
        at = conn.execute(
            "SELECT type, payload FROM events WHERE seq = ?", (int(found[0]),)
        ).fetchone()
        if at is not None and at[0] == chain.TRAIL:
            retire = _parse(chain.TRAIL, at[1])
    if not isinstance(retire, dict) or retire.get("action") != "retire":
        raise Fault(
            None,
            f"the trail's meta names event {found[0]} as its newest retirement, and it is not"
            " one: the meta was changed",
        )
    last = retire.get("last")
    if isinstance(last, int) and last > 0 and first <= last:  # retired, not yet deleted
        after = conn.execute("SELECT prev_hash FROM events WHERE seq = ?", (last + 1,))
        held = after.fetchone()
        first, prev = last + 1, "" if held is None else str(held[0])
    if last != first - 1 or retire.get("hash") != prev:
        raise Fault(
            first,
            f"the trail begins at event {first}, but the retirement recorded at event"
            f" {found[0]} ends at event {last}: segments were cut or replaced",
        )
    walk.restart(first, prev)
    walk.retired = first - 1


def _hash_at(conn: sqlite3.Connection, seq: int) -> str | None:
    row = conn.execute("SELECT hash FROM events WHERE seq = ?", (seq,)).fetchone()
    return None if row is None else str(row[0])


def _parse(type: str, text: str) -> Any:
    """An event's payload, or None if it is not JSON.

    orjson reads a payload in a third of the stdlib's time, and a text it reads is read alike
    by the stdlib, up to the precision of huge numbers; what it refuses (NaN, lone
    surrogates) the stdlib decides. The events whose fields the walk checks (trails and
    checkpoints, one in a thousand) are read by the stdlib alone, numbers exact.
    """
    if type not in (chain.CHECKPOINT, chain.TRAIL):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(text)
    except ValueError:
        return None
