"""witness verify, and the recorder's own check when it opens a trail, against a real trail
edited behind the recorder's back.

Each test builds a trail through Trail, tampers with it through a raw sqlite3 connection
(dropping the triggers first, as anyone with write access can) without the signing key, and
expects verify to exit 1 and name the first bad event, and the recorder to refuse to extend
the trail.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from trailkit import Clock, fill

from appliance.cli import trail as trail_cli
from appliance.config import TrailSettings
from appliance.trail import chain, db
from appliance.trail.store import Trail, TrailError

WITNESS = Path(sys.executable).parent / "witness"


@pytest.fixture
def cli() -> click.Group:
    group = click.Group("witness")
    trail_cli.register(group)
    return group


@pytest.fixture
def path(tmp_path: Path, clock: Clock) -> Path:
    """3 sessions, 30 events, a checkpoint every 5 and one at close (key beside the trail)."""
    settings = TrailSettings.beside(tmp_path / "trail.db", checkpoint_events=5)
    trail = Trail.open(settings, clock=clock)
    fill(trail, clock)
    trail.close()
    return settings.path


def trail_id(path: Path) -> str | None:
    with db.reading(path) as conn:
        return db.trail_id(conn)


def verify(cli: click.Group, path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["verify", "--trail", str(path), "--json", *extra])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


def layout(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT seq, type FROM events ORDER BY seq").fetchall()


def tamper(path: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS events_no_update")
    conn.execute("DROP TRIGGER IF EXISTS events_no_delete")
    for sql, params in statements:
        conn.execute(sql, params)
    conn.close()


def rehash(path: Path, start: int) -> None:
    """What a careful forger does next: recompute the chain from ``start`` (sha256 is keyless)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS events_no_update")
    (prev,) = conn.execute("SELECT hash FROM events WHERE seq = ?", (start - 1,)).fetchone()
    rows = conn.execute(
        "SELECT seq, ts, type, session, payload FROM events WHERE seq >= ? ORDER BY seq", (start,)
    ).fetchall()
    for seq, ts, type_, session, text in rows:
        digest = chain.event_hash(prev, seq, ts, type_, session, text)
        conn.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, seq))
        prev = digest
    conn.close()


def test_untouched_trail_verifies(cli: click.Group, path: Path) -> None:
    code, report = verify(cli, path)
    total = len(layout(path))
    checkpoints = sum(1 for _, t in layout(path) if t == "checkpoint")
    assert code == 0
    assert report == {
        "ok": True,
        "events": total,
        "checkpoints": checkpoints,
        "uncovered": 0,
        "first_bad_seq": None,
        "reason": None,
        "trail": trail_id(path),
        "anchored": None,
        "unanchored": None,
        "retired": 0,
    }
    assert total == 1 + 30 + checkpoints  # the genesis, the sessions, the checkpoints
    assert checkpoints >= 5
    assert layout(path)[:2] == [(1, "trail"), (2, "checkpoint")]
    result = CliRunner().invoke(cli, ["verify", "--trail", str(path)])
    assert f"ok, trail {trail_id(path)}, {total} events verified" in result.output
    assert "all covered by a signed checkpoint" in result.output


def test_uncovered_events_are_counted(cli: click.Group, path: Path) -> None:
    trail = Trail.open(TrailSettings.beside(path, checkpoint_events=5))
    for n in range(3):
        trail.append("error", None, {"where": "test", "message": str(n)})
    trail.commit()
    # The recorder is still running: the WAL holds the new events, and verify reads them.
    # They are fewer and younger than the checkpoint interval allows.
    code, report = verify(cli, path)
    assert (code, report["ok"], report["uncovered"]) == (0, True, 3)
    result = CliRunner().invoke(cli, ["verify", "--trail", str(path)])
    assert "the last 3 are not yet covered" in result.output
    assert "all covered" not in result.output
    trail.close()
    code, report = verify(cli, path)
    assert (code, report["uncovered"]) == (0, 0)


def test_edited_payload(cli: click.Group, path: Path) -> None:
    tamper(path, ("UPDATE events SET payload = ? WHERE seq = 7", ('{"n":3,"text":"SELECT 0"}',)))
    code, report = verify(cli, path)
    assert (code, report["first_bad_seq"]) == (1, 7)
    assert "was changed" in report["reason"]


def test_deleted_event(cli: click.Group, path: Path) -> None:
    tamper(path, ("DELETE FROM events WHERE seq = 12", ()))
    code, report = verify(cli, path)
    assert (code, report["first_bad_seq"]) == (1, 12)
    assert "missing" in report["reason"]
    assert report["events"] == 11


def test_inserted_event(cli: click.Group, path: Path) -> None:
    # Make room at 9 (negating first keeps the primary key unique while shifting), then
    # insert a well-formed event that even chains correctly onto event 8.
    (prev,) = sqlite3.connect(path).execute("SELECT hash FROM events WHERE seq = 8").fetchone()
    text = '{"kind":"query","n":9,"text":"DROP TABLE audit"}'
    digest = chain.event_hash(prev, 9, 1, "command", "sess0", text)
    tamper(
        path,
        ("UPDATE events SET seq = -(seq + 1) WHERE seq >= 9", ()),
        ("UPDATE events SET seq = -seq WHERE seq < 0", ()),
        ("INSERT INTO events VALUES (9, 1, 'command', 'sess0', ?, ?, ?)", (text, prev, digest)),
    )
    code, report = verify(cli, path)
    assert (code, report["first_bad_seq"]) == (1, 10)
    assert "does not follow" in report["reason"]


def test_event_beyond_the_end_with_a_gap(cli: click.Group, path: Path) -> None:
    last = len(layout(path))
    tamper(path, ("INSERT INTO events VALUES (?, 1, 'command', 's', '{}', '', '')", (last + 5,)))
    code, report = verify(cli, path)
    assert (code, report["first_bad_seq"]) == (1, last + 1)


def test_reordered_events(cli: click.Group, path: Path) -> None:
    columns = "ts, type, session, payload, prev_hash, hash"
    with sqlite3.connect(path) as conn:
        a, b = conn.execute(f"SELECT {columns} FROM events WHERE seq IN (14, 15) ORDER BY seq")
    assert a[3] != b[3]
    update = f"UPDATE events SET ({columns}) = (?, ?, ?, ?, ?, ?) WHERE seq = ?"
    tamper(path, (update, (*b, 14)), (update, (*a, 15)))
    code, report = verify(cli, path)
    assert (code, report["first_bad_seq"]) == (1, 14)


def test_cut_tail(cli: click.Group, path: Path) -> None:
    events = layout(path)
    last_checkpoint = max(seq for seq, t in events if t == "checkpoint")
    keep = last_checkpoint - 4  # the last checkpoint and the events before it go
    tamper(path, ("DELETE FROM events WHERE seq > ?", (keep,)))
    code, report = verify(cli, path)
    assert (code, report["first_bad_seq"]) == (1, keep + 1)
    assert "the tail was cut" in report["reason"]
    # Hiding the copy kept outside the trail does not help: it must be there.
    os.rename(str(path) + ".key.checkpoint", str(path) + ".moved")
    code, report = verify(cli, path)
    assert (code, report["ok"], report["first_bad_seq"]) == (1, False, None)
    assert "no such checkpoint file, although the trail holds" in report["reason"]
    code, report = verify(cli, path, "--checkpoint", str(path) + ".moved")
    assert (code, report["first_bad_seq"]) == (1, keep + 1)


def test_cut_tail_then_the_recorder_refuses_to_carry_on(cli: click.Group, path: Path) -> None:
    last_checkpoint = max(seq for seq, t in layout(path) if t == "checkpoint")
    tamper(path, ("DELETE FROM events WHERE seq >= ?", (last_checkpoint - 1,)))
    before = path.read_bytes()
    with pytest.raises(TrailError, match="events were cut"):
        Trail.open(TrailSettings.beside(path))
    moved = Path(str(path) + ".moved")
    os.rename(str(path) + ".key.checkpoint", moved)  # the forger hides the checkpoint file
    with pytest.raises(TrailError, match="no such checkpoint file, although the trail holds"):
        Trail.open(TrailSettings.beside(path))
    assert path.read_bytes() == before
    assert not Path(str(path) + ".key.checkpoint").exists()
    code, report = verify(cli, path, "--checkpoint", str(moved))
    assert (code, report["first_bad_seq"]) == (1, last_checkpoint - 1)
    assert "the tail was cut" in report["reason"]


def test_modified_checkpoint_signature(cli: click.Group, path: Path) -> None:
    seq = [s for s, t in layout(path) if t == "checkpoint"][1]
    with sqlite3.connect(path) as conn:
        payload = json.loads(
            conn.execute("SELECT payload FROM events WHERE seq=?", (seq,)).fetchone()[0]
        )
    payload["signature"] = "A" * 86 + "=="
    tamper(
        path, ("UPDATE events SET payload = ? WHERE seq = ?", (chain.payload_text(payload), seq))
    )
    code, report = verify(cli, path)
    assert (code, report["first_bad_seq"]) == (1, seq)
    rehash(path, seq)  # hashes made consistent again: now only the signature is wrong
    code, report = verify(cli, path)
    assert (code, report["first_bad_seq"]) == (1, seq)
    assert "signature" in report["reason"]


def test_edit_with_a_recomputed_chain_is_caught_by_the_next_checkpoint(
    cli: click.Group, path: Path
) -> None:
    tamper(path, ("UPDATE events SET payload = ? WHERE seq = 3", ('{"n":1,"text":"x"}',)))
    rehash(path, 3)
    code, report = verify(cli, path)
    first_checkpoint = next(s for s, t in layout(path) if t == "checkpoint" and s > 3)
    assert (code, report["first_bad_seq"]) == (1, first_checkpoint)
    assert "signed a different event" in report["reason"]


def test_an_old_forged_tail_without_a_signature_fails_unless_the_tail_is_accepted(
    cli: click.Group, path: Path
) -> None:
    last = len(layout(path))
    tamper(path, ("INSERT INTO events VALUES (?, 1, 'error', NULL, '{}', '', '')", (last + 1,)))
    rehash(path, last + 1)
    code, report = verify(cli, path)
    assert (code, report["first_bad_seq"], report["uncovered"]) == (1, last + 1, 1)
    assert "not yet covered by a checkpoint" in report["reason"]
    assert "--open-tail" in report["reason"]
    code, report = verify(cli, path, "--open-tail")
    assert (code, report["ok"], report["uncovered"]) == (0, True, 1)


def test_human_output_names_the_first_bad_seq(cli: click.Group, path: Path) -> None:
    tamper(path, ("DELETE FROM events WHERE seq = 5", ()))
    result = CliRunner().invoke(cli, ["verify", "--trail", str(path)])
    assert result.exit_code == 1
    assert "FAULT at event 5: event 5 is missing" in result.stdout


def test_verify_changes_nothing(cli: click.Group, path: Path) -> None:
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in path.parent.iterdir()}
    assert verify(cli, path)[0] == 0
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in path.parent.iterdir()}
    assert after == before


def test_verify_reads_a_wal_copied_without_its_shm(
    cli: click.Group, tmp_path: Path, clock: Clock
) -> None:
    settings = TrailSettings.beside(tmp_path / "live" / "trail.db")
    trail = Trail.open(settings, clock=clock)
    fill(trail, clock, sessions=1)
    copy = tmp_path / "copy"
    copy.mkdir()
    names = ("trail.db", "trail.db-wal", "trail.db.key.pub", "trail.db.key.checkpoint")
    for name in names:
        (copy / name).write_bytes((settings.path.parent / name).read_bytes())
    trail.close()
    # Copied while the recorder was writing: its unsigned tail is accepted as such.
    code, report = verify(cli, copy / "trail.db", "--open-tail")
    assert (code, report["events"]) == (0, 1 + 10 + report["checkpoints"])
    assert sorted(p.name for p in copy.iterdir()) == sorted(names)


def test_verify_errors(cli: click.Group, path: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["verify", "--trail", str(tmp_path / "nope.db")])
    assert (result.exit_code, result.stderr) == (
        1,
        f"witness: {tmp_path / 'nope.db'}: no such trail file\n",
    )
    result = runner.invoke(cli, ["verify", "--trail", str(path), "--public-key", "/nonexistent"])
    assert (result.exit_code, result.stderr) == (1, "witness: /nonexistent: no such public key\n")
    result = runner.invoke(cli, ["verify", "--trail", str(path), "--checkpoint", "/nonexistent"])
    assert (result.exit_code, result.stderr.strip()) == (
        1,
        "witness: /nonexistent: no such checkpoint file",
    )
    Path(str(path) + ".key.pub").unlink()
    result = runner.invoke(cli, ["verify", "--trail", str(path)])
    assert result.exit_code == 1
    assert "no public key" in result.stderr
    assert "Traceback" not in result.output


def test_the_real_executable(path: Path) -> None:
    ok = subprocess.run([WITNESS, "verify", "--trail", path], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ok, " in ok.stdout
    tamper(path, ("UPDATE events SET ts = ts + 1 WHERE seq = 17", ()))
    bad = subprocess.run(
        [WITNESS, "verify", "--trail", path, "--json"], capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["first_bad_seq"] == 17


# --- forgeries that a rehash alone does not make: the attacks the format is built against ----


def forge(path: Path, events: list[tuple[int, str, str | None, str]]) -> None:
    """Replace every event with ``events`` (ts, type, session, payload), numbered from 1 and
    chained from scratch: all a forger without the key can do to make a chain look whole."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS events_no_update")
    conn.execute("DROP TRIGGER IF EXISTS events_no_delete")
    conn.execute("DELETE FROM events")
    prev = chain.GENESIS
    for seq, (ts, type_, session, text) in enumerate(events, 1):
        digest = chain.event_hash(prev, seq, ts, type_, session, text)
        conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, ts, type_, session, text, prev, digest),
        )
        prev = digest
    conn.close()


def contents(path: Path) -> list[tuple[int, str, str | None, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT ts, type, session, payload FROM events ORDER BY seq").fetchall()


def checkpoint_file(path: Path) -> Path:
    return Path(str(path) + ".key.checkpoint")


def refuses_to_open(path: Path, match: str) -> str:
    """The recorder will not extend the trail, and leaves it and its files as they were (the
    -shm index aside: every reader takes a read mark there)."""

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.suffix != ".db-shm"}

    before = files()
    with pytest.raises(TrailError, match=match) as info:
        Trail.open(TrailSettings.beside(path))
    assert files() == before
    return str(info.value)


@pytest.mark.parametrize("genesis", ["stripped", "kept"])
def test_stripped_checkpoints_an_edit_a_new_chain_and_no_checkpoint_file(
    cli: click.Group, path: Path, genesis: str
) -> None:
    events = [e for e in contents(path) if e[1] != "checkpoint" and e[1] != "trail"]
    events = [
        (ts, t, s, text.replace("SELECT 2", "SELECT 'nothing happened'"))
        for ts, t, s, text in events
    ]
    if genesis == "kept":  # the genesis and its checkpoint stay: signed, and still true
        events = contents(path)[:2] + events
    forge(path, events)
    checkpoint_file(path).unlink()
    code, report = verify(cli, path)
    assert code == 1
    if genesis == "stripped":
        assert (report["first_bad_seq"], report["checkpoints"]) == (1, 0)
        assert "is not the trail's genesis" in report["reason"]
        refuses_to_open(path, "FAULT at event 1: event 1 is not the trail's genesis")
    else:
        assert "no such checkpoint file, although the trail holds 1 signed" in report["reason"]
        refuses_to_open(path, "no such checkpoint file")
        code, report = verify(cli, path, "--open-tail")  # the unsigned tail is no excuse
        assert code == 1


def test_a_tail_cut_back_to_an_earlier_checkpoint_with_a_checkpoint_file_made_from_it(
    cli: click.Group, path: Path
) -> None:
    checkpoints = [seq for seq, t in layout(path) if t == "checkpoint"]
    earlier = checkpoints[-3]
    tamper(path, ("DELETE FROM events WHERE seq > ?", (earlier,)))
    with sqlite3.connect(path) as conn:
        payload, digest = conn.execute(
            "SELECT payload, hash FROM events WHERE seq = ?", (earlier,)
        ).fetchone()
    signed = json.loads(payload)
    attempts = [
        signed,  # the checkpoint event's payload as it is
        {**signed, "seq": earlier, "hash": digest},  # claiming the event itself, same signature
    ]
    for attempt in attempts:
        checkpoint_file(path).write_text(json.dumps(attempt))
        code, report = verify(cli, path)
        assert code == 1
        assert "does not verify: the recorder did not write it" in report["reason"]
        refuses_to_open(path, "was not signed by this trail's key")


def test_an_emptied_trail_is_not_all_covered(cli: click.Group, path: Path) -> None:
    tamper(path, ("DELETE FROM events", ()))
    checkpoint_file(path).unlink()
    code, report = verify(cli, path)
    assert (code, report["events"], report["first_bad_seq"]) == (1, 0, 1)
    assert "the trail is empty" in report["reason"]
    result = CliRunner().invoke(cli, ["verify", "--trail", str(path)])
    assert "all covered" not in result.output
    assert "FAULT at event 1: the trail is empty" in result.output


def test_a_missing_checkpoint_file_is_a_fault_and_stops_the_recorder(
    cli: click.Group, path: Path
) -> None:
    checkpoint_file(path).unlink()
    code, report = verify(cli, path)
    assert (code, report["first_bad_seq"]) == (1, None)
    assert "it was removed" in report["reason"]
    refuses_to_open(path, "no such checkpoint file")


def test_a_rewritten_event_after_the_last_checkpoint_stops_the_recorder(
    cli: click.Group, path: Path
) -> None:
    """An event the checkpoint file's head does not cover yet, changed and left unchained."""
    trail = Trail.open(TrailSettings.beside(path, checkpoint_events=5))
    trail.append("command", "s", {"n": 1, "text": "DELETE FROM orders"})
    trail.commit()
    seq = trail.head[0]
    trail._conn = None  # the recorder is killed: no last checkpoint
    tamper(
        path, ("UPDATE events SET payload = ? WHERE seq = ?", ('{"n":1,"text":"SELECT 1"}', seq))
    )
    message = refuses_to_open(path, f"FAULT at event {seq}: event {seq} does not match its hash")
    assert "run witness verify" in message


def test_a_tail_longer_than_the_interval_allows(cli: click.Group, path: Path) -> None:
    last = len(layout(path))
    now = int(time.time() * 1_000_000)
    for n in range(6):  # the fixture's interval is 5 events
        tamper(
            path,
            (
                "INSERT INTO events VALUES (?, ?, 'error', NULL, '{}', '', '')",
                (last + 1 + n, now),
            ),
        )
    rehash(path, last + 1)
    code, report = verify(cli, path)
    assert (code, report["first_bad_seq"], report["uncovered"]) == (1, last + 1, 6)
    assert "6 events from event" in report["reason"]
    assert "every 5 events" in report["reason"]
    assert verify(cli, path, "--open-tail")[0] == 0


def test_a_crashed_recorders_tail_is_accepted_only_when_asked(
    cli: click.Group, tmp_path: Path
) -> None:
    settings = TrailSettings.beside(tmp_path / "trail.db")  # signs every second
    past = Clock(time.time() - 60)
    trail = Trail.open(settings, clock=past)
    trail.append("command", "s", {"n": 1, "text": "SELECT 1"})
    trail.commit()  # the clock stands still: no checkpoint is due yet
    trail._conn = None  # killed before the next one
    code, report = verify(cli, settings.path)
    assert (code, report["first_bad_seq"], report["uncovered"]) == (1, 3, 1)
    assert "60 s old and not yet covered" in report["reason"]
    code, report = verify(cli, settings.path, "--open-tail")
    assert (code, report["uncovered"]) == (0, 1)
    # Restarted, the recorder signs it, saying that it found it unsigned.
    Trail.open(settings).close()
    assert verify(cli, settings.path)[0] == 0
    with sqlite3.connect(settings.path) as conn:
        (opened,) = conn.execute("SELECT payload FROM events WHERE seq = 4").fetchone()
    assert json.loads(opened)["unsigned"] == 1


def test_a_creation_cut_short_before_the_checkpoint_file_is_finished_on_open(
    tmp_path: Path,
) -> None:
    settings = TrailSettings.beside(tmp_path / "trail.db")
    Trail.open(settings)._conn = None  # only the genesis and its checkpoint were written
    checkpoint_file(settings.path).unlink()
    trail = Trail.open(settings)
    trail.close()
    assert checkpoint_file(settings.path).exists()
    assert [t for _, t in layout(settings.path)] == ["trail", "checkpoint", "trail", "checkpoint"]
