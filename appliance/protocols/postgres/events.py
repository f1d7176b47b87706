"""Events the PostgreSQL parser yields to its handler (the command events are every
protocol's: :mod:`appliance.protocols.events`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.model import ErrorInfo
from appliance.protocols.events import CommandFinished, CommandStarted


@dataclass(frozen=True, slots=True)
class NegotiationRequest:
    """SSLRequest or GSSENCRequest (``kind`` is ``ssl`` or ``gss``).

    Never forwarded: the relay sends ``reply`` (``N``: go on in plain text) to the client.
    """

    kind: str
    reply: bytes = field(default=b"N", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Startup:
    """The StartupMessage: protocol version and parameters (user, database, ...)."""

    version: tuple[int, int]
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A CancelRequest for the backend process ``pid``; not forwarded on this connection.

    ``packet`` is the whole request as the client sent it (its secret is 4 bytes long in
    protocol 3.0, up to 256 in 3.2), to be delivered on a connection of its own.
    """

    pid: int
    secret: int
    packet: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class BackendKey:
    """BackendKeyData: the backend's process id and cancel secret."""

    pid: int
    secret: int


@dataclass(frozen=True, slots=True)
class Ready:
    """ReadyForQuery with its transaction status (``I``, ``T`` or ``E``)."""

    status: str


@dataclass(frozen=True, slots=True)
class SessionError:
    """A backend error that belongs to no command: failed authentication, a FATAL shutdown,
    or a failed Parse/Bind that no Execute followed."""

    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class Terminate:
    """The client said goodbye (Terminate)."""


__all__ = ["CommandFinished", "CommandStarted"]

Event = (
    NegotiationRequest
    | Startup
    | CancelRequest
    | CommandStarted
    | CommandFinished
    | BackendKey
    | Ready
    | SessionError
    | Terminate
)
