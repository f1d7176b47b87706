"""The namespace lab with host enforcement on: ``witness up`` in the bastion, and the recorder
running there as the service user, taking the connections nftables diverts to it.

Used by tests/lab/test_transparent.py and tests/bench/bench_connect.py. Needs root. Every
piece is removed by :meth:`EnforcedLab.close` (also after a failed :meth:`start`): the
recorder, the ``inet witness`` table, the lab and the recorder's directory.

The recorder runs as ``service_user`` (exempt from the redirect) with two capabilities,
``CAP_SYS_PTRACE`` and ``CAP_DAC_READ_SEARCH``: without them it cannot read another user's
``/proc/PID/fd`` and ``/proc/PID/exe``, and sock_diag attribution would know the agent's
uid but not its pid or executable.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from appliance.lab.netns import Lab, namespaces
from appliance.lab.postgres import LabError

WITNESS = str(Path(sys.executable).parent / "witness")
CAPABILITIES = "+sys_ptrace,+dac_read_search"
READY = "hot path:"  # the recorder logs it once every listener is up


def _config(lab: Lab, trail: Path, ports: Sequence[int], user: str, redirect_port: int) -> str:
    topo = lab.topology
    protect = ", ".join(f'"{n}"' for n in topo.networks)
    return (
        "[[backend]]\n"
        'name = "lab"\n'
        f'address = "{topo.backend_ipv4}"\n'
        f"port = {topo.service('postgres').port}\n"
        f"protect = [{protect}]\n"
        f"protect_ports = [{', '.join(str(p) for p in ports)}]\n\n"
        f'[trail]\npath = "{trail}"\n\n'
        f'[enforce]\nservice_user = "{user}"\nredirect_port = {redirect_port}\n'
    )


class EnforcedLab:
    """A lab named ``witness-lab-SUFFIX`` with enforcement up and the recorder running.

    ``up_ports`` are the ports ``witness up`` diverts; ``serve_ports`` those the recorder's
    configuration protects (the same unless a test wants a diverted port the recorder does
    not know).
    """

    def __init__(
        self,
        suffix: str,
        state_dir: Path,
        *,
        service_user: str = "daemon",
        redirect_port: int = 15432,
        up_ports: Sequence[int] = (5432,),
        serve_ports: Sequence[int] = (5432,),
    ) -> None:
        self.lab = Lab(suffix, state_dir)
        self.topology = self.lab.topology
        self.service_user = service_user
        self.redirect_port = redirect_port
        self.up_ports = tuple(up_ports)
        self.serve_ports = tuple(serve_ports)
        self.directory: Path | None = None
        self.recorder: subprocess.Popen[bytes] | None = None

    @property
    def bastion(self) -> str:
        return self.topology.bastion

    @property
    def trail(self) -> Path:
        assert self.directory is not None
        return self.directory / "trail.db"

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
        assert self.directory is not None
        return self.directory / "witness.log"

    def start(self) -> EnforcedLab:
        """Build the lab, apply ``witness up`` in its bastion, start the recorder."""
        try:
            self.lab.up()
            service = pwd.getpwnam(self.service_user)
            # Somewhere the service user can write its trail and root can read it.
            self.directory = Path(tempfile.mkdtemp(prefix="witness-enforced-"))
            self.directory.chmod(0o755)
            os.chown(self.directory, service.pw_uid, service.pw_gid)
            for name, ports in (("up.toml", self.up_ports), ("serve.toml", self.serve_ports)):
                path = self.directory / name
                path.write_text(
                    _config(self.lab, self.trail, ports, self.service_user, self.redirect_port)
                )
                path.chmod(0o644)
            done = subprocess.run(
                [WITNESS, "--config", str(self.up_config), "up", "--netns", self.bastion],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            if done.returncode != 0:
                raise LabError(f"witness up failed: {done.stderr.strip() or done.stdout}")
            self.start_recorder()
        except BaseException:
            self.close()
            raise
        return self

    def start_recorder(self, timeout: float = 20.0) -> None:
        """``witness serve`` in the bastion as the service user; return once it listens."""
        argv = self.as_user(
            self.service_user,
            [WITNESS, "--config", str(self.serve_config), "serve"],
            capabilities=CAPABILITIES,
        )
        with self.log.open("ab") as log:
            self.recorder = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.recorder.poll() is not None:
                raise LabError(f"the recorder exited: {self.log.read_text()[-2000:]}")
            if READY in self.log.read_text():
                return
            time.sleep(0.05)
        raise LabError(f"the recorder did not start within {timeout:.0f}s")

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
            "ip", "netns", "exec", self.bastion,
            "setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--clear-groups",
            *caps, "--", *argv,
        ]  # fmt: skip

    @property
    def _dir(self) -> Path:
        assert self.directory is not None
        return self.directory

    def close(self) -> None:
        """Remove everything: recorder, table, lab, directory. Safe to call more than once."""
        self.kill_recorder()
        self.recorder = None
        if self.bastion in namespaces():
            subprocess.run(
                [WITNESS, "down", "--netns", self.bastion],
                capture_output=True,
                check=False,
                timeout=30,
            )
        self.lab.down()  # also kills whatever is left in the namespaces
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> EnforcedLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
