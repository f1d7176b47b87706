"""A sealing trail on a disk that really fills (a small tmpfs): nothing can be retired, the
sealed segments pile up, and then commits fail, as they did before sealing: the recorder
refuses what it cannot record. Given room again, it goes on, and the trail verifies."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from trailkit import Clock, check, fill

from appliance.config import TrailSettings
from appliance.trail import segments
from appliance.trail.db import TrailWriteError
from appliance.trail.store import Trail

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_fails_commits_and_loses_nothing_once_there_is_room(
    small_disk: Path, clock: Clock
) -> None:
    settings = dataclasses.replace(
        TrailSettings.beside(small_disk / "trail.db"),
        checkpoint_events=5,
        checkpoint_seconds=3600,
        segment_bytes=64 * 1024,
        examine_commits=10,
    )
    trail = Trail.open(settings, clock=clock)
    with pytest.raises(TrailWriteError, match="full"):
        for _ in range(10_000):
            fill(trail, clock, sessions=1)
    assert segments.sealed(settings.path)  # it sealed while there was room
    pending = trail.pending
    assert pending > 0  # what could not be committed is kept, to retry
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    trail.commit()
    assert trail.pending == 0
    fill(trail, clock, sessions=1)
    trail.close()
    report = check(settings, clock)
    assert report.ok, report
