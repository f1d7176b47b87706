"""When a sealed segment may go: once the copy that retires it (``[trail] retire``) holds
it and has verified it, and every other courier (the anchor's publisher, the central
store's shipper, each export) has carried it off the host. A courier that stops (a SIEM
down for a week) holds every segment back with it: the trail then keeps what that courier
has yet to send, up to the limit of sealed segments, and past it grows in its active file.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Protocol


class Retiring(Protocol):
    retirable: int


class Gate:
    """Sets ``trail.retirable`` to the least that every courier has reached (couriers
    report from their own threads)."""

    def __init__(self, trail: Retiring) -> None:
        self._trail = trail
        self._lock = threading.Lock()
        self._reached: dict[str, int] = {}

    def expect(self, name: str, reached: int) -> Callable[[int], None]:
        """Wait for ``name`` too, which has reached event ``reached``; what it calls as it
        goes on."""
        with self._lock:
            self._reached[name] = reached
            self._apply()
        return functools.partial(self.reached, name)

    def reached(self, name: str, seq: int) -> None:
        with self._lock:
            self._reached[name] = max(self._reached[name], seq)
            self._apply()

    def _apply(self) -> None:
        self._trail.retirable = min(self._reached.values())
