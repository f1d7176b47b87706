"""What of one direction's stream goes on: the bytes as they came, with some whole messages
replaced, and never the start of a message that is not whole yet.

Sans-io and protocol-neutral. A protocol handler knows where each message lies in the
stream (offsets from the first byte of the direction); when it decides that a message must
not go on as it is (a blocked command, the error that answers it), it replaces that span.
A message cannot be replaced once any of its bytes have gone, so the handler holds back the
unfinished message at the end of each chunk (``hold``) until it is whole.
"""

from __future__ import annotations


class Splicer:
    """One direction's stream from ``sent`` on: what has come and not gone, and the edits."""

    __slots__ = ("edits", "sent", "tail")

    def __init__(self) -> None:
        self.sent = 0  # stream offset of the first byte not yet handed on
        self.tail = b""  # bytes from ``sent`` that came and were held back
        self.edits: list[tuple[int, int, bytes]] = []  # (start, end, replacement), in order

    def replace(self, start: int, end: int, replacement: bytes) -> None:
        """Hand on ``replacement`` in place of the stream's bytes ``start`` to ``end``."""
        if start < self.sent:
            raise ValueError(f"bytes from {start} have gone already (up to {self.sent})")
        if self.edits and self.edits[-1][:2] == (start, end):  # rewritten again: this wins
            self.edits[-1] = (start, end, replacement)
            return
        if self.edits and start < self.edits[-1][1]:
            raise ValueError(f"the edit at {start} overlaps or precedes the last one")
        self.edits.append((start, end, replacement))

    def skip_to(self, offset: int) -> None:
        """The stream up to ``offset`` went on some other way: nothing of it is held."""
        if offset > self.sent:
            self.sent = offset
            self.tail = b""

    def take(self, data: bytes, end: int, hold: int) -> bytes:
        """The bytes to hand on now: ``data`` is the chunk that ended at stream offset
        ``end``, and its last ``hold`` bytes (the start of an unfinished message) wait."""
        tail, edits = self.tail, self.edits
        if not tail and not edits and not hold:
            self.sent = end  # the fast path: the chunk as it came
            return data
        buf = tail + data if tail else data
        base = self.sent
        upto = end - min(hold, end - base)
        out: list[bytes] = []
        pos = base
        kept = 0
        for start, stop, replacement in edits:
            if stop > upto:  # not whole yet: it waits, with everything after it
                upto = max(pos, min(upto, start))
                break
            out.append(buf[pos - base : start - base])
            out.append(replacement)
            pos = stop
            kept += 1
        out.append(buf[pos - base : upto - base])
        if kept:
            del edits[:kept]
        self.tail = bytes(buf[upto - base :])
        self.sent = upto
        return b"".join(out)
