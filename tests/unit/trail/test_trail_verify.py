"""witness verify on larger trails: its progress (a bar on a terminal, nothing otherwise), and
payloads the fast JSON reader refuses, which the walk must still judge as the stdlib does."""

from __future__ import annotations

import os
import pty
import sqlite3
import subprocess
from pathlib import Path

import pytest
from trailkit import Clock
from witnesscli import WITNESS, witness_env

from appliance.config import TrailSettings
from appliance.trail import chain, keys
from appliance.trail.store import Trail
from appliance.trail.verify import verify
from appliance.trail.walk import PROGRESS_EVERY


def big(tmp_path: Path, clock: Clock, events: int) -> TrailSettings:
    """A trail of about ``events`` events, committed a thousand at a time, closed."""
    settings = TrailSettings.beside(tmp_path / "trail.db")
    trail = Trail.open(settings, clock=clock)
    n = 0
    while trail.head[0] < events:
        for _ in range(500):
            n += 1
            clock.tick()
            trail.append("command", "s1", {"n": n, "kind": "query", "text": f"SELECT {n}"})
            trail.append("result", "s1", {"n": n, "status": "ok", "rows": 1})
        trail.commit()
    trail.close()
    return settings


def test_verify_reports_its_progress(tmp_path: Path, clock: Clock) -> None:
    settings = big(tmp_path, clock, 2 * PROGRESS_EVERY + 100)
    told: list[tuple[int, int]] = []
    report = verify(
        settings.path,
        keys.load_public(settings.public_key),
        settings.checkpoint_file,
        now=clock.now,
        progress=lambda done, total: told.append((done, total)),
    )
    assert report.ok, report
    total = report.events
    assert told == [(PROGRESS_EVERY, total), (2 * PROGRESS_EVERY, total), (total, total)]


def run(settings: TrailSettings, *, tty: bool) -> tuple[int, str, str]:
    """``witness verify`` in a process of its own, its stderr a terminal or a pipe."""
    env = {**witness_env(), "TERM": "xterm", "COLUMNS": "100"}
    argv = [*WITNESS, "verify", "--trail", str(settings.path)]
    if not tty:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        return done.returncode, done.stdout, done.stderr
    leader, follower = pty.openpty()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=follower, env=env) as proc:
        os.close(follower)
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        err = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            err += chunk
        os.close(leader)
    return proc.returncode, out, err.decode(errors="replace")


def test_a_bar_on_a_terminal_and_nothing_otherwise(tmp_path: Path) -> None:
    settings = big(tmp_path, Clock(), 3 * PROGRESS_EVERY)
    status, out, err = run(settings, tty=False)
    assert status == 0, err
    assert out.startswith(f"{settings.path}: ok, trail ")
    assert err == ""
    status, out_on_tty, bar = run(settings, tty=True)
    assert status == 0, bar
    assert out_on_tty == out  # stdout is not touched
    assert "verifying" in bar
    assert "━" in bar


def rewrite(path: Path, seq: int, text: str) -> None:
    """Give event ``seq`` the payload ``text`` and chain everything after it again."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS events_no_update")
    rows = conn.execute(
        "SELECT seq, ts, type, session, payload FROM events WHERE seq >= ? ORDER BY seq", (seq,)
    ).fetchall()
    (prev,) = conn.execute("SELECT hash FROM events WHERE seq = ?", (seq - 1,)).fetchone()
    for number, ts, type_, session, old in rows:
        new = text if number == seq else old
        digest = chain.event_hash(prev, number, ts, type_, session, new)
        conn.execute(
            "UPDATE events SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (new, prev, digest, number),
        )
        prev = digest
    conn.close()


def test_payloads_orjson_refuses_verify_as_the_recorder_wrote_them(
    tmp_path: Path, clock: Clock
) -> None:
    """A payload with a lone surrogate (written escaped) or a NaN is JSON to the stdlib, not
    to orjson: verify falls back, and such a trail is whole."""
    settings = TrailSettings.beside(tmp_path / "trail.db")
    trail = Trail.open(settings, clock=clock)
    trail.append("command", "s1", {"n": 1, "text": "bad \udcff", "params": [b"\xff"]})
    trail.commit()
    trail.close()
    with sqlite3.connect(settings.path) as conn:
        (text,) = conn.execute("SELECT payload FROM events WHERE type = 'command'").fetchone()
    assert "\\udcff" in text  # escaped: orjson refuses it
    public = keys.load_public(settings.public_key)
    report = verify(settings.path, public, settings.checkpoint_file, now=clock.now)
    assert report.ok, report


@pytest.mark.parametrize(
    ("payload", "ok"),
    [
        ('{"n": 1, "x": NaN}', True),  # the stdlib reads it (and the chain is whole)
        ('{"n": 1, "x": "\\ud800"}', True),
        ("[1, 2]", False),
        ('{"n": 1', False),
        ('"text"', False),
    ],
)
def test_a_payload_is_judged_as_the_stdlib_reads_it(
    tmp_path: Path, clock: Clock, payload: str, ok: bool
) -> None:
    settings = TrailSettings.beside(tmp_path / "trail.db")
    trail = Trail.open(settings, clock=clock)
    trail.append("command", "s1", {"n": 1, "text": "SELECT 1"})
    trail.commit()
    trail.close()
    with sqlite3.connect(settings.path) as conn:
        (seq,) = conn.execute("SELECT seq FROM events WHERE type = 'command'").fetchone()
    rewrite(settings.path, seq, payload)
    public = keys.load_public(settings.public_key)
    report = verify(settings.path, public, settings.checkpoint_file, now=clock.now)
    if ok:
        # The rechained events after it no longer match the signed checkpoint: the walk got
        # past the payload, to the signature.
        assert report.first_bad_seq != seq, report
    else:
        assert (report.first_bad_seq, report.reason) == (
            seq,
            f"event {seq} has a payload that is not a JSON object",
        )
