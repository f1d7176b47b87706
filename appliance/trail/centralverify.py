"""Checking the central store: each bastion's chain walked as ``witness verify`` walks a
local trail (every link, every hash, every checkpoint's signature with that bastion's key),
from its genesis or from where retention cut it; and, on a bastion, its own trail compared
with what it shipped."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.trail import central, db
from appliance.trail.walk import PROGRESS_EVERY, Fault, Walk


@dataclass(frozen=True, slots=True)
class TrailReport:
    """One trail as the store holds it: ``events`` is the last seq checked good, ``cut``
    the seq retention dropped the chain up to (None: it starts at its genesis), and
    ``local`` what comparing it with the bastion's own trail found (None: not compared)."""

    bastion: str
    trail: str
    ok: bool
    events: int
    checkpoints: int
    uncovered: int
    cut: int | None = None
    anchored: int = 0  # checkpoints an anchor in the same database vouches for
    first_bad_seq: int | None = None
    reason: str | None = None
    local: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_trail(
    conn: psycopg.Connection[Any],
    bastion: str,
    trail: str,
    public: Ed25519PublicKey,
    progress: Callable[[int], None] | None = None,
) -> TrailReport:
    """Walk the chain of ``trail`` as ``bastion`` shipped it; stop at the first fault."""
    walk = Walk(public)
    walk.trail = trail
    vouched = central.anchored(conn, bastion, trail)
    for seq, digest in vouched:
        walk.vouch(seq, digest, "the anchor")
    found = central.cut(conn, bastion, trail)
    if found is not None:  # retention dropped the chain up to here: go on from its cut
        walk.start_after(found.seq, found.hash)
        walk.since = found.seq + 1
    cut = None if found is None else found.seq

    def lookup(seq: int) -> str | None:
        return central.event_hash(conn, bastion, trail, seq)

    try:
        for row in central.events(conn, bastion, trail, walk.seq):
            if row[0] == walk.seq and walk.seq:
                raise Fault(row[0], f"event {row[0]} was shipped twice, with different contents")
            walk.step(row, lookup)
            if progress is not None and not walk.seq % PROGRESS_EVERY:
                progress(walk.seq)
        if walk.seq == 0:
            raise Fault(None, "the store holds no event of this trail")
    except Fault as fault:
        return _report(walk, bastion, trail, cut, fault, len(vouched))
    return _report(walk, bastion, trail, cut, None, len(vouched))


def _report(  # noqa: PLR0917
    walk: Walk, bastion: str, trail: str, cut: int | None, fault: Fault | None, anchored: int
) -> TrailReport:
    return TrailReport(
        bastion=bastion,
        trail=trail,
        ok=fault is None,
        events=walk.seq,
        checkpoints=len(walk.signed),
        uncovered=max(0, walk.seq - walk.covered),
        cut=cut,
        anchored=anchored,
        first_bad_seq=None if fault is None else fault.seq,
        reason=None if fault is None else fault.reason,
    )


def compare_local(
    conn: psycopg.Connection[Any], bastion: str, report: TrailReport, path: Path
) -> TrailReport:
    """``report`` with what comparing the store's copy with the local trail at ``path``
    found: the first event at which they differ is a fault (one of the two was rewritten
    after shipping)."""
    with db.reading(path) as local:
        if db.trail_id(local) != report.trail:
            return report
        # From the later of the store's cut and the bastion's retirement: what either
        # holds no more is not compared.
        row = local.execute("SELECT seq FROM events ORDER BY seq LIMIT 1").fetchone()
        start = max(report.cut or 0, 0 if row is None else int(row[0]) - 1)
        mine = local.execute(
            "SELECT seq, hash FROM events WHERE seq > ? AND seq <= ? ORDER BY seq",
            (start, report.events),
        )
        differs = _first_difference(mine, central.events(conn, bastion, report.trail, start))
    if differs is None:
        return _with(report, local=f"agrees with {path} from event {start + 1} to {report.events}")
    return _with(
        report,
        ok=False,
        first_bad_seq=differs,
        reason=f"the bastion's trail {path} and what it shipped differ at event {differs}",
        local=f"differs from {path} at event {differs}",
    )


def _first_difference(
    mine: Iterable[tuple[int, str]], shipped: Iterable[central.Row]
) -> int | None:
    theirs = iter(shipped)
    for seq, digest in mine:
        row = next(theirs, None)
        if row is None or row[0] != seq or row[6] != digest:
            return int(seq)
    return None


def _with(report: TrailReport, **changes: Any) -> TrailReport:
    return TrailReport(**{**report.as_dict(), **changes})
