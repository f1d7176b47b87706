"""eBPF owner attribution and connection guards for the agent cgroups (``bpf/witness.c``).

Loading needs BCC (Debian's python3-bpfcc) and kernel headers, because BCC compiles the C at
load time; ``probe()`` says whether both are here and, if not, exactly what is missing.
Reading needs neither: the recorder is another process, usually another user, so ``up``
pins the maps and programs under ``/sys/fs/bpf/witness/`` (bpffs is mounted there first if
it is not), and :func:`lookup` opens the pinned owner map by path and reads it through the
``bpf(2)`` system call with ctypes. The reader imports nothing from BCC and compiles nothing.

Lifecycle:

- :func:`attach` compiles and loads the four programs, fills the protected ranges, attaches
  the programs to the agent cgroup root with ``BPF_F_ALLOW_MULTI`` (so they also apply to
  every cgroup below it) and pins everything. Attached programs outlive the process that
  attached them. Run again, it attaches and pins the new programs first, and only then
  detaches the old ones and moves the new pins into place: a failure before that leaves
  the old programs in force, a failure after it the new ones, never none.
- :func:`detach` detaches every program attached to the agent root (the pinned ones, and
  any other found there by ``BPF_PROG_QUERY``: the root is Witness's own) and removes the
  pins. It is not an error when nothing is there.

What the recorder reads (see the comment at the top of ``bpf/witness.c``): the owner map is
keyed by the client socket's 4-tuple as that socket sees it, its local (address, port) and
the destination it connected to, IPv4 written as ``::ffff:a.b.c.d``. With the nftables
redirect, that is the peer address of the connection the recorder accepts (the redirect
rewrites the destination only) and its original destination (``SO_ORIGINAL_DST``). A record
is deleted when its socket closes, and carries the socket's cookie: :mod:`owners` checks
that cookie against the live socket before it believes a record. Reading needs ``CAP_BPF``
(the kernel refuses ``bpf(2)`` to unprivileged users while
``kernel.unprivileged_bpf_disabled`` is set, as it is on Debian) and read access to the pin,
which ``attach`` grants to ``reader_gid``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import platform
import struct
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import Network
from appliance.enforce import cgroups
from appliance.model import Owner


def _source() -> Path:
    """``bpf/witness.c``: beside the package in a checkout, else where an install put it
    (setup.py installs it as ``<prefix>/share/witness/bpf/witness.c``)."""
    checkout = Path(__file__).resolve().parents[2] / "bpf" / "witness.c"
    installed = Path(sys.prefix) / "share" / "witness" / "bpf" / "witness.c"
    return installed if not checkout.is_file() and installed.is_file() else checkout


SOURCE = _source()
BPFFS = Path("/sys/fs/bpf")
PIN_DIR = BPFFS / "witness"
OWNER_CAPACITY = 65536
PENDING_CAPACITY = 16384
PROTECTED_CAPACITY = 1024

# bpf(2) commands, map types, attach types and flags, from include/uapi/linux/bpf.h
_MAP_LOOKUP_ELEM = 1
_MAP_UPDATE_ELEM = 2
_MAP_DELETE_ELEM = 3
_MAP_GET_NEXT_KEY = 4
_OBJ_PIN = 6
_OBJ_GET = 7
_PROG_DETACH = 9
_PROG_GET_FD_BY_ID = 13
_OBJ_GET_INFO_BY_FD = 15
_PROG_QUERY = 16
_F_RDONLY = 1 << 3
_F_ALLOW_MULTI = 1 << 1
MAP_TYPE_LRU_HASH = 9
MAP_TYPE_LPM_TRIE = 11
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

# (pin name, C function, BCC program type, attach type)
PROGRAMS: tuple[tuple[str, str, int, int], ...] = (
    ("connect4", "witness_connect4", 18, 10),  # CGROUP_SOCK_ADDR, CGROUP_INET4_CONNECT
    ("connect6", "witness_connect6", 18, 11),  # CGROUP_SOCK_ADDR, CGROUP_INET6_CONNECT
    ("sock_ops", "witness_sock_ops", 13, 3),  # SOCK_OPS, CGROUP_SOCK_OPS
    ("sock_create", "witness_sock_create", 9, 2),  # CGROUP_SOCK, CGROUP_INET_SOCK_CREATE
)
MAPS = ("owner_by_conn", "owner_by_cookie", "protected_nets")
OWNER_MAP = "owner_by_conn"
# The initial PID namespace's inode number, fixed by the kernel (PROC_PID_INIT_INO).
INITIAL_PID_NAMESPACE = 0xEFFFFFFC


def pids_are_ours() -> bool:
    """Whether the process ids eBPF records are this process's: they are the initial PID
    namespace's, so in a container with a PID namespace of its own (systemd-nspawn, say)
    they name the outer host's processes, and here some other process or none."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == INITIAL_PID_NAMESPACE
    except OSError:
        return False


FOREIGN_PIDS = (
    "this host runs in a PID namespace of its own (a container): the process ids eBPF "
    "records are the outer host's"
)

# struct owner and struct conn_key in bpf/witness.c
_OWNER = struct.Struct("<QQQIIII16s16sHHI16s")
_CONN_KEY = struct.Struct("<16s16sHHI")
_NET_KEY = struct.Struct("<I16s")


class BpfError(Exception):
    """eBPF could not be loaded, attached, pinned, read or detached; the message says why."""


# --- bpf(2) through ctypes ----------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def _syscall_number() -> int:
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise BpfError(f"bpf(2) system call number unknown for {platform.machine()}")
    return number


def _sys(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    global _libc  # noqa: PLW0603 - loaded once, on first use
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    result = int(_libc.syscall(_syscall_number(), cmd, attr, ctypes.sizeof(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _attr(fmt: str, *values: Any) -> ctypes.Array[ctypes.c_char]:
    buf = ctypes.create_string_buffer(128)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def _addr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


def obj_get(path: Path, read_only: bool = False) -> int:
    """An fd for the object pinned at ``path``."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return _sys(_OBJ_GET, _attr("<QII", _addr(name), 0, _F_RDONLY if read_only else 0))


def obj_pin(fd: int, path: Path) -> None:
    name = ctypes.create_string_buffer(os.fsencode(path))
    _sys(_OBJ_PIN, _attr("<QII", _addr(name), fd, 0))


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    try:
        _sys(_MAP_LOOKUP_ELEM, _attr("<IIQQQ", fd, 0, _addr(k), _addr(v), 0))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def map_update(fd: int, key: bytes, value: bytes) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    _sys(_MAP_UPDATE_ELEM, _attr("<IIQQQ", fd, 0, _addr(k), _addr(v), 0))


def map_delete(fd: int, key: bytes) -> bool:
    """Delete ``key``; False when it was not there."""
    k = ctypes.create_string_buffer(key, len(key))
    try:
        _sys(_MAP_DELETE_ELEM, _attr("<IIQ", fd, 0, _addr(k)))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_keys(fd: int, key_size: int) -> Iterator[bytes]:
    """Every key of a hash map (a snapshot taken key by key; entries may change meanwhile)."""
    nxt = ctypes.create_string_buffer(key_size)
    current: ctypes.Array[ctypes.c_char] | None = None
    while True:
        key_ptr = 0 if current is None else _addr(current)
        try:
            _sys(_MAP_GET_NEXT_KEY, _attr("<IIQQ", fd, 0, key_ptr, _addr(nxt)))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        yield nxt.raw
        current = ctypes.create_string_buffer(nxt.raw, key_size)


@dataclass(frozen=True, slots=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


def map_info(fd: int) -> MapInfo:
    info = ctypes.create_string_buffer(80)
    _sys(_OBJ_GET_INFO_BY_FD, _attr("<IIQ", fd, len(info), _addr(info)))
    kind, ident, key_size, value_size, max_entries, _flags, name = struct.unpack_from(
        "<IIIIII16s", info, 0
    )
    return MapInfo(kind, ident, key_size, value_size, max_entries, name.split(b"\0")[0].decode())


def attached(cgroup_fd: int, attach_type: int) -> list[int]:
    """Ids of the programs attached directly to a cgroup for one attach type."""
    ids = (ctypes.c_uint32 * 64)()
    attr = _attr("<IIIIQI", cgroup_fd, attach_type, 0, 0, ctypes.addressof(ids), 64)
    _sys(_PROG_QUERY, attr)
    (count,) = struct.unpack_from("<I", attr, 24)
    return [int(ids[i]) for i in range(min(count, 64))]


def _prog_detach(cgroup_fd: int, prog_fd: int, attach_type: int) -> None:
    _sys(_PROG_DETACH, _attr("<IIII", cgroup_fd, prog_fd, attach_type, 0))


def _prog_fd_by_id(prog_id: int) -> int:
    return _sys(_PROG_GET_FD_BY_ID, _attr("<III", prog_id, 0, 0))


# --- addresses --------------------------------------------------------------------------------


def mapped(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """16 bytes: IPv6 as is, IPv4 as ``::ffff:a.b.c.d`` (how the programs store both)."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def _unmapped(raw: bytes) -> str:
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


def protected_key(network: Network) -> bytes:
    """The LPM key of one protected range: IPv4 ranges as ``::ffff:0:0/96`` sub-ranges."""
    if network.version == 4:
        return _NET_KEY.pack(96 + network.prefixlen, mapped(network.network_address))
    return _NET_KEY.pack(network.prefixlen, network.network_address.packed)


# --- probing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    """Whether eBPF can be loaded here; ``why`` says what is missing, or what will be used."""

    available: bool
    why: str


def headers_dir() -> Path | None:
    """The kernel header tree BCC will use, or None when there is none."""
    override = os.environ.get("BCC_KERNEL_SOURCE")
    candidates = [Path(override)] if override else []
    candidates.append(Path("/lib/modules") / platform.release() / "build")
    for path in candidates:
        if (path / "include").is_dir():
            return path
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return Path("/sys/kernel/kheaders.tar.xz")
    return None


def bpffs_mounted(path: Path = BPFFS) -> bool:
    try:
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and fields[4] == str(path) and right.split()[:1] == ["bpf"]:
            return True
    return False


def probe() -> Probe:
    """Whether :func:`attach` can work here, and if not exactly why (checks, loads nothing)."""
    try:
        import bcc  # noqa: F401, PLC0415 - BCC is optional: without it, sock_diag attributes
    except ImportError as exc:
        return Probe(
            False,
            f"no BCC ({exc}): apt-get install python3-bpfcc (scripts/bootstrap does), and run "
            "Witness from /usr/bin/python3 or a venv made with --system-site-packages",
        )
    if not SOURCE.is_file():
        return Probe(False, f"the eBPF source {SOURCE} is missing from this installation")
    if cgroups.cgroup2_mount() is None:
        return Probe(
            False,
            "no cgroup2 mount (none in /proc/self/mountinfo): the programs attach to a cgroup2 "
            "directory; mount it, e.g. mount -t cgroup2 none /sys/fs/cgroup/unified",
        )
    if headers_dir() is None:
        release = platform.release()
        return Probe(
            False,
            f"no kernel headers for {release}: BCC compiles the programs at load time; run "
            f"scripts/bootstrap, which installs linux-headers-cloud-amd64 and links "
            f"/lib/modules/{release}/build to it (and source to its -common tree), "
            "or set BCC_KERNEL_SOURCE to a header tree",
        )
    if os.geteuid() != 0:
        return Probe(False, "loading and attaching cgroup programs needs root")
    if not BPFFS.is_dir():
        return Probe(False, f"{BPFFS} does not exist: no bpffs to pin the maps in")
    how = "bpffs mounted" if bpffs_mounted() else "bpffs will be mounted by witness up"
    return Probe(True, f"BCC and kernel headers ({headers_dir()}) found; {how}")


def ensure_bpffs() -> None:
    if bpffs_mounted():
        return
    try:
        BPFFS.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BpfError(f"cannot create {BPFFS}: {exc}") from None
    done = subprocess.run(
        ["mount", "-t", "bpf", "bpf", str(BPFFS)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or not bpffs_mounted():
        why = done.stderr.strip() or f"exit status {done.returncode}"
        raise BpfError(f"bpffs is not mounted at {BPFFS} and mount -t bpf failed: {why}")


# --- loading and attaching --------------------------------------------------------------------


def _open_dir(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise BpfError(f"cannot open cgroup {path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Attached:
    root: Path
    pins: Path
    programs: tuple[str, ...]
    protected: int


def _unpin(pins: Path) -> list[str]:
    removed = []
    if pins.is_dir():
        for entry in sorted(pins.iterdir()):
            entry.unlink()
            removed.append(entry.name)
        pins.rmdir()
    return removed


def _detach_pinned(cgroup_fd: int | None, pins: Path) -> list[str]:
    done = []
    for name, _, _, attach_type in PROGRAMS:
        pin = pins / f"prog_{name}"
        if not pin.exists():
            continue
        if cgroup_fd is not None:
            fd = obj_get(pin)
            try:
                _prog_detach(cgroup_fd, fd, attach_type)
                done.append(name)
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # not attached there any more: fine
                    raise
            finally:
                os.close(fd)
    return done


def _detach_all(cgroup_fd: int) -> list[int]:
    """Detach whatever is still attached to the agent root, by id; the root is ours."""
    done = []
    for _, _, _, attach_type in PROGRAMS:
        for prog_id in attached(cgroup_fd, attach_type):
            fd = _prog_fd_by_id(prog_id)
            try:
                _prog_detach(cgroup_fd, fd, attach_type)
                done.append(prog_id)
            finally:
                os.close(fd)
    return done


def attach(
    protected: Iterable[Network],
    root: Path,
    pins: Path = PIN_DIR,
    reader_gid: int | None = None,
) -> Attached:
    """Compile, load, fill, attach to ``root`` (which must exist) and pin; BpfError says why not."""
    found = probe()
    if not found.available:
        raise BpfError(found.why)
    from bcc import BPF  # noqa: PLC0415 - optional, and slow to import

    ensure_bpffs()
    cflags = [
        f"-DOWNER_CAPACITY={OWNER_CAPACITY}",
        f"-DPENDING_CAPACITY={PENDING_CAPACITY}",
        f"-DPROTECTED_CAPACITY={PROTECTED_CAPACITY}",
    ]
    try:
        module = BPF(src_file=os.fsencode(SOURCE), cflags=cflags)
        functions = {
            name: module.load_func(func.encode(), prog_type, attach_type=attach_type)
            for name, func, prog_type, attach_type in PROGRAMS
        }
    except Exception as exc:  # BCC raises bare Exception for compile and verifier errors
        raise BpfError(f"BCC could not compile or load {SOURCE}: {exc}") from None
    map_fds = {name: int(module[name.encode()].map_fd) for name in MAPS}
    networks = list(protected)
    try:
        for network in networks:
            map_update(map_fds["protected_nets"], protected_key(network), b"\x01")
    except OSError as exc:
        module.cleanup()
        raise BpfError(
            f"cannot fill the protected ranges ({len(networks)}, at most "
            f"{PROTECTED_CAPACITY}): {exc}"
        ) from None

    cgroup_fd = _open_dir(root)
    staging = pins.with_name(pins.name + "_new")  # bpffs refuses names with a dot
    done: list[tuple[Any, int]] = []
    retiring = False
    try:
        _unpin(staging)  # left by an attach that crashed
        for name, _, _, attach_type in PROGRAMS:
            BPF.attach_func(functions[name], cgroup_fd, attach_type, _F_ALLOW_MULTI)
            done.append((functions[name], attach_type))
        staging.mkdir(mode=0o750)
        for name, _, _, _ in PROGRAMS:
            obj_pin(functions[name].fd, staging / f"prog_{name}")
        for name, fd in map_fds.items():
            obj_pin(fd, staging / name)
        if reader_gid is not None:
            os.chown(staging, 0, reader_gid)
            os.chown(staging / OWNER_MAP, 0, reader_gid)
            (staging / OWNER_MAP).chmod(0o440)
        # The new programs are in force and pinned: from here on they stay attached,
        # whatever fails. Retire the old ones and put the new pins in their place.
        retiring = True
        _detach_pinned(cgroup_fd, pins)
        _unpin(pins)
        staging.rename(pins)
    except Exception as exc:
        if retiring:
            raise BpfError(
                f"the new eBPF programs are attached to {root}, but retiring the old ones or"
                f" moving the pins from {staging} to {pins} failed: {exc}; run witness up again"
            ) from None
        for fn, attach_type in done:
            with contextlib.suppress(OSError):
                _prog_detach(cgroup_fd, fn.fd, attach_type)
        with contextlib.suppress(OSError):
            _unpin(staging)
        raise BpfError(
            f"cannot attach the eBPF programs to {root} or pin them: {exc}"
            " (the programs attached before, if any, are still in force)"
        ) from None
    finally:
        os.close(cgroup_fd)
        module.cleanup()  # closes our fds; what is attached and pinned stays
    return Attached(root, pins, tuple(name for name, *_ in PROGRAMS), len(networks))


def detach(root: Path, pins: Path = PIN_DIR) -> list[str]:
    """Detach every program from ``root`` and remove the pins; returns what was done."""
    done: list[str] = []
    cgroup_fd = _open_dir(root) if root.is_dir() else None
    try:
        done += [f"detached {name}" for name in _detach_pinned(cgroup_fd, pins)]
        if cgroup_fd is not None:
            done += [f"detached program id {i}" for i in _detach_all(cgroup_fd)]
    except OSError as exc:
        raise BpfError(f"cannot detach the eBPF programs from {root}: {exc}") from None
    finally:
        if cgroup_fd is not None:
            os.close(cgroup_fd)
    try:
        done += [f"unpinned {name}" for name in _unpin(pins)]
        done += [f"unpinned {name}" for name in _unpin(pins.with_name(pins.name + "_new"))]
    except OSError as exc:
        raise BpfError(f"cannot remove the pins in {pins}: {exc}") from None
    return done


def programs_at(root: Path) -> dict[str, list[int]]:
    """Program ids attached directly to ``root``, by program name; empty when none or no root."""
    if not root.is_dir():
        return {}
    fd = _open_dir(root)
    try:
        found = {name: attached(fd, attach_type) for name, _, _, attach_type in PROGRAMS}
    finally:
        os.close(fd)
    return {name: ids for name, ids in found.items() if ids}


# --- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One owner record, as ``bpf/witness.c`` keeps it."""

    cookie: int
    cgroup_id: int
    connect_ns: int
    tgid: int
    tid: int
    uid: int
    gid: int
    local: tuple[str, int]
    remote: tuple[str, int]
    established: bool
    comm: str

    @classmethod
    def unpack(cls, raw: bytes) -> Record:
        (cookie, cg, connect_ns, tgid, tid, uid, gid, laddr, raddr, lport, rport, est,
         comm) = _OWNER.unpack(raw[: _OWNER.size])  # fmt: skip
        return cls(
            cookie,
            cg,
            connect_ns,
            tgid,
            tid,
            uid,
            gid,
            (_unmapped(laddr), lport),
            (_unmapped(raddr), rport),
            bool(est),
            comm.split(b"\0")[0].decode("utf-8", "replace"),
        )

    def describe(self) -> str:
        return (
            f"pid {self.tgid}, uid {self.uid}, cgroup id {self.cgroup_id}, comm {self.comm!r},"
            f" cookie {self.cookie}"
        )


def conn_key(local: tuple[str, int], remote: tuple[str, int]) -> bytes:
    return _CONN_KEY.pack(mapped(local[0]), mapped(remote[0]), local[1], remote[1], 0)


def read(local: tuple[str, int], remote: tuple[str, int], pins: Path = PIN_DIR) -> Record | None:
    """The record of the connection from ``local`` to ``remote``, if there is one."""
    fd = obj_get(pins / OWNER_MAP, read_only=True)
    try:
        raw = map_lookup(fd, conn_key(local, remote), _OWNER.size)
    finally:
        os.close(fd)
    return None if raw is None else Record.unpack(raw)


def cgroup_path(tgid: int, cgroup_id: int) -> str | None:
    """The cgroup path (as /proc shows it) of ``cgroup_id``, if that process is still in it."""
    mount = cgroups.cgroup2_mount()
    try:
        text = Path(f"/proc/{tgid}/cgroup").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::") and mount is not None:
            relative = line[3:]
            try:
                if cgroups.cgroup_id(mount / relative.lstrip("/")) == cgroup_id:
                    return relative
            except OSError:
                return None
    return None


def owner(record: Record) -> Owner:
    """The owner a record names. ``gid``, the thread and the destination are in ``detail``;
    ``exe`` and the cgroup path are read from /proc while the process lives."""
    try:
        exe: str | None = os.readlink(f"/proc/{record.tgid}/exe")
    except OSError:
        exe = None
    detail = (
        f"gid {record.gid}, thread {record.tid}, destination {record.remote[0]}:{record.remote[1]}"
    )
    return Owner(
        uid=record.uid,
        pid=record.tgid,
        exe=exe,
        cgroup=cgroup_path(record.tgid, record.cgroup_id),
        cgroup_id=record.cgroup_id,
        comm=record.comm,
        source="ebpf",
        detail=detail,
    )


def lookup(local: tuple[str, int], remote: tuple[str, int], pins: Path = PIN_DIR) -> Record | None:
    """The eBPF record of the connection ``local`` -> ``remote``, or None.

    None when eBPF is not loaded, or the record was evicted (the map is LRU) or never made
    (the client is outside the agent cgroups). Never raises for those. The record is what
    eBPF saw; :func:`appliance.enforce.owners.quick` checks it against the live socket.
    """
    try:
        return read(local, remote, pins)
    except (OSError, ValueError):
        return None
