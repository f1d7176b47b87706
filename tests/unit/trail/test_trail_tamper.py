"""witness verify against a real trail edited behind the recorder's back.

Each test builds a trail through Trail, tampers with it through a raw sqlite3 connection
(dropping the triggers first, as anyone with write access can), and expects verify to exit 1
and name the first bad event.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from trailkit import Clock, fill

from appliance.cli import trail as trail_cli
from appliance.config import TrailSettings
from appliance.trail import chain
from appliance.trail.store import Trail

WITNESS = Path(sys.executable).parent / "witness"


@pytest.fixture
def cli() -> click.Group:
    group = click.Group("witness")
    trail_cli.register(group)
    return group


@pytest.fixture
def path(tmp_path: Path, clock: Clock) -> Path:
    """3 sessions, 30 events, a checkpoint every 5 and one at close (key beside the trail)."""
    settings = TrailSettings.beside(tmp_path / "trail.db")
    settings = TrailSettings(settings.path, settings.signing_key, checkpoint_events=5)
    trail = Trail.open(settings, clock=clock)
    fill(trail, clock)
    trail.close()
    return settings.path


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
    }
    assert total == 30 + checkpoints
    assert checkpoints >= 4


def test_uncovered_events_are_counted(cli: click.Group, path: Path, clock: Clock) -> None:
    trail = Trail.open(TrailSettings.beside(path), clock=clock)
    for n in range(3):
        trail.append("error", None, {"where": "test", "message": str(n)})
    trail.commit()
    # The recorder is still running: the WAL holds the new events, and verify reads them.
    code, report = verify(cli, path)
    assert (code, report["ok"], report["uncovered"]) == (0, True, 3)
    result = CliRunner().invoke(cli, ["verify", "--trail", str(path)])
    assert "the last 3 are not yet covered" in result.output
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
    # Without the copy kept outside the trail the cut is invisible: that is what it is for.
    os.rename(str(path) + ".key.checkpoint", str(path) + ".moved")
    code, report = verify(cli, path)
    assert (code, report["ok"]) == (0, True)
    code, report = verify(cli, path, "--checkpoint", str(path) + ".moved")
    assert (code, report["first_bad_seq"]) == (1, keep + 1)


def test_cut_tail_then_the_recorder_carries_on(cli: click.Group, path: Path) -> None:
    last_checkpoint = max(seq for seq, t in layout(path) if t == "checkpoint")
    tamper(path, ("DELETE FROM events WHERE seq >= ?", (last_checkpoint - 1,)))
    moved = Path(str(path) + ".moved")
    os.rename(str(path) + ".key.checkpoint", moved)
    trail = Trail.open(TrailSettings.beside(path))  # the forger hid the checkpoint file
    for n in range(3):
        trail.append("error", None, {"message": str(n)})
    trail.close()
    code, report = verify(cli, path, "--checkpoint", str(moved))
    assert (code, report["first_bad_seq"]) == (1, last_checkpoint - 1)
    assert "rewritten" in report["reason"]


def test_modified_checkpoint_signature(cli: click.Group, path: Path) -> None:
    seq = next(s for s, t in layout(path) if t == "checkpoint")
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


def test_forged_tail_without_a_signature_is_reported_as_uncovered(
    cli: click.Group, path: Path
) -> None:
    last = len(layout(path))
    tamper(path, ("INSERT INTO events VALUES (?, 1, 'error', NULL, '{}', '', '')", (last + 1,)))
    rehash(path, last + 1)
    code, report = verify(cli, path)
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
    for name in ("trail.db", "trail.db-wal", "trail.db.key.pub"):
        (copy / name).write_bytes((settings.path.parent / name).read_bytes())
    trail.close()
    code, report = verify(cli, copy / "trail.db")
    assert (code, report["events"]) == (0, 10 + report["checkpoints"])
    assert sorted(p.name for p in copy.iterdir()) == [
        "trail.db",
        "trail.db-wal",
        "trail.db.key.pub",
    ]


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
