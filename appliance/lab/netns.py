"""The network-namespace lab: a bastion and its backends, joined only by a veth pair.

::

    root namespace          (no route to either namespace)

    <name>-bastion                          <name>-backends
      lo                                      lo
      veth-bastion  10.77.0.1/24  <--veth-->  veth-backends  10.77.0.2/24
                    fd77::1/64                               10.77.0.3/24 (second address)
                                                             fd77::2/64
                                              PostgreSQL on 10.77.0.2, 10.77.0.3,
                                              fd77::2, port 5432

Agents run in the bastion namespace, where Witness enforces; the backends namespace runs
the real servers. Both namespaces are new and empty, so two labs with different names use
the same addresses without meeting. The names are ``witness-lab`` or ``witness-lab-SUFFIX``,
followed by ``-bastion`` and ``-backends``.

The lab is built with the ``ip`` command (iproute2), not pyroute2: each step is the
command an operator would type to inspect or repair it (``ip netns``, ``ip -n NS addr``),
``ip netns exec`` is what runs the servers inside the namespace anyway, and there is no
in-process ``setns`` to get wrong in a multi-threaded caller.

:meth:`Lab.up` writes a JSON state file (``/run/witness-lab/NAME.json`` by default) before
each piece it creates, so :meth:`Lab.down` removes exactly those pieces, also after a crash
of ``up`` or of the servers. ``down`` skips what is already gone, and also removes the
lab's namespaces (and every process in them) when the state file is missing.

What is made for a lab beyond :meth:`Lab.up` is recorded in the same file with
:meth:`Lab.record` before it is made (the enforced lab's users, its agent cgroups and eBPF
pins, see :mod:`appliance.lab.enforced`), and :meth:`Lab.down` removes that too: it kills
what runs in the agent cgroups, detaches and unpins the programs, removes the cgroups, and
deletes the users (after killing what still runs as them).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.enforce import bpf, cgroups
from appliance.lab import users
from appliance.lab.postgres import LabError, PostgresServer

DEFAULT_STATE_DIR = Path("/run/witness-lab")
PREFIX = "witness-lab"
_SUFFIX = re.compile(r"[a-z0-9][a-z0-9-]{0,23}")

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class Service:
    """A server in the backends namespace: what it speaks and the port it listens on."""

    name: str
    protocol: str
    port: int


@dataclass(frozen=True)
class Topology:
    """The lab as data: namespace and device names, addresses, and the backend services.

    Only PostgreSQL is built today; MariaDB, Redis and the identity provider will join
    :attr:`services` (and :meth:`Lab.up`) later.
    """

    name: str
    bastion_veth: str = "veth-bastion"
    backends_veth: str = "veth-backends"
    bastion_addresses: tuple[Interface, ...] = (
        ipaddress.IPv4Interface("10.77.0.1/24"),
        ipaddress.IPv6Interface("fd77::1/64"),
    )
    backend_addresses: tuple[Interface, ...] = (
        ipaddress.IPv4Interface("10.77.0.2/24"),
        ipaddress.IPv4Interface("10.77.0.3/24"),
        ipaddress.IPv6Interface("fd77::2/64"),
    )
    services: tuple[Service, ...] = field(
        default_factory=lambda: (Service("postgres", "postgresql", 5432),)
    )

    @classmethod
    def named(cls, suffix: str = "") -> Topology:
        """The topology of lab ``witness-lab`` or ``witness-lab-SUFFIX``."""
        if suffix and not _SUFFIX.fullmatch(suffix):
            raise LabError(
                f"lab suffix {suffix!r}: use 1-24 lowercase letters, digits and '-', "
                "starting with a letter or digit"
            )
        return cls(f"{PREFIX}-{suffix}" if suffix else PREFIX)

    @property
    def bastion(self) -> str:
        """The bastion namespace, where agents run and Witness enforces."""
        return f"{self.name}-bastion"

    @property
    def backends(self) -> str:
        """The backends namespace, where the servers run."""
        return f"{self.name}-backends"

    @property
    def namespaces(self) -> tuple[str, str]:
        return (self.bastion, self.backends)

    @property
    def backend_ipv4(self) -> ipaddress.IPv4Address:
        """The backend's main address, the one clients are configured with."""
        return self._backend_ipv4()[0]

    @property
    def backend_ipv4_other(self) -> ipaddress.IPv4Address:
        """Another IPv4 address of the same backend."""
        return self._backend_ipv4()[1]

    @property
    def backend_ipv6(self) -> ipaddress.IPv6Address:
        for address in self.backend_addresses:
            if isinstance(address, ipaddress.IPv6Interface):
                return address.ip
        raise LabError(f"lab {self.name} has no IPv6 backend address")

    @property
    def networks(self) -> tuple[str, ...]:
        """The lab's subnets, as CIDR strings."""
        return tuple(dict.fromkeys(str(a.network) for a in self.backend_addresses))

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def _backend_ipv4(self) -> list[ipaddress.IPv4Address]:
        return [a.ip for a in self.backend_addresses if isinstance(a, ipaddress.IPv4Interface)]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; with ``check``, raise :class:`LabError` with its stderr on failure."""
    try:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise LabError("the 'ip' command is missing (apt-get install iproute2)") from None
    if check and result.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def namespaces() -> set[str]:
    """The named network namespaces that exist now."""
    listing = ip("netns", "list", check=False).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone, and is reaped if ours)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _postmaster_running(postgres: dict[str, Any]) -> bool:
    """Whether the recorded postmaster runs; its command line must name its data directory,
    since pids are reused."""
    pid, directory = postgres.get("pid"), postgres.get("directory")
    return bool(pid and directory and pid_alive(pid) and directory in _cmdline(pid))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _stop(pid: int, first: signal.Signals, timeout: float) -> None:
    """Send ``first`` to ``pid``, then SIGKILL if it is still alive after ``timeout``."""
    for sig, wait in ((first, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
    raise LabError(f"process {pid} survived SIGKILL")


class Lab:
    """Builds (:meth:`up`) and removes (:meth:`down`) one lab, recorded in its state file.

    Needs root. ``say`` receives one line per step, for the command line.
    """

    def __init__(
        self,
        suffix: str = "",
        state_dir: Path = DEFAULT_STATE_DIR,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.topology = Topology.named(suffix)
        self.state_path = state_dir / f"{self.topology.name}.json"
        self._say = say or (lambda _line: None)

    # -- state ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any] | None:
        """The state file's contents, or None when there is none."""
        try:
            loaded: dict[str, Any] = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read the lab state {self.state_path}: {exc}") from None
        return loaded

    def _save(self, state: dict[str, Any]) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.state_path.with_suffix(".json.partial")
        partial.write_text(json.dumps(state, indent=2) + "\n")
        partial.replace(self.state_path)

    def record(self, key: str, value: Any) -> None:
        """Note in the state file something made for this lab beyond :meth:`up` (its users,
        its agent cgroups), *before* making it, so that :meth:`down` removes it too.

        ``users``: a list of user names; ``agent_cgroups``: ``{"root": PATH, "pins": PATH}``,
        an agent cgroup root (everything below it is the lab's) and an eBPF pin directory;
        ``directory``: a directory of the lab's (removed with everything in it);
        ``mounts``: a list of mount points of the lab's (unmounted, then removed if empty).
        """
        state = self.state()
        if state is None:
            raise LabError(f"lab {self.topology.name} is not up: nothing to record {key} in")
        state[key] = value
        self._save(state)

    def abandoned(self) -> bool:
        """Whether the process that built this lab has gone (killed before it could take the
        lab down), so that the lab is no one's; False when there is no lab."""
        state = self.state()
        if state is None:
            return False
        creator = state.get("creator")
        if not isinstance(creator, dict):
            return True  # built before labs named their creator: no live run knows of it
        return creator != _process(int(creator.get("pid", 0)))

    # -- up ------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """What is missing from a lab that is recorded as up (empty: it is healthy)."""
        state = self.state()
        if state is None:
            return ["no state file"]
        found: list[str] = []
        if state.get("phase") != "up":
            found.append(f"it was left half-built (phase {state.get('phase')!r})")
        existing = namespaces()
        found += [f"namespace {ns} is gone" for ns in state["namespaces"] if ns not in existing]
        if not _postmaster_running(state.get("postgres") or {}):
            found.append("PostgreSQL is not running")
        return found

    def up(self) -> bool:
        """Build the lab and start its PostgreSQL. Return False if it was already up.

        A lab that is partly up is an error (run :meth:`down` first). If a step fails, what
        was built so far is removed before the error is raised.
        """
        _require_root()
        if self.state() is not None:
            problems = self.problems()
            if problems:
                raise LabError(
                    f"lab {self.topology.name} is partly up ({'; '.join(problems)}); "
                    "run 'witness lab down' first"
                )
            self._say(f"lab {self.topology.name} is already up")
            return False
        stray = [ns for ns in self.topology.namespaces if ns in namespaces()]
        if stray:
            raise LabError(
                f"namespace {', '.join(stray)} exists but {self.state_path} does not; "
                "run 'witness lab down' first"
            )
        state: dict[str, Any] = {
            "name": self.topology.name,
            "phase": "building",
            "namespaces": [],
            "creator": _this_process(),
        }
        self._save(state)
        try:
            self._build(state)
        except BaseException as exc:
            try:
                self.down()
            except LabError as cleanup:
                exc.add_note(f"removing the half-built lab failed too: {cleanup}")
            raise
        state["phase"] = "up"
        self._save(state)
        return True

    def _build(self, state: dict[str, Any]) -> None:
        topo = self.topology
        for ns in topo.namespaces:
            state["namespaces"].append(ns)
            self._save(state)
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            self._say(f"namespace {ns}")
        state["veth"] = {"namespace": topo.bastion, "name": topo.bastion_veth}
        self._save(state)
        ip(
            "-n", topo.bastion, "link", "add", topo.bastion_veth, "type", "veth",
            "peer", "name", topo.backends_veth, "netns", topo.backends,
        )  # fmt: skip
        for ns, device, addresses in (
            (topo.bastion, topo.bastion_veth, topo.bastion_addresses),
            (topo.backends, topo.backends_veth, topo.backend_addresses),
        ):
            for address in addresses:
                extra = ["nodad"] if address.version == 6 else []
                ip("-n", ns, "addr", "add", str(address), "dev", device, *extra)
            ip("-n", ns, "link", "set", device, "up")
            self._say(f"{ns}: {device} {' '.join(str(a) for a in addresses)}")
        self._start_postgres(state)

    def _start_postgres(self, state: dict[str, Any]) -> None:
        topo = self.topology
        listen = [str(a.ip) for a in topo.backend_addresses]
        server = PostgresServer(
            host=listen[0],
            port=topo.service("postgres").port,
            netns=topo.backends,
            listen=listen[1:],
            trust=topo.networks,
            detach=True,
        )
        state["postgres"] = {"directory": str(server.directory), "pid": None}
        self._save(state)
        # Started but never stopped through this object: down() stops it by its pid.
        server.start()
        state["postgres"]["pid"] = server.pid
        state["postgres"]["port"] = server.port
        state["postgres"]["listen"] = listen
        self._save(state)
        self._say(f"PostgreSQL {', '.join(listen)} port {server.port}, pid {server.pid}")

    # -- down ----------------------------------------------------------------------------

    def down(self) -> bool:
        """Remove everything the state file records, skipping what is gone already.

        The lab's namespaces are removed (with every process left in them) even without a
        state file. Return False if there was nothing to remove.
        """
        _require_root()
        state = self.state() or {}
        removed = False
        postgres = state.get("postgres") or {}
        directory = postgres.get("directory")
        if _postmaster_running(postgres):
            _stop(int(postgres["pid"]), signal.SIGINT, 15.0)  # fast shutdown
            self._say(f"stopped PostgreSQL (pid {postgres['pid']})")
            removed = True
        existing = namespaces()
        lab_namespaces = [
            ns for ns in (*state.get("namespaces", ()), *self.topology.namespaces) if ns in existing
        ]
        for ns in dict.fromkeys(lab_namespaces):
            for leftover in ip("netns", "pids", ns, check=False).stdout.split():
                _stop(int(leftover), signal.SIGKILL, 5.0)
                self._say(f"killed process {leftover} left in {ns}")
        agent_cgroups = state.get("agent_cgroups")
        if agent_cgroups:
            removed |= _remove_agent_cgroups(
                Path(agent_cgroups["root"]), Path(agent_cgroups["pins"]), self._say
            )
        veth = state.get("veth")
        if veth and veth["namespace"] in existing:
            shown = ip("-n", veth["namespace"], "link", "show", veth["name"], check=False)
            if shown.returncode == 0:
                ip("-n", veth["namespace"], "link", "del", veth["name"])
                self._say(f"removed veth {veth['name']}")
                removed = True
        for ns in dict.fromkeys(lab_namespaces):
            ip("netns", "del", ns)
            self._say(f"removed namespace {ns}")
            removed = True
        for mount in state.get("mounts") or ():
            if unmount(Path(mount)):
                self._say(f"unmounted {mount}")
                removed = True
        for made in (directory, state.get("directory")):
            if made and Path(made).exists():
                shutil.rmtree(made)
                self._say(f"removed {made}")
                removed = True
        removed |= bool(users.remove(state.get("users") or (), self._say))
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
            removed = True
        return removed


def unmount(mount: Path) -> bool:
    """Unmount ``mount`` if something is mounted there (whatever was pinned or written in it
    goes too), and remove the mount point if it is empty; whether it was mounted."""
    mounted = os.path.ismount(mount)
    if mounted:
        subprocess.run(["umount", "--lazy", str(mount)], capture_output=True, check=False)
    with contextlib.suppress(OSError):
        mount.rmdir()
    return mounted


def _process(pid: int) -> dict[str, int] | None:
    """A process as a pid and its start time (clock ticks after boot): a pid alone may have
    been reused. None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rfind(")") + 2 :].split()
    return {"pid": pid, "start": int(fields[19])}


def _this_process() -> dict[str, int]:
    found = _process(os.getpid())
    assert found is not None
    return found


def _remove_agent_cgroups(root: Path, pins: Path, say: Callable[[str], None]) -> bool:
    """Kill every process in the lab's agent cgroups, detach and unpin the eBPF programs,
    and remove the cgroups. The root and everything below it belong to the lab."""
    removed = False
    if root.is_dir():
        everything = [Path(d) for d, _, _ in os.walk(root)]
        if any(cgroups.pids(c) for c in everything):
            kill = root / "cgroup.kill"  # the whole subtree, at once (Linux 5.14)
            if kill.exists():
                kill.write_text("1\n", encoding="ascii")
            deadline = time.monotonic() + 5.0
            while any(cgroups.pids(c) for c in everything):
                for cgroup in everything:
                    for pid in cgroups.pids(cgroup):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                if time.monotonic() > deadline:
                    break  # cgroups.remove names what is left
                time.sleep(0.05)
            say(f"killed the processes left in {root}")
    try:
        done = bpf.detach(root, pins)
        done += [f"removed cgroup {c}" for c in cgroups.remove(root)]
    except (bpf.BpfError, cgroups.CgroupError) as exc:
        raise LabError(f"cannot remove the lab's agent cgroups: {exc}") from None
    for line in done:
        say(line)
    return removed or bool(done)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces): run it as root")
