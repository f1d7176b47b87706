"""Helpers for the trail tests: a hand-moved clock, a trail filled the way the relay fills it."""

from __future__ import annotations

from appliance.config import TrailSettings
from appliance.trail import keys, segments
from appliance.trail.store import Trail
from appliance.trail.verify import Report, verify

SEGMENT = 48 * 1024
"""The size at which the sealing tests' trails are sealed: a few hundred events."""


class Clock:
    """A clock the test moves by hand: timestamps and checkpoint timers are predictable."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 0.001) -> None:
        self.now += seconds


def fill(trail: Trail, clock: Clock, sessions: int = 3, commands: int = 4) -> None:
    """Sessions of SELECTs, each command committed before its result, as the relay does."""
    for s in range(sessions):
        sid = f"sess{s}"
        trail.append("session_start", sid, {"client": f"127.0.0.1:{5000 + s}", "db_user": "u"})
        for n in range(1, commands + 1):
            clock.tick()
            trail.append("command", sid, {"n": n, "kind": "query", "text": f"SELECT {n}"})
            trail.commit()
            clock.tick()
            trail.append("result", sid, {"n": n, "status": "ok", "rows": 1})
        trail.append("session_end", sid, {"reason": "client closed", "commands": commands})
        trail.commit()


def grow(trail: Trail, clock: Clock, sealed: int) -> None:
    """Record sessions until the trail has ``sealed`` sealed segments."""
    path = trail._settings.path
    n = 0
    while len(segments.sealed(path)) < sealed:
        n += 1
        sid = f"g{len(segments.sealed(path))}-{n}"
        trail.append("session_start", sid, {"client": "127.0.0.1:5000", "db_user": "u"})
        for i in range(20):
            clock.tick()
            trail.append("command", sid, {"n": i, "kind": "query", "text": f"SELECT {n}, {i}"})
            trail.append("result", sid, {"n": i, "status": "ok", "rows": 1})
        trail.append("session_end", sid, {"reason": "client closed", "commands": 20})
        trail.commit()
        assert n < 10_000


def check(settings: TrailSettings, clock: Clock) -> Report:
    """witness verify of the trail, at the clock's time."""
    return verify(
        settings.path,
        keys.load_public(settings.public_key),
        settings.checkpoint_file,
        now=clock.now,
    )


def sealed_trail(settings: TrailSettings, clock: Clock, count: int = 3) -> list[segments.Segment]:
    """A closed trail with ``count`` sealed segments; its segments."""
    trail = Trail.open(settings, clock=clock)
    grow(trail, clock, count)
    trail.close()
    return segments.sealed(settings.path)
