"""Helpers for the trail tests: a hand-moved clock, a trail filled the way the relay fills it."""

from __future__ import annotations

from appliance.trail.store import Trail


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
