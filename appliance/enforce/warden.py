"""The warden: the one root helper that puts a ``witness run`` into an agent cgroup of its own.

``witness run`` starts an agent under an OIDC identity for an unprivileged user. The recorder
checks the identity, but it runs as the unprivileged service user, and only root may move a
process into a cgroup below the agent root (cgroup2 wants write access to the ``cgroup.procs``
of the common ancestor, root's). So the recorder asks the warden, over a UNIX socket that
only root and the service user's group can open, and the warden does exactly this and nothing
more:

- ``{"op": "place", "pid": P, "uid": U, "start": S}``: make ``<agent root>/run-<16 hex>``
  and move process ``P`` into it, if ``P`` still is the caller the recorder saw: real uid
  ``U`` and start time ``S`` (field 22 of ``/proc/P/stat``, which a reused pid cannot have).
  Both are checked again after the move; if the pid was reused in between, whatever was
  moved is killed (``cgroup.kill``) and the cgroup removed. Answer:
  ``{"ok": true, "cgroup": "/witness-agents/run-...", "cgroup_id": N}``, the cgroup as
  ``/proc/PID/cgroup`` shows it and its id (the directory's inode, as eBPF reports it).
- ``{"op": "release", "cgroup": "/witness-agents/run-..."}``: remove that cgroup if no
  process is left in it. No other name is accepted: the warden never touches a cgroup it
  could not have made. Answer: ``{"ok": true, "removed": bool, "pids": [...]}``.
- anything else, or a request that is malformed, longer than 4 KiB or slower than
  :data:`READ_TIMEOUT`: ``{"ok": false, "error": "..."}``.

One request per connection, one JSON object per line each way. Every connection's
``SO_PEERCRED`` is checked: only the service user and root are answered. The socket is
``root:<service user's group>`` 0660, so others cannot even connect.

Every :data:`SWEEP_SECONDS` (and at start) the warden removes the ``run-*`` cgroups whose
``cgroup.events`` says ``populated 0``: their agent and everything it spawned have exited.

Deliberately small and synchronous: one connection at a time, no threads. Each request is a
few system calls, a client gets :data:`READ_TIMEOUT` seconds at most, and only the service
user and root get as far as sending one. Placing and sweeping in one thread also means the
sweep can never remove a cgroup that was just made and is about to receive its process.

The parsing (requests, ``/proc/PID/stat`` and ``status``) is pure and unit-tested; the
client half (:func:`place`, :func:`release`, :func:`start_time`) is what the recorder uses.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import pwd
import re
import secrets
import selectors
import signal
import socket
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from appliance.enforce import cgroups

log = logging.getLogger("appliance.warden")

MAX_LINE = 4096
"""The longest request line, in bytes; a place or release request is well under 200."""
MAX_REPLY = 1 << 20
"""The longest answer the client reads (a release lists the pids still in the cgroup)."""
READ_TIMEOUT = 3.0
"""Seconds a client gets to send its whole request: a slow client holds the warden no longer."""
SWEEP_SECONDS = 5.0
RUN_PREFIX = "run-"
_RUN_NAME = re.compile(r"run-[0-9a-f]{16}")
_PID_MAX = 1 << 22  # the kernel's PID_MAX_LIMIT on 64-bit
_UID_MAX = (1 << 32) - 2  # (uid_t) -1 is "no uid"
_PROC = Path("/proc")


class WardenError(Exception):
    """The warden refused, or could not be reached or started; the message says why."""


# --- requests (pure) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    """Put process ``pid`` (real uid ``uid``, started at ``start`` clock ticks) in a new cgroup."""

    pid: int
    uid: int
    start: int


@dataclass(frozen=True, slots=True)
class Release:
    """Remove the (empty) cgroup ``name``, a ``run-<16 hex>`` child of the agent root."""

    name: str


def _int(obj: dict[str, Any], key: str, low: int, high: int) -> int:
    value = obj.get(key)
    # bool is an int to Python, never a pid to us
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise WardenError(f"bad request: {key} must be an integer from {low} to {high}")
    return value


def run_name(cgroup: str, root_rel: str) -> str:
    """The ``run-<16 hex>`` name in ``cgroup`` (``<root_rel>/run-<16 hex>``), or WardenError.

    Exact match only, so no ``..``, no nesting, no other prefix, no name the warden does not
    make: release can never reach beyond the cgroups the warden itself creates.
    """
    prefix = root_rel.rstrip("/") + "/"
    name = cgroup[len(prefix) :] if cgroup.startswith(prefix) else ""
    if not _RUN_NAME.fullmatch(name):
        raise WardenError(
            f"bad request: {cgroup!r} is not a cgroup the warden makes "
            f"(expected {prefix}{RUN_PREFIX}<16 hex digits>)"
        )
    return name


def parse_request(line: bytes, root_rel: str) -> Place | Release:
    """One request line -> :class:`Place` or :class:`Release`; WardenError says what is wrong.

    ``root_rel`` is the agent root as ``/proc/PID/cgroup`` shows it (``/witness-agents``).
    Unknown keys are refused too: a client that thinks it asks for more than it gets should
    hear so.
    """
    if len(line) > MAX_LINE:
        raise WardenError(f"bad request: longer than {MAX_LINE} bytes")
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise WardenError("bad request: not a JSON line") from None
    if not isinstance(obj, dict):
        raise WardenError("bad request: expected a JSON object")
    op = obj.get("op")
    wanted = {"place": {"op", "pid", "uid", "start"}, "release": {"op", "cgroup"}}
    if not isinstance(op, str) or op not in wanted:
        shown = json.dumps(op)[:40]
        raise WardenError(f"unknown request: op {shown} (expected place or release)")
    extra = sorted(set(obj) - wanted[op])
    if extra:
        raise WardenError(f"bad request: unknown key(s) {', '.join(extra)} for {op}")
    if op == "place":
        return Place(
            pid=_int(obj, "pid", 2, _PID_MAX),
            uid=_int(obj, "uid", 0, _UID_MAX),
            start=_int(obj, "start", 0, (1 << 64) - 1),
        )
    cgroup = obj.get("cgroup")
    if not isinstance(cgroup, str):
        raise WardenError("bad request: cgroup must be a string")
    return Release(run_name(cgroup, root_rel))


# --- processes (pure parsing, /proc reading with a root that tests can fake) ----------------


def parse_start_time(stat_text: bytes) -> int:
    """Field 22 of ``/proc/PID/stat``, the start time in clock ticks after boot.

    The second field, the command name, is in parentheses and may hold anything, spaces and
    parentheses included (``a) (b``), so the fields are counted from the *last* ``)``.
    """
    _, sep, rest = stat_text.rpartition(b")")
    fields = rest.split()
    # after the ")" come field 3 (state) onwards: field 22 is the 20th
    if not sep or len(fields) < 20 or not fields[19].isdigit():
        raise ValueError("not a /proc/PID/stat line")
    return int(fields[19])


def parse_status(status_text: str) -> tuple[int, int]:
    """``(real uid, tgid)`` from ``/proc/PID/status``."""
    found: dict[str, str] = {}
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Tgid"):
            found[key] = value.split()[0] if value.split() else ""
    try:
        return int(found["Uid"]), int(found["Tgid"])
    except (KeyError, ValueError):
        raise ValueError("not a /proc/PID/status file") from None


def start_time(pid: int, proc: Path = _PROC) -> int:
    """Process ``pid``'s start time (field 22 of ``/proc/PID/stat``): with the pid, it names
    one process for good, since a reused pid starts later. ProcessLookupError if it is gone."""
    try:
        return parse_start_time((proc / str(pid) / "stat").read_bytes())
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessLookupError(f"no process {pid}") from None


def check_caller(pid: int, uid: int, start: int, proc: Path = _PROC) -> None:
    """WardenError unless ``pid`` is still the process the recorder saw: a process (not a
    thread), real uid ``uid``, start time ``start``.

    ``status`` is read before ``stat``: if the pid is reused between the two reads, the start
    time read last is the new process's, and differs.
    """
    try:
        real_uid, tgid = parse_status((proc / str(pid) / "status").read_text())
        started = start_time(pid, proc)
    except (FileNotFoundError, ProcessLookupError):
        raise WardenError(f"process {pid} is gone") from None
    except (OSError, ValueError) as exc:
        raise WardenError(f"cannot read process {pid}: {exc}") from None
    if tgid != pid:
        raise WardenError(f"{pid} is a thread of process {tgid}, not a process")
    if started != start:
        raise WardenError(f"process {pid} is not the caller: its start time changed")
    if real_uid != uid:
        raise WardenError(f"process {pid} is not the caller: it runs as uid {real_uid}, not {uid}")


# --- the server -----------------------------------------------------------------------------


def _populated(cgroup: Path) -> bool:
    """Whether ``cgroup`` or a cgroup below it holds a process; unreadable counts as yes, so
    that a cgroup the warden cannot read is left alone."""
    try:
        text = (cgroup / "cgroup.events").read_text(encoding="ascii")
    except OSError:
        return True
    return "populated 0" not in text.splitlines()


def peer_uid(conn: socket.socket) -> int:
    """The connecting process's uid, as the kernel recorded it at ``connect``."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class Warden:
    """The server. Nothing is bound until :meth:`serve`; :meth:`answer` is the whole protocol
    for one request line, so it can be tested without a socket."""

    def __init__(
        self,
        socket_path: Path,
        service_uid: int,
        service_gid: int,
        *,
        root: Path | None = None,
        mount: Path | None = None,
        proc: Path = _PROC,
        sweep_seconds: float = SWEEP_SECONDS,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.socket_path = socket_path
        self.service_uid = service_uid
        self.service_gid = service_gid
        self.mount = mount if mount is not None else cgroups.require_cgroup2()
        self.root = root if root is not None else self.mount / cgroups.AGENT_ROOT_NAME
        if self.root == self.mount or not self.root.is_relative_to(self.mount):
            raise WardenError(f"agent cgroup root {self.root} is not below {self.mount}")
        self.root_rel = "/" + self.root.relative_to(self.mount).as_posix()
        self.proc = proc
        self.sweep_seconds = sweep_seconds
        self.read_timeout = read_timeout
        self._stopping = False
        self._signal: int | None = None
        self._wake: socket.socket | None = None

    # -- the protocol

    def answer(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line; a refusal is an answer, never an exception."""
        try:
            request = parse_request(line, self.root_rel)
            if isinstance(request, Place):
                return self.place(request)
            return self.release(request.name)
        except WardenError as exc:
            return {"ok": False, "error": str(exc)}

    def _rel(self, cgroup: Path) -> str:
        return f"{self.root_rel}/{cgroup.name}"

    def place(self, request: Place) -> dict[str, Any]:
        pid, uid, start = request.pid, request.uid, request.start
        if not self.root.is_dir():
            raise WardenError(f"no agent cgroup root at {self.root}: run witness up")
        check_caller(pid, uid, start, self.proc)
        path = self.root / f"{RUN_PREFIX}{secrets.token_hex(8)}"
        while path.exists():  # 64 random bits: only for form's sake
            path = self.root / f"{RUN_PREFIX}{secrets.token_hex(8)}"
        try:
            cgroups.create_child(self.root, path.name)
            cgroups.move(pid, path)
        except cgroups.CgroupError as exc:
            self._discard(path)
            raise WardenError(f"cannot place process {pid}: {exc}") from None
        try:
            check_caller(pid, uid, start, self.proc)
        except WardenError:
            # The pid was reused between the check and the move: what was moved is not the
            # caller, and must not run on in a cgroup the recorder is about to bind.
            log.warning("process %d changed while being placed; killing %s", pid, path)
            self._discard(path, kill=True)
            raise
        cgroup_id = cgroups.cgroup_id(path)
        log.info("placed pid %d (uid %d) in %s (id %d)", pid, uid, self._rel(path), cgroup_id)
        return {"ok": True, "cgroup": self._rel(path), "cgroup_id": cgroup_id}

    def _discard(self, path: Path, *, kill: bool = False) -> None:
        """Remove a cgroup that placing gave up on, killing what is in it first if asked."""
        if kill:
            with contextlib.suppress(OSError):
                (path / "cgroup.kill").write_text("1\n", encoding="ascii")
            deadline = time.monotonic() + 2.0
            while _populated(path) and time.monotonic() < deadline:
                time.sleep(0.01)
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:  # the sweep will take it once it is empty
            log.warning("cannot remove %s yet: %s", self._rel(path), exc)

    def release(self, name: str) -> dict[str, Any]:
        """Remove ``run-...`` ``name`` if it is empty. ``removed`` is true when it is gone
        (now, or already: the sweep may have been first), false when processes remain."""
        path = self.root / name
        try:
            path.rmdir()
        except FileNotFoundError:
            return {"ok": True, "removed": True, "pids": []}
        except OSError as exc:
            left = cgroups.pids(path)
            if not left and _populated(path):  # only in cgroups below it (root's doing)
                raise WardenError(f"cannot remove {self._rel(path)}: {exc.strerror}") from None
            return {"ok": True, "removed": False, "pids": left}
        log.info("removed %s (released)", self._rel(path))
        return {"ok": True, "removed": True, "pids": []}

    def sweep(self) -> list[str]:
        """Remove every empty ``run-*`` cgroup of the agent root; returns what was removed.

        Only ``run-<16 hex>`` directories are looked at, so the lab's and other cgroups
        below the same root are never touched. rmdir fails on a cgroup that got a process
        after all, so a stale ``populated 0`` cannot remove a live one.
        """
        removed: list[str] = []
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return removed  # no root (yet): nothing of ours to sweep
        for entry in entries:
            if not _RUN_NAME.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path)
            if _populated(path):
                continue
            try:
                path.rmdir()
            except OSError as exc:
                log.debug("sweep: cannot remove %s: %s", self._rel(path), exc)
                continue
            log.info("removed %s (its processes have exited)", self._rel(path))
            removed.append(self._rel(path))
        return removed

    # -- the socket

    def _bind(self) -> socket.socket:
        """Listen on ``socket_path``: ``root:<service group>`` 0660, created 0600 so that it
        is never open to others, even for the moment between bind and chmod."""
        path = self.socket_path
        parent = path.parent
        if not parent.is_dir():
            try:
                parent.mkdir(mode=0o755, parents=True)
                os.chown(parent, 0, 0)
                parent.chmod(0o755)
            except OSError as exc:
                raise WardenError(f"cannot create {parent}: {exc}") from None
        try:
            found = path.lstat()
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(found.st_mode):
                raise WardenError(f"{path} exists and is not a socket: remove it first")
            if _listening(path):
                raise WardenError(f"another warden is already listening on {path}")
            path.unlink()  # stale, from a warden that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)
            try:
                sock.bind(str(path))
            finally:
                os.umask(old)
            os.chown(path, 0, self.service_gid)
            path.chmod(0o660)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise WardenError(f"cannot listen on {path}: {exc}") from None
        return sock

    def stop(self) -> None:
        """Make :meth:`serve` return after the request at hand (signal-safe)."""
        self._stopping = True
        if self._wake is not None:
            with contextlib.suppress(OSError):
                self._wake.send(b"\0")

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signal = signum
        self.stop()

    def serve(self) -> None:
        """Sweep, listen, answer until SIGTERM or SIGINT; then remove the socket file.

        Placed cgroups are left as they are: their agents keep running, and stay bound.
        Installs signal handlers, so call it from the main thread.
        """
        listener = self._bind()
        bound = self.socket_path.lstat().st_ino
        wake_r, self._wake = socket.socketpair()
        wake_r.setblocking(False)
        self._wake.setblocking(False)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        log.info(
            "listening on %s for uid %d and root; agent cgroups in %s",
            self.socket_path,
            self.service_uid,
            self.root,
        )
        try:
            self.sweep()
            next_sweep = time.monotonic() + self.sweep_seconds
            while not self._stopping:
                ready = selector.select(max(0.0, next_sweep - time.monotonic()))
                if any(key.fileobj is listener for key, _ in ready) and not self._stopping:
                    self._accept(listener)
                if time.monotonic() >= next_sweep:
                    self.sweep()
                    next_sweep = time.monotonic() + self.sweep_seconds
            if self._signal is not None:
                log.info("%s: stopping", signal.Signals(self._signal).name)
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            selector.close()
            listener.close()
            wake_r.close()
            self._wake.close()
            self._wake = None
            with contextlib.suppress(OSError):
                if self.socket_path.lstat().st_ino == bound:  # ours, not a successor's
                    self.socket_path.unlink()
            log.info("stopped; removed %s", self.socket_path)

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            log.warning("accept: %s", exc)
            return
        with conn:
            try:
                self._converse(conn)
            except Exception:  # one bad client never stops the warden
                log.exception("request failed")

    def _converse(self, conn: socket.socket) -> None:
        uid = peer_uid(conn)
        if uid not in (0, self.service_uid):
            log.warning("refused a connection from uid %d", uid)
            _send(conn, {"ok": False, "error": self._who_may(uid)})
            return
        try:
            line = _read_line(conn, MAX_LINE, time.monotonic() + self.read_timeout)
        except WardenError as exc:
            answer: dict[str, Any] = {"ok": False, "error": str(exc)}
        else:
            answer = self.answer(line)
        if not answer["ok"]:
            log.info("refused (uid %d): %s", uid, answer["error"])
        _send(conn, answer)

    def _who_may(self, uid: int) -> str:
        try:
            name = pwd.getpwuid(self.service_uid).pw_name
        except KeyError:
            name = "the service user"
        return f"uid {uid} may not use the warden: only {name} (uid {self.service_uid}) and root"


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _read_line(conn: socket.socket, limit: int, deadline: float) -> bytes:
    """Bytes up to the first newline (or the peer's end of file), at most ``limit`` of them,
    by ``deadline``: the whole line, however slowly it trickles in."""
    buf = b""
    while b"\n" not in buf and len(buf) <= limit:
        left = deadline - time.monotonic()
        if left <= 0:
            raise WardenError("timed out waiting for a whole line")
        conn.settimeout(left)
        try:
            chunk = conn.recv(limit + 1 - len(buf))
        except TimeoutError:
            raise WardenError("timed out waiting for a whole line") from None
        if not chunk:
            break
        buf += chunk
    line = buf.partition(b"\n")[0]
    if len(line) > limit:
        raise WardenError(f"line longer than {limit} bytes")
    if not line.strip():
        raise WardenError("empty request")
    return line


def _send(conn: socket.socket, answer: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # a client that left does not get its answer
        conn.settimeout(1.0)
        conn.sendall(json.dumps(answer).encode() + b"\n")


# --- the client (the recorder, as the service user) -----------------------------------------


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the warden put the caller: the cgroup as ``/proc/PID/cgroup`` shows it, and its
    id as eBPF and sock_diag report it."""

    cgroup: str
    cgroup_id: int


def _denied(socket_path: Path) -> str:
    try:
        found = socket_path.stat()
        group = grp.getgrgid(found.st_gid).gr_name
    except (OSError, KeyError):
        return f"permission denied on {socket_path}: only root and the service user may connect"
    return (
        f"permission denied on {socket_path}: only root and the service user may connect "
        f"(the socket is {stat.S_IMODE(found.st_mode):04o}, group {group}; run the recorder "
        "as [enforce] service_user)"
    )


def _ask(socket_path: Path, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(socket_path))
        except FileNotFoundError:
            raise WardenError(
                f"the warden is not running (no socket at {socket_path}): "
                "start `witness warden` as root"
            ) from None
        except ConnectionRefusedError:
            raise WardenError(
                f"the warden is not running (nothing listens on {socket_path}): "
                "start `witness warden` as root"
            ) from None
        except PermissionError:
            raise WardenError(_denied(socket_path)) from None
        except OSError as exc:
            raise WardenError(f"cannot reach the warden at {socket_path}: {exc}") from None
        # A refused peer is answered without being read: the answer may be waiting already,
        # and sending may fail; the answer is what says why.
        with contextlib.suppress(OSError):
            sock.sendall(json.dumps(request).encode() + b"\n")
        try:
            line = _read_line(sock, MAX_REPLY, time.monotonic() + timeout)
        except WardenError:
            raise WardenError(f"the warden did not answer within {timeout:g} s") from None
        except OSError as exc:
            raise WardenError(f"the warden closed the connection: {exc}") from None
    try:
        answer = json.loads(line)
    except ValueError:
        raise WardenError(
            f"the warden answered something that is not JSON: {line[:80]!r}"
        ) from None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise WardenError(f"the warden answered something unexpected: {line[:80]!r}")
    if not answer["ok"]:
        raise WardenError(str(answer.get("error", "refused, no reason given")))
    return answer


def place(socket_path: Path, pid: int, uid: int, start: int, timeout: float = 5.0) -> Placement:
    """Ask the warden to move process ``pid`` (uid ``uid``, start time ``start``, from
    :func:`start_time` when it connected) into a new agent cgroup; WardenError if it will not.
    """
    answer = _ask(socket_path, {"op": "place", "pid": pid, "uid": uid, "start": start}, timeout)
    cgroup, cgroup_id = answer.get("cgroup"), answer.get("cgroup_id")
    if not isinstance(cgroup, str) or not isinstance(cgroup_id, int):
        raise WardenError(f"the warden answered an incomplete placement: {answer}")
    return Placement(cgroup, cgroup_id)


def release(socket_path: Path, cgroup: str, timeout: float = 5.0) -> bool:
    """Ask the warden to remove ``cgroup`` (from a :class:`Placement`): True when it is gone,
    False while processes remain in it (the sweep removes it once they exit)."""
    return bool(_ask(socket_path, {"op": "release", "cgroup": cgroup}, timeout).get("removed"))
