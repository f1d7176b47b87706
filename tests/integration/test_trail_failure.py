"""When the trail cannot be written, commands are refused, nothing is forwarded, nothing is lost."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pglog
import psycopg
import pytest
from witnessproc import WITNESS, Witness, run, sessions

from appliance.lab.postgres import PostgresServer

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


@needs_root
def test_full_disk_refuses_the_command_and_recovers(pg: PostgresServer, tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    recorder = None
    try:
        recorder = Witness(pg.port, mount / "trail.db")
        agent = psycopg.connect(recorder.url(application_name="agent"), autocommit=True)
        assert agent.execute("select 'before'").fetchone() == ("before",)
        filler = _fill(mount)
        offset = pglog.size(pg.log_path)
        # A live session's command is refused with a native error, and not forwarded.
        big = "select length('" + "x" * 1_500_000 + "') as refused"
        with pytest.raises(psycopg.OperationalError, match="audit trail cannot be written"):
            agent.execute(big)
        agent.close()
        # A new session cannot even be recorded: it is refused at the start.
        late = run("psql", "-X", "-c", "select 'late'", recorder.url())
        assert late.returncode != 0
        assert "audit trail cannot be written" in late.stderr
        assert not [
            t for _, t in pglog.statements(pg.log_path, offset) if "refused" in t or "late" in t
        ]

        filler.unlink()
        after = run("psql", "-X", "-At", "-c", "select 'after'", recorder.url())
        assert after.returncode == 0, after.stderr
        assert after.stdout.strip() == "after"
        assert recorder.stop() == 0

        found = sessions(mount / "trail.db")
        commands = [c for s in found.values() for c in s["commands"]]
        refused_cmd = next(c for c in commands if c["text"].endswith("as refused"))
        assert "trail write failed" in refused_cmd["refused"]
        assert any(c["text"] == "select 'after'" for c in commands)
        refused_at_start = [
            s
            for s in found.values()
            if not s["commands"] and "trail write failed" in s["end"]["reason"]
        ]
        assert len(refused_at_start) == 1
        verify = run(WITNESS, "verify", "--trail", str(mount / "trail.db"))
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        if recorder is not None:
            recorder.stop()
        subprocess.run(["umount", "-l", str(mount)], check=False)
