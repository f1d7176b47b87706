"""The warden for real: ``witness warden`` as root, asked by a throwaway service user to place
processes of a throwaway agent user, in a test agent root of its own.

Every test runs its own warden (``witness warden --agent-root``) on a socket in a directory
of its own, so that one test's refusals or its SIGTERM cannot leak into the next. The agent
root is ``<cgroup2>/witness-agents-test-<hex>``, never the real ``witness-agents``, so that
the tests run beside a Witness that enforces on this host. The users, the agent root and
every process the tests start are removed afterwards, also when a test fails.

The client runs as the service user in a subprocess (``setpriv``), exactly as the recorder
would call it; a few protocol-level checks (malformed lines, the pids a release reports)
talk to the socket as root, which the warden also answers.
"""

from __future__ import annotations

import contextlib
import json
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from labmarks import lab_marks

from appliance.enforce import cgroups, warden
from appliance.lab import users
from appliance.lab.enforced import WITNESS

MOUNT = cgroups.cgroup2_mount()

pytestmark = [
    *lab_marks("cgroups, users, the warden", "setpriv", "useradd", timeout=120),
    pytest.mark.skipif(MOUNT is None, reason="cgroup2 is not mounted"),
]

# argv: SOCKET REQUEST-JSON; the recorder's side of the protocol, through the module's client.
CLIENT = r"""
import json, sys
from pathlib import Path
from appliance.enforce import warden
path, req = Path(sys.argv[1]), json.loads(sys.argv[2])
try:
    if req["op"] == "place":
        got = warden.place(path, req["pid"], req["uid"], req["start"])
        out = {"ok": True, "cgroup": got.cgroup, "cgroup_id": got.cgroup_id}
    else:
        out = {"ok": True, "removed": warden.release(path, req["cgroup"])}
except warden.WardenError as exc:
    out = {"ok": False, "error": str(exc)}
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Host:
    """What the module made: the test agent root and the two throwaway users."""

    mount: Path
    root: Path
    service: pwd.struct_passwd
    agent: pwd.struct_passwd

    @property
    def root_rel(self) -> str:
        return "/" + self.root.relative_to(self.mount).as_posix()

    def runs(self) -> set[str]:
        return {p.name for p in self.root.iterdir() if p.name.startswith("run-")}


@dataclass
class Running:
    """One warden: its process, its socket, its log."""

    host: Host
    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path

    def logged(self) -> str:
        return self.log.read_text(errors="replace")


def _kill_cgroup(path: Path) -> None:
    with contextlib.suppress(OSError):
        (path / "cgroup.kill").write_text("1\n")
    deadline = time.monotonic() + 5
    while cgroups.pids(path) and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    assert MOUNT is not None
    tag = uuid.uuid4().hex[:6]
    root = MOUNT / f"witness-agents-test-{tag}"
    names = [f"wwt{tag}-svc", f"wwt{tag}-agt"]
    made: list[str] = []
    try:
        cgroups.create_root(root)
        users.create(names, lambda so_far: made.__setitem__(slice(None), so_far))
        yield Host(MOUNT, root, pwd.getpwnam(names[0]), pwd.getpwnam(names[1]))
    finally:
        # Kill whatever is left in the test root's cgroups, then remove them and the users.
        if root.is_dir():
            for child in root.iterdir():
                if child.is_dir():
                    _kill_cgroup(child)
            _kill_cgroup(root)
        try:
            cgroups.remove(root)
        finally:
            users.remove(made)


@pytest.fixture
def running(host: Host) -> Iterator[Running]:
    """``witness warden`` as root on ``<tmp>/run/warden.sock`` (``run`` made by the warden)."""
    scratch = Path(tempfile.mkdtemp(prefix="witness-warden-"))
    scratch.chmod(0o755)  # the service user must reach the socket
    sock = scratch / "run" / "warden.sock"
    config = scratch / "witness.toml"
    config.write_text(
        '[[backend]]\nname = "db"\naddress = "127.0.0.1"\nport = 5432\n\n'
        f'[enforce]\nservice_user = "{host.service.pw_name}"\n\n'
        f'[identity]\nwarden_socket = "{sock}"\n'
    )
    log = scratch / "warden.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [WITNESS, "warden", "--config", str(config), "--agent-root", str(host.root)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    made = Running(host, proc, sock, log)
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert proc.poll() is None, f"the warden exited: {made.logged()}"
            assert time.monotonic() < deadline, f"no socket after 15 s: {made.logged()}"
            time.sleep(0.02)
        yield made
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def agents(host: Host) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The agent processes a test starts (``start_agent``), killed and reaped afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def setpriv(who: pwd.struct_passwd, gid: int | None = None) -> list[str]:
    return [
        "setpriv",
        f"--reuid={who.pw_uid}",
        f"--regid={who.pw_gid if gid is None else gid}",
        "--clear-groups",
        "--",
    ]


def start_agent(host: Host, agents: list[subprocess.Popen[bytes]]) -> int:
    """``sleep 60`` as the agent user; its pid, once it runs as that user (setpriv exec'd)."""
    proc = subprocess.Popen([*setpriv(host.agent), "sleep", "60"], cwd="/")
    agents.append(proc)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "sleep":
        assert time.monotonic() < deadline, "the agent did not start"
        time.sleep(0.01)
    return proc.pid


def cgroup_of(pid: int) -> str:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return next(line[3:] for line in lines if line.startswith("0::"))


def ask(
    running: Running, request: dict[str, Any], who: pwd.struct_passwd, gid: int | None = None
) -> dict[str, Any]:
    """``request`` through the client module, run as ``who`` (with group ``gid``)."""
    done = subprocess.run(
        [
            *setpriv(who, gid),
            sys.executable,
            "-c",
            CLIENT,
            str(running.socket),
            json.dumps(request),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def raw(running: Running, data: bytes, *, shut: bool = True) -> dict[str, Any]:
    """Send ``data`` as root, straight to the socket; the warden's one answer line."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(running.socket))
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        answer: dict[str, Any] = json.loads(sock.makefile("rb").readline())
        return answer


def place_request(host: Host, pid: int, **override: int) -> dict[str, Any]:
    request = {"op": "place", "pid": pid, "uid": host.agent.pw_uid, "start": warden.start_time(pid)}
    return request | override


# --- tests ----------------------------------------------------------------------------------


def test_the_socket_is_root_and_the_service_group_only(running: Running) -> None:
    found = running.socket.lstat()
    assert stat.S_ISSOCK(found.st_mode)
    assert (found.st_uid, found.st_gid) == (0, running.host.service.pw_gid)
    assert stat.S_IMODE(found.st_mode) == 0o660
    parent = running.socket.parent.stat()
    assert (parent.st_uid, stat.S_IMODE(parent.st_mode)) == (0, 0o755)


def test_the_service_user_places_an_agent_in_a_cgroup_of_its_own(
    running: Running, agents: list[subprocess.Popen[bytes]]
) -> None:
    host = running.host
    pid = start_agent(host, agents)
    before = cgroup_of(pid)
    answer = ask(running, place_request(host, pid), host.service)
    assert answer["ok"] is True, answer
    cgroup = answer["cgroup"]
    assert re.fullmatch(re.escape(host.root_rel) + r"/run-[0-9a-f]{16}", cgroup), cgroup
    assert cgroup_of(pid) == cgroup != before
    path = host.mount / cgroup.lstrip("/")
    assert answer["cgroup_id"] == cgroups.cgroup_id(path)
    assert cgroups.pids(path) == [pid]
    # Locked down like every agent cgroup: the agent cannot move itself out or in.
    for item, mode in ((path, 0o755), (path / "cgroup.procs", 0o644)):
        found = item.stat()
        assert (found.st_uid, found.st_gid, stat.S_IMODE(found.st_mode)) == (0, 0, mode)
    # Two placements: two cgroups.
    other = start_agent(host, agents)
    second = ask(running, place_request(host, other), host.service)
    assert second["ok"] is True and second["cgroup"] != cgroup, second
    assert f"placed pid {pid} (uid {host.agent.pw_uid}) in {cgroup}" in running.logged()

    # Release while the agent runs: refused, and the warden says who is still there.
    assert raw(running, json.dumps({"op": "release", "cgroup": cgroup}).encode() + b"\n") == {
        "ok": True,
        "removed": False,
        "pids": [pid],
    }
    assert ask(running, {"op": "release", "cgroup": cgroup}, host.service) == {
        "ok": True,
        "removed": False,
    }
    agents[0].kill()
    agents[0].wait()
    assert ask(running, {"op": "release", "cgroup": cgroup}, host.service) == {
        "ok": True,
        "removed": True,
    }
    assert not path.exists()
    assert f"removed {cgroup} (released)" in running.logged()


def test_a_wrong_start_time_or_uid_is_refused_and_nothing_moves(
    running: Running, agents: list[subprocess.Popen[bytes]]
) -> None:
    host = running.host
    pid = start_agent(host, agents)
    before, runs = cgroup_of(pid), host.runs()
    cases = [
        (place_request(host, pid, start=warden.start_time(pid) + 1), "its start time changed"),
        (place_request(host, pid, uid=host.service.pw_uid), "is not the caller: it runs as uid"),
        (place_request(host, pid, uid=0), "is not the caller: it runs as uid"),
    ]
    for request, why in cases:
        answer = ask(running, request, host.service)
        assert answer["ok"] is False and why in answer["error"], answer
        assert f"process {pid}" in answer["error"]
    gone = place_request(host, pid)
    agents[0].kill()
    agents[0].wait()
    answer = ask(running, gone, host.service)
    assert answer == {"ok": False, "error": f"process {pid} is gone"}
    assert host.runs() == runs
    live = start_agent(host, agents)
    assert cgroup_of(live) == before
    assert ask(running, place_request(host, live), host.service)["ok"] is True  # the control


def test_only_the_service_user_and_root_may_ask(
    running: Running, agents: list[subprocess.Popen[bytes]]
) -> None:
    host = running.host
    pid = start_agent(host, agents)
    before, runs = cgroup_of(pid), host.runs()
    # The agent cannot even open the socket (root:<service group> 0660) ...
    answer = ask(running, place_request(host, pid), host.agent)
    assert answer["ok"] is False, answer
    assert f"permission denied on {running.socket}" in answer["error"]
    assert f"group {host.service.pw_name}" in answer["error"]
    # ... and with the service user's group, SO_PEERCRED gives it away.
    answer = ask(running, place_request(host, pid), host.agent, gid=host.service.pw_gid)
    assert answer == {
        "ok": False,
        "error": f"uid {host.agent.pw_uid} may not use the warden: only "
        f"{host.service.pw_name} (uid {host.service.pw_uid}) and root",
    }
    assert (cgroup_of(pid), host.runs()) == (before, runs)
    assert f"refused a connection from uid {host.agent.pw_uid}" in running.logged()


def test_release_refuses_anything_but_a_run_cgroup_of_the_agent_root(running: Running) -> None:
    host = running.host
    decoy = cgroups.create_child(host.root, "agent1")  # a lab-style cgroup: not the warden's
    try:
        for cgroup in (
            f"{host.root_rel}/agent1",
            f"{host.root_rel}/../{host.root.name}",
            f"{host.root_rel}/run-zz",
            f"/witness-agents/{'run-' + 'a' * 16}",
            f"{host.root_rel}/{'run-' + 'a' * 16}/..",
            f"{host.root_rel}/{'run-' + 'a' * 16}/{'run-' + 'b' * 16}",
            "/",
            host.root_rel,
        ):
            answer = ask(running, {"op": "release", "cgroup": cgroup}, host.service)
            assert answer["ok"] is False, (cgroup, answer)
            assert "is not a cgroup the warden makes" in answer["error"], answer
        assert decoy.is_dir() and host.root.is_dir()
    finally:
        decoy.rmdir()


def test_bad_clients_get_an_error_and_the_warden_carries_on(
    running: Running, agents: list[subprocess.Popen[bytes]]
) -> None:
    host = running.host
    for data, why in (
        (b"{not json\n", "not a JSON line"),
        (b'{"op": "format", "disk": "/dev/sda"}\n', 'unknown request: op "format"'),
        (b"[]\n", "expected a JSON object"),
        (b"x" * 5000, "longer than 4096 bytes"),
        (b"\n", "empty request"),
    ):
        answer = raw(running, data)
        assert answer["ok"] is False and why in answer["error"], (data[:40], answer)
    # A slow client: nothing sent, the connection held open; it gets a timeout, not forever.
    began = time.monotonic()
    answer = raw(running, b'{"op": "pla', shut=False)
    assert answer["ok"] is False and "timed out" in answer["error"], answer
    assert 2.0 < time.monotonic() - began < 8.0
    # One that connects and leaves.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(running.socket))
    assert running.proc.poll() is None
    pid = start_agent(host, agents)
    assert ask(running, place_request(host, pid), host.service)["ok"] is True


def test_the_sweep_removes_a_cgroup_once_its_processes_have_exited(
    running: Running, agents: list[subprocess.Popen[bytes]]
) -> None:
    host = running.host
    decoy = cgroups.create_child(host.root, "agent2")  # empty, but not the warden's
    try:
        pid = start_agent(host, agents)
        answer = ask(running, place_request(host, pid), host.service)
        assert answer["ok"] is True, answer
        path = host.mount / answer["cgroup"].lstrip("/")
        time.sleep(warden.SWEEP_SECONDS + 1)
        assert path.is_dir()  # still running: swept past
        agents[0].kill()
        agents[0].wait()
        deadline = time.monotonic() + 2 * warden.SWEEP_SECONDS + 2
        while path.exists():
            assert time.monotonic() < deadline, f"not swept: {running.logged()}"
            time.sleep(0.1)
        assert f"removed {answer['cgroup']} (its processes have exited)" in running.logged()
        assert decoy.is_dir()
    finally:
        decoy.rmdir()


def test_a_pid_reused_during_placement_is_killed_and_its_cgroup_removed(
    host: Host, agents: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race cannot be timed from outside, so the second check is made to fail, in process:
    # what is real is the move, cgroup.kill and the removal.
    pid = start_agent(host, agents)
    request = warden.Place(pid, host.agent.pw_uid, warden.start_time(pid))
    checks: list[int] = []
    real = warden.check_caller

    def second_fails(pid: int, uid: int, start: int, proc: Path = Path("/proc")) -> None:
        checks.append(pid)
        if len(checks) == 2:
            assert cgroup_of(pid).startswith(host.root_rel + "/run-")  # moved by then
            raise warden.WardenError(f"process {pid} is not the caller: its start time changed")
        real(pid, uid, start, proc)

    monkeypatch.setattr(warden, "check_caller", second_fails)
    server = warden.Warden(Path("/nonexistent"), 1, 1, root=host.root, mount=host.mount)
    runs = host.runs()
    with pytest.raises(warden.WardenError, match="its start time changed"):
        server.place(request)
    assert agents[0].wait(5) == -signal.SIGKILL
    assert host.runs() == runs


def test_sigterm_removes_the_socket_and_leaves_placed_agents_alone(
    running: Running, agents: list[subprocess.Popen[bytes]]
) -> None:
    host = running.host
    pid = start_agent(host, agents)
    answer = ask(running, place_request(host, pid), host.service)
    assert answer["ok"] is True, answer
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(10) == 0, running.logged()
    assert not running.socket.exists()
    assert cgroup_of(pid) == answer["cgroup"]  # the agent runs on, still in its cgroup
    assert "SIGTERM: stopping" in running.logged()
    answer = ask(running, place_request(host, pid), host.service)
    assert answer == {
        "ok": False,
        "error": f"the warden is not running (no socket at {running.socket}): "
        "start `witness warden` as root",
    }
