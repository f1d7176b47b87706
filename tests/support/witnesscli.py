"""The ``witness`` command under test in a process of its own: the sources of this checkout,
run by the interpreter running the tests; and ``witness tail -f --json`` read as it prints."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
WITNESS = [sys.executable, "-c", "from appliance.cli import main; main()"]


def witness_env() -> dict[str, str]:
    """The environment to run WITNESS in: this checkout first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}


class Follower:
    """``witness tail -f --json`` in a process of its own, its lines read as they come."""

    def __init__(self, trail: Path, *args: str) -> None:
        argv = [*WITNESS, "tail", "-f", "--json", "--trail", str(trail)]
        self.proc = subprocess.Popen(
            [*argv, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=witness_env(),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, out: IO[str]) -> None:
        for line in out:
            self.lines.put(line)

    def take(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        found = []
        while len(found) < count:
            try:
                found.append(json.loads(self.lines.get(timeout=deadline - time.monotonic())))
            except (queue.Empty, ValueError):
                self.proc.kill()
                last = found[-1] if found else None
                raise AssertionError(
                    f"{len(found)} lines of {count} came; the last: {last}"
                ) from None
        return found

    def quiet(self, seconds: float = 1.0) -> bool:
        """Whether nothing more comes for ``seconds``."""
        try:
            self.lines.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: its exit status and what it said on stderr."""
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=20)
        return self.proc.returncode, err
