"""The one error a protocol parser raises."""

from __future__ import annotations


class ProtocolError(Exception):
    """A peer broke the protocol. ``side`` is the peer at fault: ``client`` or ``server``.

    The message is meant for a person: it says what was received and what was expected.
    """

    def __init__(self, side: str, message: str) -> None:
        super().__init__(f"{side} protocol error: {message}")
        self.side = side
        self.message = message
