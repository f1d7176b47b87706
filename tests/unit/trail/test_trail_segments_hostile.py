"""Sealing and retiring under attack: what a crash, root, a slow courier or a bad copy off
the host can do to the sealed segments, and what the trail does about it."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from trailkit import SEGMENT, Clock, check, fill, grow, sealed_trail

from appliance.config import ExportSettings, TrailSettings
from appliance.export.forward import Forwarder
from appliance.trail import db, query, segments
from appliance.trail.db import TrailError
from appliance.trail.retire import Gate
from appliance.trail.store import Trail


class Killed(BaseException):
    """The recorder killed at this point."""


def trail_of(settings: TrailSettings) -> str:
    with db.reading(settings.path) as conn:
        found = db.trail_id(conn)
    assert found is not None
    return found


def kill(trail: Trail) -> None:
    """The recorder killed (-9): what it committed stays, nothing more is written."""
    conn, trail._conn = trail._conn, None
    if conn is not None:
        conn.close()


def test_kill_between_the_second_retirement_and_its_unlink_is_reopened(
    sealing: TrailSettings, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    trail = Trail.open(sealing, clock=clock)
    grow(trail, clock, 3)
    oldest, second = segments.sealed(sealing.path)[:2]
    trail.checkpoint()
    trail.retirable = oldest.last
    trail.commit()
    assert not oldest.path.exists()
    # The second retirement is committed; the recorder dies before the unlink.
    real_unlink = type(second.path).unlink

    def dies(path: Path, missing_ok: bool = False) -> None:
        if path == second.path:
            raise Killed
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(type(second.path), "unlink", dies)
    trail.retirable = second.last
    with pytest.raises(Killed):
        trail.commit()
    kill(trail)
    monkeypatch.undo()
    assert second.path.exists()
    report = check(sealing, clock)
    assert report.ok, report
    Trail.open(sealing, clock=clock).close()


def test_a_retired_segment_that_could_not_be_unlinked_leaves_no_gap(
    sealing: TrailSettings, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    trail = Trail.open(sealing, clock=clock)
    grow(trail, clock, 3)
    oldest, second = segments.sealed(sealing.path)[:2]
    trail.checkpoint()
    real_unlink = type(oldest.path).unlink

    def busy(path: Path, missing_ok: bool = False) -> None:
        if path == oldest.path:
            raise PermissionError(1, "Operation not permitted", str(path))
        return real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(type(oldest.path), "unlink", busy)
    trail.retirable = oldest.last
    trail.commit()
    monkeypatch.undo()
    assert oldest.path.exists()
    assert check(sealing, clock).ok  # so far, so good
    trail.retirable = second.last
    trail.commit()
    trail.close()
    report = check(sealing, clock)
    assert report.ok, report
    Trail.open(sealing, clock=clock).close()


def test_a_reader_holding_a_snapshot_neither_stalls_commits_nor_floods_the_trail(
    sealing: TrailSettings, clock: Clock
) -> None:
    trail = Trail.open(sealing, clock=clock)
    n = 0

    def command() -> float:
        nonlocal n
        n += 1
        trail.append("command", "s", {"n": n, "kind": "query", "text": "SELECT " + "x" * 200})
        started = time.perf_counter()
        trail.commit()
        return time.perf_counter() - started

    while not segments.sealed(sealing.path):
        command()
    while sealing.path.stat().st_size < SEGMENT - 4096:
        command()
    # A long `witness verify` (one snapshot for the whole walk) starts now.
    with db.reading(sealing.path) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchone()
        slowest = max(command() for _ in range(40))
        reader.execute("ROLLBACK")
    trail.close()
    with db.reading(sealing.path) as conn:
        (errors,) = conn.execute("SELECT count(*) FROM events WHERE type = 'error'").fetchone()
    assert errors <= 1, f"{errors} 'cannot seal' error events for one reader"
    assert slowest < 0.1, f"a commit took {slowest:.3f} s (on the relay's event loop)"


def plant_wal(segment: segments.Segment, scratch: Path, sql: str) -> None:
    """Put beside ``segment`` a WAL that, read with it, runs ``sql`` on it."""
    copy = scratch / segment.path.name
    shutil.copyfile(segment.path, copy)
    os.chmod(copy, 0o600)
    conn = sqlite3.connect(copy, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.executescript("DROP TRIGGER events_no_update;" + sql)
    shutil.copyfile(
        copy.with_name(copy.name + "-wal"), segment.path.with_name(segment.path.name + "-wal")
    )
    conn.close()


def test_a_wal_planted_beside_a_sealed_segment_is_read_by_no_one(
    sealing: TrailSettings, clock: Clock, tmp_path: Path
) -> None:
    found = sealed_trail(sealing, clock, 2)
    oldest = found[0]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    plant_wal(oldest, scratch, f"UPDATE events SET hash = '{'f' * 64}' WHERE seq = {oldest.last}")
    assert check(sealing, clock).ok  # readers open segments immutable: the WAL is not seen
    # ...but the recorder and the couriers read a segment's ends through it.
    trail = Trail.open(sealing, clock=clock)
    trail.retirable = oldest.last
    fill(trail, clock, sessions=1)
    trail.close()
    assert not oldest.path.exists()
    report = check(sealing, clock)
    assert report.ok, report
    assert db.segment_ends(found[1])[0] == report_hash(sealing, oldest.last + 1)


def report_hash(settings: TrailSettings, seq: int) -> str:
    with db.reading(settings.path) as conn:
        return str(conn.execute("SELECT prev_hash FROM events WHERE seq = ?", (seq,)).fetchone()[0])


def full_scans(settings: TrailSettings, ask: Callable[[sqlite3.Connection], object]) -> list[str]:
    """The plans' full scans of the events of sealed segments, or copies of all events,
    among the statements ``ask`` runs on a reader."""
    with db.reading(settings.path) as conn:
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        ask(conn)
        conn.set_trace_callback(None)
        found = []
        for sql in statements:
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            for row in conn.execute("EXPLAIN QUERY PLAN " + sql):
                detail = str(row[3])
                if (detail.startswith("SCAN sealed") and detail.endswith(".events")) or (
                    detail == "MATERIALIZE events"
                ):
                    found.append(detail)
    return found


def test_showing_one_session_reads_its_span_not_every_segment(
    sealing: TrailSettings, clock: Clock
) -> None:
    sealed_trail(sealing, clock, 3)
    with db.reading(sealing.path) as conn:
        sid = conn.execute("SELECT id FROM sessions ORDER BY start_seq DESC LIMIT 1").fetchone()[0]
    assert full_scans(sealing, lambda conn: query.session_detail(conn, sid)) == []


def test_listing_sessions_copies_no_segment(sealing: TrailSettings, clock: Clock) -> None:
    sealed_trail(sealing, clock, 3)
    assert full_scans(sealing, query.list_sessions) == []


def test_an_export_file_emptied_mid_segment_is_given_the_segment_again_whole(
    sealing: TrailSettings, clock: Clock, tmp_path: Path
) -> None:
    settings = dataclasses.replace(sealing, retire="export:chain")
    oldest, second = sealed_trail(settings, clock, 2)
    trail_id = trail_of(settings)
    out = tmp_path / "out" / "trail.jsonl"
    out.parent.mkdir()
    export = ExportSettings(name="chain", format="jsonl", file=out)
    forwarder = Forwarder(settings, export, trail_id, "bastion", batch=50)
    verified: list[int] = []
    forwarder.on_verified = verified.append
    while forwarder.state.seq < second.first + 100:
        forwarder.forward()
    assert verified == [oldest.last]
    # The file is emptied (`: > trail.jsonl`, or copytruncate with the copy thrown away):
    # events second.first .. second.first + 100 are no longer in it.
    os.truncate(out, 0)
    while forwarder.state.seq < second.last:
        forwarder.forward()
    with out.open("rb") as file:
        held = {json.loads(line)["seq"] for line in file}
    # The new file is given the unverified segment again, whole, before it may retire it.
    assert second.last in verified
    assert set(range(second.first, second.last + 1)) <= held


def test_an_export_refused_once_then_rotated_can_retire_again(
    sealing: TrailSettings, clock: Clock, tmp_path: Path
) -> None:
    settings = dataclasses.replace(sealing, retire="export:chain")
    sealed_trail(settings, clock, 2)
    trail_id = trail_of(settings)
    out = tmp_path / "out" / "trail.jsonl"
    out.parent.mkdir()
    export = ExportSettings(name="chain", format="jsonl", file=out)
    # Exported while it retired nothing; then an event in the file is changed.
    kept = Forwarder(dataclasses.replace(settings, retire=None), export, trail_id, "bastion")
    while kept.forward():
        pass
    lines = out.read_bytes().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if json.loads(line)["seq"] == 7)
    lines[at] = lines[at].replace(b'"ts":1', b'"ts":2', 1)  # same size, in place
    out.write_bytes(b"".join(lines))
    forwarder = Forwarder(settings, export, trail_id, "bastion")
    refused: list[str] = []
    verified: list[int] = []
    forwarder.on_refused, forwarder.on_verified = refused.append, verified.append
    forwarder.forward()
    assert refused and "event 7" in refused[0] and not verified
    # logrotate (create): the file is moved aside whole, a new one begins.
    out.rename(out.with_suffix(".jsonl.1"))
    trail = Trail.open(settings, clock=clock)
    grow(trail, clock, 3)
    trail.close()
    third = segments.sealed(settings.path)[2]
    while forwarder.forward():
        pass
    assert third.last in verified, forwarder.state.error


def test_no_segment_goes_before_every_courier_carried_it(
    sealing: TrailSettings, clock: Clock, tmp_path: Path
) -> None:
    # A SIEM export sent the first events, then its server was down; meanwhile the central
    # store (the retire source) held and verified both sealed segments.
    oldest, second = sealed_trail(sealing, clock, 2)
    trail_id = trail_of(sealing)
    out = tmp_path / "siem.jsonl"
    export = ExportSettings(name="siem", format="jsonl", file=out)
    siem = Forwarder(sealing, export, trail_id, "b", batch=50)
    siem.forward()
    trail = Trail.open(sealing, clock=clock)
    gate = Gate(trail)
    verified = gate.expect("central", 0)
    siem.on_progress = gate.expect("siem", siem.state.seq)
    verified(second.last)
    fill(trail, clock, sessions=1)
    assert oldest.path.exists()  # the SIEM has yet to get it
    while siem.forward():
        pass
    fill(trail, clock, sessions=1)
    assert not oldest.path.exists() and not second.path.exists()
    trail.close()
    with out.open("rb") as file:
        sent = [json.loads(line)["seq"] for line in file]
    assert sent == list(range(1, len(sent) + 1))  # every event, none skipped


def test_an_export_behind_a_retirement_says_what_it_never_sent(
    sealing: TrailSettings, clock: Clock, tmp_path: Path
) -> None:
    # Retired behind its back (its state file was restored from an old backup, say).
    oldest = sealed_trail(sealing, clock, 2)[0]
    trail_id = trail_of(sealing)
    out = tmp_path / "siem.jsonl"
    export = ExportSettings(name="siem", format="jsonl", file=out)
    Forwarder(sealing, export, trail_id, "b", batch=50).forward()
    trail = Trail.open(sealing, clock=clock)
    trail.retirable = oldest.last
    fill(trail, clock, sessions=1)
    trail.close()
    assert not oldest.path.exists()
    siem = Forwarder(sealing, export, trail_id, "b")
    told: list[str] = []
    siem.on_refused = told.append
    while siem.forward():
        pass
    assert len(told) == 1 and f"events 51 to {oldest.last} were retired" in told[0]


def test_a_segment_renamed_to_a_shorter_range_is_a_fault_for_verify_too(
    sealing: TrailSettings, clock: Clock
) -> None:
    oldest, _ = sealed_trail(sealing, clock, 2)
    # Root renames the oldest segment: its name no longer says what it holds.
    os.rename(oldest.path, segments.path_of(sealing.path, oldest.first, oldest.last - 100))
    with pytest.raises(TrailError, match="FAULT"):
        Trail.open(sealing, clock=clock)  # the recorder trusts the names, and refuses
    report = check(sealing, clock)
    assert not report.ok, "verify passes a trail the recorder refuses to open"


# --- what held up -----------------------------------------------------------------------


def test_kill_between_the_two_renames_of_a_seal_is_finished_on_open(
    sealing: TrailSettings, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    trail = Trail.open(sealing, clock=clock)
    grow(trail, clock, 1)
    renames: list[tuple[str, str]] = []
    real = os.rename

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        renames.append((str(src), str(dst)))
        if len(renames) == 2:
            raise Killed
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(Killed):
        grow(trail, clock, 2)
    monkeypatch.undo()
    assert not sealing.path.exists() and segments.next_file(sealing.path).exists()
    trail._conn = None  # closed by the seal already
    again = Trail.open(sealing, clock=clock)
    fill(again, clock, sessions=1)
    again.close()
    assert len(segments.sealed(sealing.path)) == 2
    assert check(sealing, clock).ok


def test_kill_after_the_next_file_is_made_leaves_the_active_file_whole(
    sealing: TrailSettings, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    trail = Trail.open(sealing, clock=clock)
    grow(trail, clock, 1)

    def die(*args: object) -> None:
        raise Killed

    monkeypatch.setattr(os, "rename", die)  # the WAL is copied and unlinked, then killed
    with pytest.raises(Killed):
        grow(trail, clock, 2)
    monkeypatch.undo()
    trail._conn = None
    again = Trail.open(sealing, clock=clock)
    assert not segments.next_file(sealing.path).exists()
    grow(again, clock, 2)
    again.close()
    assert check(sealing, clock).ok


def test_meta_retired_pointed_at_an_older_retirement_is_caught(
    sealing: TrailSettings, clock: Clock
) -> None:
    trail = Trail.open(sealing, clock=clock)
    grow(trail, clock, 3)
    oldest, second = segments.sealed(sealing.path)[:2]
    trail.checkpoint()
    trail.retirable = oldest.last
    trail.commit()
    (older,) = retire_seqs(sealing)
    trail.retirable = second.last
    trail.commit()
    trail.close()
    os.chmod(sealing.path, 0o600)
    conn = sqlite3.connect(sealing.path, isolation_level=None)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'retired'", (str(older),))
    conn.close()
    report = check(sealing, clock)
    assert not report.ok and "segments were cut or replaced" in (report.reason or "")
    with pytest.raises(TrailError, match="FAULT"):
        Trail.open(sealing, clock=clock)


def retire_seqs(settings: TrailSettings) -> list[int]:
    with db.reading(settings.path) as conn:
        rows = conn.execute(
            "SELECT seq FROM events WHERE type = 'trail'"
            " AND json_extract(payload, '$.action') = 'retire' ORDER BY seq"
        ).fetchall()
    return [int(seq) for (seq,) in rows]


def test_a_segment_of_another_trail_under_the_same_name_is_caught(
    sealing: TrailSettings, clock: Clock, tmp_path: Path
) -> None:
    found = sealed_trail(sealing, clock, 3)
    # Another trail, signed with the same key, sealed at the same places.
    other = dataclasses.replace(
        sealing,
        path=tmp_path / "other" / "trail.db",
        signing_key=tmp_path / "other" / "keys" / "trail.key",
    )
    other.signing_key.parent.mkdir(parents=True)
    shutil.copyfile(sealing.signing_key, other.signing_key)
    theirs = sealed_trail(other, Clock(clock.now + 1), 3)
    assert [(s.first, s.last) for s in theirs][:2] == [(s.first, s.last) for s in found][:2]
    os.unlink(found[1].path)
    shutil.copyfile(theirs[1].path, found[1].path)
    report = check(sealing, clock)
    assert not report.ok and report.first_bad_seq == found[1].first


def test_a_planted_overlapping_segment_is_caught(sealing: TrailSettings, clock: Clock) -> None:
    found = sealed_trail(sealing, clock, 3)
    shutil.copyfile(found[1].path, segments.path_of(sealing.path, found[1].first, found[1].first))
    report = check(sealing, clock)
    assert not report.ok and "not those its name gives" in (report.reason or "")
    with pytest.raises(TrailError, match="FAULT"):
        Trail.open(sealing, clock=clock)


def test_meta_first_edited_to_hide_a_segment_is_caught(
    sealing: TrailSettings, clock: Clock
) -> None:
    found = sealed_trail(sealing, clock, 3)
    os.chmod(sealing.path, 0o600)
    conn = sqlite3.connect(sealing.path, isolation_level=None)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'first'", (str(found[2].first),))
    conn.close()
    report = check(sealing, clock)
    assert not report.ok and report.first_bad_seq == found[2].first


def test_junk_in_the_sealed_directory(sealing: TrailSettings, clock: Clock) -> None:
    found = sealed_trail(sealing, clock, 2)
    directory = segments.directory(sealing.path)
    (directory / "notes.txt").write_text("ignored")
    (directory / f"{found[0].path.name}-shm").write_bytes(b"\0" * 32768)
    assert check(sealing, clock).ok
    segments.path_of(sealing.path, 1, 1).write_bytes(b"not a database")
    with pytest.raises(TrailError, match=r"not a database|not a Witness trail"):
        check(sealing, clock)


def test_the_active_file_deleted_is_refused_plainly(sealing: TrailSettings, clock: Clock) -> None:
    sealed_trail(sealing, clock, 2)
    os.unlink(sealing.path)
    with pytest.raises(TrailError, match="no such trail file"):
        check(sealing, clock)
    with pytest.raises(TrailError, match="no trail, but"):
        Trail.open(sealing, clock=clock)


def test_a_reader_opened_before_a_seal_keeps_one_consistent_history(
    sealing: TrailSettings, clock: Clock
) -> None:
    trail = Trail.open(sealing, clock=clock)
    grow(trail, clock, 1)
    with db.reading(sealing.path) as before:
        head = db.last_seq(before)
        grow(trail, clock, 3)
        seqs = [seq for (seq,) in before.execute("SELECT seq FROM events ORDER BY seq")]
        assert seqs == list(range(1, len(seqs) + 1)) and seqs[-1] >= head
    trail.close()
    assert check(sealing, clock).ok
