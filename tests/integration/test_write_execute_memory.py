"""The recorder's unit sets ``MemoryDenyWriteExecute``. The booted host runs the recorder
uncompiled; here the compiled hot path (mypyc's extension modules, and every library the
recorder loads) serves under the kernel's own form of that rule, ``PR_SET_MDWE``, which
refuses memory both writable and executable and holds across exec."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from witnessproc import Witness, run, sessions

from appliance import native
from appliance.lab.postgres import PostgresServer

# Sets the rule on itself (65: PR_SET_MDWE, 1: PR_MDWE_REFUSE_EXEC_GAIN), then becomes the
# program named by its arguments.
LAUNCHER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(f"PR_SET_MDWE: errno {ctypes.get_errno()}")
os.execv(sys.argv[1], sys.argv[1:])
"""


def mdwe_supported() -> bool:
    """Whether this kernel has PR_SET_MDWE (Linux 6.3), asked of a child, which keeps it."""
    probe = "import ctypes; exit(ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) < 0)"  # PR_GET_MDWE
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


pytestmark = [
    pytest.mark.skipif(not native.STATUS.compiled, reason=f"the hot path is {native.STATUS}"),
    pytest.mark.skipif(not mdwe_supported(), reason="the kernel has no PR_SET_MDWE (Linux 6.3)"),
]


def test_the_launcher_refuses_writable_executable_memory() -> None:
    """The rule is in force in what the launcher runs: without this, the test below would
    prove nothing."""
    mapped = "import mmap; mmap.mmap(-1, mmap.PAGESIZE, prot=7); print('mapped')"
    done = run(sys.executable, "-c", LAUNCHER, sys.executable, "-c", mapped)
    assert done.returncode != 0 and "PermissionError" in done.stderr, done
    assert run(sys.executable, "-c", mapped).stdout.strip() == "mapped"


def test_the_compiled_recorder_serves_under_the_rule(pg: PostgresServer, tmp_path: Path) -> None:
    trail = tmp_path / "trail.db"
    witness = Witness(pg.port, trail, prefix=(sys.executable, "-c", LAUNCHER))
    probe = f"mdwe-{uuid.uuid4().hex[:8]}"
    try:
        done = run("psql", "-X", "-At", witness.url(), "-c", f"select '{probe}'")
        assert done.stdout.strip() == probe, done.stderr + witness.log.read_text()
    finally:
        assert witness.stop() == 0, witness.log.read_text()
    log = witness.log.read_text()
    assert "hot path: compiled" in log, log
    (session,) = sessions(trail).values()
    assert [c["text"] for c in session["commands"]] == [f"select '{probe}'"]
