"""The inet witness table for real: agents diverted or refused, the service user through.

Everything runs in two throwaway network namespaces joined by a veth pair: a bastion, where
the table is applied and the "recorder" listens, and a backends namespace with the "backend"
at 10.99.0.5 and fd99::5. The host's own ruleset is never touched. Connections are made by
real processes running as ``nobody`` (an agent) and ``daemon`` (the service user).
"""

from __future__ import annotations

import json
import pwd
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from labmarks import lab_marks

from appliance.cli import main

pytestmark = lab_marks("network namespaces, nftables", "nft")

AGENT = "nobody"
SERVICE = "daemon"
REDIRECT_PORT = 15432

CONFIG = """
[[backend]]
name = "orders"
address = "10.99.0.5"
port = 5432
protect = [{protect}]

[[listener]]
listen = "127.0.0.1:15432"
backend = "orders"

[trail]
path = "trail.db"

[enforce]
service_user = "daemon"
redirect_port = 15432
"""

# Backend: TCP 5432 and 5433 on both families answer "backend PORT"; UDP 5432 echoes.
# Recorder: 127.0.0.1 and ::1 on the redirect port answer "recorder ADDR PORT" from
# SO_ORIGINAL_DST, which is what the real recorder will read.
SERVERS = r"""
import ipaddress, socket, struct, sys, threading

def tcp(family, host, port, answer):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    s.listen(16)
    def loop():
        while True:
            conn, _ = s.accept()
            with conn:
                conn.sendall(answer(conn).encode() + b"\n")
    threading.Thread(target=loop, daemon=True).start()

def original(conn):
    if conn.family == socket.AF_INET:
        raw = conn.getsockopt(socket.SOL_IP, 80, 16)
        port, addr = struct.unpack_from("!H4s", raw, 2)
    else:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, 80, 28)
        port, addr = struct.unpack_from("!H4x16s", raw, 2)
    return f"recorder {ipaddress.ip_address(addr)} {port}"

if sys.argv[1] == "backend":
    for family, host in ((socket.AF_INET, "10.99.0.5"), (socket.AF_INET6, "fd99::5")):
        for port in (5432, 5433):
            tcp(family, host, port, lambda conn, port=port: f"backend {port}")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("10.99.0.5", 5432))
    def echo():
        while True:
            data, peer = udp.recvfrom(100)
            udp.sendto(b"backend udp", peer)
    threading.Thread(target=echo, daemon=True).start()
else:
    tcp(socket.AF_INET, "127.0.0.1", int(sys.argv[2]), original)
    tcp(socket.AF_INET6, "::1", int(sys.argv[2]), original)
print("ready", flush=True)
sys.stdin.read()
"""

CLIENT = r"""
import errno, socket, sys
host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(family, kind)
s.settimeout(3)
try:
    s.connect((host, port))
    if proto == "udp":
        s.send(b"hello")
    print(s.recv(100).decode().strip())
except OSError as exc:
    print("error " + (errno.errorcode.get(exc.errno, "") if exc.errno else type(exc).__name__))
"""


@dataclass
class Lab:
    bastion: str
    backends: str
    directory: Path

    def nft(self, *args: str) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.bastion, "nft", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    def tables(self) -> list[tuple[str, str]]:
        listing = json.loads(self.nft("-j", "list", "tables"))["nftables"]
        return [(o["table"]["family"], o["table"]["name"]) for o in listing if "table" in o]

    def connect(self, user: str, host: str, port: int, proto: str = "tcp") -> str:
        who = pwd.getpwnam(user)
        done = subprocess.run(
            [
                "ip", "netns", "exec", self.bastion,
                "setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--clear-groups",
                "/usr/bin/python3", "-c", CLIENT, host, str(port), proto,
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"the client as {user} failed: {done.stderr}"
        return done.stdout.strip()

    def config(self, protect: str = '"10.99.0.5/32", "fd99::5/128"') -> Path:
        path = self.directory / f"witness-{uuid.uuid4().hex[:6]}.toml"
        path.write_text(CONFIG.format(protect=protect))
        return path

    def witness(self, command: str, config: Path | None = None) -> tuple[int, str]:
        args = ["--config", str(config or self.config()), command, "--netns", self.bastion]
        result = CliRunner().invoke(main, args)
        return result.exit_code, result.output


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tag = uuid.uuid4().hex[:8]
    bastion, backends = f"witness-t-{tag}-b", f"witness-t-{tag}-k"
    directory = tmp_path_factory.mktemp("nft")
    script = directory / "servers.py"
    script.write_text(SERVERS)
    made: list[str] = []
    servers: list[subprocess.Popen[str]] = []
    try:
        for ns in (bastion, backends):
            _run("ip", "netns", "add", ns)
            made.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run(
            "ip",
            "-n",
            bastion,
            "link",
            "add",
            "vb",
            "type",
            "veth",
            "peer",
            "vk",
            "netns",
            backends,
        )
        for ns, dev, last in ((bastion, "vb", 1), (backends, "vk", 5)):
            _run("ip", "-n", ns, "addr", "add", f"10.99.0.{last}/24", "dev", dev)
            _run("ip", "-n", ns, "-6", "addr", "add", f"fd99::{last}/64", "dev", dev, "nodad")
            _run("ip", "-n", ns, "link", "set", dev, "up")
        for ns, args in ((backends, ["backend"]), (bastion, ["recorder", str(REDIRECT_PORT)])):
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, str(script), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            servers.append(proc)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", f"the {args[0]} did not start"
        yield Lab(bastion, backends, directory)
    finally:
        for proc in servers:
            proc.kill()
            proc.wait(timeout=5)
        for ns in made:  # the namespaces take their tables, links and addresses with them
            subprocess.run(["ip", "netns", "delete", ns], check=False)


@pytest.fixture
def enforced(lab: Lab) -> Lab:
    code, output = lab.witness("up")
    assert code == 0, output
    return lab


def test_an_agent_connecting_to_the_backend_reaches_the_recorder_instead(enforced: Lab) -> None:
    assert enforced.connect(AGENT, "10.99.0.5", 5432) == "recorder 10.99.0.5 5432"
    assert enforced.connect(AGENT, "fd99::5", 5432) == "recorder fd99::5 5432"


def test_the_service_user_reaches_the_backend_directly(enforced: Lab) -> None:
    assert enforced.connect(SERVICE, "10.99.0.5", 5432) == "backend 5432"
    assert enforced.connect(SERVICE, "10.99.0.5", 5433) == "backend 5433"
    assert enforced.connect(SERVICE, "fd99::5", 5433) == "backend 5433"
    assert enforced.connect(SERVICE, "10.99.0.5", 5432, "udp") == "backend udp"


def test_every_other_way_to_a_protected_range_is_refused(enforced: Lab) -> None:
    assert enforced.connect(AGENT, "10.99.0.5", 5433) == "error ECONNREFUSED"
    assert enforced.connect(AGENT, "fd99::5", 5433) == "error ECONNREFUSED"
    assert enforced.connect(AGENT, "::ffff:10.99.0.5", 5433) == "error ECONNREFUSED"
    assert enforced.connect(AGENT, "10.99.0.5", 5432, "udp") == "error EPERM"


def test_without_the_table_the_agent_goes_direct(lab: Lab) -> None:
    """The control: what the rules change is not the lab's doing."""
    code, output = lab.witness("down")
    assert code == 0, output
    assert lab.connect(AGENT, "10.99.0.5", 5432) == "backend 5432"
    assert lab.connect(AGENT, "10.99.0.5", 5433) == "backend 5433"
    assert lab.connect(AGENT, "10.99.0.5", 5432, "udp") == "backend udp"


def test_up_twice_leaves_one_identical_table(lab: Lab) -> None:
    config = lab.config()
    assert lab.witness("up", config)[0] == 0
    first = lab.nft("list", "ruleset")
    assert lab.witness("up", config)[0] == 0
    assert lab.nft("list", "ruleset") == first
    assert lab.tables().count(("inet", "witness")) == 1


def test_down_removes_only_the_witness_table_and_may_be_repeated(enforced: Lab) -> None:
    enforced.nft("add", "table", "inet", "other")
    enforced.nft("add", "chain", "inet", "other", "keep")
    try:
        assert enforced.witness("down")[0] == 0
        assert enforced.tables() == [("inet", "other")]
        assert "chain keep" in enforced.nft("list", "table", "inet", "other")
        assert enforced.witness("down") == (0, "witness: table inet witness is down\n")
    finally:
        enforced.nft("delete", "table", "inet", "other")


def test_an_invalid_configuration_leaves_the_running_table_untouched(enforced: Lab) -> None:
    before = enforced.nft("list", "ruleset")
    code, output = enforced.witness("up", enforced.config(protect='"10.99.0.300/32"'))
    assert code == 2
    assert "backend[0].protect[0]: expected a CIDR" in output
    assert enforced.nft("list", "ruleset") == before
    assert enforced.connect(AGENT, "10.99.0.5", 5432) == "recorder 10.99.0.5 5432"


def test_status_tells_up_absent_and_changed_by_hand_apart(enforced: Lab) -> None:
    code, output = enforced.witness("status")
    assert code == 0, output
    assert "table inet witness: present, matches the configuration" in output
    assert "orders: 10.99.0.5/32, fd99::5/128 (diverted ports: 5432)" in output
    assert "redirect port:      15432" in output
    # up --netns leaves the host's cgroups alone, so eBPF attribution is not what it set up.
    assert re.search(r"^attribution:        (sock_diag|ebpf) \(.+\)$", output, re.M), output

    code, output = enforced.witness("status", enforced.config(protect='"10.99.0.0/24"'))
    assert code == 1
    assert "differs from what the configuration renders" in output

    enforced.nft("insert", "rule", "inet", "witness", "guard", "accept")
    code, output = enforced.witness("status")
    assert code == 1
    assert "differs from what the configuration renders" in output

    assert enforced.witness("down")[0] == 0
    code, output = enforced.witness("status")
    assert code == 1
    assert "table inet witness: absent" in output
