"""Run the real ``witness`` executable in front of a lab PostgreSQL, and read its trail."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from appliance.lab.net import free_port, wait_port

WITNESS = str(Path(sys.executable).parent / "witness")


class Witness:
    """``witness serve`` as a child process: quick-start style, or, with ``backend_options``
    (TOML keys for the backend's table) or ``tables`` (more tables, such as ``[policy]``),
    from a configuration file written beside the trail that is otherwise the same; its
    ``[identity]`` table holds ``identity``, its ``[trail]`` table ``trail_options``.
    ``prefix`` runs before it and execs it (a launcher that sets something up)."""

    def __init__(
        self,
        backend_port: int,
        trail: Path,
        extra: list[str] | None = None,
        backend_options: str | None = None,
        tables: str | None = None,
        *,
        identity: str = 'unbound = "allow"',
        trail_options: str = "",
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.trail = trail
        self.log = trail.with_suffix(".log")
        if backend_options is None and tables is None:
            argv = [
                WITNESS,
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--backend",
                f"postgresql://127.0.0.1:{backend_port}",
                "--trail",
                str(trail),
                *(extra or []),
            ]
        else:
            config = trail.with_suffix(".toml")
            config.write_text(
                f'[[backend]]\nname = "default"\naddress = "127.0.0.1"\nport = {backend_port}\n'
                f"{backend_options or ''}\n\n"
                f'[[listener]]\nlisten = "127.0.0.1:{self.port}"\nbackend = "default"\n\n'
                f'[trail]\npath = "{trail}"\n{trail_options}\n\n[identity]\n{identity}\n\n'
                f"{tables or ''}\n"
            )
            argv = [WITNESS, "--config", str(config), "serve", *(extra or [])]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([*prefix, *argv], stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc)

    def url(self, database: str = "postgres", user: str = "postgres", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}" + (
            f"?{query}" if query else ""
        )

    def stop(self) -> int:
        return terminate(self.proc)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, and its exit status once it exits (SIGKILL after ``timeout`` seconds)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def events(trail: Path) -> list[dict[str, Any]]:
    """Every committed event, oldest first, with its payload decoded."""
    db = sqlite3.connect(f"file:{trail}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT seq, type, session, payload FROM events ORDER BY seq").fetchall()
    finally:
        db.close()
    return [
        {"seq": seq, "type": type_, "session": session, **json.loads(payload)}
        for seq, type_, session, payload in rows
    ]


def sessions(trail: Path) -> dict[str, dict[str, Any]]:
    """Session id -> its start and end events, commands, results by command n, and errors."""
    out: dict[str, dict[str, Any]] = {}
    for event in events(trail):
        sid = event["session"]
        if event["type"] == "session_start":
            out[sid] = {"start": event, "end": None, "commands": [], "results": {}, "errors": []}
        elif sid in out:
            entry = out[sid]
            if event["type"] == "command":
                entry["commands"].append(event)
            elif event["type"] == "result":
                entry["results"][event["n"]] = event
            elif event["type"] == "session_end":
                entry["end"] = event
            elif event["type"] == "error":
                entry["errors"].append(event)
    return out


def run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, **kwargs)
