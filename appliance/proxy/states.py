"""A session's lifecycle: its states, and the one table of the moves between them.

A session is accepted while Witness finds out who owns the client socket (ATTRIBUTING);
once the owner is admitted, the backend is dialled (DIALING), and once it answers the
session waits, if it must, for the client to say who it is (OPENING). Then the session is
recorded and the backend authenticates the client (LOGIN), until it takes commands (READY).

A connection refused before the client has said who it is waits a few seconds for that, so
that the record names the user and database asked for (REFUSING). A connection that only
asks to cancel another session's command waits for its owner to be known (CANCELLING).
Every state can end (ENDED), and nothing leaves ENDED.

Whether bytes are held for their records to commit, and whether the client is read, are
not states: they are the write-before-forward pipeline within LOGIN and READY, and the
pause reasons (see :mod:`appliance.proxy.server`).
"""

from __future__ import annotations

ATTRIBUTING = "attributing"
DIALING = "dialing"
OPENING = "opening"
LOGIN = "login"
READY = "ready"
REFUSING = "refusing"
CANCELLING = "cancelling"
ENDED = "ended"

MOVES: dict[str, frozenset[str]] = {
    ATTRIBUTING: frozenset({DIALING, REFUSING, CANCELLING, ENDED}),
    DIALING: frozenset({OPENING, LOGIN, REFUSING, CANCELLING, ENDED}),
    OPENING: frozenset({LOGIN, REFUSING, CANCELLING, ENDED}),
    LOGIN: frozenset({READY, ENDED}),
    READY: frozenset({ENDED}),
    REFUSING: frozenset({CANCELLING, ENDED}),
    CANCELLING: frozenset({ENDED}),
    ENDED: frozenset(),
}
# The states in which the client's bytes go to the backend (once their records commit).
RELAYING = frozenset({LOGIN, READY})


class BadMove(Exception):
    """A move the table does not allow: a fault in Witness, never the peers' doing."""


def move(state: str, to: str) -> str:
    """``to``, if the table allows the move from ``state``; else BadMove."""
    if to not in MOVES[state]:
        raise BadMove(f"a session cannot go from {state} to {to}")
    return to
