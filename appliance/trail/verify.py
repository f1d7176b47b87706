"""Checking a trail end to end: the hash chain, the checkpoint signatures, the cut tail."""

from __future__ import annotations

import bisect
import json
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.trail import chain, db, keys
from appliance.trail.checkpoint import Checkpoint


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome: ``events`` counts the events checked good before any fault.

    ``uncovered`` counts the events (checkpoints aside) after what the last checkpoint
    covers: their chain is intact but no signature vouches for them yet.
    """

    ok: bool
    events: int
    checkpoints: int
    uncovered: int
    first_bad_seq: int | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Fault(Exception):
    def __init__(self, seq: int | None, reason: str) -> None:
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


@dataclass(slots=True)
class _Walk:
    """What the walk has learned so far, in seq order."""

    public: Ed25519PublicKey
    fingerprint: str
    external: Checkpoint | None
    prev: str = chain.GENESIS
    events: int = 0
    others: int = 0  # events that are not checkpoints
    covered: int = 0  # the highest seq a good checkpoint vouches for
    checkpoint_seqs: list[int] = field(default_factory=list)

    def uncovered(self) -> int:
        # Seqs are contiguous from 1, so the events up to ``covered`` that are not
        # checkpoints number ``covered`` less the checkpoints among them.
        signed = self.covered - bisect.bisect_right(self.checkpoint_seqs, self.covered)
        return self.others - signed


def verify(path: Path, public: Ed25519PublicKey, external: Checkpoint | None = None) -> Report:
    """Walk every event of the trail at ``path`` in order; stop at the first fault.

    ``external`` is the checkpoint kept outside the trail: the trail must still hold the
    event it names, with the same hash, or its tail was cut (or rewritten).
    """
    walk = _Walk(public, keys.fingerprint(public), external)
    with db.reading(path) as conn:
        conn.execute("BEGIN")  # one snapshot, even while the recorder keeps appending
        try:
            if external is not None:
                _check_signed(walk, external, "the checkpoint file", None)
            rows = conn.execute(
                "SELECT seq, ts, type, session, payload, prev_hash, hash FROM events ORDER BY seq"
            )
            for row in rows:
                _step(walk, conn, row)
                walk.events += 1
            if external is not None and external.seq > walk.events:
                raise _Fault(
                    walk.events + 1,
                    f"the trail ends at event {walk.events}, but the checkpoint file vouches"
                    f" for event {external.seq}: the tail was cut",
                )
        except _Fault as fault:
            return Report(
                False, walk.events, _count(walk), walk.uncovered(), fault.seq, fault.reason
            )
        finally:
            conn.execute("ROLLBACK")
    return Report(True, walk.events, _count(walk), walk.uncovered())


def _count(walk: _Walk) -> int:
    return len(walk.checkpoint_seqs)


def _step(walk: _Walk, conn: sqlite3.Connection, row: tuple[Any, ...]) -> None:
    seq, ts, type, session, text, prev_hash, digest = row
    expected = walk.events + 1
    if seq != expected:
        if isinstance(seq, int) and seq > expected:
            raise _Fault(expected, f"event {expected} is missing (the next event is {seq})")
        raise _Fault(seq, f"event {seq} is out of sequence (expected {expected})")
    if not (
        isinstance(ts, int)
        and chain.valid_field(type)
        and (session is None or chain.valid_field(session))
        and isinstance(text, str)
        and isinstance(prev_hash, str)
        and isinstance(digest, str)
    ):
        raise _Fault(seq, f"event {seq} has a malformed field")
    if prev_hash != walk.prev:
        raise _Fault(seq, f"event {seq} does not follow event {seq - 1} (its prev_hash differs)")
    if chain.event_hash(prev_hash, seq, ts, type, session, text) != digest:
        raise _Fault(seq, f"event {seq} does not match its hash: it was changed")
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise _Fault(seq, f"event {seq} has a payload that is not a JSON object")
    if type == chain.CHECKPOINT:
        signed = Checkpoint.from_dict(payload)
        if signed is None:
            raise _Fault(seq, f"checkpoint {seq} is malformed")
        if not 0 < signed.seq < seq:
            raise _Fault(
                seq, f"checkpoint {seq} vouches for event {signed.seq}, not an earlier one"
            )
        covered = (
            walk.prev
            if signed.seq == seq - 1
            else conn.execute("SELECT hash FROM events WHERE seq = ?", (signed.seq,)).fetchone()[0]
        )
        if covered != signed.hash:
            raise _Fault(
                seq,
                f"checkpoint {seq} signed a different event {signed.seq} than the trail holds:"
                " events up to it were changed and rehashed",
            )
        _check_signed(walk, signed, f"checkpoint {seq}", seq)
        walk.checkpoint_seqs.append(seq)
        walk.covered = max(walk.covered, signed.seq)
    else:
        walk.others += 1
    if walk.external is not None and walk.external.seq == seq and walk.external.hash != digest:
        raise _Fault(
            seq,
            f"event {seq} differs from the one the checkpoint file vouches for:"
            " the trail was rewritten from there on",
        )
    walk.prev = digest


def _check_signed(walk: _Walk, signed: Checkpoint, what: str, seq: int | None) -> None:
    if signed.key != walk.fingerprint:
        raise _Fault(seq, f"{what} was signed by key {signed.key}, not {walk.fingerprint}")
    if not keys.signature_ok(walk.public, signed.seq, signed.hash, signed.signature):
        raise _Fault(seq, f"the signature of {what} does not verify")
