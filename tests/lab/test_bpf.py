"""The eBPF programs for real: loaded with BCC, attached to a test agent cgroup root.

Each test gets its own agent root (``<cgroup2>/witness-test-<tag>``), pins
(``/sys/fs/bpf/witness_test_<tag>``) and, where addresses other than loopback are needed, a
throwaway network namespace, so neither a running Witness nor the host's network is touched.
Agents are real processes running as ``nobody``, moved into an agent cgroup by root before
they exec (they could not move themselves: the cgroups are root's). :meth:`Agents.run` starts
them as Witness's launcher does (:mod:`appliance.enforce.confine`: into the cgroup, drop to
``nobody``, seccomp filter, exec); its controls (``inside=False``) run them with ``setpriv``
alone, outside the agent cgroups and unfiltered.
"""

from __future__ import annotations

import errno
import grp
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from labagents import PACKET_PROBE
from labmarks import lab_marks

from appliance.enforce import bpf, cgroups, owners, sockdiag

pytestmark = lab_marks("cgroups, eBPF")

PYTHON = "/usr/bin/python3"  # readable by nobody, unlike a venv under /root
AS_AGENT = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
CONFINE = [sys.executable, "-m", "appliance.enforce.confine", "--user=nobody"]
PROTECTED = ("10.99.0.5/32", "fd99::/64")


@dataclass
class Agents:
    root: Path
    child: Path
    pins: Path
    netns: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def run(
        self, code: str, *, inside: bool = True, userns: bool = False, netns: bool = True
    ) -> str:
        """Run ``code`` with python3 as nobody, in the test's network namespace unless
        ``netns`` is False; returns its stdout. ``inside``: launched as an agent, into the
        agent cgroup and under the launcher's filter; else with setpriv, outside, unfiltered."""
        command = [*(["unshare", "-Urn"] if userns else []), PYTHON, "-c", code]
        if inside:
            command = [*CONFINE, f"--cgroup={self.child}", "--", *command]
            if netns:  # not ip netns exec: it mounts its own /sys, without the cgroup2 mount
                command = ["nsenter", f"--net=/run/netns/{self.netns}", *command]
        else:
            command = [*AS_AGENT, "--", *command]
            if netns:
                command = ["ip", "netns", "exec", self.netns, *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def start(self, code: str, *, inside: bool = True) -> subprocess.Popen[str]:
        child = self.child
        proc = subprocess.Popen(
            [*AS_AGENT, PYTHON, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=(lambda: cgroups.move(os.getpid(), child)) if inside else None,  # noqa: PLW1509 - no threads here
        )
        self.procs.append(proc)
        return proc


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=10)


@pytest.fixture
def agents() -> Iterator[Agents]:
    found = bpf.probe()
    if not found.available:
        pytest.skip(f"eBPF attribution unavailable: {found.why}")
    mount = cgroups.cgroup2_mount()
    assert mount is not None
    tag = uuid.uuid4().hex[:8]
    root = mount / f"witness-test-{tag}"
    pins = bpf.BPFFS / f"witness_test_{tag}"
    netns = f"witness-bpf-{tag}"
    made = Agents(root, root / "agent", pins, netns)
    try:
        cgroups.create_root(root)
        cgroups.create_child(root, "agent")
        _run("ip", "netns", "add", netns)
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        _run("ip", "-n", netns, "addr", "add", "10.99.0.5/32", "dev", "lo")
        _run("ip", "-n", netns, "-6", "addr", "add", "fd99::5/128", "dev", "lo", "nodad")
        bpf.attach([ipaddress.ip_network(n) for n in PROTECTED], root, pins)
        yield made
    finally:
        for proc in made.procs:
            proc.kill()
            proc.wait(timeout=5)
        errors = []
        try:
            bpf.detach(root, pins)
        except bpf.BpfError as exc:
            errors.append(str(exc))
        try:
            cgroups.remove(root)
        except cgroups.CgroupError as exc:
            errors.append(str(exc))
        subprocess.run(["ip", "netns", "delete", netns], check=False, capture_output=True)
        assert not errors, errors


CONNECT_AND_WAIT = """
import socket, sys
s = socket.create_connection(("127.0.0.1", {port}))
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
"""


def _listener() -> socket.socket:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    lst.settimeout(10)
    return lst


def test_a_connection_is_attributed_to_its_process_from_the_accepting_side(
    agents: Agents,
) -> None:
    with _listener() as lst:
        port = lst.getsockname()[1]
        proc = agents.start(CONNECT_AND_WAIT.format(port=port))
        conn, peer = lst.accept()
        with conn:
            assert proc.stdout is not None
            assert int(proc.stdout.readline()) == peer[1]
            owner = owners.quick(peer, ("127.0.0.1", port), agents.pins)
            assert owner is not None
            assert owner.source == "ebpf" and owner.doubt is None
            assert (owner.pid, owner.uid, owner.comm) == (proc.pid, 65534, "python3")
            assert owner.exe is not None and owner.exe.startswith("/usr/bin/python3")
            assert owner.cgroup == "/" + str(agents.child.relative_to(cgroups.cgroup2_mount()))
            record = bpf.read(peer, ("127.0.0.1", port), pins=agents.pins)
            assert record is not None
            assert record.gid == grp.getgrnam("nogroup").gr_gid
            assert record.cgroup_id == cgroups.cgroup_id(agents.child)
            assert record.local == peer and record.remote == ("127.0.0.1", port)
            assert record.established
            # The record is the socket's own: its cookie is the live socket's.
            live = sockdiag.find(peer, ("127.0.0.1", port))
            assert live is not None and live.cookie == record.cookie and live.uid == 65534
            # The record is found by the whole 4-tuple, the original destination included.
            assert bpf.read(peer, ("127.0.0.1", 1), pins=agents.pins) is None


def test_a_connection_from_outside_the_agent_cgroups_is_not_recorded(agents: Agents) -> None:
    with _listener() as lst:
        port = lst.getsockname()[1]
        proc = agents.start(CONNECT_AND_WAIT.format(port=port), inside=False)
        conn, peer = lst.accept()
        with conn:
            assert owners.quick(peer, ("127.0.0.1", port), agents.pins) is None
            owner = owners.lookup(peer, ("127.0.0.1", port))
            assert (owner.source, owner.uid, owner.pid) == ("sock_diag", 65534, proc.pid)
    assert proc.stdout is not None


def test_the_record_goes_when_its_socket_closes(agents: Agents) -> None:
    with _listener() as lst:
        port = lst.getsockname()[1]
        proc = agents.start(CONNECT_AND_WAIT.format(port=port))
        conn, peer = lst.accept()
        with conn:
            assert proc.stdout is not None
            proc.stdout.readline()
            assert bpf.read(peer, ("127.0.0.1", port), pins=agents.pins) is not None
            assert proc.stdin is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            proc.wait(timeout=10)
            assert conn.recv(1) == b""  # the client closed
        # The client's socket reaches TCP_CLOSE once both sides have closed: the record goes.
        deadline = time.monotonic() + 5
        while bpf.read(peer, ("127.0.0.1", port), pins=agents.pins) is not None:
            assert time.monotonic() < deadline, "the record outlived its socket"
            time.sleep(0.02)


def test_a_record_the_live_socket_contradicts_names_no_one(agents: Agents) -> None:
    """A record whose cookie is not the live socket's (stale, or planted in the map) is not
    believed, and the owner says why rather than naming anyone."""
    with _listener() as lst:
        port = lst.getsockname()[1]
        destination = ("127.0.0.1", port)
        proc = agents.start(CONNECT_AND_WAIT.format(port=port), inside=False)
        conn, peer = lst.accept()
        with conn:
            assert proc.stdout is not None
            proc.stdout.readline()
            live = sockdiag.find(peer, destination)
            assert live is not None
            forged = struct.pack(
                "<QQQIIII16s16sHHI16s",
                live.cookie + 1, 4242, 1, 1, 1, 1000, 1000,
                bpf.mapped(peer[0]), bpf.mapped("127.0.0.1"), peer[1], port, 1, b"agent",
            )  # fmt: skip
            fd = bpf.obj_get(agents.pins / bpf.OWNER_MAP)
            try:
                bpf.map_update(fd, bpf.conn_key(peer, destination), forged)
                owner = owners.quick(peer, destination, agents.pins)
                assert owner is not None and owner.doubt is not None
                assert "another socket" in owner.doubt
                assert (owner.uid, owner.pid, owner.cgroup_id) == (None, None, None)
                assert f"cookie {live.cookie}" in (owner.detail or "")
                # The same record with the right cookie but another uid is not believed either.
                right = forged[:0] + struct.pack("<Q", live.cookie) + forged[8:]
                bpf.map_update(fd, bpf.conn_key(peer, destination), right)
                owner = owners.quick(peer, destination, agents.pins)
                assert owner is not None and owner.doubt is not None
            finally:
                bpf.map_delete(fd, bpf.conn_key(peer, destination))
                os.close(fd)


RAW = """
import errno, socket
for family, kind, proto in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
                            (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
                            (socket.AF_INET, socket.SOCK_STREAM, 0)):
    try:
        socket.socket(family, kind, proto).close()
        print("ok", end=" ")
    except OSError as exc:
        print(errno.errorcode[exc.errno], end=" ")
"""


def test_raw_sockets_are_denied_in_the_agent_cgroup(agents: Agents) -> None:
    # In its own user namespace the agent holds CAP_NET_RAW: only the program stands in the way.
    assert agents.run(RAW, userns=True) == "EPERM EPERM ok"
    assert agents.run(RAW, userns=True, inside=False) == "ok ok ok"


def test_packet_sockets_need_cap_net_raw(agents: Agents) -> None:
    assert agents.run(PACKET_PROBE) == "EPERM"


def test_packet_sockets_are_denied_in_the_agent_cgroup_even_in_a_user_namespace(
    agents: Agents,
) -> None:
    # cgroup/sock_create never sees AF_PACKET; the launcher's seccomp filter denies it. The
    # control: in its own user namespace, unfiltered, the same process opens one.
    assert agents.run(PACKET_PROBE, userns=True, inside=False) == "ok"
    assert agents.run(PACKET_PROBE, userns=True) == "EPERM"


CONNECT6 = """
import errno, socket, threading
server = socket.socket(socket.AF_INET6)
server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
server.bind(("::", 0))
server.listen(16)
port = server.getsockname()[1]
threading.Thread(target=lambda: [server.accept() for _ in range(99)], daemon=True).start()
for target in {targets!r}:
    s = socket.socket(socket.AF_INET6)
    s.settimeout(5)
    try:
        s.connect((target, port))
        print("ok", end=" ")
    except OSError as exc:
        print(errno.errorcode.get(exc.errno, exc), end=" ")
    s.close()
"""


def test_ipv6_and_mapped_ipv4_connections_to_protected_ranges_are_denied(
    agents: Agents,
) -> None:
    targets = ["fd99::5", "::ffff:10.99.0.5", "::1", "::ffff:127.0.0.1"]
    code = CONNECT6.format(targets=targets)
    assert agents.run(code) == "EPERM EPERM ok ok"
    assert agents.run(code, inside=False) == "ok ok ok ok"


def test_the_maps_are_bounded_lru(agents: Agents) -> None:
    for name in ("owner_by_conn", "owner_by_cookie"):
        fd = bpf.obj_get(agents.pins / name)
        try:
            info = bpf.map_info(fd)
        finally:
            os.close(fd)
        assert info.type == bpf.MAP_TYPE_LRU_HASH, name
    fd = bpf.obj_get(agents.pins / bpf.OWNER_MAP)
    try:
        info = bpf.map_info(fd)
        assert info.max_entries == bpf.OWNER_CAPACITY
        value = bytes(info.value_size)
        over = info.max_entries + 2000
        first = ipaddress.IPv4Address("10.0.0.0")
        for i in range(over):  # a plain hash map would refuse past max_entries (E2BIG)
            bpf.map_update(fd, bpf.conn_key((str(first + i), 1), ("10.99.0.5", 5432)), value)
        count = sum(1 for _ in bpf.map_keys(fd, info.key_size))
        assert 0 < count <= info.max_entries  # older entries were evicted to make room
        last = bpf.conn_key((str(first + over - 1), 1), ("10.99.0.5", 5432))
        assert bpf.map_lookup(fd, last, len(value)) == value
    finally:
        os.close(fd)


def test_detach_leaves_nothing_attached_and_removes_the_pins_and_cgroups(
    agents: Agents,
) -> None:
    assert set(bpf.programs_at(agents.root)) == {"connect4", "connect6", "sock_ops", "sock_create"}
    done = bpf.detach(agents.root, agents.pins)
    assert "detached sock_ops" in done
    assert bpf.programs_at(agents.root) == {}
    if shutil.which("bpftool"):
        shown = subprocess.run(
            ["bpftool", "cgroup", "show", str(agents.root)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert shown.stdout.strip() == "", shown.stdout
    assert not agents.pins.exists()
    # Nothing stays in force: raw sockets open again in the agent cgroup.
    assert agents.run(RAW, userns=True) == "ok ok ok"
    cgroups.remove(agents.root)
    assert not agents.root.exists()
    assert bpf.detach(agents.root, agents.pins) == []  # again: nothing to do, no error


def _reattach(agents: Agents) -> None:
    bpf.attach([ipaddress.ip_network(n) for n in PROTECTED], agents.root, agents.pins)


def test_a_reattach_that_fails_before_the_switch_leaves_the_old_programs(
    agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = bpf.programs_at(agents.root)

    def full(fd: int, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bpf, "obj_pin", full)
    with pytest.raises(bpf.BpfError, match="still in force"):
        _reattach(agents)
    assert bpf.programs_at(agents.root) == before
    assert not agents.pins.with_name(agents.pins.name + "_new").exists()
    assert agents.run(RAW, userns=True) == "EPERM EPERM ok"


def test_a_reattach_that_fails_after_the_switch_leaves_the_new_programs(
    agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = bpf.programs_at(agents.root)
    unpin = bpf._unpin

    def stuck(pins: Path) -> list[str]:
        if pins == agents.pins:
            raise OSError(errno.EBUSY, "Device or resource busy")
        return unpin(pins)

    monkeypatch.setattr(bpf, "_unpin", stuck)
    with pytest.raises(bpf.BpfError, match="new eBPF programs are attached"):
        _reattach(agents)
    after = bpf.programs_at(agents.root)
    assert set(after) == set(before) and after != before  # the new ones, not none
    assert agents.run(RAW, userns=True) == "EPERM EPERM ok"


def test_the_agent_cannot_move_itself_out_of_its_cgroup(agents: Agents) -> None:
    mount = cgroups.cgroup2_mount()
    assert mount is not None
    code = f"""
import os
for target in ({str(mount / "cgroup.procs")!r}, {str(agents.root / "cgroup.procs")!r}):
    try:
        open(target, "w").write(str(os.getpid()))
        print("moved", end=" ")
    except OSError as exc:
        print(type(exc).__name__, end=" ")
"""
    assert agents.run(code, netns=False) == "PermissionError PermissionError"
    assert cgroups.pids(agents.child) == []  # it ran, and exited, in the agent cgroup
