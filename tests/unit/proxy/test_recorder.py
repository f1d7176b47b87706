"""The group commit and the checkpoint ticker: one failing part never stalls the others."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fulldisk import fail_inserts

from appliance import daemon
from appliance.cli.serve import quick_settings
from appliance.config import TrailSettings
from appliance.lab.net import free_port
from appliance.proxy.recorder import Recorder
from appliance.trail.store import Trail


class Waiter:
    """A gated session stand-in; ``broken`` ones raise the way a bug in a session would."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.calls: list[str] = []

    def released(self) -> None:
        self.calls.append("released")
        if self.broken:
            raise RuntimeError("a bug in one session")

    def refused(self, reason: str) -> None:
        self.calls.append("refused")
        if self.broken:
            raise RuntimeError("a bug in one session")


@pytest.mark.parametrize("fails", [False, True])
def test_a_waiter_that_raises_does_not_hold_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fails: bool
) -> None:
    async def scenario() -> None:
        trail = Trail.open(TrailSettings.beside(tmp_path / "trail.db"))
        if fails:
            fail_inserts(trail)
        recorder = Recorder(trail, asyncio.get_running_loop())
        waiters = [Waiter(), Waiter(broken=True), Waiter()]
        for n, waiter in enumerate(waiters):
            recorder.record("command", "s", {"n": n, "text": "select 1"})
            recorder.gate(waiter)
        await asyncio.sleep(0.01)
        expected = ["refused" if fails else "released"]
        assert [w.calls for w in waiters] == [expected] * 3
        assert "a bug in one session" in caplog.text

    asyncio.run(scenario())


class Flaky:
    """The trail's connection, whose next transaction raises what no sqlite3 error is."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real
        self.armed = False
        self.raised = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def cursor(self) -> Flaky:
        return self

    def execute(self, sql: str, *args: Any) -> Any:
        if self.armed and sql == "BEGIN IMMEDIATE":
            self.armed = False
            self.raised += 1
            raise RuntimeError("an unexpected failure")
        return self.real.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self.real.executemany(sql, *args)


def test_the_checkpoint_ticker_survives_an_unexpected_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    opened: list[tuple[Trail, Flaky]] = []

    class Opener:
        @staticmethod
        def open(settings: TrailSettings) -> Trail:
            trail = Trail.open(settings)
            flaky = Flaky(trail._conn)  # type: ignore[arg-type]
            trail._conn = flaky  # type: ignore[assignment]
            opened.append((trail, flaky))
            return trail

    monkeypatch.setattr(daemon, "Trail", Opener)
    settings = quick_settings(
        f"127.0.0.1:{free_port()}", "postgresql://127.0.0.1:1", tmp_path / "trail.db"
    )
    settings = dataclasses.replace(
        settings, trail=dataclasses.replace(settings.trail, checkpoint_seconds=0.05)
    )

    def signed() -> int:
        with sqlite3.connect(settings.trail.path) as conn:
            query = "SELECT count(*) FROM events WHERE type = 'checkpoint'"
            return int(conn.execute(query).fetchone()[0])

    async def scenario() -> None:
        serving = asyncio.ensure_future(daemon.run(settings))
        while not opened:
            await asyncio.sleep(0.01)
        trail, flaky = opened[0]
        before = signed()
        flaky.armed = True
        trail.append("error", None, {"where": "test", "message": "to be signed"})
        for _ in range(300):
            await asyncio.sleep(0.01)
            if flaky.raised and signed() > before:
                break
        assert flaky.raised == 1
        assert signed() > before, "nothing was signed after the failure"
        os.kill(os.getpid(), signal.SIGTERM)
        await serving

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    assert "an unexpected failure" in caplog.text


class SlowDisk:
    """The trail's connection, whose every COMMIT takes ``seconds``, as an fsync does on a
    slow or busy disk; it notes which thread committed."""

    def __init__(self, real: sqlite3.Connection, seconds: float) -> None:
        self.real = real
        self.seconds = seconds
        self.threads: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def cursor(self) -> SlowDisk:
        return self

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            self.threads.add(threading.current_thread().name)
            time.sleep(self.seconds)
        return self.real.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self.real.executemany(sql, *args)


def test_power_commits_wait_for_the_disk_off_the_event_loop(tmp_path: Path) -> None:
    """While one session's command waits for its fsync, the loop goes on: other sessions'
    commands gather for the next commit, and each is released only once it is durable."""
    settings = TrailSettings.beside(tmp_path / "trail.db", durability="power")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        trail = Trail.open(settings)
        slow = SlowDisk(trail._conn, 0.3)  # type: ignore[arg-type]
        trail._conn = slow  # type: ignore[assignment]
        recorder = Recorder(trail, loop)
        first, second = Waiter(), Waiter()
        recorder.record("command", "a", {"n": 1, "text": "select 1"})
        recorder.gate(first)
        started = time.monotonic()
        await asyncio.sleep(0.05)  # the first commit is under way
        lag = time.monotonic() - started
        recorder.record("command", "b", {"n": 1, "text": "select 2"})
        recorder.gate(second)
        assert (first.calls, second.calls) == ([], [])
        while not second.calls:
            await asyncio.sleep(0.01)
        assert (first.calls, second.calls) == (["released"], ["released"])
        assert lag < 0.2, f"the event loop stalled {lag:.2f} s behind a commit"
        assert threading.current_thread().name not in slow.threads
        await recorder.close()
        with sqlite3.connect(settings.path) as conn:
            texts = [
                t for (t,) in conn.execute("SELECT payload FROM events WHERE type = 'command'")
            ]
        assert len(texts) == 2

    asyncio.run(scenario())
