"""The launcher's confinement: a seccomp filter every agent runs under, and the launcher itself.

Agents enter an agent cgroup only through Witness: ``witness run`` (placed by the root warden,
then it confines itself with :func:`restrict`) or the lab's launcher below. The cgroups are
root's, so only root can move a process into one (see :mod:`appliance.enforce.cgroups`). The
agent installs a seccomp filter on itself before it execs the agent's command. A seccomp
filter is inherited by every child, across ``fork``, ``clone`` and ``execve``, and cannot be
removed or loosened: filters only stack. So it holds for the agent and everything it
spawns, inside any user or network namespace it makes.

**Why a filter and not an eBPF program.** The eBPF ``cgroup/sock_create`` program denies raw
sockets, but the kernel runs that hook for ``AF_INET`` and ``AF_INET6`` only. An agent that
makes its own user and network namespace (``unshare -Urn``) holds ``CAP_NET_RAW`` there and
could open ``AF_PACKET`` sockets. Denying those cgroup-wide would take a BPF LSM program
(``socket_create``), and this kernel refuses BPF LSM and fentry program loads (``EPERM``), so
that route is not used.

**The limit.** The filter confines what the launcher starts, and nothing else: a process
that enters an agent cgroup some other way (only root can do that) is not confined by it.

The filter (classic BPF, built here, no library), rule by rule:

1. ``seccomp_data.arch`` must be ``AUDIT_ARCH_X86_64``; anything else (an ``int 0x80`` i386
   system call from a 64-bit process) gets ``EPERM``. The i386 ABI has ``socketcall``, which
   would carry ``socket(AF_PACKET, ...)`` past a rule that looks only at ``socket``.
2. System call numbers with the x32 bit (``nr >= 0x40000000``) get ``EPERM``: x32 calls report
   ``AUDIT_ARCH_X86_64`` too, with other numbers, and would pass the rules below unchecked.
3. ``io_uring_setup`` gets ``EPERM``: io_uring can create sockets (``IORING_OP_SOCKET``)
   without the ``socket`` system call, out of this filter's sight.
4. ``socket`` and ``socketpair`` with ``AF_PACKET`` as the family get ``EPERM``. Only the low
   32 bits of the argument are compared: the kernel takes the family as an ``int``, so
   ``AF_PACKET | 1 << 32`` is ``AF_PACKET`` to it, and must be to the filter as well.
5. Everything else is allowed.

``python -m appliance.enforce.confine --cgroup PATH --user NAME [--ambient-caps CAPS] -- CMD``
runs :func:`exec_confined`: as root, it moves itself into the cgroup, drops to the user, sets
``no_new_privs``, installs the filter and execs ``CMD`` (same pid throughout).

``witness run`` has no root to spare: it runs as the agent's own user, and the root warden
(:mod:`appliance.enforce.warden`) moves it into its cgroup. It then calls :func:`restrict`,
the part of the launcher that needs no privilege (``no_new_privs`` and the filter), before it
execs the agent's command.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import pwd
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

# <linux/audit.h>, <asm/unistd_64.h>, <linux/socket.h>
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
NR_SOCKET = 41
NR_SOCKETPAIR = 53
NR_IO_URING_SETUP = 425
NR_SECCOMP = 317
NR_CAPSET = 126
AF_PACKET = 17

# <linux/seccomp.h>
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
_NR = 0
_ARCH = 4
_ARG0_LOW = 16  # args[0], low 32 bits (little-endian)

# <linux/prctl.h>
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2

# classic BPF opcodes
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K

# <linux/capability.h>, in order: the index is the capability's number.
CAPABILITIES = (
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
)


class ConfineError(Exception):
    """The agent could not be confined (cgroup, user, filter); says why. Nothing was run."""


Instruction = tuple[int, int, int, int]  # (code, jt, jf, k)


def _errno(code: int) -> int:
    return SECCOMP_RET_ERRNO | (code & 0xFFFF)


def program() -> list[Instruction]:
    """The filter, as classic BPF instructions (see the module's docstring, rules 1 to 5)."""
    deny = _errno(errno.EPERM)
    return [
        (_LD_W_ABS, 0, 0, _ARCH),  # 0
        (_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),  # 1: x86_64 -> 3
        (_RET_K, 0, 0, deny),  # 2: rule 1, any other ABI
        (_LD_W_ABS, 0, 0, _NR),  # 3
        (_JGE_K, 0, 1, X32_SYSCALL_BIT),  # 4: below the x32 bit -> 6
        (_RET_K, 0, 0, deny),  # 5: rule 2, x32
        (_JEQ_K, 0, 1, NR_IO_URING_SETUP),  # 6: not io_uring_setup -> 8
        (_RET_K, 0, 0, deny),  # 7: rule 3
        (_JEQ_K, 1, 0, NR_SOCKET),  # 8: socket -> 10
        (_JEQ_K, 0, 3, NR_SOCKETPAIR),  # 9: neither -> 13
        (_LD_W_ABS, 0, 0, _ARG0_LOW),  # 10: the family
        (_JEQ_K, 0, 1, AF_PACKET),  # 11: not AF_PACKET -> 13
        (_RET_K, 0, 0, deny),  # 12: rule 4
        (_RET_K, 0, 0, SECCOMP_RET_ALLOW),  # 13: rule 5
    ]


def encode(instructions: Sequence[Instruction]) -> bytes:
    """``struct sock_filter[]``: u16 code, u8 jt, u8 jf, u32 k each."""
    return b"".join(struct.pack("=HBBI", *insn) for insn in instructions)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result == -1:
        code = ctypes.get_errno()
        raise ConfineError(f"{what}: {os.strerror(code)}")


def set_no_new_privs() -> None:
    """``prctl(PR_SET_NO_NEW_PRIVS, 1)``: execve can no longer grant privileges (setuid bits,
    file capabilities); also what lets an unprivileged process install a filter."""
    libc = _libc()
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1:
        raise ConfineError("no_new_privs did not stick")


def install_filter() -> None:
    """Set ``no_new_privs`` and install :func:`program` for every thread of this process."""
    set_no_new_privs()
    code = encode(program())
    buffer = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    done = libc.syscall(
        ctypes.c_long(NR_SECCOMP),
        ctypes.c_long(SECCOMP_SET_MODE_FILTER),
        ctypes.c_long(SECCOMP_FILTER_FLAG_TSYNC),
        ctypes.byref(prog),
    )
    if done != 0:  # with TSYNC, a positive result is the thread that could not be synced
        why = os.strerror(ctypes.get_errno()) if done == -1 else f"thread {done} not synced"
        raise ConfineError(f"seccomp(SECCOMP_SET_MODE_FILTER): {why}")


def restrict() -> None:
    """Confine the calling process as an agent, whoever it runs as: set ``no_new_privs`` and
    install the filter, then check in ``/proc/self/status`` that both took.

    No cgroup move and no change of user: that is what lets ``witness run``, unprivileged,
    confine itself once the warden has placed it. The check is there because a process that
    believes itself filtered and is not would run its agent unconfined without a word.
    """
    install_filter()
    status = _status_fields("NoNewPrivs", "Seccomp")
    if status != {"NoNewPrivs": "1", "Seccomp": "2"}:  # 2: SECCOMP_MODE_FILTER
        raise ConfineError(f"the filter did not take: /proc/self/status says {status}")


def parse_caps(text: str) -> list[int]:
    """``"net_admin,+net_raw"`` or ``"cap_net_admin"`` -> capability numbers."""
    numbers = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name = item.lstrip("+").lower().removeprefix("cap_")
        if name not in CAPABILITIES:
            raise ConfineError(f"unknown capability {item!r}")
        numbers.append(CAPABILITIES.index(name))
    return numbers


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _capset(caps: Sequence[int]) -> None:
    """Effective, permitted and inheritable sets = exactly ``caps``; others are dropped."""
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    for i in range(2):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = data[i].inheritable = word
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    done = libc.syscall(ctypes.c_long(NR_CAPSET), ctypes.byref(header), ctypes.byref(data))
    _check(done, "capset")


def _status_fields(*keys: str) -> dict[str, str]:
    """The fields ``keys`` of ``/proc/self/status`` that are there, as text."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            found[key] = value.strip()
    return found


def _status_caps() -> dict[str, int]:
    fields = _status_fields("CapInh", "CapPrm", "CapEff", "CapAmb")
    return {key: int(value, 16) for key, value in fields.items()}


def drop_to(uid: int, gid: int, groups: Sequence[int] = (), caps: Sequence[int] = ()) -> None:
    """Become ``uid``/``gid`` with ``groups`` and no capabilities but ``caps`` (ambient, so they
    survive execve); check that it really happened: no way back to root."""
    libc = _libc()
    if caps:  # keep the permitted set across setuid, trimmed to ``caps`` just after
        _check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    try:
        os.setgroups(list(groups))
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise ConfineError(f"cannot drop to uid {uid} gid {gid}: {exc}") from None
    if caps:
        _capset(caps)
        _check(libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS, 0)")
        for cap in caps:
            _check(
                libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0),
                f"prctl(PR_CAP_AMBIENT_RAISE, {CAPABILITIES[cap]})",
            )
    # Check: the ids, the groups, the capabilities, and that root cannot be had back.
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise ConfineError(f"still {os.getresuid()}/{os.getresgid()} after dropping")
    if sorted(set(os.getgroups())) != sorted(set(groups)):
        raise ConfineError(f"supplementary groups {os.getgroups()} after dropping")
    mask = sum(1 << cap for cap in set(caps))
    have = _status_caps()
    if any(value != mask for key, value in have.items() if key != "CapInh") or len(have) < 4:
        raise ConfineError(f"capabilities after dropping: {have}, wanted {mask:#x}")
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise ConfineError("setuid(0) succeeded after dropping")


def exec_confined(
    cgroup: Path,
    uid: int,
    gid: int,
    argv: Sequence[str],
    *,
    groups: Sequence[int] = (),
    caps: Sequence[int] = (),
) -> None:
    """As root: move this process into ``cgroup``, drop to ``uid``/``gid`` (supplementary
    ``groups``, ambient ``caps``), then :func:`restrict` it (``no_new_privs`` and the filter),
    and exec ``argv``.

    Returns only by raising :class:`ConfineError` (or the exec's OSError); ``argv`` never runs
    outside the cgroup, as root, or unfiltered.
    """
    if not argv:
        raise ConfineError("no command to run")
    try:
        (cgroup / "cgroup.procs").write_text(f"{os.getpid()}\n", encoding="ascii")
    except OSError as exc:
        raise ConfineError(f"cannot enter cgroup {cgroup}: {exc}") from None
    drop_to(uid, gid, groups, caps)
    restrict()
    os.execvp(argv[0], list(argv))  # noqa: S606 - the agent's own command, as given


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.enforce.confine",
        description="Run CMD as USER inside the agent cgroup PATH, under Witness's seccomp "
        "filter (no AF_PACKET sockets, no io_uring, x86_64 system calls only).",
    )
    parser.add_argument("--cgroup", required=True, type=Path, help="the agent cgroup")
    parser.add_argument("--user", required=True, help="the agent's Unix user")
    parser.add_argument(
        "--init-groups",
        action="store_true",
        help="keep the user's supplementary groups (default: none)",
    )
    parser.add_argument(
        "--ambient-caps",
        default="",
        metavar="CAPS",
        help="capabilities the command keeps, comma-separated (net_admin,...); default none",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    ns = parser.parse_args(args)
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    try:
        who = pwd.getpwnam(ns.user)
        groups = os.getgrouplist(ns.user, who.pw_gid) if ns.init_groups else []
        exec_confined(
            ns.cgroup,
            who.pw_uid,
            who.pw_gid,
            command,
            groups=groups,
            caps=parse_caps(ns.ambient_caps),
        )
    except KeyError:
        print(f"confine: no user {ns.user!r}", file=sys.stderr)
    except (ConfineError, OSError) as exc:
        print(f"confine: {exc}", file=sys.stderr)
    return 126


if __name__ == "__main__":
    sys.exit(main())
