"""A real trail written through the recorder's own store, one event at a time, at set times."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from appliance.config import TrailSettings
from appliance.trail.store import Trail

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z

Write = Callable[[float, str, str | None, dict[str, object]], None]


def writer(directory: Path, **settings: object) -> tuple[TrailSettings, Trail, Write]:
    """A trail in ``directory`` (its key beside it) and ``at(offset, type, session,
    payload)``, which commits one event ``offset`` seconds after T0."""
    now = [T0]
    trail_settings = TrailSettings.beside(directory / "trail.db", **settings)
    t = Trail.open(trail_settings, clock=lambda: now[0])

    def at(offset: float, type_: str, session: str | None, payload: dict[str, object]) -> None:
        now[0] = T0 + offset
        t.append(type_, session, payload)
        t.commit()

    return trail_settings, t, at
