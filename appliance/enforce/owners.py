"""Socket to owner: which local process holds the client end of an accepted connection.

The record the eBPF programs took at connect time answers first, and is believed only once
the kernel's view of the live client socket (sock_diag, :mod:`sockdiag`) agrees with it:
the same socket cookie, uid and cgroup. A record the live socket contradicts (a stale one,
or one that names another socket) is never used and never replaced by a guess: the owner
comes back with ``doubt`` set, and the connection is refused.

Without a record, sock_diag gives the owning uid, the socket inode and the cgroup id, and
/proc gives the process holding that inode, its executable and its cgroup path. That walk
is blocking, so the relay runs :func:`lookup` off the event loop; :func:`quick` is the
record alone, cheap enough for the loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from appliance.enforce import bpf, sockdiag
from appliance.model import Owner

Address = tuple[str, int]


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


def _holders(inode: int, uid: int) -> Iterator[int]:
    """The processes of ``uid`` that hold socket ``inode`` open, lowest pid first."""
    target = f"socket:[{inode}]"
    for pid in sorted(int(e.name) for e in os.scandir("/proc") if e.name.isdigit()):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
        except OSError:
            continue
        if _holds(str(pid), target):
            yield pid


def _holder(inode: int, uid: int, cgroup_id: int | None) -> tuple[int | None, str | None]:
    """The process that holds socket ``inode``, and its cgroup path.

    Any process the socket was passed to holds it too: the one named is the lowest pid in
    the socket's own cgroup (``cgroup_id``, the kernel's), whose path is that cgroup's;
    else the lowest pid, with no path, since its cgroup is not the socket's. Without the
    socket's cgroup id (an older kernel), the lowest pid and the path /proc gives it.
    """
    first: int | None = None
    for pid in _holders(inode, uid):
        if cgroup_id is None:
            return pid, _cgroup_path(pid)
        path = bpf.cgroup_path(pid, cgroup_id)
        if path is not None:
            return pid, path
        if first is None:
            first = pid
    return first, None


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


def _doubt(why: str, record: bpf.Record, live: sockdiag.Socket | None) -> Owner:
    seen = f"eBPF record: {record.describe()}; live socket: "
    seen += "none" if live is None else live.describe()
    return Owner(source="ebpf", doubt=why, detail=seen)


def confirmed(record: bpf.Record, live: sockdiag.Socket | None) -> Owner:
    """The owner ``record`` names if the live socket ``live`` is the one it was taken for;
    else an owner that names no one and says why."""
    if live is None or not live.connected:
        return _doubt("its eBPF owner record names a socket that is no longer open", record, live)
    if live.cookie != record.cookie:
        return _doubt("its eBPF owner record was taken for another socket", record, live)
    if live.uid != record.uid or (live.cgroup_id not in (None, record.cgroup_id)):
        return _doubt(
            "the socket's own uid or cgroup is not the one that connected it", record, live
        )
    return bpf.owner(record)


# Asked once: a process does not change its PID namespace.
PIDS_ARE_OURS = bpf.pids_are_ours()


def quick(client: Address, destination: Address, pins: Path = bpf.PIN_DIR) -> Owner | None:
    """The owner the eBPF record names, checked against the live socket; None when there is
    no record. A map read and one netlink round trip: cheap enough for the event loop."""
    if not PIDS_ARE_OURS:
        return None
    record = bpf.lookup(client, destination, pins)
    if record is None:
        return None
    try:
        live = sockdiag.find(client, destination)
    except (sockdiag.DiagError, ValueError) as exc:
        return _doubt(f"its eBPF owner record cannot be checked: {exc}", record, None)
    return confirmed(record, live)


def lookup(client: Address, destination: Address) -> Owner:
    """The owner of the client socket ``client`` -> ``destination``; never raises.

    The eBPF record comes first: it was taken when the process connected, so it is exact
    and survives the process exiting. Without one (eBPF not attached, the record evicted,
    the client outside the agent cgroups, or a recorder in a PID namespace other than the
    one whose process ids eBPF records), sock_diag and /proc are asked instead.
    """
    owner = quick(client, destination)
    return owner if owner is not None else by_sock_diag(client, destination)


def by_sock_diag(client: Address, destination: Address) -> Owner:
    """Attribute the local socket ``client`` -> ``destination`` through sock_diag; never
    raises. Only a socket a process still holds counts: one in TIME_WAIT has no owner."""
    try:
        live = sockdiag.find(client, destination)
    except (sockdiag.DiagError, ValueError) as exc:
        return Owner(source="unknown", detail=f"sock_diag failed: {exc}")
    if live is None or not live.connected:
        return Owner(source="unknown", detail="no local socket: the client is remote or gone")
    uid, inode, cgroup_id = live.uid, live.inode, live.cgroup_id
    pid, cgroup = _holder(inode, uid, cgroup_id)
    if pid is None:
        detail = f"no process holds socket inode {inode}"
        return Owner(uid=uid, source="sock_diag", detail=detail, cgroup_id=cgroup_id)
    try:
        exe: str | None = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = None
    outside = cgroup is None and cgroup_id is not None
    return Owner(
        uid=uid,
        pid=pid,
        exe=exe,
        cgroup=cgroup,
        comm=_read(f"/proc/{pid}/comm"),
        source="sock_diag",
        cgroup_id=cgroup_id,
        detail=f"held outside the socket's cgroup (id {cgroup_id})" if outside else None,
    )
