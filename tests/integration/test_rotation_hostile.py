"""witness.held under attack, with a real PostgreSQL: what a tampered central store cannot
make a bastion believe about a sealed segment before it deletes its own copy."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from centralstore import Central

from appliance.config import AnchorSettings, TrailSettings
from appliance.trail import central, centralverify, chain, db, keys, segments, shipper
from appliance.trail.store import Trail

SEGMENT = 48 * 1024
ODD = [
    "SELECT 'é', '日本語', '🦀', 'a\u0301'",  # non-ASCII, astral, combining
    "SELECT '\u2028\u2029\x85'",  # line and paragraph separators, NEL
    "SELECT '\x00\x01\x1f\x7f'",  # control characters, NUL (escaped in the JSON)
    "SELECT '\ud800'",  # a lone surrogate: salvaged to ASCII
    "SELECT '\"\\\\'",  # quotes and backslashes
]


@pytest.fixture(scope="module")
def store() -> Iterator[Central]:
    found = Central()
    yield found
    found.server.remove()


class Clock:
    def __init__(self) -> None:
        import time

        self.now = time.time()  # today: the store has partitions for it

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Sealed:
    settings: TrailSettings
    trail: str
    segment: segments.Segment
    rows: list[central.Row]


def sealed_trail(directory: Path) -> Sealed:
    """A trail of odd payloads with one sealed segment (and events after it)."""
    settings = TrailSettings(
        path=directory / "trail.db",
        signing_key=directory / "keys" / "trail.key",
        checkpoint_events=5,
        checkpoint_seconds=3600,
        segment_bytes=SEGMENT,
        retire="central",
    )
    clock = Clock()
    trail = Trail.open(settings, clock=clock)
    n = 0
    while not segments.sealed(settings.path):
        n += 1
        sid = None if n % 3 == 0 else f"s{n}"  # some events have no session
        for text in ODD:
            clock.now += 0.001
            trail.append("command", sid, {"n": n, "kind": "query", "text": text})
        trail.commit()
    trail.close()
    with db.reading(settings.path) as conn:
        trail_id = db.trail_id(conn)
    assert trail_id is not None
    return Sealed(
        settings, trail_id, segments.sealed(settings.path)[0], shipper.unshipped(settings.path, 0)
    )


def held(store: Central, bastion: str, sealed: Sealed) -> str | None:
    settings = AnchorSettings(dsn=store.url(bastion))
    with psycopg.connect(store.url(bastion)) as conn:
        return central.held(
            conn,
            settings,
            sealed.trail,
            first=sealed.segment.first,
            last=sealed.segment.last,
            ends=db.segment_ends(sealed.segment),
        )


def ship(store: Central, bastion: str, sealed: Sealed) -> None:
    with psycopg.connect(store.url(bastion)) as conn:
        central.ship(conn, AnchorSettings(dsn=store.url(bastion)), sealed.trail, sealed.rows)


def test_odd_payloads_are_held_as_the_bastion_hashes_them(store: Central, tmp_path: Path) -> None:
    sealed = sealed_trail(tmp_path)
    ship(store, "b1", sealed)
    assert held(store, "b1", sealed) is None
    # Another bastion's role holds nothing of it.
    assert held(store, "b2", sealed) is not None


def test_another_bastions_rows_never_fill_a_gap(store: Central, tmp_path: Path) -> None:
    sealed = sealed_trail(tmp_path)
    ship(store, "b1", sealed)
    ship(store, "b2", sealed)  # a copy under the same trail id, as another bastion
    middle = sealed.segment.first + 3
    store.admin(
        "DELETE FROM witness.events WHERE bastion = 'b1' AND trail = %s AND seq = %s",
        sealed.trail, middle,
    )  # fmt: skip
    assert held(store, "b1", sealed) is not None


def test_a_seq_held_twice_is_not_held(store: Central, tmp_path: Path) -> None:
    sealed = sealed_trail(tmp_path)
    ship(store, "b1", sealed)
    row = next(r for r in sealed.rows if r[0] == sealed.segment.first + 3)
    with psycopg.connect(store.url("b1")) as conn:  # same seq, another ts: the key differs
        central.ship(
            conn,
            AnchorSettings(dsn=store.url("b1")),
            sealed.trail,
            [(row[0], row[1] + 1, *row[2:])],
        )
    assert "rows" in (held(store, "b1", sealed) or "")


def test_a_rewritten_and_rehashed_event_is_not_held(store: Central, tmp_path: Path) -> None:
    sealed = sealed_trail(tmp_path)
    ship(store, "b1", sealed)
    # The store's owner changes a payload and rehashes it and every later link of the
    # segment: every hash and link in the store checks, only the end differs.
    prev = None
    changes = []
    for row in sealed.rows:
        seq, ts, type_, session, payload, prev_hash, _ = row
        if seq < sealed.segment.first + 3 or seq > sealed.segment.last:
            continue
        if prev is None:
            payload = payload.replace("SELECT", "select")
            prev = prev_hash
        digest = chain.event_hash(prev, seq, ts, type_, session, payload)
        changes.append((payload, prev, digest, sealed.trail, seq))
        prev = digest
    with psycopg.connect(store.url("postgres")) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "UPDATE witness.events SET payload = %s, prev_hash = %s, hash = %s"
            " WHERE bastion = 'b1' AND trail = %s AND seq = %s",
            changes,
        )
    assert "not the ones this bastion holds" in (held(store, "b1", sealed) or "")


def test_a_store_whose_copy_no_longer_verifies_does_not_hold_it(
    store: Central, tmp_path: Path
) -> None:
    sealed = sealed_trail(tmp_path)
    ship(store, "b1", sealed)
    store.admin(
        "UPDATE witness.events SET session = '' WHERE bastion = 'b1' AND trail = %s"
        " AND session IS NULL AND seq BETWEEN %s AND %s",
        sealed.trail, sealed.segment.first, sealed.segment.last,
    )  # fmt: skip
    with psycopg.connect(store.url("postgres")) as conn:
        report = centralverify.verify_trail(
            conn, "b1", sealed.trail, keys.load_public(sealed.settings.public_key)
        )
    assert not report.ok  # the store's copy no longer verifies...
    assert held(store, "b1", sealed) is not None  # ...and held says it does not hold it
