"""Events the PostgreSQL parser yields to the relay."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.model import Command, ErrorInfo, Result


@dataclass(frozen=True, slots=True)
class NegotiationRequest:
    """SSLRequest or GSSENCRequest (``kind`` is ``ssl`` or ``gss``).

    The relay answers ``N`` itself and does not forward the request.
    """

    kind: str


@dataclass(frozen=True, slots=True)
class Startup:
    """The StartupMessage: protocol version and parameters (user, database, ...)."""

    version: tuple[int, int]
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A CancelRequest for the backend process ``pid``; not forwarded on this connection."""

    pid: int
    secret: int


@dataclass(frozen=True, slots=True)
class CommandStarted:
    """A client command; ``n`` numbers commands within the session from 1."""

    n: int
    command: Command


@dataclass(frozen=True, slots=True)
class CommandFinished:
    """The backend finished (or discarded) command ``n``."""

    n: int
    result: Result


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
