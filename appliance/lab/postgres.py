"""A throwaway PostgreSQL server on a free port, for the demo, the tests and the benchmarks.

The network-namespace lab (``appliance.lab.netns``) runs the same server inside a namespace.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from appliance.lab.net import free_port


class LabError(Exception):
    """A lab server could not be set up; the message says what is missing."""


def postgres_bindir() -> Path:
    """The newest installed PostgreSQL server's bin directory (``WITNESS_PG_BINDIR`` wins)."""
    override = os.environ.get("WITNESS_PG_BINDIR")
    if override:
        return Path(override)
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not found:
        raise LabError(
            "no PostgreSQL server is installed (apt-get install postgresql), "
            "or set WITNESS_PG_BINDIR"
        )
    return Path(found[-1]).parent


class PostgresServer:
    """``initdb`` into a fresh directory and run ``postgres`` in the foreground.

    PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
    that the Debian package creates. Local connections are trusted: this is a lab.

    For the network-namespace lab (root only):

    - ``netns`` runs the server, ``pg_isready`` and :meth:`psql` inside that namespace
      (``ip netns exec``; the server drops to ``postgres`` with ``setpriv``, which keeps
      its pid, so :attr:`pid` is the postmaster's). The port then defaults to 5432.
    - ``listen`` adds addresses to ``listen_addresses`` besides ``host``.
    - ``trust`` adds ``host all all CIDR trust`` lines to ``pg_hba.conf``.
    - ``detach`` starts the server in its own session, so it outlives the calling command
      and its terminal's signals.
    """

    def __init__(
        self,
        settings: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        superuser: str = "postgres",
        *,
        netns: str | None = None,
        listen: Sequence[str] = (),
        trust: Sequence[str] = (),
        detach: bool = False,
    ) -> None:
        if netns is not None and os.geteuid() != 0:
            raise LabError(f"running PostgreSQL in network namespace {netns!r} needs root")
        self.host = host
        self.netns = netns
        self.listen = tuple(listen)
        self.trust = tuple(trust)
        self.detach = detach
        self.port = port or (5432 if netns is not None else free_port(host))
        self.superuser = superuser
        self.settings = settings or {}
        self.bindir = postgres_bindir()
        self.directory = Path(tempfile.mkdtemp(prefix="witness-pg-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._argv: list[str] = []
        self._user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise LabError(
                    "running as root needs the 'postgres' user to run the server"
                ) from None
            self._user = "postgres"
            shutil.chown(self.directory, "postgres", "postgres")
        # The server's own: its log and socket are no one else's business (in the namespace
        # lab, the backends are another host, and namespaces do not hide files).
        self.directory.chmod(0o700)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while this object's server process runs."""
        return self._process.pid if self._process is not None else None

    def url(self, port: int | None = None, database: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@{self.host}:{port or self.port}/{database}"

    def _in_netns(self, argv: list[str]) -> list[str]:
        """``argv`` run inside :attr:`netns`, if there is one."""
        if self.netns is None:
            return argv
        return ["ip", "netns", "exec", self.netns, *argv]

    def _run(self, *args: str) -> None:
        program = self.bindir / args[0]
        try:
            result = subprocess.run(
                [str(program), *args[1:]],
                user=self._user,
                capture_output=True,
                text=True,
                check=False,
            )
        except FileNotFoundError:
            raise LabError(
                f"{program}: no such program; install PostgreSQL (scripts/bootstrap) or point"
                " WITNESS_PG_BINDIR at its bin directory"
            ) from None
        if result.returncode != 0:
            raise LabError(f"{args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")

    def start(self) -> PostgresServer:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.superuser,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        if self.trust:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write("# the lab's networks\n")
                for network in self.trust:
                    hba.write(f"host all all {network} trust\n")
        options = {
            "listen_addresses": ",".join((self.host, *self.listen)),
            "port": str(self.port),
            # In a namespace the server is another host's: a filesystem socket would be
            # reachable from every namespace, so it has none, like a remote server.
            "unix_socket_directories": "" if self.netns is not None else str(self.directory),
            "fsync": "off",
            "log_line_prefix": "%m [%p] ",
            "max_connections": "300",
            **self.settings,
        }
        argv = [str(self.bindir / "postgres"), "-D", str(self.data)]
        for key, value in options.items():
            argv += ["-c", f"{key}={value}"]
        self._argv = argv
        self._launch()
        return self

    def restart(self) -> PostgresServer:
        """Start the server again after :meth:`stop`, on the same data and port."""
        self._launch()
        return self

    def _launch(self) -> None:
        argv, user = self._argv, self._user
        if self.netns is not None:
            # setns needs root, so the drop to the postgres user happens after it.
            argv = self._in_netns(
                ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]
            )
            user = None
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                argv,
                user=user,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.detach,
            )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise LabError(f"postgres exited at start: {self.log_path.read_text()[-2000:]}")
            ready = subprocess.run(
                self._in_netns(
                    [
                        str(self.bindir / "pg_isready"),
                        "-q",
                        "-h",
                        self.host,
                        "-p",
                        str(self.port),
                        "-U",
                        self.superuser,
                    ]
                ),
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise LabError(f"postgres did not accept connections within {timeout:.0f}s")

    def psql(self, sql: str, port: int | None = None, database: str = "postgres") -> str:
        """Run ``sql`` with psql (directly, or through ``port``) and return its output."""
        result = subprocess.run(
            self._in_netns(
                [
                    "psql",
                    "-X",
                    "-q",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    sql,
                    self.url(port, database),
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise LabError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def remove(self) -> None:
        self.stop()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.directory)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()
