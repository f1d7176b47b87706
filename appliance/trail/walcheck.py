"""Whether a WAL file still holds every frame its writer put there, read from its headers.

A writer keeps working on a WAL truncated under it (SQLite writes past the cut and reads its
own index), and a reader may still find the newest pages; but when the file is opened anew,
recovery keeps only the frames from the start up to the first one that does not carry the
header's salts. So a WAL is whole when its header is intact and no frame with the header's
salts comes after one that lost them (the format: sqlite.org/fileformat.html#walformat).
"""

from __future__ import annotations

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
    fd = os.open(path, os.O_RDONLY)
    try:
        header = os.pread(fd, _HEADER, 0)
        if len(header) < _HEADER:
            return f"{path} is {len(header)} bytes long: its header is gone"
        magic, _, page_size, _, salt1, salt2 = struct.unpack(">6I", header[:24])
        if magic not in _MAGIC or page_size < 512 or page_size & (page_size - 1):
            return f"{path} has lost its header"
        salts = struct.pack(">II", salt1, salt2)
        stride = _FRAME_HEADER + page_size
        offset = _HEADER
        blank: int | None = None  # the first frame found erased
        while True:
            frame = os.pread(fd, _FRAME_HEADER, offset)
            if len(frame) < _FRAME_HEADER:
                return None
            if frame[8:16] == salts:
                if blank is not None:
                    number = (blank - _HEADER) // stride + 1
                    return f"{path} has lost its frames from frame {number} on"
            elif frame == bytes(_FRAME_HEADER):
                blank = offset if blank is None else blank
            else:
                return None  # an earlier generation: the live frames end here
            offset += stride
    finally:
        os.close(fd)
