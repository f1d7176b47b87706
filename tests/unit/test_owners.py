"""Socket to owner through sock_diag and /proc, against live sockets of this process; and the
eBPF record left unread where its process ids are not the recorder's."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from appliance.enforce import bpf, cgroups, owners

Address = tuple[str, int]


@contextmanager
def connected() -> Iterator[tuple[socket.socket, Address, Address]]:
    """A loopback TCP connection of this process: its client socket, and the client's and
    the server's addresses."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()) as client:
            server, _ = listener.accept()
            with server:
                yield client, client.getsockname(), listener.getsockname()


def own_cgroup() -> str:
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    return next(line[3:] for line in lines if line.startswith("0::"))


needs_cgroup2 = pytest.mark.skipif(cgroups.cgroup2_mount() is None, reason="no cgroup2 mount")


@needs_cgroup2
def test_sock_diag_names_this_process_its_program_and_its_cgroup() -> None:
    with connected() as (_client, local, remote):
        owner = owners.by_sock_diag(local, remote)
    assert owner.source == "sock_diag" and owner.uid == os.geteuid()
    assert owner.pid == os.getpid() and owner.exe == os.readlink("/proc/self/exe")
    assert owner.cgroup == own_cgroup() and owner.detail is None, owner


@needs_cgroup2
def test_a_holder_outside_the_sockets_cgroup_is_named_without_a_path() -> None:
    """A socket passed to a process in another cgroup: that process holds it, but the path
    of its cgroup is not the socket's, and is not given as the owner's."""
    with connected() as (client, _local, _remote):
        inode = os.fstat(client.fileno()).st_ino
        mount = cgroups.cgroup2_mount()
        assert mount is not None
        ours = cgroups.cgroup_id(mount / own_cgroup().lstrip("/"))
        assert owners._holder(inode, os.geteuid(), ours) == (os.getpid(), own_cgroup())
        assert owners._holder(inode, os.geteuid(), ours + 1) == (os.getpid(), None)
        assert owners._holder(inode, os.geteuid() + 1, ours) == (None, None)


def test_where_pids_are_foreign_the_ebpf_map_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Address] = []

    def lookup(local: Address, _remote: Address, _pins: Path) -> None:
        asked.append(local)

    monkeypatch.setattr(bpf, "lookup", lookup)
    monkeypatch.setattr(owners, "PIDS_ARE_OURS", False)
    assert owners.quick(("127.0.0.1", 40000), ("10.0.0.1", 5432)) is None
    assert asked == []
    monkeypatch.setattr(owners, "PIDS_ARE_OURS", True)
    assert owners.quick(("127.0.0.1", 40000), ("10.0.0.1", 5432)) is None
    assert asked == [("127.0.0.1", 40000)]
