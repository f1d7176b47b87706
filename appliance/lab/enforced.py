"""The namespace lab with host enforcement on: ``witness up`` in the bastion, and the recorder
running there as the lab's own service user, taking the connections nftables diverts to it.

Used by tests/lab/test_transparent.py, test_attribution.py, test_bypass.py, test_identity_lab.py and
tests/bench/bench_connect.py. Needs root. Every piece is removed by :meth:`EnforcedLab.close`
(also after a failed :meth:`start`): the recorder, the agents' processes, the ``inet witness``
table, the eBPF programs and pins, the agent cgroups, the lab's users, the lab and the
recorder's directory. Whatever is made beyond the lab itself (users, agent cgroups, pins) is
first recorded in the lab's state file, so ``witness lab down`` removes it after a crash too.

**Users.** The recorder runs as a service user made for the lab, ``wlab[-SUFFIX]-witness``
(see :mod:`appliance.lab.users`): never a real install's ``witness``. ``agents=N`` also makes
``wlab[-SUFFIX]-agent1`` ... ``agentN``. The trail, its signing key and checkpoint live in
``DIRECTORY/trail/``, owned by the service user, mode 0700 (files 0600): agents can neither
read nor write them.

**Capabilities.** The recorder gets ``CAP_SYS_PTRACE`` and ``CAP_DAC_READ_SEARCH`` (ambient,
nothing else): without them it cannot read another user's ``/proc/PID/fd`` and
``/proc/PID/exe``, and sock_diag attribution would know the agent's uid but not its pid or
executable. With ``ebpf=True`` it also gets ``CAP_BPF``, to read the pinned owner map through
``bpf(2)`` (Debian sets ``kernel.unprivileged_bpf_disabled``).

**Agent cgroups.** With ``agents`` or ``ebpf``, the host's agent cgroup root
(``<cgroup2>/witness-agents``) and one child per agent (``agent1`` ...) are the lab's: the
lab refuses to start if the root or the eBPF pins exist already (a Witness enforcing on this
host, or a lab left over). With ``ebpf=True``, ``witness up --netns BASTION --ebpf`` attaches
the programs to that root; without, the cgroups exist but nothing is attached (sock_diag).
:meth:`agent` runs a command as agent ``i`` inside agent cgroup ``i`` through Witness's
launcher, as ``witness run`` will: ``nsenter --net`` execs ``python -m
appliance.enforce.confine``, which, still root, writes its own pid to the cgroup's
``cgroup.procs``, drops to the agent user (no supplementary groups), sets ``no_new_privs``,
installs the launcher's seccomp filter (no ``AF_PACKET`` sockets, no io_uring, x86_64 system
calls only) and execs the command. The command never runs outside the cgroup or unfiltered,
and its pid is the pid :meth:`agent` returns. Capabilities a test deliberately gives an agent
(``capabilities="+net_admin"``) go to the launcher's ``--ambient-caps``. With
``in_cgroup=False`` (the tests' controls) the command runs as the agent user through
``setpriv``, in the caller's cgroup and without the filter: not launched as an agent.

Agents and the recorder enter the bastion with ``nsenter --net=/run/netns/BASTION``, not
``ip netns exec``: that one also remounts ``/sys``, which would hide the cgroup2 and bpffs
mounts from them (the recorder must open the pinned map, and an agent must see the cgroup
files it will try to escape through).

**Identities.** ``identity`` is the recorder's ``[identity]`` table, or a function of the
lab that returns it: that one is called once the namespaces, the users and the lab's
directory exist, and before the configurations are written, so it can start what the
recorder will need in the bastion (an identity provider listening on its loopback) and name
:attr:`EnforcedLab.control_socket` and :attr:`EnforcedLab.warden_socket`. The control
socket's directory, ``DIRECTORY/control/``, is the service user's (0755), so the recorder
can make its socket there and every agent reach it. With ``warden=True`` (it needs agents:
the warden places ``witness run`` callers below the lab's agent root) the lab also runs
``witness warden --config serve.toml`` as root, on :attr:`EnforcedLab.warden_socket` in
``DIRECTORY/warden/`` (root's, 0755), before the recorder starts; :meth:`EnforcedLab.close`
stops it (SIGTERM) after the recorder, before the agent cgroups go. The ``[identity]`` table
must name that socket (the lab refuses to start otherwise: the default is a real install's).
The warden runs in the bastion's network namespace, although it needs nothing there, so
that ``witness lab down`` kills it with the namespace's other processes after a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from appliance import config
from appliance.config import ConfigError
from appliance.enforce import bpf, cgroups
from appliance.lab import users
from appliance.lab.netns import Lab, namespaces
from appliance.lab.postgres import LabError

WITNESS = str(Path(sys.executable).parent / "witness")
CAPABILITIES = "+sys_ptrace,+dac_read_search"
EBPF_CAPABILITIES = CAPABILITIES + ",+bpf"
READY = "hot path:"  # the recorder logs it once every listener is up
NETNS_DIR = Path("/run/netns")  # where ip netns keeps its names
# The agent launcher (root until it execs the command); sys.executable is root's venv Python.
CONFINE = [sys.executable, "-m", "appliance.enforce.confine"]


class EbpfUnavailable(LabError):
    """eBPF was asked for but cannot be loaded here; the message is the probe's reason."""


# Connections with no identity are recorded, unless a lab is given an [identity] of its own.
ALLOW_UNBOUND = '[identity]\nunbound = "allow"\n'
WARDEN_WAIT = 15.0  # seconds the warden gets to listen


def _config(
    lab: Lab,
    trail: Path,
    ports: Sequence[int],
    user: str,
    redirect_port: int,
    *,
    identity: str,
    checkpoint_seconds: float | None,
    backend_interfaces: Sequence[str],
    policy: str = "",
) -> str:
    topo = lab.topology
    protect = ", ".join(f'"{n}"' for n in topo.networks)
    checkpoints = (
        "" if checkpoint_seconds is None else f"checkpoint_seconds = {checkpoint_seconds}\n"
    )
    interfaces = (
        f"backend_interfaces = [{', '.join(json.dumps(i) for i in backend_interfaces)}]\n"
        if backend_interfaces
        else ""
    )
    return (
        "[[backend]]\n"
        'name = "lab"\n'
        f'address = "{topo.backend_ipv4}"\n'
        f"port = {topo.service('postgres').port}\n"
        f"protect = [{protect}]\n"
        f"protect_ports = [{', '.join(str(p) for p in ports)}]\n\n"
        f'[trail]\npath = "{trail}"\n{checkpoints}\n'
        f'[enforce]\nservice_user = "{user}"\nredirect_port = {redirect_port}\n{interfaces}\n'
        f"{identity}\n"
        f"{policy}"
    )


def give(path: Path, user: str, text: str, mode: int) -> Path:
    """``text`` in a new file at ``path`` that belongs to ``user``, made with ``mode`` (never
    readable by anyone else, not even for a moment): a token for an agent."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        who = pwd.getpwnam(user)
        os.fchown(fd, who.pw_uid, who.pw_gid)
        os.write(fd, text.encode() + b"\n")
    finally:
        os.close(fd)
    return path


class EnforcedLab:
    """A lab named ``witness-lab-SUFFIX`` with enforcement up and the recorder running.

    ``up_ports`` are the ports ``witness up`` diverts; ``serve_ports`` those the recorder's
    configuration protects (the same unless a test wants a diverted port the recorder does
    not know). ``service_user`` names an existing user to run the recorder as instead of the
    lab's own. ``agents`` is how many agent users (and agent cgroups) to make; ``ebpf``
    attaches the eBPF programs (:class:`EbpfUnavailable` from :meth:`start` if it cannot).
    Agents are numbered from 1. ``identity`` is the ``[identity]`` table, or a function of
    the lab returning it; ``warden`` runs ``witness warden`` (see the module's docstring).

    For the demo: ``directory`` is the lab's directory (default: a new temporary one; either
    way it is recorded and removed with the lab), ``witness`` the command the recorder, the
    warden and ``witness up`` run (one the service user can reach), ``detach`` starts the
    recorder and the warden in sessions of their own so they outlive their starter, and
    ``checkpoint_seconds`` how often the recorder signs the trail.
    """

    def __init__(
        self,
        suffix: str,
        state_dir: Path,
        *,
        service_user: str | None = None,
        redirect_port: int = 15432,
        up_ports: Sequence[int] = (5432,),
        serve_ports: Sequence[int] = (5432,),
        agents: int = 0,
        ebpf: bool = False,
        identity: str | Callable[[EnforcedLab], str] = ALLOW_UNBOUND,
        policy: str = "",
        warden: bool = False,
        directory: Path | None = None,
        witness: str = WITNESS,
        detach: bool = False,
        checkpoint_seconds: float | None = None,
        backend_interfaces: Sequence[str] = (),
    ) -> None:
        self.lab = Lab(suffix, state_dir)
        self.backend_interfaces = tuple(backend_interfaces)
        self.checkpoint_seconds = checkpoint_seconds
        self.topology = self.lab.topology
        self.users = users.names(self.topology.name, agents)
        self.own_service_user = service_user is None
        self.service_user = self.users.service if service_user is None else service_user
        self.redirect_port = redirect_port
        self.up_ports = tuple(up_ports)
        self.serve_ports = tuple(serve_ports)
        self.ebpf = ebpf
        self.identity = identity
        self.policy = policy  # the recorder's [policy] table, if any
        self.warden = warden
        self.agent_root: Path | None = None
        self.directory: Path | None = None
        self._wanted_directory = directory
        self.witness = witness
        self.detach = detach
        self.recorder: subprocess.Popen[bytes] | None = None
        self.warden_proc: subprocess.Popen[bytes] | None = None
        self.up_output = ""
        self._agents: list[subprocess.Popen[Any]] = []

    @property
    def bastion(self) -> str:
        return self.topology.bastion

    @property
    def trail_dir(self) -> Path:
        """The service user's directory (0700): the trail, its key and its checkpoint."""
        return self._dir / "trail"

    @property
    def trail(self) -> Path:
        return self.trail_dir / "trail.db"

    @property
    def signing_key(self) -> Path:
        return self.trail_dir / "trail.db.key"

    @property
    def up_config(self) -> Path:
        """The configuration ``witness up`` was given."""
        return self._dir / "up.toml"

    @property
    def serve_config(self) -> Path:
        """The recorder's configuration."""
        return self._dir / "serve.toml"

    @property
    def log(self) -> Path:
        return self._dir / "witness.log"

    @property
    def control_socket(self) -> Path:
        """Where the recorder's control socket goes, in a directory of the service user's."""
        return self._dir / "control" / "control.sock"

    @property
    def warden_socket(self) -> Path:
        """Where the lab's warden listens (``warden=True``), in a directory of root's."""
        return self._dir / "warden" / "warden.sock"

    @property
    def warden_log(self) -> Path:
        return self._dir / "warden.log"

    @property
    def capabilities(self) -> str:
        """The recorder's capabilities, as setpriv takes them."""
        return EBPF_CAPABILITIES if self.ebpf else CAPABILITIES

    def start(self) -> EnforcedLab:
        """Build the lab, its users and cgroups, apply ``witness up``, start the warden (if
        asked) and the recorder."""
        if self.warden and not self.users.agents:
            raise LabError("a lab with a warden needs agents (it places them below their root)")
        if self.ebpf:
            found = bpf.probe()
            if not found.available:
                raise EbpfUnavailable(found.why)
        try:
            self.lab.up()
            wanted = [*([self.service_user] if self.own_service_user else []), *self.users.agents]
            users.create(wanted, lambda made: self.lab.record("users", made))
            if self.users.agents or self.ebpf:
                self._claim_agent_root()
            service = pwd.getpwnam(self.service_user)
            # Configurations: root's, for the recorder's group. Logs: root's. The trail: the
            # service user's only. The directory itself is open: agents' tokens live in it.
            if self._wanted_directory is None:
                self.directory = Path(tempfile.mkdtemp(prefix="witness-enforced-"))
            else:
                self._wanted_directory.mkdir(parents=True, exist_ok=True)
                self.directory = self._wanted_directory
            self.lab.record("directory", str(self.directory))
            self.directory.chmod(0o755)
            self.trail_dir.mkdir(mode=0o700)
            os.chown(self.trail_dir, service.pw_uid, service.pw_gid)
            self.control_socket.parent.mkdir(mode=0o755)
            os.chown(self.control_socket.parent, service.pw_uid, service.pw_gid)
            if self.warden:
                self.warden_socket.parent.mkdir(mode=0o755)
            identity = self.identity(self) if callable(self.identity) else self.identity
            for name, ports in (("up.toml", self.up_ports), ("serve.toml", self.serve_ports)):
                path = self.directory / name
                path.write_text(
                    _config(
                        self.lab,
                        self.trail,
                        ports,
                        self.service_user,
                        self.redirect_port,
                        identity=identity,
                        checkpoint_seconds=self.checkpoint_seconds,
                        policy=self.policy,
                        backend_interfaces=self.backend_interfaces,
                    )
                )
                # Root's, readable by the recorder's group only: the bastion's configuration
                # is none of an agent's business (a real one may hold the anchor's DSN).
                os.chown(path, 0, service.pw_gid)
                path.chmod(0o640)
            self._witness_up()
            if self.users.agents:
                assert self.agent_root is not None
                cgroups.create_root(self.agent_root)  # witness up made it when eBPF is on
                for i in range(1, len(self.users.agents) + 1):
                    cgroups.create_child(self.agent_root, f"agent{i}")
            if self.warden:
                self.start_warden()
            self.start_recorder()
        except BaseException:
            self.close()
            raise
        return self

    def _claim_agent_root(self) -> None:
        root = cgroups.default_root()
        for taken in (root, bpf.PIN_DIR):
            if taken.exists():
                raise LabError(
                    f"{taken} exists: a Witness enforces on this host's cgroups, or a lab was "
                    "left over (witness down, or witness lab down for that lab); a lab with "
                    "agents or eBPF needs them to itself"
                )
        self.lab.record("agent_cgroups", {"root": str(root), "pins": str(bpf.PIN_DIR)})
        self.agent_root = root

    def _witness_up(self) -> None:
        argv = [self.witness, "--config", str(self.up_config), "up", "--netns", self.bastion]
        done = subprocess.run(
            [*argv, "--ebpf" if self.ebpf else "--no-ebpf"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        self.up_output = done.stdout + done.stderr
        if done.returncode != 0:
            raise LabError(f"witness up failed: {done.stderr.strip() or done.stdout}")
        if self.ebpf:
            assert self.agent_root is not None
            attached = set(bpf.programs_at(self.agent_root))
            wanted = {name for name, *_ in bpf.PROGRAMS}
            if attached != wanted or not (bpf.PIN_DIR / bpf.OWNER_MAP).exists():
                raise LabError(
                    f"witness up --ebpf did not attach the programs ({sorted(attached)} on "
                    f"{self.agent_root}): {self.up_output.strip()}"
                )

    def start_recorder(self, timeout: float = 20.0) -> None:
        """``witness serve`` in the bastion as the service user; return once it listens."""
        argv = self.as_user(
            self.service_user,
            [self.witness, "--config", str(self.serve_config), "serve"],
            capabilities=self.capabilities,
        )
        self.recorder = self._spawn(argv, self.log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.recorder.poll() is not None:
                raise LabError(f"the recorder exited: {self.log.read_text()[-2000:]}")
            if READY in self.log.read_text():
                return
            time.sleep(0.05)
        raise LabError(f"the recorder did not start within {timeout:.0f}s")

    def start_warden(self) -> None:
        """``witness warden --config serve.toml`` as root; return once it listens."""
        try:
            wanted = config.load(self.serve_config).identity.warden_socket
        except ConfigError as exc:
            raise LabError(f"{self.serve_config}: {exc}") from None
        if wanted != self.warden_socket:
            raise LabError(
                f"the [identity] table names warden_socket {wanted}, not the lab's "
                f"{self.warden_socket}: a lab's warden never listens where a real one would"
            )
        argv = [
            "nsenter", f"--net={NETNS_DIR / self.bastion}",
            self.witness, "warden", "--config", str(self.serve_config),
        ]  # fmt: skip
        self.warden_proc = self._spawn(argv, self.warden_log)
        deadline = time.monotonic() + WARDEN_WAIT
        while not self.warden_socket.is_socket():
            if self.warden_proc.poll() is not None:
                raise LabError(f"the warden exited: {self.warden_log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise LabError(f"the warden did not listen within {WARDEN_WAIT:.0f}s")
            time.sleep(0.05)

    def _spawn(self, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        """A daemon of the lab's, its output appended to ``log_path``; with ``detach``, in a
        session of its own."""
        with log_path.open("ab") as log:
            log_path.chmod(0o600)  # root's: what the recorder logs is not for agents
            return subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.detach,
            )

    def stop_warden(self) -> None:
        """SIGTERM the warden (SIGKILL if it does not stop); placed agents are left alone."""
        proc, self.warden_proc = self.warden_proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def kill_recorder(self) -> None:
        """``kill -9`` the recorder, and wait until it is gone."""
        if self.recorder is not None and self.recorder.poll() is None:
            self.recorder.send_signal(signal.SIGKILL)
            self.recorder.wait(timeout=10)

    def stop_recorder(self) -> None:
        """SIGTERM: the recorder ends its sessions and signs the trail."""
        if self.recorder is not None and self.recorder.poll() is None:
            self.recorder.send_signal(signal.SIGTERM)
            try:
                self.recorder.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill_recorder()

    def as_user(self, user: str, argv: Sequence[str], capabilities: str | None = None) -> list[str]:
        """``argv`` run in the bastion namespace as ``user`` (its own group, no others)."""
        who = pwd.getpwnam(user)
        caps = (
            [f"--inh-caps={capabilities}", f"--ambient-caps={capabilities}"] if capabilities else []
        )
        return [
            "nsenter", f"--net={NETNS_DIR / self.bastion}",
            "setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--clear-groups",
            *caps, "--", *argv,
        ]  # fmt: skip

    # -- agents ------------------------------------------------------------------------------

    def agent_user(self, i: int) -> str:
        if not 1 <= i <= len(self.users.agents):
            raise LabError(f"agent {i}: this lab has agents 1 to {len(self.users.agents)}")
        return self.users.agents[i - 1]

    def agent_uid(self, i: int) -> int:
        return pwd.getpwnam(self.agent_user(i)).pw_uid

    def give(self, i: int, name: str, text: str) -> Path:
        """``text`` in a new file of agent ``i``'s (mode 0400) in the lab's directory: a token."""
        return give(self._dir / name, self.agent_user(i), text, 0o400)

    def agent_cgroup(self, i: int) -> Path:
        """Agent ``i``'s cgroup directory."""
        self.agent_user(i)
        assert self.agent_root is not None
        return self.agent_root / f"agent{i}"

    def agent_cgroup_name(self, i: int) -> str:
        """Agent ``i``'s cgroup as ``/proc/PID/cgroup`` shows it (``/witness-agents/agent1``)."""
        mount = cgroups.require_cgroup2()
        return "/" + str(self.agent_cgroup(i).relative_to(mount))

    def agent_argv(
        self,
        i: int,
        argv: Sequence[str],
        *,
        in_cgroup: bool = True,
        capabilities: str | None = None,
    ) -> list[str]:
        """``argv`` run as agent ``i`` in the bastion, inside agent cgroup ``i`` and under the
        launcher's seccomp filter before it execs (unless ``in_cgroup`` is False: then it
        stays in the caller's cgroup, unfiltered)."""
        if not in_cgroup:
            return self.as_user(self.agent_user(i), argv, capabilities)
        caps = [f"--ambient-caps={capabilities}"] if capabilities else []
        return [
            "nsenter", f"--net={NETNS_DIR / self.bastion}",
            *CONFINE, f"--cgroup={self.agent_cgroup(i)}", f"--user={self.agent_user(i)}",
            *caps, "--", *argv,
        ]  # fmt: skip

    def agent(
        self,
        i: int,
        argv: Sequence[str],
        *,
        in_cgroup: bool = True,
        capabilities: str | None = None,
        **popen: Any,
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` as agent ``i`` (see :meth:`agent_argv`); its pid is the command's.

        ``popen`` goes to :class:`subprocess.Popen` (``stdout``, ``text``...); the environment
        is a bare ``PATH`` and ``HOME`` unless ``env`` is given. :meth:`close` kills it.
        """
        popen.setdefault("env", {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/nonexistent"})
        proc: subprocess.Popen[Any] = subprocess.Popen(
            self.agent_argv(i, argv, in_cgroup=in_cgroup, capabilities=capabilities), **popen
        )
        self._agents.append(proc)
        return proc

    def run_agent(
        self,
        i: int,
        argv: Sequence[str],
        *,
        timeout: float = 20.0,
        in_cgroup: bool = True,
        capabilities: str | None = None,
        stdin: str | None = None,
        interleave: bool = False,
    ) -> tuple[int, str, str, int]:
        """Run ``argv`` as agent ``i`` to its end: (exit status, stdout, stderr, pid); with
        ``interleave``, stderr goes into stdout as a terminal would show them."""
        proc = self.agent(
            i,
            argv,
            in_cgroup=in_cgroup,
            capabilities=capabilities,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if interleave else subprocess.PIPE,
            text=True,
        )
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        return proc.returncode, out.strip(), (err or "").strip(), proc.pid

    @property
    def _dir(self) -> Path:
        assert self.directory is not None
        return self.directory

    def close(self) -> None:
        """Remove everything: recorder, warden, agents, table, eBPF, cgroups, users, lab,
        directory. Safe to call more than once."""
        self.kill_recorder()
        self.recorder = None
        self.stop_warden()
        for proc in self._agents:
            if proc.poll() is None:
                proc.kill()
                # lab.down() kills whatever is left in the agent cgroups
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        self._agents.clear()
        if self.bastion in namespaces():
            subprocess.run(
                [self.witness, "down", "--netns", self.bastion],
                capture_output=True,
                check=False,
                timeout=30,
            )
        self.lab.down()  # also kills whatever is left; removes the users and agent cgroups
        self.agent_root = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> EnforcedLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
