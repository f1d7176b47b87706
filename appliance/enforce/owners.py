"""Socket to owner: which local process holds the client end of an accepted connection.

The record the eBPF programs took at connect time answers first (``bpf.lookup``). Without
one, sock_diag (netlink, through pyroute2) gives the owning uid, the socket inode and the
cgroup id; /proc then gives the process holding that inode, its executable and its cgroup
path. The lookup is blocking (it walks /proc), so the relay runs it off the event loop.
"""

from __future__ import annotations

import ipaddress
import os
import socket

from pyroute2 import DiagSocket

from appliance.enforce import bpf
from appliance.model import Owner

_ESTABLISHED = 1 << 1


def _diag(client: tuple[str, int], local: tuple[str, int]) -> tuple[int, int, int | None] | None:
    """(uid, inode, cgroup id) of the socket bound to ``client`` and connected to ``local``."""
    family = socket.AF_INET6 if ipaddress.ip_address(client[0]).version == 6 else socket.AF_INET
    with DiagSocket() as diag:
        diag.bind()
        answers = diag.get_sock_stats(
            family=family, states=_ESTABLISHED, sport=client[1], dport=local[1]
        )
    for msg in answers:
        if msg.get("idiag_src") == client[0] and msg.get("idiag_dst") == local[0]:
            cgroup_id = next(
                (value for name, value in msg["attrs"] if name == "INET_DIAG_CGROUP_ID"), None
            )
            return int(msg["idiag_uid"]), int(msg["idiag_inode"]), cgroup_id
    return None


def _holds(pid: str, target: str) -> bool:
    try:
        fds = os.scandir(f"/proc/{pid}/fd")
    except OSError:
        return False  # the process exited, or its fds are not ours to read
    with fds:
        for fd in fds:
            try:
                if os.readlink(fd.path) == target:
                    return True
            except OSError:
                continue  # closed between listing and reading: a busy process, keep looking
    return False


def _holder(inode: int, uid: int) -> int | None:
    """The lowest pid among processes of ``uid`` that hold socket ``inode`` open."""
    target = f"socket:[{inode}]"
    for pid in sorted(int(e.name) for e in os.scandir("/proc") if e.name.isdigit()):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
        except OSError:
            continue
        if _holds(str(pid), target):
            return pid
    return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _cgroup_path(pid: int) -> str | None:
    text = _read(f"/proc/{pid}/cgroup")
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def quick(client: tuple[str, int], destination: tuple[str, int]) -> Owner | None:
    """The eBPF record alone, or None: a map read and a few /proc reads, cheap enough for the
    relay to run on its event loop rather than hand to a thread."""
    return bpf.lookup(client[0], client[1], destination=destination)


def lookup(client: tuple[str, int], destination: tuple[str, int]) -> Owner:
    """The owner of the client socket ``client`` -> ``destination``; never raises.

    The eBPF record comes first: it was taken when the process connected, so it is exact
    and survives the process exiting. Without one (eBPF not attached, the record evicted,
    or the client outside the agent cgroups), sock_diag and /proc are asked instead.
    """
    owner = bpf.lookup(client[0], client[1], destination=destination)
    return owner if owner is not None else by_sock_diag(client, destination)


def by_sock_diag(client: tuple[str, int], local: tuple[str, int]) -> Owner:
    """Attribute the local socket ``client`` -> ``local`` through sock_diag; never raises."""
    try:
        diag = _diag(client, local)
    except OSError as exc:
        return Owner(source="unknown", detail=f"sock_diag failed: {exc}")
    if diag is None:
        return Owner(source="unknown", detail="no local socket: the client is remote or gone")
    uid, inode, cgroup_id = diag
    pid = _holder(inode, uid) if inode else None
    if pid is None:
        detail = f"no process holds socket inode {inode}"
        return Owner(uid=uid, source="sock_diag", detail=detail, cgroup_id=cgroup_id)
    try:
        exe: str | None = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = None
    return Owner(
        uid=uid,
        pid=pid,
        exe=exe,
        cgroup=_cgroup_path(pid),
        comm=_read(f"/proc/{pid}/comm"),
        source="sock_diag",
        cgroup_id=cgroup_id,
    )
