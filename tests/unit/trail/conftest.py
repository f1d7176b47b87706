"""Fixtures for the trail tests: a clock and settings in a fresh directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from trailkit import SEGMENT, Clock

from appliance.config import TrailSettings


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(tmp_path: Path) -> TrailSettings:
    return TrailSettings(
        path=tmp_path / "trail.db",
        signing_key=tmp_path / "keys" / "trail.key",
        checkpoint_events=5,
        checkpoint_seconds=3600,
    )


@pytest.fixture
def sealing(settings: TrailSettings) -> TrailSettings:
    """Settings that seal the trail every ``SEGMENT`` bytes, retired by the central store."""
    return dataclasses.replace(
        settings, segment_bytes=SEGMENT, retire="central", examine_commits=10
    )
