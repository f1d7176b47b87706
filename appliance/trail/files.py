"""Creating the trail's files with the right modes, and replacing small files."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files and directories created inside are for the owner only.

    The umask is process-wide; this is used only while opening the trail, before the relay
    starts its threads.
    """
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0700 (existing ones are left alone)."""
    with private_umask():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)


def overwrite(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` over the start of ``path`` (created with ``mode`` if missing) in one
    write, and cut the file to its length if it was longer."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, mode)
    try:
        os.pwrite(fd, data, 0)
        if os.fstat(fd).st_size != len(data):  # new (the umask spared), or another length
            os.ftruncate(fd, len(data))
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int, *, sync: bool, replace: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path``, then move it into place.

    Readers see the old content or the new, never a torn file. With ``replace=False`` an
    existing file is kept and FileExistsError raised, so two processes cannot both create
    a key and use different ones.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            if sync:
                out.flush()
                os.fsync(out.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if sync:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_state(path: Path) -> dict[str, Any] | None:
    """A small state file's JSON object; None when it is missing or not one."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(path: Path, data: dict[str, Any]) -> None:
    """Replace a small state file (mode 0600) with ``data`` as JSON."""
    write_atomic(path, json.dumps(data, sort_keys=True).encode() + b"\n", 0o600, sync=False)
