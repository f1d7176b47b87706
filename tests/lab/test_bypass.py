"""The bypass suite: an agent trying every way around the recorder, and at Witness itself.

One enforced lab with the eBPF programs attached (skipped with the probe's reason where eBPF
cannot be loaded) and the recorder running as the lab's service user. Every attempt is made
by a real process running as the unprivileged user ``wlab-<lab>-agent1``, inside agent
cgroup 1, in the bastion namespace. Each test asserts the specific outcome: refused, EPERM
(or EACCES), or diverted and recorded; and what got through must be in the trail with the
agent's uid, pid, executable and cgroup. Where the outcome could be mistaken for something
else (EPERM from a missing capability rather than from the eBPF program), a control run
outside the agent cgroup shows the difference.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labagents import (
    PACKET_PROBE,
    PG_CLIENT,
    PSQL,
    PYTHON,
    all_sessions,
    ended_session_with,
    psql_argv,
    running_lab,
    sessions_with,
    status_json,
    tag,
)
from labmarks import lab_marks

from appliance.enforce import cgroups, nft
from appliance.lab.enforced import EnforcedLab

pytestmark = lab_marks("netns, nftables, cgroups, users", "nft", "unshare", timeout=120)

AGENT = 1


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnforcedLab]:
    yield from running_lab(
        "b",
        tmp_path_factory.mktemp("lab-state"),
        agents=2,
        ebpf=True,
        needs="eBPF unavailable, the bypass suite needs it",
        backend_interfaces=("veth-bastion",),
    )


def python(
    lab: EnforcedLab,
    code: str,
    *args: str,
    in_cgroup: bool = True,
    userns: bool = False,
    capabilities: str | None = None,
) -> tuple[str, int]:
    """Run ``code`` with python3 as the agent; (its stdout, its pid). It must exit 0."""
    argv = [*(["unshare", "-Urn"] if userns else []), PYTHON, "-c", code, *args]
    code_, out, err, pid = lab.run_agent(
        AGENT, argv, in_cgroup=in_cgroup, capabilities=capabilities
    )
    assert code_ == 0, err
    return out, pid


def assert_recorded(lab: EnforcedLab, text: str, pid: int, exe: str) -> dict[str, Any]:
    """The session holding ``text`` is the agent's: uid, pid, executable, cgroup, by eBPF."""
    start = ended_session_with(lab.trail, text)["start"]
    owner = start["owner"]
    assert owner["source"] == "ebpf", owner
    assert (owner["pid"], owner["uid"]) == (pid, lab.agent_uid(AGENT)), owner
    assert owner["exe"] == os.path.realpath(exe), owner
    assert owner["cgroup"] == lab.agent_cgroup_name(AGENT), owner
    assert start["diverted"] is True
    return dict(start)


# argv: PROTO,HOST,PORT ...; prints one outcome per target: "ok", "timeout", or the errno
# name, prefixed for UDP with the step that failed ("send:" or "recv:").
ATTEMPTS = r"""
import errno, socket, sys
def name(exc):
    return "timeout" if isinstance(exc, TimeoutError) else errno.errorcode.get(exc.errno, str(exc))
out = []
for spec in sys.argv[1:]:
    proto, host, port = spec.split(",")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = (host, int(port))
    if "%" in host:  # link-local: ADDRESS%INTERFACE
        host, interface = host.split("%")
        address = (host, int(port), 0, socket.if_nametoindex(interface))
    s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(3)
    step = "connect"
    try:
        s.connect(address)
        if proto == "udp":
            step = "send"
            s.send(b"hello")
            step = "recv"
            s.recv(100)
        out.append("ok")
    except OSError as exc:
        out.append((step + ":" if proto == "udp" else "") + name(exc))
    s.close()
print(" ".join(out))
"""


# --- connection attempts ------------------------------------------------------------------------


def test_connecting_directly_to_the_backend_is_diverted_and_recorded(lab: EnforcedLab) -> None:
    probe = tag("direct")
    address = str(lab.topology.backend_ipv4)
    code, out, err, pid = lab.run_agent(
        AGENT, psql_argv(address, sql=f"select '{probe}', inet_server_addr()")
    )
    assert code == 0, err
    assert out == f"{probe}|{address}"
    start = assert_recorded(lab, probe, pid, str(PSQL))
    assert start["destination"] == f"{address}:5432"
    assert start["listener"] == f"127.0.0.1:{lab.redirect_port}"


def test_another_port_of_the_backend_is_refused(lab: EnforcedLab) -> None:
    address = str(lab.topology.backend_ipv4)
    started = time.monotonic()
    out, _ = python(lab, ATTEMPTS, f"tcp,{address},5433", f"tcp,{address},22")
    assert out == "ECONNREFUSED ECONNREFUSED"  # a reset from the guard chain, not a timeout
    assert time.monotonic() - started < 5
    destinations = {s["start"]["destination"] for s in all_sessions(lab.trail)}
    assert f"{address}:5433" not in destinations  # never reached the recorder either


def test_another_address_of_the_backend_is_diverted_and_recorded_with_it(
    lab: EnforcedLab,
) -> None:
    probe = tag("other")
    other = str(lab.topology.backend_ipv4_other)
    code, out, err, pid = lab.run_agent(
        AGENT, psql_argv(other, sql=f"select '{probe}', inet_server_addr()")
    )
    assert code == 0, err
    assert out == f"{probe}|{other}"  # relayed to .3 itself
    start = assert_recorded(lab, probe, pid, str(PSQL))
    assert start["destination"] == f"{other}:5432"


# A server in the backends namespace listening on every address, IPv4 and IPv6 (link-local
# too), that a protected range may not cover: argv is the port. Prints "ready" once bound.
LISTEN_EVERYWHERE = """
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    s.accept()[0].close()
"""
SIDE_PORT = 5499


@contextlib.contextmanager
def backend_host_listening(lab: EnforcedLab) -> Iterator[None]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.topology.backends, PYTHON, "-c", LISTEN_EVERYWHERE,
         str(SIDE_PORT)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)


def as_root_in_bastion(lab: EnforcedLab, *targets: str) -> str:
    """The control: the same attempts as root in the bastion, whom the guard exempts."""
    done = subprocess.run(
        ["nsenter", f"--net=/run/netns/{lab.bastion}", PYTHON, "-c", ATTEMPTS, *targets],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def link_local(lab: EnforcedLab) -> str:
    """The backend host's link-local IPv6 address, once it is usable (DAD done)."""
    deadline = time.monotonic() + 10
    while True:
        shown = subprocess.run(
            ["ip", "-n", lab.topology.backends, "-6", "-o", "addr", "show", "dev",
             lab.topology.backends_veth, "scope", "link"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        if shown and "tentative" not in shown:
            return shown.split()[3].split("/")[0]
        assert time.monotonic() < deadline, shown
        time.sleep(0.1)


def test_the_backend_hosts_link_local_address_is_rejected(lab: EnforcedLab) -> None:
    """fe80:: is in no protected range, and reached the backend host on any port."""
    target = f"{link_local(lab)}%{lab.topology.bastion_veth}"
    attempts = (f"tcp,{target},{SIDE_PORT}", f"udp,{target},{SIDE_PORT}")
    with backend_host_listening(lab):
        assert as_root_in_bastion(lab, *attempts).startswith("ok ")
        out, _ = python(lab, ATTEMPTS, *attempts)
        assert out == "ECONNREFUSED send:EPERM", out
        out, _ = python(lab, ATTEMPTS, *attempts, in_cgroup=False)
        assert out == "ECONNREFUSED send:EPERM", out


def test_an_address_of_the_backend_host_nobody_listed_is_rejected_on_its_interface(
    lab: EnforcedLab,
) -> None:
    """An address outside every protected range, reached through the backend-facing
    interface (enforce.backend_interfaces)."""
    unlisted = "10.78.0.2"
    topo = lab.topology
    subprocess.run(["ip", "-n", topo.backends, "addr", "add", f"{unlisted}/32", "dev",
                    topo.backends_veth], check=True)  # fmt: skip
    subprocess.run(["ip", "-n", topo.bastion, "route", "add", f"{unlisted}/32", "dev",
                    topo.bastion_veth], check=True)  # fmt: skip
    try:
        with backend_host_listening(lab):
            target = f"tcp,{unlisted},{SIDE_PORT}"
            assert as_root_in_bastion(lab, target) == "ok"
            assert python(lab, ATTEMPTS, target)[0] == "ECONNREFUSED"
            assert python(lab, ATTEMPTS, target, in_cgroup=False)[0] == "ECONNREFUSED"
    finally:
        subprocess.run(["ip", "-n", topo.bastion, "route", "del", f"{unlisted}/32"], check=False)
        subprocess.run(["ip", "-n", topo.backends, "addr", "del", f"{unlisted}/32", "dev",
                        topo.backends_veth], check=False)  # fmt: skip


# argv: paths; for each, what the agent gets trying to list it (a directory), read it (a
# file) or connect to it (a Unix socket): "ok", or the errno's name.
REACH = """
import errno, os, socket, stat, sys
out = []
for path in sys.argv[1:]:
    try:
        if os.path.basename(path).startswith(".s.PGSQL"):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.close()
        elif path.endswith("/"):
            os.listdir(path)
        else:
            open(path, "rb").close()
        out.append("ok")
    except OSError as exc:
        out.append(errno.errorcode[exc.errno])
print(" ".join(out))
"""


def test_nothing_of_the_backend_hosts_or_the_bastions_files_is_within_the_agents_reach(
    lab: EnforcedLab,
) -> None:
    """Namespaces do not isolate files: the lab's 'hosts' must not share any. The backend's
    server directory (its log, and the Unix socket it would have), and the recorder's
    configuration and log, are out of the agent's reach."""
    state = lab.lab.state()
    assert state is not None
    server = state["postgres"]["directory"]
    assert not list(Path(server).glob(".s.PGSQL.*"))  # no filesystem socket at all
    paths = [
        f"{server}/", f"{server}/postgres.log", f"{server}/.s.PGSQL.5432",
        str(lab.serve_config), str(lab.up_config), str(lab.log),
    ]  # fmt: skip
    out, _ = python(lab, REACH, *paths)
    assert out.split() == ["EACCES"] * 6, out
    out, _ = python(lab, REACH, *paths, in_cgroup=False)
    assert out.split() == ["EACCES"] * 6, out


def test_ipv6_and_ipv4_mapped_connections_are_denied_by_ebpf(lab: EnforcedLab) -> None:
    v6 = str(lab.topology.backend_ipv6)
    mapped = f"::ffff:{lab.topology.backend_ipv4}"
    targets = [f"tcp,{v6},5432", f"tcp,{mapped},5432", f"tcp,{v6},5433", f"udp,{v6},5432"]
    out, _ = python(lab, ATTEMPTS, *targets)
    assert out == "EPERM EPERM EPERM connect:EPERM"
    # The control: outside the agent cgroups nftables alone decides, and diverts IPv6 TCP to
    # the recorder (the connection is made), so the EPERM above is the eBPF program's.
    out, _ = python(lab, ATTEMPTS, f"tcp,{v6},5432", in_cgroup=False)
    assert out == "ok"


RAW = """
import errno, socket
out = []
for family, kind, proto in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
                            (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
                            (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
                            (socket.AF_INET, socket.SOCK_STREAM, 0)):
    try:
        socket.socket(family, kind, proto).close()
        out.append("ok")
    except OSError as exc:
        out.append(errno.errorcode[exc.errno])
print(" ".join(out))
"""


def test_raw_sockets_are_denied(lab: EnforcedLab) -> None:
    assert python(lab, RAW)[0] == "EPERM EPERM EPERM ok"  # no CAP_NET_RAW on the host
    # In a user and network namespace of its own the agent holds CAP_NET_RAW: only the
    # eBPF program denies them there, as the control outside the agent cgroups shows.
    assert python(lab, RAW, userns=True)[0] == "EPERM EPERM EPERM ok"
    assert python(lab, RAW, userns=True, in_cgroup=False)[0] == "ok ok ok ok"


def test_packet_sockets_are_denied_on_the_host(lab: EnforcedLab) -> None:
    assert python(lab, PACKET_PROBE)[0] == "EPERM"  # no CAP_NET_RAW


def test_packet_sockets_are_denied_even_in_a_user_namespace(lab: EnforcedLab) -> None:
    # In a user and network namespace of its own the agent holds CAP_NET_RAW, and
    # cgroup/sock_create never sees AF_PACKET: the launcher's seccomp filter denies it, as the
    # control (same user, not launched as an agent: outside the cgroups, unfiltered) shows.
    assert python(lab, PACKET_PROBE, userns=True)[0] == "EPERM"
    assert python(lab, PACKET_PROBE, userns=True, in_cgroup=False)[0] == "ok"


def test_udp_to_the_backend_is_rejected(lab: EnforcedLab) -> None:
    address = str(lab.topology.backend_ipv4)
    out, _ = python(lab, ATTEMPTS, f"udp,{address},5432", f"udp,{address},53")
    # The guard chain's reject (ICMP admin-prohibited) of a locally sent datagram makes the
    # send itself fail: the datagram never leaves the bastion.
    assert out == "send:EPERM send:EPERM"


def test_a_new_network_namespace_has_no_route_to_the_backend(lab: EnforcedLab) -> None:
    address = str(lab.topology.backend_ipv4)
    out, _ = python(lab, ATTEMPTS, f"tcp,{address},5432", f"udp,{address},5432", userns=True)
    assert out == "ENETUNREACH connect:ENETUNREACH"


def test_so_mark_needs_cap_net_admin_and_a_marked_connection_is_diverted_anyway(
    lab: EnforcedLab,
) -> None:
    address = str(lab.topology.backend_ipv4)
    probe = tag("mark")
    out, _ = python(lab, PG_CLIENT, address, "5432", f"select '{probe}'", "1")
    assert out == "error EPERM"  # setsockopt(SO_MARK) without CAP_NET_ADMIN
    assert not sessions_with(lab.trail, probe)
    # Even an agent that could set a mark (given CAP_NET_ADMIN here) is diverted and
    # recorded: no rule of the table looks at marks.
    for mark in ("1", str(0xFFFFFFFF)):
        probe = tag("marked")
        out, pid = python(
            lab, PG_CLIENT, address, "5432", f"select '{probe}'", mark, capabilities="+net_admin"
        )
        assert out == probe
        assert_recorded(lab, probe, pid, PYTHON)


# --- attacks on Witness itself ------------------------------------------------------------------

ESCAPE = """
import os, sys
out = []
for target in sys.argv[1:]:
    try:
        with open(target, "w") as f:
            f.write(str(os.getpid()))
        out.append("moved")
    except OSError as exc:
        out.append(type(exc).__name__)
out.append(open("/proc/self/cgroup").read().splitlines()[-1])
print(" ".join(out))
"""


def test_the_agent_cannot_leave_its_cgroup(lab: EnforcedLab) -> None:
    mount = cgroups.require_cgroup2()
    assert lab.agent_root is not None
    targets = [
        lab.agent_cgroup(2) / "cgroup.procs",  # another agent's
        lab.agent_root / "cgroup.procs",  # the agent root's
        mount / "cgroup.procs",  # the top of the hierarchy
        mount / "cgroup.threads",
    ]
    out, _ = python(lab, ESCAPE, *map(str, targets))
    assert out == " ".join(["PermissionError"] * 4 + [f"0::{lab.agent_cgroup_name(AGENT)}"])
    made = python(
        lab,
        "import os, sys\ntry:\n os.mkdir(sys.argv[1]); print('made')\n"
        "except OSError as e: print(type(e).__name__)",
        str(lab.agent_cgroup(AGENT) / "escape"),
    )[0]
    assert made == "PermissionError"  # nor make a cgroup of its own below it
    assert cgroups.pids(lab.agent_cgroup(2)) == []


def test_the_agent_cannot_signal_the_recorder(lab: EnforcedLab) -> None:
    assert lab.recorder is not None
    recorder = lab.recorder.pid
    code, _, err, _ = lab.run_agent(AGENT, ["/bin/kill", "-TERM", str(recorder)])
    assert code != 0
    assert "Operation not permitted" in err
    out, _ = python(
        lab,
        "import os, signal, sys\nfor s in (signal.SIGKILL, signal.SIGSTOP):\n"
        " try: os.kill(int(sys.argv[1]), s); print('sent', end=' ')\n"
        " except PermissionError: print('EPERM', end=' ')",
        str(recorder),
    )
    assert out == "EPERM EPERM"
    time.sleep(0.2)
    assert lab.recorder.poll() is None
    # and it still records
    probe = tag("alive")
    code, out, err, pid = lab.run_agent(
        AGENT, psql_argv(str(lab.topology.backend_ipv4), sql=f"select '{probe}'")
    )
    assert (code, out) == (0, probe), err
    assert_recorded(lab, probe, pid, str(PSQL))


def test_the_trail_and_key_belong_to_the_service_user_alone(lab: EnforcedLab) -> None:
    service = lab.service_user
    import pwd

    uid = pwd.getpwnam(service).pw_uid
    for path, mode in (
        (lab.trail_dir, 0o700),
        (lab.trail, 0o600),
        (lab.signing_key, 0o600),
    ):
        st = path.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, mode), path
    assert service != "witness" and service.startswith("wlab-")


TOUCH = """
import os, sys
out = []
for path, how in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        if how == "list":
            os.listdir(path)
        elif how == "unlink":
            os.unlink(path)
        else:
            open(path, how).close()
        out.append("done")
    except OSError as exc:
        out.append(type(exc).__name__)
print(" ".join(out))
"""


def test_the_agent_cannot_read_or_write_the_trail_or_the_key(lab: EnforcedLab) -> None:
    attempts = [
        (lab.trail_dir, "list"),
        (lab.trail, "rb"),
        (lab.trail, "ab"),
        (lab.trail, "unlink"),
        (lab.signing_key, "rb"),
        (lab.signing_key, "wb"),
        (lab.trail_dir / "planted", "wb"),
    ]
    before = lab.signing_key.read_bytes()
    out, _ = python(lab, TOUCH, *(str(x) for attempt in attempts for x in attempt))
    assert out == " ".join(["PermissionError"] * len(attempts))
    assert lab.signing_key.read_bytes() == before
    assert not (lab.trail_dir / "planted").exists()


def _table(lab: EnforcedLab) -> list[nft.Json] | None:
    return nft.live(lab.bastion)


def test_the_agent_cannot_flush_or_alter_the_nftables_table(lab: EnforcedLab) -> None:
    before = _table(lab)
    assert before is not None
    for command in (
        ["flush", "table", "inet", "witness"],
        ["delete", "table", "inet", "witness"],
        ["flush", "ruleset"],
        ["insert", "rule", "inet", "witness", "divert", "accept"],
    ):
        code, _, err, _ = lab.run_agent(AGENT, ["/usr/sbin/nft", *command])
        assert code != 0, command
        assert "Operation not permitted" in err, (command, err)
    assert _table(lab) == before
    assert status_json(lab.up_config, lab.bastion)["table"] == "up"
