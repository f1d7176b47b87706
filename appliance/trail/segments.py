"""Sealed segments: the trail's older events, in files of their own beside the active one.

When the active file passes its size, at a checkpoint, the recorder seals it: it moves into
the ``<trail>.sealed`` directory under a name that gives its first and last event, and a new
active file goes on with the next event, its chain linked to the last sealed one. Readers
see the segments and the active file as one trail (``db.reading`` attaches them). A sealed
segment is deleted only once the copy named by ``[trail] retire`` holds it and has verified
it, and the trail records each deletion (a ``retire`` event), so that ``witness verify`` can
tell a segment retired from one cut.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# SQLite attaches at most 10 databases to one connection: a reader sees the active file and
# up to this many sealed ones. Past it the recorder stops sealing until one is retired.
MAX_SEALED = 8
_NAME = re.compile(r"(\d{16})-(\d{16})\.db")


@dataclass(frozen=True, slots=True, order=True)
class Segment:
    """A sealed segment holding events ``first`` to ``last``, the last a checkpoint."""

    first: int
    last: int
    path: Path

    @property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0


def directory(trail: Path) -> Path:
    return trail.with_name(trail.name + ".sealed")


def next_file(trail: Path) -> Path:
    """Where the next active file is made, before it takes the trail's name."""
    return trail.with_name(trail.name + ".next")


def path_of(trail: Path, first: int, last: int) -> Path:
    return directory(trail) / f"{first:016d}-{last:016d}.db"


def sealed(trail: Path) -> list[Segment]:
    """The sealed segments of the trail at ``trail``, oldest first (none: no directory).
    Anything else in the directory is left alone."""
    try:
        names = os.listdir(directory(trail))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        match = _NAME.fullmatch(name)
        if match is not None:
            first, last = int(match[1]), int(match[2])
            if 0 < first <= last:
                found.append(Segment(first, last, directory(trail) / name))
    return sorted(found)


def sync_directory(path: Path) -> None:
    """Make a rename or an unlink in ``path`` survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
