"""Checking a trail end to end: the chain, its signatures, what vouches for it from outside
(the checkpoint file, the anchor), and the tail no checkpoint covers yet."""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.trail import chain, db
from appliance.trail.checkpoint import Checkpoint, Head, read_file
from appliance.trail.walk import Fault, Walk, begin

# A running recorder signs its tail at most one interval after the tail's first event; this
# allows for a timer that fires late, a slow commit, and a little difference between clocks.
TAIL_GRACE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome: ``events`` counts the events checked good before any fault.

    ``uncovered`` counts the events (checkpoints aside) after what the last checkpoint
    covers: their chain is intact but no signature vouches for them yet. With an anchor,
    ``anchored`` counts its checkpoints of this trail (all checked against the trail), and
    ``unanchored`` the trail's checkpoints newer than the newest of them.
    """

    ok: bool
    events: int
    checkpoints: int
    uncovered: int
    first_bad_seq: int | None = None
    reason: str | None = None
    trail: str | None = None
    anchored: int | None = None
    unanchored: int | None = None
    retired: int = 0  # events 1 to this were retired: held off the host, deleted here

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify(
    path: Path,
    public: Ed25519PublicKey,
    checkpoint_file: Path | None,
    *,
    anchor: Sequence[Checkpoint] | None = None,
    open_tail: bool = False,
    now: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Walk every event of the trail at ``path`` in order; stop at the first fault.

    ``checkpoint_file`` holds the head the recorder signed at its last checkpoint: the trail
    must still hold that event, and the file must exist (every trail has a checkpoint).
    ``anchor`` holds the checkpoints of this trail that were published off the host. An
    uncovered tail longer or older than the trail's checkpoint interval allows is a fault,
    unless ``open_tail``: the trail is still being written, or its recorder crashed.
    ``progress`` is told (events walked, events in the trail) as the walk goes on.
    """
    walk = Walk(public)
    with db.reading(path) as conn:
        conn.execute("BEGIN")  # one snapshot, even while the recorder keeps appending
        try:
            try:
                head = _vouch_for_head(walk, checkpoint_file)
                if anchor is not None:
                    _vouch_for_anchor(walk, anchor)
                misnamed = db.misnamed(conn)
                if misnamed is not None:
                    raise Fault(None, misnamed)
                begin(walk, conn)
                if progress is None:
                    walk.run(conn)
                else:
                    total = db.last_seq(conn)
                    walk.run(conn, progress=lambda seq: progress(seq, total))
                    progress(walk.seq, total)
                _check_end(walk, conn, checkpoint_file, head)
                if not open_tail:
                    _check_tail(walk, conn, time.time() if now is None else now)
            except Fault as fault:
                return _report(walk, conn, anchor, fault)
            return _report(walk, conn, anchor, None)
        finally:
            conn.execute("ROLLBACK")


def _report(
    walk: Walk, conn: sqlite3.Connection, anchor: Sequence[Checkpoint] | None, fault: Fault | None
) -> Report:
    unanchored = None
    if anchor is not None:
        newest = max((a.seq for a in anchor), default=0)
        unanchored = sum(1 for seq in walk.signed if seq > newest)
    return Report(
        ok=fault is None,
        events=walk.seq,
        checkpoints=len(walk.signed),
        uncovered=walk.tail(conn)[0],
        first_bad_seq=None if fault is None else fault.seq,
        reason=None if fault is None else fault.reason,
        trail=walk.trail,
        anchored=None if anchor is None else len(anchor),
        unanchored=unanchored,
        retired=walk.retired,
    )


def _vouch_for_head(walk: Walk, path: Path | None) -> Head | None:
    if path is None or not path.exists():
        return None
    head = read_file(path)
    if head.key != walk.fingerprint:
        raise Fault(None, f"{path} was signed by key {head.key}, not {walk.fingerprint}")
    if not head.valid(walk.public):
        raise Fault(
            None,
            f"the signature of {path} does not verify: the recorder did not write it (a"
            " checkpoint file made from the trail's own checkpoints does not verify)",
        )
    walk.vouch(head.seq, head.hash, "the checkpoint file")
    return head


def _vouch_for_anchor(walk: Walk, anchor: Sequence[Checkpoint]) -> None:
    if not anchor:
        raise Fault(
            None,
            "the anchor holds no checkpoint of this trail: its recorder never reached the"
            " anchor (see witness status), or this is not the trail it published",
        )
    for signed in anchor:
        if signed.key != walk.fingerprint:
            raise Fault(
                signed.seq,
                f"the anchor's checkpoint of event {signed.seq} was signed by key"
                f" {signed.key}, not {walk.fingerprint}: the trail was signed again with"
                " another key",
            )
        if not signed.valid(walk.public):
            raise Fault(
                signed.seq,
                f"the signature of the anchor's checkpoint of event {signed.seq} does not verify",
            )
        walk.vouch(signed.seq, signed.hash, "the anchor")


def _check_end(
    walk: Walk, conn: sqlite3.Connection, checkpoint_file: Path | None, head: Head | None
) -> None:
    if walk.seq == 0:
        raise Fault(1, "the trail is empty: a Witness trail holds at least its genesis, signed")
    if walk.seq < 2:
        raise Fault(2, "the trail ends before the checkpoint that signs its genesis")
    beyond = [seq for seq in walk.vouched if seq > walk.seq]
    if beyond:
        seq = max(beyond)
        raise Fault(
            walk.seq + 1,
            f"the trail ends at event {walk.seq}, but {walk.vouched[seq][1]} vouches for"
            f" event {seq}: the tail was cut",
        )
    if checkpoint_file is not None and head is None:
        raise Fault(
            None,
            f"{checkpoint_file}: no such checkpoint file, although the trail holds"
            f" {len(walk.signed)} signed checkpoint(s): it was removed (or left behind by"
            " a copy; give --checkpoint FILE)",
        )


def _check_tail(walk: Walk, conn: sqlite3.Connection, now: float) -> None:
    count, first, ts = walk.tail(conn)
    interval = walk.interval()
    if not count or first is None or ts is None or interval is None:
        return
    if count > interval.events:
        raise Fault(
            first,
            f"the {count} events from event {first} on are not covered by a checkpoint,"
            f" though the recorder signs every {interval.events} events: its recorder"
            " stopped without signing them (a crash: accept with --open-tail), or they were"
            " appended by someone without the key",
        )
    age = now - ts / 1e6
    if age > interval.seconds + TAIL_GRACE_SECONDS:
        raise Fault(
            first,
            f"event {first} is {age:.0f} s old and not yet covered by a checkpoint, though"
            f" the recorder signs every {interval.seconds:g} s: its recorder stopped without"
            " signing it (a crash: accept with --open-tail), or it was appended by someone"
            " without the key",
        )


@dataclass(frozen=True, slots=True)
class ExportReport:
    """The outcome of checking an export of the trail (its events in seq order, with gaps
    where a filter left events out). ``events`` counts the events checked good before any
    fault; of those, checkpoints aside, ``vouched`` are covered by a signed checkpoint in
    the export through an unbroken run of events up to it, and ``unvouched`` are not (after
    a gap, or after the last checkpoint, from event ``first_unvouched`` on); ``gaps``
    counts the places where events are missing."""

    ok: bool
    events: int
    vouched: int
    unvouched: int
    gaps: int
    checkpoints: int
    first: int | None = None
    last: int | None = None
    trail: str | None = None
    first_bad_seq: int | None = None
    reason: str | None = None
    first_unvouched: int | None = None

    @property
    def complete(self) -> bool:
        """The export holds the whole chain from its genesis, with no gap."""
        return self.first == 1 and self.gaps == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}


RECENT = 65_536
"""Events an export's check remembers, for a checkpoint that signs an event other than the
one just before it (the recorder never makes one)."""

Row = tuple[Any, int, str, str | None, str, str, str]


class _Tally:
    """Counts what an export's walk vouches for, run by run (a run ends at a gap)."""

    def __init__(self) -> None:
        self.events = 0
        self.counted = 0  # events walked, checkpoints aside
        self.vouched = 0
        self.gaps = 0
        self.first: int | None = None
        self.first_unvouched: int | None = None
        self.base = 0  # ``counted`` when the run began
        self.covered = 0  # ``counted`` up to the last event a checkpoint of the run covers
        self.loose: int | None = None  # the first event of the run after what is covered
        # seq -> (hash, ``counted`` up to it), for the latest events
        self.recent: OrderedDict[int, tuple[str, int]] = OrderedDict()

    def hash_of(self, seq: int) -> str | None:
        found = self.recent.get(seq)
        return None if found is None else found[0]

    def walked(self, walk: Walk, type: str, covered: int) -> None:
        """Event ``walk.seq`` was good; ``covered`` was the walk's before it."""
        self.events += 1
        if self.first is None:
            self.first = walk.seq
        if walk.covered != covered and walk.covered >= walk.since:
            found = self.recent.get(walk.covered)
            self.covered = found[1] if found is not None else self.counted
            if self.covered == self.counted:
                self.loose = None
        if type != chain.CHECKPOINT:
            self.counted += 1
            if self.loose is None:
                self.loose = walk.seq
        self.recent[walk.seq] = (walk.prev, self.counted)
        if len(self.recent) > RECENT:
            self.recent.popitem(last=False)

    def end_run(self, walk: Walk) -> None:
        good = max(0, self.covered - self.base)
        self.vouched += good
        if good < self.counted - self.base and self.first_unvouched is None:
            self.first_unvouched = self.loose
        self.base = self.covered = self.counted
        self.loose = None


def verify_export(
    rows: Iterable[Row], public: Ed25519PublicKey, *, partial: bool = False
) -> ExportReport:
    """Check an export's events (rows of seq, ts, type, session, payload text, prev_hash,
    hash; iterating ``rows`` may raise Fault for one that cannot be read) with the walk
    ``verify`` uses.

    An unbroken run of events is checked as the trail is: every hash, every link, every
    checkpoint's signature, and a checkpoint vouches for the run up to the event it signs.
    After a gap the walk goes on from the next event, whose link to the events left out
    cannot be checked: nothing before it is vouched for by what follows. Every event
    (checkpoints aside) must be vouched for, unless ``partial``: a filtered export, or one
    whose last events were not yet signed when it was made.
    """
    walk = Walk(public)
    tally = _Tally()
    fault: Fault | None = None
    try:
        for row in rows:
            seq = row[0]
            if isinstance(seq, int) and seq > walk.seq + 1 and (tally.first is not None or seq > 1):
                if tally.first is not None:
                    tally.end_run(walk)
                    tally.gaps += 1
                walk.restart(seq, row[5])
            covered = walk.covered
            walk.step(row, tally.hash_of)
            tally.walked(walk, row[2], covered)
        if tally.first is None:
            raise Fault(None, "the export holds no event")
        tally.end_run(walk)
    except Fault as found:
        fault = found
    unvouched = tally.counted - tally.vouched
    if fault is None and unvouched and not partial:
        fault = Fault(
            tally.first_unvouched,
            f"{unvouched} of its {tally.counted} events (checkpoints aside) are not vouched"
            " for by a signed checkpoint in the export (after a gap, what a filter left out"
            " breaks the chain; at the end, events not yet signed when it was made);"
            " --partial accepts that",
        )
    return ExportReport(
        ok=fault is None,
        events=tally.events,
        vouched=tally.vouched,
        unvouched=unvouched,
        gaps=tally.gaps,
        checkpoints=len(walk.signed),
        first=tally.first,
        last=walk.seq if tally.first is not None else None,
        trail=walk.trail,
        first_bad_seq=None if fault is None else fault.seq,
        reason=None if fault is None else fault.reason,
        first_unvouched=tally.first_unvouched,
    )
