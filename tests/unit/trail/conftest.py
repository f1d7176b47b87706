"""Fixtures for the trail tests: a clock and settings in a fresh directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from trailkit import Clock

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
