"""A Debian 12 host with systemd as PID 1, for the system tests: a root built once by
debootstrap and kept, keyed on what it holds, booted by ``systemd-nspawn`` in a lab's
bastion namespace.

The root is built into ``CACHE/<key>/root`` (the key: the suite, the mirror and the package
list), then marked complete; a build cut short is started again. Each boot runs on a
throw-away overlay of it (``--volatile=overlay``), so every test begins from the same
host and leaves the cache untouched. The container has the lab's bastion namespace as its
network (beside the backends namespace, with PostgreSQL), and what nftables, eBPF and
cgroup2 need inside: ``CAP_NET_ADMIN``, ``CAP_BPF``, ``CAP_PERFMON`` and ``CAP_SYS_ADMIN``
besides nspawn's own set, a cgroup2 subtree of its own (cgroup2 alone, as a Debian 12 host
has it, even where this machine mounts the hybrid hierarchies), and a bpffs of its own for
each boot (what the host pins never lands in this machine's /sys/fs/bpf, and a reboot
starts empty, as a real one does).

Everything it runs lives in the bastion namespace, so the lab's ``down`` (after a crash
too) kills it; its mounts are nspawn's own, gone with it, but for its bpffs, which the lab
records and unmounts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from appliance.lab.netns import Lab, unmount

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What the role installs (witness_packages) is there already, so that it finds it present
# and the container needs no network to the mirror; then what a booted host and its tests
# need: systemd, an SSH server the controller reaches it through, sudo and acl (for tasks
# become another user), python3-apt (for Ansible's apt module).
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "sudo",
    "acl",
    "ca-certificates",
    "python3-apt",
    "python3",
    "python3-venv",
    "python3-bpfcc",
    "bpfcc-tools",
    "nftables",
    "iproute2",
    "procps",
    "util-linux",
    "postgresql-client",
)
CACHE = Path("/var/cache/witness-tests/nspawn")
CAPABILITIES = "CAP_NET_ADMIN,CAP_BPF,CAP_PERFMON,CAP_SYS_ADMIN"
BOOT_SECONDS = 60.0


class ContainerError(Exception):
    pass


def key() -> str:
    text = "\n".join((SUITE, MIRROR, *sorted(PACKAGES)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def root(log: Path) -> Path:
    """The container's root, built first if the cache does not hold it (a minute or two;
    debootstrap's output goes to ``log``)."""
    where = CACHE / key()
    built = where / "root"
    if (where / "complete").exists():
        return built
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    with log.open("ab") as out:
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             SUITE, str(built), MIRROR],
            stdout=out, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        shutil.rmtree(where, ignore_errors=True)
        raise ContainerError(f"debootstrap failed ({done.returncode}): see {log}")
    (where / "complete").write_text(f"{SUITE} {MIRROR}\n" + "\n".join(PACKAGES) + "\n")
    return built


class Container:
    """One boot of the root, in ``lab``'s bastion namespace."""

    def __init__(
        self,
        lab: Lab,
        image: Path,
        log: Path,
        binds: tuple[tuple[Path, str], ...] = (),
        disk: Path | None = None,
    ) -> None:
        self.lab = lab
        self.image = image
        self.log = log
        self.binds = binds  # (host directory, where the container sees it), read-only
        # A copy of the image of its own, made at the first boot and kept across reboots
        # (None: each boot on a throw-away overlay of the image).
        self.disk = disk
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0  # the container's PID 1, as the host sees it
        self.bpffs: Path | None = None  # this boot's bpffs, its /sys/fs/bpf

    def boot(self) -> None:
        """Boot, and wait until systemd says the system is up."""
        namespace = f"/run/netns/{self.lab.topology.bastion}"
        if self.disk is not None and not self.disk.exists():
            subprocess.run(["cp", "-a", "--reflink=auto", self.image, self.disk], check=True)
        where = ["--volatile=overlay"] if self.disk is None else []
        self.bpffs = Path(tempfile.mkdtemp(prefix="witness-bpffs-"))
        self.lab.record("mounts", [*(self.lab.state() or {}).get("mounts", ()), str(self.bpffs)])
        subprocess.run(["mount", "-t", "bpf", "bpf", str(self.bpffs)], check=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "--boot", f"--directory={self.disk or self.image}",
                 *where, "--register=no", "--keep-unit",
                 f"--network-namespace-path={namespace}", f"--capability={CAPABILITIES}",
                 f"--bind={self.bpffs}:/sys/fs/bpf", "--machine=witness-system",
                 # nspawn's own filter refuses these, whatever the capabilities: the
                 # host's witness up needs them to load and attach the eBPF programs.
                 "--system-call-filter=bpf perf_event_open",
                 *(f"--bind-ro={source}:{target}" for source, target in self.binds)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                # cgroup2 alone inside, as on a current Debian host, whatever the host runs.
                env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
            )  # fmt: skip
        deadline = time.monotonic() + BOOT_SECONDS
        while not self.leader:
            self._alive()
            self.leader = _child(self.proc.pid, "systemd")
            if time.monotonic() > deadline:
                raise ContainerError(f"no systemd started in {BOOT_SECONDS} s: see {self.log}")
            time.sleep(0.1)
        while True:
            self._alive()
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise ContainerError(f"the container is {state!r}, not up: see {self.log}")
            time.sleep(0.2)

    def run(
        self, *argv: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the container, as its root, in all its namespaces."""
        done = subprocess.run(
            ["nsenter", f"--target={self.leader}", "--all", "--", *argv],
            capture_output=True, text=True, input=input, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise ContainerError(
                f"{' '.join(argv)} exited {done.returncode} in the container:"
                f" {done.stdout}{done.stderr}"
            )
        return done

    def reboot(self) -> None:
        """Power off and boot again, on the same disk."""
        assert self.disk is not None, "a throw-away overlay keeps nothing across a reboot"
        self.stop()
        self.boot()

    def stop(self, timeout: float = 30.0) -> None:
        """Power it off (SIGTERM asks nspawn for an orderly shutdown), then kill it if it
        does not go."""
        proc = self.proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.proc = None
        self.leader = 0
        if self.bpffs is not None:
            unmount(self.bpffs)
            self.bpffs = None

    def _alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited ({self.proc.returncode}): see {self.log}")


def _child(parent: int, comm: str) -> int:
    """A child of ``parent`` named ``comm`` (0: none yet)."""
    with contextlib.suppress(FileNotFoundError):
        for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            with contextlib.suppress(FileNotFoundError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                    return int(pid)
    return 0


def available() -> str | None:
    """Why the system tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, network namespaces)"
    for tool, package in (
        ("debootstrap", "debootstrap"),
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed ({package})"
    return None
