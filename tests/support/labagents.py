"""Helpers for the tests that run agents in the enforced lab: reading sessions out of the trail,
and a few lines of PostgreSQL wire protocol for an agent that is not psql."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from witnessproc import events

from appliance.lab.enforced import WITNESS, EbpfUnavailable, EnforcedLab
from appliance.lab.postgres import postgres_bindir

PSQL = postgres_bindir() / "psql"
PYTHON = "/usr/bin/python3"  # readable by the agents, unlike a venv under /root


def tag(prefix: str = "probe") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def all_sessions(trail: Path) -> list[dict[str, Any]]:
    """Every session: its start, commands and end (None while open), in trail order."""
    by_id: dict[str, dict[str, Any]] = {}
    for event in events(trail):
        sid = event["session"]
        if event["type"] == "session_start":
            by_id[sid] = {"start": event, "commands": [], "end": None}
        elif sid in by_id and event["type"] == "command":
            by_id[sid]["commands"].append(event)
        elif sid in by_id and event["type"] == "session_end":
            by_id[sid]["end"] = event
    return list(by_id.values())


def sessions_with(trail: Path, text: str) -> list[dict[str, Any]]:
    return [s for s in all_sessions(trail) if any(text in c["text"] for c in s["commands"])]


def ended_session_with(trail: Path, text: str, timeout: float = 5.0) -> dict[str, Any]:
    """The one session with a command containing ``text``, once its end is committed."""
    deadline = time.monotonic() + timeout
    while True:
        found = sessions_with(trail, text)
        if found and all(s["end"] is not None for s in found):
            assert len(found) == 1, found
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no ended session with {text!r} in the trail: {found}")
        time.sleep(0.05)


def psql_argv(host: str, *, port: int = 5432, sql: str | None = None) -> list[str]:
    """psql as an agent would run it, unchanged: ``-c SQL``, or the script on stdin."""
    conninfo = f"host={host} port={port} user=postgres dbname=postgres connect_timeout=5"
    return [
        str(PSQL),
        "-X",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        *(["-c", sql] if sql else []),
        conninfo,
    ]


# A few lines of PostgreSQL wire protocol (trust authentication), for agents that are not
# psql: open(host, port, mark=None) connects (setting SO_MARK first if asked) and query(s, sql)
# sends the startup on first use, runs one query and returns the first column of its first row.
# Prints "ok" if the agent could open an AF_PACKET socket, else the errno's name.
PACKET_PROBE = """
import errno, socket
try:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    print("ok")
except OSError as exc:
    print(errno.errorcode[exc.errno])
"""

PG_WIRE = r"""
import errno, socket, struct, sys

def recvn(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf

def until_ready(s):
    row = None
    while True:
        kind = recvn(s, 1)
        body = recvn(s, struct.unpack("!I", recvn(s, 4))[0] - 4)
        if kind == b"E":
            raise SystemExit("server error: " + body.decode(errors="replace"))
        if kind == b"D" and row is None:
            (size,) = struct.unpack_from("!i", body, 2)
            row = body[6:6 + size].decode()
        if kind == b"Z":
            return row

def open_(host, port, mark=None):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(10)
    if mark is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, struct.pack("=I", mark))
    s.connect((host, port))
    return s

def query(s, sql):
    params = b"user\0postgres\0database\0postgres\0\0"
    s.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
    until_ready(s)
    text = sql.encode() + b"\0"
    s.sendall(b"Q" + struct.pack("!I", len(text) + 4) + text)
    row = until_ready(s)
    s.sendall(b"X\0\0\0\4")
    s.close()
    return row
"""

# argv: host port sql [mark]. Prints the first column of the first row, or "error ERRNO"
# when setting the mark or connecting fails.
PG_CLIENT = (
    PG_WIRE
    + r"""
host, port, sql = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mark = int(sys.argv[4]) if len(sys.argv) > 4 else None
try:
    s = open_(host, port, mark)
except OSError as exc:
    print("error " + errno.errorcode.get(exc.errno, str(exc.errno)))
    raise SystemExit(0)
print(query(s, sql))
"""
)


def status_json(up_config: Path, netns: str) -> dict[str, Any]:
    """``witness status --json`` for the table in ``netns``; it must exit 0 (up, matching)."""
    done = subprocess.run(
        [WITNESS, "--config", str(up_config), "status", "--netns", netns, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def running_lab(
    prefix: str,
    state: Path,
    *,
    agents: int,
    ebpf: bool,
    needs: str,
    backend_interfaces: tuple[str, ...] = (),
) -> Iterator[EnforcedLab]:
    """For a module fixture: a started enforced lab, closed afterwards; skipped, saying
    ``needs`` and why, when eBPF was asked for and cannot be attached here."""
    made = EnforcedLab(
        f"{prefix}{uuid.uuid4().hex[:8]}",
        state,
        agents=agents,
        ebpf=ebpf,
        backend_interfaces=backend_interfaces,
    )
    try:
        made.start()
    except EbpfUnavailable as exc:
        pytest.skip(f"{needs}: {exc}")
    try:
        yield made
    finally:
        made.close()
