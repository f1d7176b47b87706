"""A real rsyslogd (Debian's), in the foreground on free loopback ports, writing what it
receives to a file of its own: the hostname, app name, msgid and message of each, one a line."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from witnessproc import terminate

from appliance.lab.net import free_port, wait_port

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"

CONFIG = """\
global(workDirectory="{dir}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
template(name="fields" type="string" string="%hostname%|%app-name%|%msgid%|%msg%\\n")
*.* action(type="omfile" file="{out}" template="fields")
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Rsyslog:
    def __init__(self, directory: Path) -> None:
        if not Path(RSYSLOGD).exists():
            pytest.skip("rsyslogd is not installed (scripts/bootstrap --tests installs rsyslog)")
        directory.mkdir(parents=True, exist_ok=True)
        self.udp, self.tcp = free_udp_port(), free_port()
        self.out = directory / "received.log"
        config = directory / "rsyslog.conf"
        config.write_text(CONFIG.format(dir=directory, udp=self.udp, tcp=self.tcp, out=self.out))
        self.log = (directory / "rsyslogd.log").open("wb")
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(config), "-i", str(directory / "rsyslogd.pid")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.tcp, None)

    def lines(self, count: int, timeout: float = 20.0) -> list[str]:
        """The first ``count`` lines received (waiting for them), each hostname|app|msgid|msg."""
        deadline = time.monotonic() + timeout
        found: list[str] = []
        while time.monotonic() < deadline:
            found = self.out.read_text().splitlines() if self.out.exists() else []
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"rsyslogd received {len(found)} lines of {count}")

    def stop(self) -> None:
        terminate(self.proc)
        self.log.close()
