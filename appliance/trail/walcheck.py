"""Whether a WAL file still holds every frame its writer put there, read from its headers.

A writer keeps working on a WAL truncated under it (SQLite writes past the cut and reads its
own index), and a reader may still find the newest pages; but when the file is opened anew,
recovery keeps only the frames from the start up to the first one that does not carry the
header's salts. So a WAL is whole when its header is intact and no frame with the header's
salts comes after one that lost them (the format: sqlite.org/fileformat.html#walformat).
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

_MAGIC = (0x377F0682, 0x377F0683)
_HEADER = 32
_FRAME_HEADER = 24


def gap(path: Path) -> str | None:
    """Why recovery would not find every frame of the WAL at ``path`` (None: it would).

    Reads the frame headers up to the first frame of an earlier generation (left over
    from before the WAL was last restarted, and ignored by SQLite), so it reads little
    more than the live frames.
    """
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size < _HEADER:
            return f"{path} is {size} bytes long: its header is gone"
        with mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ) as wal:
            return _gap(path, wal, size)


def _gap(path: Path, wal: mmap.mmap, size: int) -> str | None:
    magic, _, page_size, _, salt1, salt2 = struct.unpack_from(">6I", wal, 0)
    if magic not in _MAGIC or page_size < 512 or page_size & (page_size - 1):
        return f"{path} has lost its header"
    salts = struct.pack(">II", salt1, salt2)
    erased = bytes(_FRAME_HEADER)
    stride = _FRAME_HEADER + page_size
    blank: int | None = None  # the first frame found erased
    for offset in range(_HEADER, size - _FRAME_HEADER + 1, stride):
        if wal[offset + 8 : offset + 16] == salts:
            if blank is not None:
                number = (blank - _HEADER) // stride + 1
                return f"{path} has lost its frames from frame {number} on"
        elif wal[offset : offset + _FRAME_HEADER] == erased:
            if blank is None:
                blank = offset
        else:
            return None  # an earlier generation: the live frames end here
    return None
