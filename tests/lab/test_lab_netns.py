"""The network-namespace lab: real namespaces, a real veth pair, a real PostgreSQL, real psql.

Every lab here has its own suffix, so these tests run beside a demo lab or another run.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labmarks import lab_marks

from appliance.lab.netns import Lab
from appliance.lab.postgres import LabError

pytestmark = lab_marks("network namespaces", timeout=120)

WITNESS = str(Path(sys.executable).parent / "witness")


def _suffix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _running(pid: int) -> bool:
    """Alive and not a zombie (PID 1 here does not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and _running(int(entry.name)):
                found.append(int(entry.name))
    return found


def _psql(*prefix: str, host: str, timeout: int = 5) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *prefix,
            "psql",
            "-X",
            "-At",
            "-c",
            "select inet_server_addr()",
            f"host={host} port=5432 user=postgres dbname=postgres connect_timeout={timeout}",
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
    )


@pytest.fixture
def make_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Build labs with fresh suffixes; every one is torn down, whatever the test did."""
    labs: list[Lab] = []

    def make() -> Lab:
        lab = Lab(_suffix(), tmp_path_factory.mktemp("lab-state"))
        labs.append(lab)
        assert lab.up() is True
        return lab

    yield make
    for lab in labs:
        lab.down()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    built = Lab(_suffix(), tmp_path_factory.mktemp("lab-state"))
    try:
        built.up()
        yield built
    finally:
        built.down()


def _state(lab: Lab) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(lab.state_path.read_text())
    return state


def _assert_gone(lab: Lab, state: dict[str, Any]) -> None:
    topo = lab.topology
    assert not set(topo.namespaces) & _namespaces()
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f" {topo.bastion_veth}@" not in root_links
    assert f" {topo.backends_veth}@" not in root_links
    assert not _running(state["postgres"]["pid"])
    assert not _processes_mentioning(state["postgres"]["directory"])
    assert not Path(state["postgres"]["directory"]).exists()
    assert not lab.state_path.exists()


def test_the_backend_answers_from_the_bastion_on_each_of_its_addresses(lab: Lab) -> None:
    topo = lab.topology
    for address in (topo.backend_ipv4, topo.backend_ipv4_other, topo.backend_ipv6):
        result = _psql("ip", "netns", "exec", topo.bastion, host=str(address))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(address)


def test_the_backends_are_not_reachable_from_the_root_namespace(lab: Lab) -> None:
    topo = lab.topology
    lab_devices = (topo.bastion_veth, topo.backends_veth)
    for address in (topo.backend_ipv4, topo.backend_ipv4_other, topo.backend_ipv6):
        route = subprocess.run(
            ["ip", "route", "get", str(address)], capture_output=True, text=True
        ).stdout
        assert not any(f"dev {device}" in route for device in lab_devices), route
        result = _psql(host=str(address), timeout=3)
        assert result.returncode != 0
        assert str(address) not in result.stdout
    # Nor could the backends answer the host: they have routes to the lab's subnets only.
    lab_networks = [ipaddress.ip_network(n) for n in topo.networks]
    for family in ("-4", "-6"):
        routes = subprocess.run(
            ["ip", "-n", topo.backends, family, "-j", "route", "show", "table", "all"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for route in json.loads(routes):
            if route.get("type") in ("local", "broadcast", "multicast") or route["dst"] in (
                "fe80::/64",
                "ff00::/8",
            ):
                continue
            assert route["dst"] != "default", route
            assert ipaddress.ip_network(route["dst"]) in lab_networks, route


def test_up_on_a_lab_that_is_up_changes_nothing(lab: Lab) -> None:
    before = _state(lab)
    again = Lab(lab.topology.name.removeprefix("witness-lab-"), lab.state_path.parent)
    assert again.up() is False
    assert _state(lab) == before
    assert _running(before["postgres"]["pid"])


def test_down_removes_everything_and_can_be_repeated(make_lab: Any) -> None:
    lab: Lab = make_lab()
    state = _state(lab)
    assert set(lab.topology.namespaces) <= _namespaces()
    assert _running(state["postgres"]["pid"])
    assert lab.down() is True
    _assert_gone(lab, state)
    assert lab.down() is False
    _assert_gone(lab, state)


def test_down_cleans_up_after_postgres_was_killed(make_lab: Any) -> None:
    lab: Lab = make_lab()
    state = _state(lab)
    pid = state["postgres"]["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(LabError, match=r"partly up.*PostgreSQL is not running"):
        lab.up()
    assert lab.down() is True
    _assert_gone(lab, state)


def test_the_command_line_brings_a_lab_up_and_down(tmp_path: Path) -> None:
    suffix = _suffix()
    command = [WITNESS, "lab", "up", "--suffix", suffix, "--state-dir", str(tmp_path)]
    lab = Lab(suffix, tmp_path)
    try:
        up = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert up.returncode == 0, up.stderr
        assert f"lab witness-lab-{suffix} is up" in up.stdout
        state = _state(lab)
        again = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert "is already up" in again.stdout
        command[2] = "down"
        down = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert down.returncode == 0, down.stderr
        assert f"lab witness-lab-{suffix} is down" in down.stdout
        _assert_gone(lab, state)
    finally:
        lab.down()


def test_the_command_line_refuses_without_root(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"),
            *(WITNESS, "lab", "up", "--suffix", _suffix(), "--state-dir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "needs root" in result.stderr, result.stderr


def test_a_failed_up_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """initdb is missing: the namespaces, veth and data directory made so far are removed."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("WITNESS_PG_BINDIR", str(tmp_path / "no-postgres-here"))
    lab = Lab(_suffix(), tmp_path / "state")
    try:
        with pytest.raises(OSError, match="no-postgres-here"):
            lab.up()
        assert not set(lab.topology.namespaces) & _namespaces()
        assert not lab.state_path.exists()
        assert list(scratch.iterdir()) == []
    finally:
        lab.down()
