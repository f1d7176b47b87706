"""The trail's WAL deleted or truncated under the running recorder: commands are refused from
the next checkpoint on, the log says why, and verify and a restart show what happened."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg
import pytest
from witnessproc import WITNESS, Witness, events, run

from appliance.lab.postgres import PostgresServer


def refused_within(agent: psycopg.Connection[tuple[object, ...]], seconds: float) -> str:
    """Run statements until one is refused (the recorder checks at each checkpoint, every
    second by default); return the error."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        try:
            agent.execute(f"select {n}")
        except psycopg.OperationalError as exc:
            return str(exc)
        time.sleep(0.05)
    raise AssertionError(f"no statement was refused within {seconds} s")


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_a_lost_wal_stops_the_recorder_forwarding(
    pg: PostgresServer, tmp_path: Path, how: str
) -> None:
    trail = tmp_path / "trail.db"
    recorder = Witness(pg.port, trail)
    try:
        agent = psycopg.connect(recorder.url(application_name="agent"), autocommit=True)
        assert agent.execute("select 'before'").fetchone() == ("before",)
        wal = trail.with_name("trail.db-wal")
        if how == "deleted":
            wal.unlink()
        else:
            os.truncate(wal, 0)
        error = refused_within(agent, 10)
        assert "audit trail cannot be written" in error
        # Every later command, in any session, is refused too.
        late = run("psql", "-X", "-c", "select 'late'", recorder.url())
        assert late.returncode != 0
        assert "audit trail cannot be written" in late.stderr
        agent.close()
        assert recorder.stop() == 1
    finally:
        recorder.stop()
    log = recorder.log.read_text()
    assert "CRITICAL" in log and "THE TRAIL LOST EVENTS" in log
    verify = run(WITNESS, "verify", "--trail", str(trail))
    if how == "deleted":
        # The WAL was still open: stopping copied it into the database, with what happened.
        assert verify.returncode == 0, verify.stdout + verify.stderr
        notices = [e["message"] for e in events(trail) if e["type"] == "error"]
        assert any("trail.db-wal was deleted under the recorder" in m for m in notices)
        again = Witness(pg.port, trail)
        assert again.stop() == 0
    else:
        # What the WAL lost is gone; the checkpoint file shows the cut, and the recorder will
        # not carry on from it.
        assert verify.returncode == 1
        assert "the tail was cut" in verify.stdout
        restart = run(
            WITNESS,
            "serve",
            "--listen",
            "127.0.0.1:1",
            "--backend",
            pg.url(),
            "--trail",
            str(trail),
        )
        assert restart.returncode == 1
        assert "events were cut" in restart.stderr
