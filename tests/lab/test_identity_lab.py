"""Identities in the enforced lab: two agents with different OIDC identities at the same time.

The lab runs the recorder as its service user in the bastion with an ``[identity]`` table
(unbound connections refused), a real OpenID Provider (oidc-provider, in
``appliance/lab/provider``) on the bastion's loopback, and ``witness warden`` as root. Agents 1
and 2 each hold a machine token of their own (clients ``agent-ci`` and ``agent-two``: other
subjects, emails and groups), in a file only they can read, and start the real psql through
``witness run`` at the same moment, as themselves and outside any agent cgroup: the recorder
checks each token, the warden moves each caller into a ``witness-agents/run-...`` cgroup of its
own, the recorder binds that cgroup to the token's identity, and psql's sessions, diverted by
nftables, carry that identity on every record. Agent 3 has no binding: its psql is refused
(28000), and a bad token binds nothing. Once the agents exit, the warden's sweep removes their
cgroups and the recorder drops their bindings. The module runs twice: with the eBPF programs
attached to the agent root (owners from the pinned map; skipped with the probe's reason where
eBPF cannot be loaded) and without them (sock_diag)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from labagents import (
    PG_CLIENT,
    PG_WIRE,
    PSQL,
    PYTHON,
    all_sessions,
    ended_session_with,
    psql_argv,
    tag,
)
from labmarks import lab_marks
from witnessproc import events

from appliance.enforce import cgroups, warden
from appliance.lab.enforced import WITNESS, EbpfUnavailable, EnforcedLab
from appliance.lab.idp import IdP, identity_table, missing
from appliance.lab.netns import Topology

MOUNT = cgroups.cgroup2_mount()

pytestmark = [
    *lab_marks("netns, nftables, cgroups, users", "nft", timeout=240),
    pytest.mark.skipif(MOUNT is None, reason="cgroup2 is not mounted"),
    pytest.mark.skipif(missing() is not None, reason=f"no identity provider: {missing()}"),
]

AGENTS = 3
"""Agents 1 and 2 run under identities; agent 3 has none."""
CLIENTS = {1: "agent-ci", 2: "agent-two"}
"""The provider's client whose token each agent holds."""
SWEPT_WITHIN = 3 * warden.SWEEP_SECONDS
"""Seconds after the agents exit by which their cgroups and bindings must be gone."""


@dataclass
class World:
    """The lab, its identity provider, and each agent's token (its file and its claims)."""

    lab: EnforcedLab
    idp: IdP
    tokens: dict[int, Path]
    claims: dict[int, dict[str, Any]]

    @property
    def runs_root(self) -> Path:
        assert self.lab.agent_root is not None
        return self.lab.agent_root

    def runs(self) -> set[str]:
        """The ``run-*`` cgroups below the agent root, by name."""
        return {p.name for p in self.runs_root.iterdir() if p.name.startswith("run-")}


@pytest.fixture(scope="module", params=["ebpf", "sock_diag"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    suffix = f"i{uuid.uuid4().hex[:8]}"
    # The provider listens on the bastion's loopback, where the recorder fetches its keys:
    # it starts once the lab's namespaces exist, before the recorder's configuration is made.
    idp = IdP(netns=Topology.named(suffix).bastion)

    def identity(lab: EnforcedLab) -> str:
        idp.start()
        return identity_table(
            idp.settings(), lab.control_socket, warden_socket=lab.warden_socket, unbound="refuse"
        )

    lab = EnforcedLab(
        suffix,
        tmp_path_factory.mktemp("lab-state"),
        agents=AGENTS,
        ebpf=request.param == "ebpf",
        identity=identity,
        warden=True,
    )
    try:
        try:
            lab.start()
        except EbpfUnavailable as exc:
            pytest.skip(f"eBPF attribution unavailable: {exc}")
        tokens, claims = {}, {}
        for i, client in CLIENTS.items():
            token = idp.client_credentials(client)
            claims[i] = jwt.decode(token, options={"verify_signature": False})
            tokens[i] = lab.give(i, f"agent{i}.token", token)
        yield World(lab, idp, tokens, claims)
    finally:
        lab.close()  # also removes the token files, in the lab's directory
        idp.close()


def cgroup_of(pid: int) -> str | None:
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    return next((line[3:] for line in lines if line.startswith("0::")), None)


RUN_CGROUP = re.compile(re.escape(f"/{cgroups.AGENT_ROOT_NAME}/") + r"run-[0-9a-f]{16}")


def wait_placed(procs: dict[int, subprocess.Popen[str]]) -> dict[int, tuple[str, int]]:
    """While the agents run: the run cgroup (name, id) each ``witness run`` (the same pid as
    the psql it execs) was moved into."""
    assert MOUNT is not None
    placed: dict[int, tuple[str, int]] = {}
    deadline = time.monotonic() + 20
    while True:
        for i, proc in procs.items():
            now = cgroup_of(proc.pid)
            if i not in placed and now is not None and RUN_CGROUP.fullmatch(now):
                placed[i] = (now, cgroups.cgroup_id(MOUNT / now.lstrip("/")))
        if len(placed) == len(procs):
            return placed
        ended = {i: p.returncode for i, p in procs.items() if p.poll() is not None}
        assert not set(ended) - set(placed), f"agents {ended} ended before being seen placed"
        assert time.monotonic() < deadline, f"not placed within 20 s: {placed}"
        time.sleep(0.01)


def wait_swept(lab: EnforcedLab, targets: set[str]) -> list[dict[str, Any]]:
    """Once the cgroups ``targets`` are gone (the warden's sweep) and their bindings dropped:
    the recorder's ``unbind`` events for them."""
    assert MOUNT is not None
    deadline = time.monotonic() + SWEPT_WITHIN
    while True:
        gone = [
            e
            for e in binding_events(lab.trail)
            if e["action"] == "unbind" and e["target"] in targets
        ]
        swept = not any((MOUNT / c.lstrip("/")).exists() for c in targets)
        if swept and len(gone) == len(targets):
            return gone
        assert time.monotonic() < deadline, (
            f"after {SWEPT_WITHIN:.0f} s: cgroups swept {swept}, unbinds {gone}\n"
            + lab.warden_log.read_text()[-2000:]
        )
        time.sleep(0.2)


def witness_run(world: World, token: Path, *sql: str) -> list[str]:
    """``witness run --token-file TOKEN -- psql -c SQL...`` against the backend's address."""
    psql = psql_argv(str(world.lab.topology.backend_ipv4))
    psql[-1:-1] = [arg for statement in sql for arg in ("-c", statement)]  # before the conninfo
    return [
        WITNESS, "run", "--socket", str(world.lab.control_socket), "--token-file", str(token),
        "--", *psql,
    ]  # fmt: skip


def binding_events(trail: Path) -> list[dict[str, Any]]:
    return [e for e in events(trail) if e["type"] == "binding"]


def sessions_list(trail: Path, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [WITNESS, "sessions", "list", "--json", "--trail", str(trail), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def assert_identity(found: dict[str, Any] | None, claims: dict[str, Any], cgroup: str) -> None:
    assert found is not None
    assert found["subject"] == claims["sub"], found
    assert found["email"] == claims["email"], found
    assert found["groups"] == claims["groups"], found
    assert found["binding"]["kind"] == "cgroup", found
    assert found["binding"]["target"] == cgroup, found


def test_the_two_tokens_are_two_identities(world: World) -> None:
    one, two = world.claims[1], world.claims[2]
    assert one["sub"] != two["sub"] and one["email"] != two["email"]
    assert one["groups"] != two["groups"]
    for i, path in world.tokens.items():
        found = path.stat()
        assert (found.st_uid, found.st_mode & 0o777) == (world.lab.agent_uid(i), 0o400)


def test_two_agents_at_once_each_record_carries_its_own_identity_and_cgroup(world: World) -> None:
    lab = world.lab
    run = tag("ident")
    runs_before = world.runs()
    argv = {
        i: witness_run(
            world, world.tokens[i], f"select pg_sleep(1), '{run}-a{i}-1'", f"select '{run}-a{i}-2'"
        )
        for i in CLIENTS
    }
    # Both at once: as themselves, in the bastion, not placed in any cgroup beforehand.
    procs = {
        i: lab.agent(
            i, argv[i], in_cgroup=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in CLIENTS
    }
    placed = wait_placed(procs)
    for i, proc in procs.items():
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert out.split() == [f"|{run}-a{i}-1", f"{run}-a{i}-2"], out
        assert f"witness: running as {world.claims[i]['email']} in {placed[i][0]}" in err, err
    assert placed[1][0] != placed[2][0] and placed[1][1] != placed[2][1]
    assert not {c.rsplit("/", 1)[1] for c, _ in placed.values()} & runs_before  # new ones

    source = "ebpf" if lab.ebpf else "sock_diag"
    found = {}
    for i, proc in procs.items():
        cgroup, cgroup_id = placed[i]
        session = ended_session_with(lab.trail, f"{run}-a{i}-")
        start = session["start"]
        owner = start["owner"]
        assert owner["source"] == source, owner
        assert (owner["pid"], owner["uid"]) == (proc.pid, lab.agent_uid(i)), owner
        assert (owner["cgroup"], owner["cgroup_id"]) == (cgroup, cgroup_id), owner
        assert owner["exe"] == os.path.realpath(PSQL), owner
        assert start["diverted"] is True and "refused" not in start, start
        assert_identity(start["identity"], world.claims[i], cgroup)
        assert start["identity"]["issuer"] == world.idp.issuer
        texts = [c["text"] for c in session["commands"]]
        assert texts == [f"select pg_sleep(1), '{run}-a{i}-1'", f"select '{run}-a{i}-2'"], texts
        for command in session["commands"]:
            assert command["identity"] == start["identity"], command
        found[i] = session

    # They ran at the same time: both sessions started before either ended.
    starts = [s["start"]["seq"] for s in found.values()]
    ends = [s["end"]["seq"] for s in found.values()]
    assert max(starts) < min(ends), (starts, ends)

    # No record of one agent carries the other's identity, anywhere in the trail.
    subjects = {i: world.claims[i]["sub"] for i in CLIENTS}
    for session in all_sessions(lab.trail):
        uid = session["start"]["owner"].get("uid")
        for record in (session["start"], *session["commands"]):
            ident = record.get("identity")
            for i in CLIENTS:
                if uid == lab.agent_uid(i):
                    assert ident is not None and ident["subject"] == subjects[i], record
                elif ident is not None:
                    assert ident["subject"] != subjects[i], record

    # The trail says who bound which cgroup to whom.
    binds = [e for e in binding_events(lab.trail) if e["action"] == "bind"]
    for i, proc in procs.items():
        mine = [e for e in binds if e["target"] == placed[i][0]]
        assert len(mine) == 1, binds
        assert mine[0]["kind"] == "cgroup" and mine[0]["cgroup_id"] == placed[i][1]
        assert (mine[0]["by"]["uid"], mine[0]["by"]["pid"]) == (lab.agent_uid(i), proc.pid)
        assert mine[0]["identity"]["subject"] == subjects[i]

    # The operator's view: sessions by identity, as root, straight from the trail.
    for i in CLIENTS:
        ids = {found[i]["start"]["session"]}
        assert {r["id"] for r in sessions_list(lab.trail, "--identity", subjects[i])} == ids
        by_email = sessions_list(lab.trail, "--identity", world.claims[i]["email"].upper())
        assert {r["id"] for r in by_email} == ids
        assert all(r["identity"]["subject"] == subjects[i] for r in by_email)

    # The agents have exited: the warden's sweep removes their cgroups, and the recorder
    # drops the bindings of cgroups that are gone.
    targets = {cgroup for cgroup, _ in placed.values()}
    for event in wait_swept(lab, targets):
        assert event["reason"] == "the agent's cgroup is gone", event
        assert event["kind"] == "cgroup" and event["by"] is None, event
    logged = lab.warden_log.read_text()
    for cgroup in targets:
        assert f"removed {cgroup} (its processes have exited)" in logged, logged


def test_an_agent_with_no_binding_is_refused_and_the_refusal_recorded(world: World) -> None:
    lab = world.lab
    host = str(lab.topology.backend_ipv4)
    code, _out, err, pid = lab.run_agent(
        3, psql_argv(host, sql=f"select '{tag('unbound')}'"), in_cgroup=False
    )
    assert code != 0
    assert "no identity is bound" in err, err
    assert "witness login" in err and "witness run" in err, err
    # The same refusal, read off the wire: SQLSTATE 28000.
    wire, _out, wire_err, wire_pid = lab.run_agent(
        3, [PYTHON, "-c", PG_CLIENT, host, "5432", "select 1"], in_cgroup=False
    )
    assert wire != 0 and "server error:" in wire_err, wire_err
    assert "\x00C28000\x00" in wire_err, wire_err

    deadline = time.monotonic() + 5
    while True:
        refused = [
            s
            for s in all_sessions(lab.trail)
            if s["start"]["owner"].get("uid") == lab.agent_uid(3) and s["end"] is not None
        ]
        if len(refused) == 2:
            break
        assert time.monotonic() < deadline, refused
        time.sleep(0.05)
    pids = set()
    for session in refused:
        start = session["start"]
        assert start["refused"]["code"] == "28000", start
        assert "no identity is bound" in start["refused"]["message"], start
        assert start["identity"] is None and start["backend"]["name"] == "lab", start
        assert start["destination"] == f"{host}:5432" and not session["commands"], session
        assert start["owner"]["source"] == "sock_diag", start  # outside the agent cgroups
        pids.add(start["owner"]["pid"])
    assert pids == {pid, wire_pid}
    listed = [r for r in sessions_list(lab.trail, "--user", str(lab.agent_uid(3))) if r["refused"]]
    assert len(listed) == 2 and all(r["refused"]["code"] == "28000" for r in listed), listed


def run_python(world: World, i: int, code: str, *args: str) -> list[str]:
    """``witness run --token-file TOKEN -- python3 -c CODE ARGS...`` for agent ``i``."""
    return [
        WITNESS, "run", "--socket", str(world.lab.control_socket),
        "--token-file", str(world.tokens[i]), "--", PYTHON, "-c", code, *args,
    ]  # fmt: skip


# argv: host port sql. Runs sql, says goodbye and waits for Witness to close first, so that
# its address and port are free again at once; prints "ADDRESS PORT".
CLOSE_LAST = (
    PG_WIRE
    + r"""
host, port, sql = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = open_(host, port)
params = b"user\0postgres\0database\0postgres\0\0"
s.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
until_ready(s)
text = sql.encode() + b"\0"
s.sendall(b"Q" + struct.pack("!I", len(text) + 4) + text)
until_ready(s)
s.sendall(b"X\0\0\0\4")
while s.recv(4096):
    pass
address, port = s.getsockname()[:2]
s.close()
print(address, port)
"""
)

# argv: address port host sql. Binds address:port (SO_REUSEADDR) and runs sql on host:5432;
# prints the first column, or the server's error.
REUSE = (
    PG_WIRE
    + r"""
address, port, host, sql = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((address, port))
s.settimeout(10)
s.connect((host, 5432))
try:
    print(query(s, sql))
except SystemExit as exc:
    print(exc)
"""
)


@pytest.mark.parametrize("reuser", [1, 3], ids=["same-user", "other-user"])
def test_an_address_an_agent_just_closed_lends_no_identity(world: World, reuser: int) -> None:
    """An agent's connection ends; at once a process outside any agent cgroup (the agent's
    own user, or another) binds the same address and port and connects. It is attributed to
    itself, never to the agent that used the address before, and refused: it has no identity."""
    lab = world.lab
    host = str(lab.topology.backend_ipv4)
    mark = tag("reuse")
    agent = run_python(world, 1, CLOSE_LAST, host, "5432", f"select '{mark}-agent'")
    code, out, err, _ = lab.run_agent(1, agent, in_cgroup=False)
    assert code == 0, err
    address, port = out.split()
    code, out, err, pid = lab.run_agent(
        reuser, [PYTHON, "-c", REUSE, address, port, host, f"select '{mark}-reuser'"],
        in_cgroup=False,
    )  # fmt: skip
    assert code == 0, err
    assert "server error:" in out and "\x00C28000\x00" in out, out
    assert "no identity is bound" in out, out

    agents_session = ended_session_with(lab.trail, f"{mark}-agent")["start"]
    assert agents_session["client"] == f"{address}:{port}"
    assert agents_session["identity"]["subject"] == world.claims[1]["sub"]
    deadline = time.monotonic() + 5
    while True:
        reused = [
            s["start"]
            for s in all_sessions(lab.trail)
            if s["start"]["client"] == f"{address}:{port}" and s["start"] is not agents_session
            and s["start"].get("refused")
        ]  # fmt: skip
        if reused:
            break
        assert time.monotonic() < deadline, "the reuser's refusal was not recorded"
        time.sleep(0.05)
    (start,) = reused
    assert start["refused"]["code"] == "28000", start
    assert start["identity"] is None, start
    assert (start["owner"]["uid"], start["owner"]["pid"]) == (lab.agent_uid(reuser), pid), start
    assert start["owner"]["source"] == "sock_diag", start


# argv: host tag n. Opens n short connections over 4 threads, each running one select of
# "TAG-I"; prints how many failed, then the first failures.
MANY = (
    PG_WIRE
    + r"""
import threading, time
host, mark, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
errors = []
def worker(k):
    for i in range(k, n, 4):
        time.sleep(0.25)  # 16 new connections a second in all: under the default rate limit
        try:
            got = query(open_(host, 5432), f"select '{mark}-{i}'")
            assert got == f"{mark}-{i}", got
        except BaseException as exc:
            errors.append(repr(exc))
threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(len(errors))
print("\n".join(errors[:3]))
"""
)
SHORT_CONNECTIONS = 100


def test_two_agents_opening_many_short_connections_never_get_each_others_records(
    world: World,
) -> None:
    lab = world.lab
    host = str(lab.topology.backend_ipv4)
    run = tag("many")
    argv = {
        i: run_python(world, i, MANY, host, f"{run}-a{i}", str(SHORT_CONNECTIONS)) for i in CLIENTS
    }
    procs = {
        i: lab.agent(
            i, argv[i], in_cgroup=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in CLIENTS
    }
    placed = wait_placed(procs)
    for proc in procs.values():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.split("\n", 1)[0] == "0", out
    source = "ebpf" if lab.ebpf else "sock_diag"
    for i, proc in procs.items():
        seen = 0
        for session in all_sessions(lab.trail):
            texts = [c["text"] for c in session["commands"]]
            if not any(f"'{run}-a" in t for t in texts):
                continue
            start = session["start"]
            mine = all(f"'{run}-a{i}-" in t for t in texts)
            if not mine:
                assert start["owner"]["pid"] != proc.pid, start
                continue
            seen += 1
            owner = start["owner"]
            assert owner["source"] == source, owner
            assert (owner["pid"], owner["uid"]) == (proc.pid, lab.agent_uid(i)), owner
            assert (owner["cgroup"], owner["cgroup_id"]) == placed[i], owner
            assert start["identity"]["subject"] == world.claims[i]["sub"], start
        assert seen == SHORT_CONNECTIONS, (i, seen)


def test_what_the_agent_spawns_keeps_its_identity(world: World) -> None:
    """The command ``witness run`` execs is a shell; the two psql it starts are its children,
    in its cgroup, so both sessions carry its identity."""
    lab = world.lab
    run = tag("spawned")
    host = str(lab.topology.backend_ipv4)
    script = " & ".join(shlex.join(psql_argv(host, sql=f"select '{run}-{n}'")) for n in (1, 2))
    argv = [
        WITNESS, "run", "--socket", str(lab.control_socket), "--token-file",
        str(world.tokens[1]), "--", "/bin/sh", "-c", f"{script}; wait",
    ]  # fmt: skip
    proc = lab.agent(
        1, argv, in_cgroup=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert sorted(out.split()) == [f"{run}-1", f"{run}-2"], out
    sessions = [ended_session_with(lab.trail, f"{run}-{n}") for n in (1, 2)]
    cgroups_ = {s["start"]["owner"]["cgroup_id"] for s in sessions}
    assert len(cgroups_) == 1, sessions  # one cgroup: the one witness run was placed in
    for session in sessions:
        start = session["start"]
        assert start["owner"]["pid"] != proc.pid, start  # a child, not the shell
        assert start["owner"]["uid"] == lab.agent_uid(1)
        assert start["identity"]["subject"] == world.claims[1]["sub"], start
        assert RUN_CGROUP.fullmatch(start["identity"]["binding"]["target"]), start
        assert session["commands"][0]["identity"] == start["identity"]


def test_a_bad_token_binds_nothing_and_makes_no_cgroup(world: World) -> None:
    lab = world.lab
    bad = lab.give(
        3, "agent3-other.token", world.idp.client_credentials("agent-ci", resource="urn:other")
    )
    runs_before = world.runs()
    binds_before = len(binding_events(lab.trail))
    code, out, err, pid = lab.run_agent(
        3, [WITNESS, "run", "--socket", str(lab.control_socket), "--token-file", str(bad),
            "--", "/bin/echo", "ran"],
        in_cgroup=False,
    )  # fmt: skip
    assert code == 1, (out, err)
    assert "token rejected" in err and "audience" in err, err
    assert "ran" not in out
    assert world.runs() <= runs_before
    # Earlier tests' bindings may still end meanwhile (a run's cgroup is swept once empty):
    # what must not be there is a binding made, or asked for by this run.
    new = binding_events(lab.trail)[binds_before:]
    assert not [e for e in new if e["action"] == "bind" or (e["by"] or {}).get("pid") == pid]
    assert f"placed pid {pid}" not in lab.warden_log.read_text()


def test_run_without_a_token_takes_the_login_and_logout_ends_it(world: World) -> None:
    lab = world.lab
    socket = ["--socket", str(lab.control_socket)]
    token = lab.give(3, "agent3-login.token", world.idp.client_credentials("agent-two"))
    code, out, err, _ = lab.run_agent(
        3, [WITNESS, "login", *socket, "--token-file", str(token)], in_cgroup=False
    )
    assert code == 0, err
    assert world.claims[2]["email"] in out, out
    run = tag("fromlogin")
    argv = [
        WITNESS,
        "run",
        *socket,
        "--",
        *psql_argv(str(lab.topology.backend_ipv4), sql=f"select '{run}'"),
    ]
    code, out, err, pid = lab.run_agent(3, argv, in_cgroup=False)
    assert (code, out) == (0, run), err
    start = ended_session_with(lab.trail, run)["start"]
    assert (start["owner"]["uid"], start["owner"]["pid"]) == (lab.agent_uid(3), pid)
    assert start["identity"]["subject"] == world.claims[2]["sub"]
    assert start["identity"]["binding"]["kind"] == "cgroup"  # its own cgroup, not the uid
    code, out, err, _ = lab.run_agent(3, [WITNESS, "logout", *socket], in_cgroup=False)
    assert code == 0 and "removed" in out, err
    code, _, err, _ = lab.run_agent(
        3, psql_argv(str(lab.topology.backend_ipv4), sql="select 1"), in_cgroup=False
    )
    assert code != 0 and "no identity is bound" in err, err


def test_the_trail_verifies_once_the_recorder_has_stopped(world: World) -> None:
    lab = world.lab
    lab.stop_recorder()
    done = subprocess.run(
        [WITNESS, "--config", str(lab.serve_config), "verify"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
