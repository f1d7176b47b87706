"""A live trail's WAL deleted or truncated under the writer: noticed at the next signed
checkpoint, nothing more committed, and the loss shown by verify and by a restart."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from appliance.cli import trail as trail_cli
from appliance.config import TrailSettings
from appliance.trail.store import Trail, TrailError, TrailLost


@pytest.fixture
def settings(tmp_path: Path) -> TrailSettings:
    # Checkpoints every five events, never by time; and the files checked every five commits
    # (one command each), so at each of those checkpoints.
    return TrailSettings.beside(
        tmp_path / "trail.db", checkpoint_events=5, checkpoint_seconds=3600, examine_commits=5
    )


def wal(settings: TrailSettings) -> Path:
    return settings.path.with_name("trail.db-wal")


def verify(path: Path) -> tuple[int, dict[str, object]]:
    group = click.Group("witness")
    trail_cli.register(group)
    result = CliRunner().invoke(group, ["verify", "--trail", str(path), "--json"])
    return result.exit_code, json.loads(result.stdout)


def command(trail: Trail, n: int) -> None:
    trail.append("command", "s", {"n": n, "text": f"SELECT {n}"})
    trail.commit()


def test_a_deleted_wal_stops_the_writer_and_closing_saves_what_it_held(
    settings: TrailSettings,
) -> None:
    trail = Trail.open(settings)
    for n in range(1, 4):
        command(trail, n)
    wal(settings).unlink()
    command(trail, 4)  # no checkpoint yet: nothing looks
    with pytest.raises(TrailLost, match=r"trail\.db-wal was deleted under the recorder"):
        command(trail, 5)  # the fifth unsigned event: a checkpoint, and the check
    with pytest.raises(TrailLost, match="was deleted"):
        command(trail, 6)  # refused at once: nothing more goes into a WAL no one can read
    assert trail.pending == 1
    with pytest.raises(TrailLost, match="was deleted"):
        trail.close()
    # The deleted WAL was still open: its last commit says what happened, and closing
    # copied it all into the database.
    code, report = verify(settings.path)
    assert (code, report["uncovered"]) == (0, 0), report
    with sqlite3.connect(settings.path) as conn:
        texts = [text for (text,) in conn.execute("SELECT payload FROM events")]
    assert [json.loads(t).get("n") for t in texts if '"SELECT' in t] == [1, 2, 3, 4, 5, 6]
    assert any("was deleted under the recorder; every command was refused" in t for t in texts)
    Trail.open(settings).close()


def test_a_replaced_database_file_stops_the_writer(settings: TrailSettings) -> None:
    trail = Trail.open(settings)
    command(trail, 1)
    settings.path.rename(settings.path.with_name("moved.db"))
    settings.path.write_bytes(settings.path.with_name("moved.db").read_bytes())
    for n in range(2, 5):
        command(trail, n)
    with pytest.raises(TrailLost, match=r"trail\.db was replaced under the recorder"):
        command(trail, 5)
    trail._conn = None


TRUNCATED = """
import sys
from pathlib import Path
from appliance.config import TrailSettings
from appliance.trail.store import Trail, TrailLost
settings = TrailSettings.beside(
    Path(sys.argv[1]), checkpoint_events=5, checkpoint_seconds=3600, examine_commits=5
)
trail = Trail.open(settings)
for n in range(1, 13):
    trail.append("command", "s", {"n": n, "text": "SELECT 1"})
    trail.commit()
print(trail.head[0], flush=True)
sys.stdin.readline()  # the WAL is truncated now
n = 13
try:
    while n < 100:
        trail.append("command", "s", {"n": n, "text": "SELECT 1"})
        trail.commit()
        n += 1
except TrailLost as exc:
    print(f"lost at {n}: {exc}", flush=True)
try:
    trail.close()
except TrailLost as exc:
    print(f"closed: {exc}", flush=True)
"""


@pytest.mark.parametrize(
    ("size", "noticed", "kept"),
    [
        (0, "trail.db-wal has lost its header", 14),
        # The header and the first frame (event 15) stay; the second (event 16) goes.
        (32 + 24 + 4096, "trail.db-wal has lost its frames from frame 2 on", 15),
    ],
)
def test_a_truncated_wal_stops_the_writer_and_the_loss_shows_without_damage(
    settings: TrailSettings, size: int, noticed: str, kept: int
) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", TRUNCATED, str(settings.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[3],
    )
    assert writer.stdin is not None and writer.stdout is not None
    head = int(writer.stdout.readline())
    assert head == 16  # genesis 1-2, commands and checkpoints at 8 and 14, commands 15-16
    os.truncate(wal(settings), size)
    writer.stdin.write("\n")
    writer.stdin.close()
    lost, closed = writer.stdout.read().splitlines()
    assert writer.wait(timeout=30) == 0
    assert lost.startswith("lost at 15: ")  # commands 13-15 made the next checkpoint due
    assert f"{noticed}: it was truncated or overwritten under the recorder" in lost
    assert "left open until the recorder exits" in closed
    # The database keeps what the last good checkpoint copied into it, undamaged; the
    # checkpoint file vouches for more, so the cut shows.
    code, report = verify(settings.path)
    assert (code, report["events"], report["first_bad_seq"]) == (1, kept, kept + 1)
    assert "the checkpoint file vouches for event 20: the tail was cut" in str(report["reason"])
    with pytest.raises(TrailError, match="FAULT at event 20: the trail does not hold event 20"):
        Trail.open(settings)


def test_the_files_are_checked_every_examine_commits_and_at_every_timed_checkpoint(
    tmp_path: Path,
) -> None:
    """Count-driven checkpoints come dozens of times a second under load: the files are
    checked every examine_commits commits, and at every timed checkpoint."""
    settings = TrailSettings.beside(
        tmp_path / "trail.db", checkpoint_events=2, checkpoint_seconds=3600, examine_commits=50
    )
    trail = Trail.open(settings)
    for n in range(1, 4):
        command(trail, n)
    wal(settings).unlink()
    for n in range(4, 12):
        command(trail, n)  # four checkpoints, none checks: fewer than 50 commits
    with pytest.raises(TrailLost, match="was deleted"):
        trail.checkpoint()  # the timer's checkpoint always checks
    with pytest.raises(TrailLost):
        trail.close()
    settings = TrailSettings.beside(
        tmp_path / "again.db", checkpoint_events=10_000, checkpoint_seconds=3600, examine_commits=3
    )
    trail = Trail.open(settings)
    wal(settings).with_name("again.db-wal").unlink()
    command(trail, 1)
    command(trail, 2)
    with pytest.raises(TrailLost, match="was deleted"):
        command(trail, 3)  # the third commit checks, with no checkpoint due
    with pytest.raises(TrailLost):
        trail.close()
