"""A trail whose inserts fail the way they fail on a full disk, without filling one."""

from __future__ import annotations

import sqlite3

from appliance.trail.store import Trail


class FullDisk:
    """Stands in for the trail's connection: everything passes through to the real one, except
    that inserting raises what SQLite raises when the disk is full."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def cursor(self) -> FullDisk:
        return self

    def execute(self, sql: str, *args: object) -> object:
        return self.real.execute(sql, *args)

    def executemany(self, *_: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")


def fail_inserts(trail: Trail) -> sqlite3.Connection:
    """Make ``trail``'s commits fail as on a full disk; returns the real connection."""
    real = trail._conn
    assert real is not None
    trail._conn = FullDisk(real)  # type: ignore[assignment]
    return real
