"""The agent cgroups: one root that Witness owns, one child per agent session, on cgroup2.

The cgroup2 mount is found in ``/proc/self/mountinfo``, never assumed: a hybrid hierarchy
mounts it at ``/sys/fs/cgroup/unified``, a unified one at ``/sys/fs/cgroup``. The eBPF programs
are attached to the agent root (``<cgroup2>/witness-agents``) and so apply to every child.

The root and its children are owned by root with mode 0755, and so are their
``cgroup.procs`` files: moving a process into or out of a cgroup needs write access to the
``cgroup.procs`` of the destination and of the common ancestor, so an unprivileged agent
cannot move itself out of its cgroup (or into another agent's).

On cgroup2 a cgroup's id, the one ``bpf_get_current_cgroup_id()`` and sock_diag report, is
the inode number of its directory.
"""

from __future__ import annotations

import os
from pathlib import Path

AGENT_ROOT_NAME = "witness-agents"
_MOUNTINFO = Path("/proc/self/mountinfo")


class CgroupError(Exception):
    """cgroup2 is missing, or a cgroup could not be made, entered or removed; says why."""


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def cgroup2_mount(mountinfo: Path = _MOUNTINFO) -> Path | None:
    """Where cgroup2 is mounted (the first such mount), or None when it is not."""
    try:
        text = mountinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        if right.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            return Path(_unescape(fields[4]))
    return None


def require_cgroup2() -> Path:
    mount = cgroup2_mount()
    if mount is None:
        raise CgroupError(
            "cgroup2 is not mounted (no cgroup2 line in /proc/self/mountinfo): "
            "mount it, e.g. mount -t cgroup2 none /sys/fs/cgroup/unified"
        )
    return mount


def default_root() -> Path:
    """``<cgroup2>/witness-agents``; CgroupError when there is no cgroup2."""
    return require_cgroup2() / AGENT_ROOT_NAME


def _lock_down(path: Path) -> None:
    """root:root 0755 on the directory and its interface files: only root moves processes."""
    os.chown(path, 0, 0)
    path.chmod(0o755)
    for name in ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
        target = path / name
        if target.exists():
            os.chown(target, 0, 0)
            target.chmod(0o644)


def create_root(root: Path | None = None) -> Path:
    """Make the agent root (idempotent) and lock it down; returns its path."""
    return _create(root if root is not None else default_root(), "the agent cgroup root")


def create_child(root: Path, name: str) -> Path:
    """Make ``root/name`` (idempotent), locked down like the root; returns its path."""
    if not name or "/" in name or name in (".", ".."):
        raise CgroupError(f"invalid cgroup name {name!r}")
    return _create(root / name, "cgroup")


def _create(path: Path, what: str) -> Path:
    try:
        path.mkdir(exist_ok=True)
        _lock_down(path)
    except OSError as exc:
        raise CgroupError(f"cannot create {what} {path}: {exc}") from None
    return path


def move(pid: int, cgroup: Path) -> None:
    """Move process ``pid`` (all its threads) into ``cgroup``."""
    try:
        (cgroup / "cgroup.procs").write_text(f"{pid}\n", encoding="ascii")
    except OSError as exc:
        raise CgroupError(f"cannot move pid {pid} into {cgroup}: {exc}") from None


def pids(cgroup: Path) -> list[int]:
    try:
        text = (cgroup / "cgroup.procs").read_text(encoding="ascii")
    except OSError:
        return []
    return [int(line) for line in text.split()]


def cgroup_id(path: Path) -> int:
    """The cgroup2 id of ``path``: the inode number of its directory."""
    return os.stat(path).st_ino


def remove(root: Path) -> list[Path]:
    """Remove ``root`` and every cgroup below it, deepest first; returns what was removed.

    A cgroup that still holds processes cannot be removed; CgroupError names them, and the
    rest is left as it was found below that point.
    """
    if not root.is_dir():
        return []
    removed: list[Path] = []
    children = sorted(
        (Path(d) for d, _, _ in os.walk(root)), key=lambda p: len(p.parts), reverse=True
    )
    for path in children:
        try:
            path.rmdir()
        except OSError as exc:
            busy = pids(path)
            why = f"still holds pid(s) {', '.join(map(str, busy))}" if busy else str(exc)
            raise CgroupError(f"cannot remove cgroup {path}: {why}") from None
        removed.append(path)
    return removed
