"""The lab's Unix users: the recorder's service user and the agents' users, made for one lab.

A lab never borrows a real account. Lab ``witness-lab`` gets ``wlab-witness`` (the service
user the recorder runs as) and ``wlab-agent1`` ... ``wlab-agentN``; lab ``witness-lab-S``
gets ``wlab-S-witness`` and ``wlab-S-agentN``. The ``wlab`` prefix keeps them apart from a
real installation's ``witness`` user, so a lab on an appliance never takes over (or removes)
the account of the Witness that runs there. Names longer than 32 characters (useradd's
limit) are refused: use a shorter lab suffix.

Each user is a system account (``useradd --system``) with its own group, no home directory
and no login shell. :func:`create` refuses a name that exists already, and records each name
in the lab's state (through ``record``) *before* it runs ``useradd``, so
:func:`remove` (called by ``witness lab down``) deletes exactly what the lab made, also after
a crash. ``remove`` first kills what still runs as that user (by pid, found in /proc), since
``userdel`` refuses an account in use.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from appliance.lab.postgres import LabError

PREFIX = "wlab"
MAX_NAME = 32
NOLOGIN = "/usr/sbin/nologin"


@dataclass(frozen=True, slots=True)
class LabUsers:
    """The lab's service user and its agents' users (``agents[0]`` is ``...-agent1``)."""

    service: str
    agents: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return (self.service, *self.agents)


def names(lab_name: str, agents: int, lab_prefix: str = "witness-lab") -> LabUsers:
    """The user names of lab ``lab_name`` (``witness-lab`` or ``witness-lab-SUFFIX``)."""
    if lab_name == lab_prefix:
        base = PREFIX
    elif lab_name.startswith(lab_prefix + "-"):
        base = f"{PREFIX}-{lab_name[len(lab_prefix) + 1 :]}"
    else:
        raise LabError(f"{lab_name!r} is not a lab name (expected {lab_prefix}[-SUFFIX])")
    made = LabUsers(f"{base}-witness", tuple(f"{base}-agent{i}" for i in range(1, agents + 1)))
    too_long = [n for n in made.all if len(n) > MAX_NAME]
    if too_long:
        raise LabError(
            f"lab user name {too_long[0]!r} is longer than {MAX_NAME} characters: "
            "use a shorter lab suffix"
        )
    return made


def exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is missing (apt-get install passwd)") from None
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")


def create(wanted: Iterable[str], record: Callable[[list[str]], None]) -> None:
    """Create the users ``wanted``; ``record`` is given the list of names made so far
    (including the one about to be made) before each ``useradd``."""
    wanted = list(wanted)
    taken = [n for n in wanted if exists(n)]
    if taken:
        raise LabError(
            f"user {', '.join(taken)} exists already, and this lab did not make it: "
            "remove it (userdel), or run 'witness lab down' for the lab that made it"
        )
    made: list[str] = []
    for name in wanted:
        made.append(name)
        record(list(made))
        _run(
            [
                "useradd", "--system", "--user-group", "--no-create-home",
                "--home-dir", "/nonexistent", "--shell", NOLOGIN,
                "--comment", "Witness lab (witness lab down removes it)", name,
            ]
        )  # fmt: skip


def _pids_of(uid: int) -> list[int]:
    """Processes of ``uid``, zombies included: userdel counts them as using the account."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(entry.path).st_uid == uid:
                    found.append(int(entry.name))
    return found


def _kill_all(uid: int, timeout: float = 5.0) -> None:
    """SIGKILL every process of ``uid`` (a lab user: nothing else runs as it), and wait until
    none is left; the ones that are our own children are reaped, by pid."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in _pids_of(uid) if p != os.getpid()]
        if not left:
            return
        if time.monotonic() > deadline:
            raise LabError(f"processes {left} of uid {uid} are still there after SIGKILL")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


def remove(recorded: Iterable[str], say: Callable[[str], None] | None = None) -> list[str]:
    """Delete the users the lab recorded (and their groups); the ones already gone are
    skipped. Returns the names removed."""
    removed = []
    for name in recorded:
        try:
            uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
        _kill_all(uid)
        _run(["userdel", name])
        removed.append(name)
        if say is not None:
            say(f"removed user {name}")
    return removed
