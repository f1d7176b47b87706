"""Run on the booted host, under the recorder's unit (its ExecStart replaced by this) and,
for comparison, outside it: what the process may do, as JSON in the file named by argv[1].

Each entry is 0 when the call succeeded, else the errno it failed with:

- ``socket:FAMILY``: a socket of that address family (RestrictAddressFamilies answers
  EAFNOSUPPORT for a family outside its list);
- ``pidfd_getfd``: a call outside systemd's @system-service set (it is in @debug), on the
  process itself (SystemCallFilter with SystemCallErrorNumber=EPERM);
- ``mmap_wx``: an anonymous mapping both writable and executable (MemoryDenyWriteExecute:
  EPERM from systemd's seccomp filter, or EACCES from the kernel's PR_SET_MDWE);
- ``owner_map``: the pinned eBPF owner map opened read-only, as the recorder opens it (the
  bpf call in the filter, CAP_BPF, the pin's group, a read-only /sys). Run with the venv's
  Python, which has Witness.
"""

import ctypes
import json
import mmap
import os
import socket
import sys

SOCKETS = {
    "AF_UNIX": (socket.AF_UNIX, socket.SOCK_STREAM, 0),
    "AF_INET": (socket.AF_INET, socket.SOCK_STREAM, 0),
    "AF_INET6": (socket.AF_INET6, socket.SOCK_STREAM, 0),
    "AF_NETLINK": (socket.AF_NETLINK, socket.SOCK_RAW, 4),  # NETLINK_SOCK_DIAG
    "AF_PACKET": (socket.AF_PACKET, socket.SOCK_DGRAM, 0),
}


def errno_of(call):
    try:
        call()
    except OSError as exc:
        return exc.errno
    return 0


def take_own_descriptor():
    """pidfd_getfd(2) on this process's own pipe: a copy of one of its descriptors."""
    libc = ctypes.CDLL(None, use_errno=True)
    reader, writer = os.pipe()
    pidfd = os.pidfd_open(os.getpid())
    try:
        copy = libc.syscall(438, pidfd, reader, 0)  # SYS_pidfd_getfd (438 on every architecture)
        if copy < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        os.close(copy)
    finally:
        for fd in (reader, writer, pidfd):
            os.close(fd)


def open_owner_map():
    from appliance.enforce import bpf

    os.close(bpf.obj_get(bpf.PIN_DIR / bpf.OWNER_MAP, read_only=True))


def main():
    found = {}
    for name, args in SOCKETS.items():
        found[f"socket:{name}"] = errno_of(lambda args=args: socket.socket(*args).close())
    found["pidfd_getfd"] = errno_of(take_own_descriptor)
    wx = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
    found["mmap_wx"] = errno_of(lambda: mmap.mmap(-1, mmap.PAGESIZE, prot=wx).close())
    found["owner_map"] = errno_of(open_owner_map)
    with open(sys.argv[1], "w") as out:
        json.dump(found, out)


main()
