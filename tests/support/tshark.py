"""tshark (Wireshark's, from Debian) reading a pcap, with a port decoded as PostgreSQL."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def tshark(pcap: Path, port: int, *args: str) -> str:
    """What ``tshark -r PCAP -d tcp.port==PORT,pgsql ARGS`` prints; fails on an error."""
    program = shutil.which("tshark")
    if program is None:
        pytest.skip("tshark is not installed (scripts/bootstrap --tests installs it)")
    done = subprocess.run(
        [program, "-r", str(pcap), "-d", f"tcp.port=={port},pgsql", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
