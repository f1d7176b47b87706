"""Attribution: three agents, three users, three cgroups, psql sessions at the same time.

Each agent runs the real, unchanged psql against the backend's address in the enforced lab;
nftables diverts it to the recorder, which records who connected. The module runs twice:
with the eBPF programs attached to the agent cgroup root (owners come from the pinned map,
source ``ebpf``; skipped with the probe's reason where eBPF cannot be loaded) and without
them (owners from sock_diag and /proc, source ``sock_diag``). Either way every session, and
so every command in it, must name the right pid, uid, cgroup and executable.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labagents import (
    PG_WIRE,
    PSQL,
    PYTHON,
    all_sessions,
    ended_session_with,
    psql_argv,
    running_lab,
    status_json,
    tag,
)
from labmarks import lab_marks

from appliance.enforce import bpf, cgroups
from appliance.lab.enforced import WITNESS, EnforcedLab

pytestmark = lab_marks("netns, nftables, cgroups, users", "nft", timeout=180)

AGENTS = 3
STATEMENTS = 4


@pytest.fixture(scope="module", params=["ebpf", "sock_diag"])
def lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnforcedLab]:
    yield from running_lab(
        "a",
        tmp_path_factory.mktemp("lab-state"),
        agents=AGENTS,
        ebpf=request.param == "ebpf",
        needs="eBPF attribution unavailable",
    )


def source(lab: EnforcedLab) -> str:
    return "ebpf" if lab.ebpf else "sock_diag"


def assert_owner(lab: EnforcedLab, owner: dict[str, Any], i: int, pid: int, src: str) -> None:
    assert owner["source"] == src, owner
    assert owner["pid"] == pid, owner
    assert owner["uid"] == lab.agent_uid(i), owner
    assert owner["cgroup"] == lab.agent_cgroup_name(i), owner
    assert owner["exe"] == os.path.realpath(PSQL) or owner["exe"] == PYTHON_EXE, owner
    # eBPF: the cgroup id the kernel reported at connect(2); sock_diag: the socket's cgroup
    assert owner["cgroup_id"] == cgroups.cgroup_id(lab.agent_cgroup(i)), owner


PYTHON_EXE = os.path.realpath(PYTHON)


def test_the_attribution_mode_is_the_one_status_reports(lab: EnforcedLab) -> None:
    report = status_json(lab.up_config, lab.bastion)
    assert report["attribution"]["mode"] == source(lab), report["attribution"]
    assert report["service_user"] == lab.service_user


def test_three_agents_at_once_each_session_and_command_carries_its_own_owner(
    lab: EnforcedLab,
) -> None:
    assert lab.directory is not None
    run = tag("attr")
    procs = {}
    for i in range(1, AGENTS + 1):
        script = lab.directory / f"agent{i}.sql"
        script.write_text(
            "".join(
                f"select '{run}-a{i}-s{k}'; select pg_sleep(0.15);\n" for k in range(STATEMENTS)
            )
        )
        script.chmod(0o644)
        procs[i] = lab.agent(
            i,
            [*psql_argv(str(lab.topology.backend_ipv4)), "-f", str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for i, proc in procs.items():
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert [line for line in out.split() if line] == [
            f"{run}-a{i}-s{k}" for k in range(STATEMENTS)
        ]

    found = {}
    for i, proc in procs.items():
        session = ended_session_with(lab.trail, f"{run}-a{i}-")
        start = session["start"]
        assert_owner(lab, start["owner"], i, proc.pid, source(lab))
        assert start["owner"]["exe"] == os.path.realpath(PSQL)
        assert start["owner"]["comm"] == "psql"
        assert start["diverted"] is True
        assert start["destination"] == f"{lab.topology.backend_ipv4}:5432"
        tagged = [c["text"] for c in session["commands"] if run in c["text"]]
        # Every command of agent i is in agent i's session, and no other agent's is.
        assert tagged == [f"select '{run}-a{i}-s{k}';" for k in range(STATEMENTS)], tagged
        found[i] = session

    # They ran at the same time: every session started before any of them ended, and the
    # commands of the three interleave in the trail.
    starts = [s["start"]["seq"] for s in found.values()]
    ends = [s["end"]["seq"] for s in found.values()]
    assert max(starts) < min(ends), (starts, ends)
    order = [
        i
        for e in sorted(
            (c for s in found.values() for c in s["commands"] if run in c["text"]),
            key=lambda c: c["seq"],
        )
        for i in range(1, AGENTS + 1)
        if f"-a{i}-" in e["text"]
    ]
    assert order != sorted(order), order

    # The operator's view agrees: sessions listed by owner uid.
    for i in range(1, AGENTS + 1):
        listed = subprocess.run(
            [WITNESS, "sessions", "list", "--user", str(lab.agent_uid(i)), "--json",
             "--trail", str(lab.trail)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows = json.loads(listed.stdout)
        assert all(row["owner"]["uid"] == lab.agent_uid(i) for row in rows)
        mine = {row["id"] for row in rows}
        assert found[i]["start"]["session"] in mine
        others = {found[j]["start"]["session"] for j in found if j != i}
        assert not mine & others


def test_a_client_outside_the_agent_cgroups_is_attributed_through_sock_diag(
    lab: EnforcedLab,
) -> None:
    # Agent 1's user, but left in the caller's cgroup: no eBPF program runs for it.
    probe = tag("outside")
    code, out, err, pid = lab.run_agent(
        1, psql_argv(str(lab.topology.backend_ipv4), sql=f"select '{probe}'"), in_cgroup=False
    )
    assert code == 0, err
    assert out == probe
    owner = ended_session_with(lab.trail, probe)["start"]["owner"]
    assert owner["source"] == "sock_diag"
    assert (owner["pid"], owner["uid"]) == (pid, lab.agent_uid(1))
    assert owner["exe"] == os.path.realpath(PSQL)
    assert owner["cgroup"] != lab.agent_cgroup_name(1)
    assert not owner["cgroup"].startswith("/" + cgroups.AGENT_ROOT_NAME)


# Two connections to the backend, made while the recorder is stopped (the kernel completes
# the handshakes into its listen queue); prints their local ports, then waits for a line on
# stdin before speaking PostgreSQL on each.
TWO_CONNECTIONS = (
    PG_WIRE
    + r"""
host, first, second = sys.argv[1], sys.argv[2], sys.argv[3]
a, b = open_(host, 5432), open_(host, 5432)
print(a.getsockname()[1], b.getsockname()[1], flush=True)
sys.stdin.readline()
print(query(a, f"select '{first}'"), query(b, f"select '{second}'"), flush=True)
"""
)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_established(address: str, port: int, backend: tuple[str, int]) -> bpf.Record:
    deadline = time.monotonic() + 5
    while True:
        record = bpf.read((address, port), backend)
        if record is not None and record.established:
            return record
        assert time.monotonic() < deadline, f"no established record for {address}:{port}"
        time.sleep(0.02)


# Only the eBPF lab: without eBPF there is no map to miss, and every owner is sock_diag's.
@pytest.mark.parametrize("lab", ["ebpf"], indirect=True)
def test_an_owner_missing_from_the_ebpf_map_falls_back_to_sock_diag(lab: EnforcedLab) -> None:
    assert lab.ebpf and lab.recorder is not None
    recorder = lab.recorder.pid
    evicted, kept = tag("evicted"), tag("kept")
    client = str(lab.topology.bastion_addresses[0].ip)
    # Stop the recorder, so that it cannot look before the record is gone.
    os.kill(recorder, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 5
        while _state(recorder) != "T":
            assert time.monotonic() < deadline, "the recorder did not stop"
            time.sleep(0.01)
        proc = lab.agent(
            2,
            [PYTHON, "-c", TWO_CONNECTIONS, str(lab.topology.backend_ipv4), evicted, kept],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        port_a, port_b = (int(p) for p in line.split())
        backend = (str(lab.topology.backend_ipv4), 5432)
        record = _wait_established(client, port_a, backend)
        assert (record.tgid, record.uid) == (proc.pid, lab.agent_uid(2))
        _wait_established(client, port_b, backend)
        # The record of the first connection disappears, as an LRU eviction would make it.
        fd = bpf.obj_get(bpf.PIN_DIR / bpf.OWNER_MAP)
        try:
            bpf.map_delete(fd, bpf.conn_key((client, port_a), backend))
        finally:
            os.close(fd)
        assert bpf.read((client, port_a), backend) is None
    finally:
        os.kill(recorder, signal.SIGCONT)
    out, err = proc.communicate("\n", timeout=20)
    assert proc.returncode == 0, err
    assert out.split() == [evicted, kept]
    gone = ended_session_with(lab.trail, evicted)["start"]
    there = ended_session_with(lab.trail, kept)["start"]
    assert gone["client"] == f"{client}:{port_a}"
    assert there["client"] == f"{client}:{port_b}"
    assert_owner(lab, gone["owner"], 2, proc.pid, "sock_diag")
    assert_owner(lab, there["owner"], 2, proc.pid, "ebpf")
    assert gone["owner"]["exe"] == PYTHON_EXE


def test_the_recorder_runs_as_the_service_user_with_only_its_capabilities(
    lab: EnforcedLab,
) -> None:
    assert lab.recorder is not None and lab.recorder.poll() is None
    status = dict(
        line.split(":\t", 1)
        for line in Path(f"/proc/{lab.recorder.pid}/status").read_text().splitlines()
        if ":\t" in line
    )
    uid = str(pwd.getpwnam(lab.service_user).pw_uid)
    assert status["Uid"].split() == [uid] * 4
    wanted = (1 << 19) | (1 << 2)  # CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH
    if lab.ebpf:
        wanted |= 1 << 39  # CAP_BPF
    assert int(status["CapEff"], 16) == wanted
    assert int(status["CapPrm"], 16) == wanted


def test_sessions_are_all_attributed(lab: EnforcedLab) -> None:
    """Nothing in this module's trail went unattributed."""
    for session in all_sessions(lab.trail):
        owner = session["start"]["owner"]
        assert owner["source"] in ("ebpf", "sock_diag"), owner
        assert owner["pid"] and owner["exe"], owner
