"""Sealing the active file into segments, reading across them, retiring them, and what an
attacker or a crash can do to them."""

from __future__ import annotations

import itertools
import os
import sqlite3

import pytest
from trailkit import SEGMENT, Clock, check, fill, grow, sealed_trail

from appliance.config import TrailSettings
from appliance.trail import db, query, segments
from appliance.trail.db import TrailError
from appliance.trail.follow import Reader, Tail
from appliance.trail.store import Trail


def test_the_active_file_is_sealed_at_a_checkpoint_and_the_chain_goes_on(
    sealing: TrailSettings, clock: Clock
) -> None:
    trail = Trail.open(sealing, clock=clock)
    grow(trail, clock, 3)
    trail.close()
    head = trail.head
    found = segments.sealed(sealing.path)
    assert next(s.first for s in found) == 1
    for before, after in itertools.pairwise(found):
        assert after.first == before.last + 1
    for segment in found:
        assert segment.path.stat().st_mode & 0o777 == 0o400
        assert not segment.path.with_name(segment.path.name + "-wal").exists()
        with db.reading(segment.path) as conn:  # a segment alone is a trail of its own events
            last = conn.execute("SELECT type FROM events WHERE seq = ?", (segment.last,))
            assert last.fetchone()[0] == "checkpoint"
    report = check(sealing, clock)
    assert report.ok, report
    assert report.events == head[0]
    assert report.retired == 0
    with db.reading(sealing.path) as conn:
        assert db.last_seq(conn) == head[0]
        (count,) = conn.execute("SELECT count(*) FROM events").fetchone()
        assert count == head[0]
        seals = conn.execute(
            "SELECT json_extract(payload, '$.segment') FROM events"
            " WHERE type = 'trail' AND json_extract(payload, '$.action') = 'seal'"
        ).fetchall()
    assert [name for (name,) in seals] == [s.path.name for s in found]


def test_a_session_open_across_a_seal_is_read_whole(sealing: TrailSettings, clock: Clock) -> None:
    trail = Trail.open(sealing, clock=clock)
    trail.append("session_start", "long", {"client": "127.0.0.1:6000", "db_user": "u"})
    trail.append("command", "long", {"n": 1, "kind": "query", "text": "SELECT 'before'"})
    trail.commit()
    grow(trail, clock, 2)
    trail.append("command", "long", {"n": 2, "kind": "query", "text": "SELECT 'after'"})
    trail.append("session_end", "long", {"reason": "client closed", "commands": 2})
    trail.close()
    with db.reading(sealing.path) as conn:
        detail = query.session_detail(conn, "long")
        listed = {s.id: s for s in query.list_sessions(conn)}
        found = {m.command.payload["text"] for m in query.search(conn, "SELECT '")}
    assert [c.command.payload["text"] for c in detail.commands] == [
        "SELECT 'before'",
        "SELECT 'after'",
    ]
    assert detail.info.end is not None
    assert listed["long"].commands == 2 and listed["long"].end is not None
    assert found == {"SELECT 'before'", "SELECT 'after'"}
    assert len(listed) > 2


def test_tail_follows_the_trail_across_a_seal(sealing: TrailSettings, clock: Clock) -> None:
    trail = Trail.open(sealing, clock=clock)
    fill(trail, clock, sessions=1)
    tail = Tail(Reader(sealing.path))
    start = tail.start(tail.head(), 0)
    grow(trail, clock, 1)
    trail.append("session_start", "late", {"client": "127.0.0.1:6001", "db_user": "u"})
    trail.append("command", "late", {"n": 1, "kind": "query", "text": "SELECT 'late'"})
    trail.commit()
    texts = []
    while True:
        batch = tail.read(start)
        texts += [entry.event.payload.get("text") for entry in batch.entries]
        start = batch.seq
        if not batch.more:
            break
    assert "SELECT 'late'" in texts
    assert any(t and t.startswith("SELECT 1, ") for t in texts)
    trail.close()


def test_a_retired_segment_is_recorded_then_deleted(sealing: TrailSettings, clock: Clock) -> None:
    trail = Trail.open(sealing, clock=clock)
    grow(trail, clock, 3)
    oldest, second = segments.sealed(sealing.path)[:2]
    trail.checkpoint()  # nothing unsigned: the next commits hold retirements alone
    trail.retirable = second.last  # the copy off the host holds (and verified) both
    trail.commit()
    assert not oldest.path.exists()
    trail.commit()
    assert not second.path.exists()
    trail.close()
    report = check(sealing, clock)
    assert report.ok, report
    assert report.retired == second.last
    assert report.uncovered == 0  # a commit of retirements alone is signed like any other
    with db.reading(sealing.path) as conn:
        retired = conn.execute(
            "SELECT json_extract(payload, '$.last'), json_extract(payload, '$.held_by')"
            " FROM events WHERE type = 'trail' AND json_extract(payload, '$.action') = 'retire'"
        ).fetchall()
        assert retired == [(oldest.last, "central"), (second.last, "central")]
        assert db.trail_id(conn) == report.trail  # the genesis is gone; the meta names it
    again = Trail.open(sealing, clock=clock)  # resumes after the retired events
    fill(again, clock, sessions=1)
    again.close()
    assert check(sealing, clock).ok


def test_nothing_is_retired_beyond_what_the_copy_verified(
    sealing: TrailSettings, clock: Clock
) -> None:
    trail = Trail.open(sealing, clock=clock)
    grow(trail, clock, 2)
    oldest = segments.sealed(sealing.path)[0]
    trail.retirable = oldest.last - 1
    fill(trail, clock, sessions=2)
    assert oldest.path.exists()
    trail.close()


def test_sealing_stops_at_the_limit_until_a_segment_is_retired(
    sealing: TrailSettings, clock: Clock
) -> None:
    trail = Trail.open(sealing, clock=clock)
    grow(trail, clock, segments.MAX_SEALED)
    while sealing.path.stat().st_size <= 2 * SEGMENT:
        fill(trail, clock, sessions=20)
    assert len(segments.sealed(sealing.path)) == segments.MAX_SEALED
    assert sealing.path.stat().st_size > 2 * SEGMENT  # the active file grows instead
    trail.retirable = segments.sealed(sealing.path)[0].last
    fill(trail, clock, sessions=1)
    found = segments.sealed(sealing.path)
    assert len(found) == segments.MAX_SEALED  # one retired, then the big active file sealed
    assert found[-1].size > 2 * SEGMENT
    trail.close()
    assert check(sealing, clock).ok


# --- what an attacker, or a crash, does to the segments --------------------------------


def test_a_deleted_segment_is_a_cut(sealing: TrailSettings, clock: Clock) -> None:
    found = sealed_trail(sealing, clock)
    os.unlink(found[1].path)
    report = check(sealing, clock)
    assert not report.ok
    assert report.first_bad_seq == found[1].first
    assert "missing" in (report.reason or "")
    with pytest.raises(TrailError, match="FAULT"):
        Trail.open(sealing, clock=clock)


def test_the_oldest_segment_deleted_without_a_retirement_is_a_cut(
    sealing: TrailSettings, clock: Clock
) -> None:
    found = sealed_trail(sealing, clock)
    os.unlink(found[0].path)
    report = check(sealing, clock)
    assert not report.ok
    assert "no retirement" in (report.reason or "")
    with pytest.raises(TrailError, match="no retirement"):
        Trail.open(sealing, clock=clock)


def test_a_retirement_cannot_be_stretched_over_more_segments(
    sealing: TrailSettings, clock: Clock
) -> None:
    trail = Trail.open(sealing, clock=clock)
    grow(trail, clock, 3)
    trail.retirable = segments.sealed(sealing.path)[0].last
    trail.commit()
    trail.close()
    # Delete one more segment: the recorded retirement ends before what the trail now starts.
    os.unlink(segments.sealed(sealing.path)[0].path)
    report = check(sealing, clock)
    assert not report.ok
    assert "ends at event" in (report.reason or "")


def test_a_sealed_segment_changed_is_caught(sealing: TrailSettings, clock: Clock) -> None:
    found = sealed_trail(sealing, clock)
    os.chmod(found[1].path, 0o600)
    conn = sqlite3.connect(found[1].path, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET ts = ts + 1 WHERE seq = ?", (found[1].first + 5,))
    conn.close()
    report = check(sealing, clock)
    assert not report.ok
    assert report.first_bad_seq == found[1].first + 5


def test_a_seal_cut_short_before_the_move_is_undone(sealing: TrailSettings, clock: Clock) -> None:
    sealed_trail(sealing, clock, 1)
    segments.next_file(sealing.path).write_bytes(b"half made")
    trail = Trail.open(sealing, clock=clock)
    fill(trail, clock, sessions=1)
    trail.close()
    assert not segments.next_file(sealing.path).exists()
    assert check(sealing, clock).ok


def test_a_seal_cut_short_after_the_move_is_finished(sealing: TrailSettings, clock: Clock) -> None:
    trail = Trail.open(sealing, clock=clock)
    grow(trail, clock, 1)
    trail.close()
    # Seal by hand as the recorder does, and stop between the two renames.
    last = Trail.open(sealing, clock=clock)
    last.close()
    found = segments.sealed(sealing.path)
    with db.reading(sealing.path) as conn:
        head = db.last_seq(conn)
    first = found[-1].last + 1
    target = segments.path_of(sealing.path, first, head)
    nxt = segments.next_file(sealing.path)
    with sqlite3.connect(nxt) as conn:
        conn.executescript(db.SCHEMA)
        with db.reading(sealing.path) as old:
            meta = db.meta(old)
        meta["first"] = str(head + 1)
        conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    conn.close()
    os.rename(sealing.path, target)
    assert not sealing.path.exists()
    with pytest.raises(TrailError, match="no such trail file"):  # waits a moment, then says so
        db.reading(sealing.path).__enter__()
    trail = Trail.open(sealing, clock=clock)
    fill(trail, clock, sessions=1)
    trail.close()
    assert check(sealing, clock).ok
