"""Another host on the bastion's network sends crafted packets: none reaches a protected
backend, and none changes whom Witness attributes a connection to.

A third namespace, ``<lab>-other``, stands for that host: it is joined to the bastion by a
veth pair of its own (10.76.0.0/24, fd76::/64) and routes everything through the bastion.
The bastion is set up as badly as a real one could be: it forwards (as any host running
containers does) and has reverse-path filtering off; the backends namespace routes back to
the other host. What stands between the other host and the backends is Witness alone.

Every crafted packet carries a marker (IPv4 id 0x5757, IPv6 flow label 0x57575), which an
nftables table in the backends namespace counts on arrival. A control packet with the same
marker, to an address of the backend host that no range protects, shows that the path and
the counting work. The packets are made with scapy, as root in the other namespace:
spoofed sources (the bastion's own address, another backend address, loopback), fragments
(tiny and overlapping ones that split the TCP header), odd TCP options and flag sets, and
IPv6 with a fragment header. Then an agent connects for real, and its session must carry
its own pid and uid, and no session may name the other host or a spoofed source.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from labagents import PG_CLIENT, PYTHON, all_sessions, ended_session_with, running_lab, tag
from labmarks import lab_marks

from appliance.enforce import bpf
from appliance.lab.enforced import EnforcedLab

pytestmark = lab_marks("netns, nftables, cgroups, users", "nft", timeout=180)

scapy = pytest.importorskip("scapy", reason="scapy is a test dependency (pip install .[dev])")

AGENT = 1
OTHER_V4, BASTION_FRONT_V4 = "10.76.0.2", "10.76.0.1"
OTHER_V6, BASTION_FRONT_V6 = "fd76::2", "fd76::1"
UNPROTECTED = "10.78.0.5"  # an address of the backend host in no protected range: the control
MARK_ID, MARK_FLOW = 0x5757, 0x57575
PROBE_TABLE = "witness_probe"


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnforcedLab]:
    yield from running_lab(
        "c",
        tmp_path_factory.mktemp("lab-state"),
        agents=1,
        ebpf=True,
        needs="eBPF unavailable, the crafted-packet suite checks its map too",
    )


@pytest.fixture(scope="module")
def other(lab: EnforcedLab) -> str:
    """The other host's namespace, wired to the bastion; removed with the lab (recorded in
    its state first, so ``witness lab down`` removes it after a crash too)."""
    topo = lab.topology
    name = f"{topo.name}-other"
    state = lab.lab.state()
    assert state is not None
    lab.lab.record("namespaces", [*state["namespaces"], name])
    _run("ip", "netns", "add", name)
    _run("ip", "-n", name, "link", "set", "lo", "up")
    _run("ip", "-n", topo.bastion, "link", "add", "veth-front", "type", "veth",
         "peer", "name", "veth-other", "netns", name)  # fmt: skip
    for ns, dev, v4, v6 in (
        (topo.bastion, "veth-front", BASTION_FRONT_V4, BASTION_FRONT_V6),
        (name, "veth-other", OTHER_V4, OTHER_V6),
    ):
        _run("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
        _run("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
        _run("ip", "-n", ns, "link", "set", dev, "up")
    _run("ip", "-n", name, "route", "add", "default", "via", BASTION_FRONT_V4)
    _run("ip", "-n", name, "-6", "route", "add", "default", "via", BASTION_FRONT_V6)
    # The worst bastion: it forwards, and does not filter by reverse path.
    for key in (
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ):
        _run("ip", "netns", "exec", topo.bastion, "sysctl", "-qw", key)  # fmt: skip
    # The backend host: routes back to the other host, and one address no range protects.
    _run("ip", "-n", topo.backends, "route", "add", "10.76.0.0/24", "via", "10.77.0.1")
    _run("ip", "-n", topo.backends, "-6", "route", "add", "fd76::/64", "via", "fd77::1")
    _run("ip", "-n", topo.backends, "addr", "add", f"{UNPROTECTED}/32", "dev", topo.backends_veth)
    _run("ip", "-n", topo.bastion, "route", "add", f"{UNPROTECTED}/32", "dev", topo.bastion_veth)
    probe = {"nftables": [{"add": obj} for obj in _probe_table()]}
    subprocess.run(
        ["ip", "netns", "exec", topo.backends, "nft", "-j", "-f", "-"],
        input=json.dumps(probe), text=True, check=True, capture_output=True,
    )  # fmt: skip
    return name


def _probe_table() -> list[dict[str, object]]:
    """A table in the backends namespace that counts, before anything else sees them, the
    packets that carry the marker or come from the other host."""
    table = {"family": "inet", "table": PROBE_TABLE}
    chain = {**table, "name": "seen", "type": "filter", "hook": "prerouting", "prio": -300}
    return [
        {"table": {"family": "inet", "name": PROBE_TABLE}},
        {"chain": {**chain, "policy": "accept"}},
        *(
            {
                "rule": {
                    **table,
                    "chain": "seen",
                    "comment": name,
                    "expr": [*match, {"counter": None}],
                }
            }
            for name, match in _counters()
        ),
    ]


def _eq(left: dict[str, object], right: object, op: str = "==") -> dict[str, object]:
    return {"match": {"op": op, "left": left, "right": right}}


def _counters() -> list[tuple[str, list[dict[str, object]]]]:
    v4_id = {"payload": {"protocol": "ip", "field": "id"}}
    v4_dst = {"payload": {"protocol": "ip", "field": "daddr"}}
    v4_src = {"payload": {"protocol": "ip", "field": "saddr"}}
    flow = {"payload": {"protocol": "ip6", "field": "flowlabel"}}
    v6_src = {"payload": {"protocol": "ip6", "field": "saddr"}}
    return [
        ("control", [_eq(v4_id, MARK_ID), _eq(v4_dst, UNPROTECTED)]),
        ("crafted-v4", [_eq(v4_id, MARK_ID), _eq(v4_dst, UNPROTECTED, "!=")]),
        ("crafted-v6", [_eq(flow, MARK_FLOW)]),
        ("other-v4", [_eq(v4_src, {"prefix": {"addr": "10.76.0.0", "len": 24}})]),
        ("other-v6", [_eq(v6_src, {"prefix": {"addr": "fd76::", "len": 64}})]),
    ]


def counts(lab: EnforcedLab) -> dict[str, int]:
    argv = ["ip", "netns", "exec", lab.topology.backends, "nft", "-j", "list", "table"]
    listing = json.loads(_run(*argv, "inet", PROBE_TABLE))["nftables"]
    found = {}
    for obj in listing:
        rule = obj.get("rule")
        if rule is not None:
            counter = next(e["counter"] for e in rule["expr"] if "counter" in e)
            found[rule["comment"]] = int(counter["packets"])
    return found


# Sent with scapy from the other host. argv: the backend's address, its IPv6 address, the
# bastion's backend-side address, the backend's other address, the unprotected address.
CRAFT = r"""
import sys
from scapy.all import IP, IPv6, IPv6ExtHdrFragment, TCP, UDP, ICMP, Raw, fragment, send, conf
conf.verb = 0
backend, backend6, bastion, other_backend, unprotected = sys.argv[1:6]
MARK, FLOW = 0x5757, 0x57575
odd = [("MSS", 0), ("WScale", 255), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
       (253, b"\x00" * 16)]
packets = []
def v4(dst, src=None, **kw):
    layer = IP(dst=dst, id=MARK, **kw)
    if src:
        layer.src = src
    return layer
for port in (5432, 22, 15432):
    packets.append(v4(backend) / TCP(sport=61001, dport=port, flags="S"))
    packets.append(v4(backend) / TCP(sport=61002, dport=port, flags="S", options=odd))
    packets.append(v4(backend) / TCP(sport=61003, dport=port, flags="FSRPAUEC", urgptr=7))
# Spoofed sources: the bastion itself, another backend address, loopback.
for src in (bastion, other_backend, "127.0.0.1"):
    packets.append(v4(backend, src) / TCP(sport=61004, dport=5432, flags="S"))
# An ACK for a connection that never was, as if to ride an agent's.
packets.append(v4(backend, bastion) / TCP(sport=40000, dport=5432, flags="A", seq=1, ack=1)
               / Raw(b"Q\x00\x00\x00\x0dselect 1\x00"))
# Fragments: tiny (the TCP header split across them) and overlapping ones.
syn = v4(backend) / TCP(sport=61005, dport=5432, flags="S") / Raw(b"x" * 64)
packets += fragment(syn, fragsize=8)
overlap = fragment(v4(backend) / TCP(sport=61006, dport=5432, flags="S") / Raw(b"y" * 48),
                   fragsize=16)
packets += overlap + [overlap[0]]
packets.append(v4(backend) / UDP(sport=61007, dport=5432) / Raw(b"udp"))
packets.append(v4(backend) / ICMP())
# The recorder's port, on the bastion's own addresses and on loopback.
packets.append(IP(dst="10.76.0.1", id=MARK) / TCP(sport=61008, dport=15432, flags="S"))
packets.append(IP(dst="127.0.0.1", id=MARK) / TCP(sport=61009, dport=15432, flags="S"))
# IPv6: routed, and with a fragment header.
packets.append(IPv6(dst=backend6, fl=FLOW) / TCP(sport=61010, dport=5432, flags="S"))
packets.append(IPv6(dst=backend6, fl=FLOW) / IPv6ExtHdrFragment(m=0, offset=0)
               / TCP(sport=61011, dport=5432, flags="S", options=odd))
# The control: the same marker, to an address no range protects.
packets.append(v4(unprotected) / TCP(sport=61012, dport=9, flags="S"))
for packet in packets:
    send(packet)
print(len(packets))
"""


def craft(lab: EnforcedLab, other: str) -> int:
    topo = lab.topology
    out = _run(
        "ip", "netns", "exec", other, sys.executable, "-c", CRAFT,
        str(topo.backend_ipv4), str(topo.backend_ipv6), "10.77.0.1",
        str(topo.backend_ipv4_other), UNPROTECTED,
    )  # fmt: skip
    return int(out)


def test_crafted_packets_from_another_host_never_reach_a_protected_backend(
    lab: EnforcedLab, other: str
) -> None:
    before = counts(lab)
    assert craft(lab, other) > 20
    deadline = time.monotonic() + 5
    while counts(lab)["control"] == before["control"]:
        assert time.monotonic() < deadline, "the control packet was not forwarded"
        time.sleep(0.05)
    time.sleep(0.5)
    after = counts(lab)
    assert after["control"] == before["control"] + 1  # the path exists, and counts work
    assert after["crafted-v4"] == before["crafted-v4"], after
    assert after["crafted-v6"] == before["crafted-v6"], after
    # Only the control came from the other host.
    assert after["other-v4"] - before["other-v4"] == 1, after
    assert after["other-v6"] == before["other-v6"], after


def test_crafted_packets_do_not_change_whom_a_connection_is_attributed_to(
    lab: EnforcedLab, other: str
) -> None:
    craft(lab, other)
    mark = tag("after-crafting")
    host = str(lab.topology.backend_ipv4)
    code, out, err, pid = lab.run_agent(AGENT, [PYTHON, "-c", PG_CLIENT, host, "5432",
                                                f"select '{mark}'"])  # fmt: skip
    assert code == 0 and out == mark, err
    start = ended_session_with(lab.trail, mark)["start"]
    owner = start["owner"]
    assert (owner["pid"], owner["uid"], owner["source"]) == (pid, lab.agent_uid(AGENT), "ebpf")
    spoofed = ("10.76.", "fd76:", "127.0.0.1", f"{lab.topology.backend_ipv4_other}:")
    for session in all_sessions(lab.trail):
        assert not session["start"]["client"].startswith(spoofed), session["start"]
    # No eBPF record was made for any crafted connection.
    for sport in range(61001, 61013):
        for src in (OTHER_V4, "10.77.0.1", str(lab.topology.backend_ipv4_other)):
            assert bpf.read((src, sport), (host, 5432)) is None
