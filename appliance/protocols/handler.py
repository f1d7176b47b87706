"""What a protocol handler gives the relay, whatever the protocol: the one interface between
the bytes and the session.

The relay feeds each direction's bytes to its session's handler and gets back neutral
events (below) and the bytes to hand on: ``client_payload`` and ``server_payload`` say what
of each chunk goes on, with blocked commands replaced and their errors told; ``refusal``
builds the protocol's own fatal error. The relay never slices protocol bytes, and knows
nothing of any protocol's error codes, cancel keys or negotiation.

Events, in the order a session meets them:

- :class:`Reply`: bytes to send the client at once, never forwarded (PostgreSQL's answer to
  SSLRequest);
- :class:`Opened`: the client said who it is and what it wants (PostgreSQL's StartupMessage,
  MySQL's handshake response). A protocol without one (Redis) opens on its first command;
- :class:`CancelKey`, :class:`Cancel`: how a session can be interrupted from another
  connection, and a connection that is only such a request;
- ``CommandStarted`` / ``CommandFinished`` (from :mod:`appliance.protocols.events`): a
  command, recorded before its bytes go; and its result;
- :class:`Ready`: the backend takes commands (authentication is over);
- :class:`Failed`: an error that belongs to no command; :class:`Closed`: the client said
  goodbye.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from appliance.model import Command, Decision, ErrorInfo, Result
from appliance.protocols.events import CommandFinished, CommandStarted

# Why a connection is refused or ended, in the relay's words; each handler says it in its
# protocol's (PostgreSQL: a SQLSTATE).
NOT_BOUND = "not_bound"  # no identity is bound to the owner
DENIED = "denied"  # the identity may not reach this backend
TOO_MANY = "too_many"  # over a connection limit
DIVERSION = "diversion"  # not relayable: not diverted, no backend there, or in doubt
UNREACHABLE = "unreachable"  # the backend did not answer
PROTOCOL = "protocol"  # a peer broke the protocol
TRAIL = "trail"  # the trail cannot be written
INTERNAL = "internal"  # Witness failed
EXPIRED = "expired"  # the identity expired
CANCELLED = "cancelled"  # the client withdrew it (a held statement, cancelled)
REASONS = (
    NOT_BOUND,
    DENIED,
    TOO_MANY,
    DIVERSION,
    UNREACHABLE,
    PROTOCOL,
    TRAIL,
    INTERNAL,
    EXPIRED,
    CANCELLED,
)


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes = field(repr=False)
    kind: str = ""


@dataclass(frozen=True, slots=True)
class Opened:
    """Who the client says it is: ``user``, ``database`` and the rest of its ``params``;
    ``moved``: the settings it set at connect time that change what unqualified names mean
    (PostgreSQL's search_path), which a policy must know."""

    user: str | None
    database: str | None
    params: dict[str, str]
    moved: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CancelKey:
    """What a cancel request for this session names (opaque to the relay), and the backend's
    process, for the record."""

    key: object
    backend_pid: int | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    """This connection only asks to interrupt the session that ``key`` names; ``what`` says
    so for people; ``packet`` is delivered to that session's backend, on a connection of
    its own, once recorded."""

    key: object
    what: str
    packet: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Ready:
    status: str = ""


@dataclass(frozen=True, slots=True)
class Failed:
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class Closed:
    pass


Event = (
    Reply | Opened | CancelKey | Cancel | CommandStarted | CommandFinished | Ready | Failed | Closed
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A fatal error as the client's protocol says it: ``code`` for the record, ``data`` for
    the wire."""

    code: str
    data: bytes = field(repr=False)


class Tap(Protocol):
    """What the trail keeps of a session's raw messages (``[capture] wire``), sans-io: fed
    the bytes each way as they go, it gives back the payloads of ``wire`` events; it never
    raises, and stops for good where a message may hold what the trail must not."""

    sizes: dict[str, int]
    """Bytes recorded from the client and from the server."""

    def client(self, data: bytes) -> None: ...

    def server(self, data: bytes) -> None: ...

    def withhold(self, reason: str) -> None:
        """Record nothing more of this session, and say why."""
        ...

    def take(self) -> list[dict[str, Any]]:
        """The payloads made since the last take, oldest first."""
        ...


class Handler(Protocol):
    """One session's protocol, sans-io. Every ``receive_*`` may raise ProtocolError."""

    @property
    def rewriting(self) -> bool:
        """Whether the server's bytes must be parsed before they go (``server_payload``);
        if not, the relay hands each chunk on at once and parses it afterwards."""
        ...

    def receive_client(self, data: bytes) -> list[Event]: ...

    def client_payload(self, data: bytes) -> bytes: ...

    def receive_server(self, data: bytes) -> list[Event]: ...

    def server_payload(self, data: bytes) -> bytes: ...

    def block(self, n: int, decision: Decision, why: str = DENIED) -> None:
        """Command ``n``, started by the chunk last received (or deferred), must not reach
        the backend: the client gets the protocol's own error for it (for reason ``why``),
        and stays in step."""
        ...

    def notice(self, message: str, hint: str | None = None) -> bytes:
        """News for the client that answers nothing it sent (a statement is held): the bytes
        to write at once, or empty if they go with the server's next bytes instead."""
        ...

    def mask(self, masks: Any) -> None:
        """Mask results from now on, as ``masks`` (a SessionMasks) say."""
        ...

    def formats(self, n: int) -> tuple[int, ...]:
        """The result formats command ``n`` asks for (empty: the protocol's default)."""
        ...

    def defer(self, n: int) -> None:
        """Command ``n``, started by the chunk last received, cannot be decided yet: the
        session is not established (a protocol with no startup, such as Redis, may send
        commands at once), or it is held for approval. Its bytes, and all that follow,
        wait for ``release``."""
        ...

    @property
    def deferred_bytes(self) -> int:
        """How many client bytes wait for ``release``."""
        ...

    def release(self) -> bytes:
        """The deferred commands are decided (and blocked where need be): their bytes."""
        ...

    def command_record(self, n: int, command: Command) -> dict[str, Any]:
        """What the trail keeps of command ``n``: its record, with its secrets redacted."""
        ...

    def mask_record(self, n: int, payload: dict[str, Any], masks: Any) -> None:
        """Command ``n``'s record (``payload``, from ``command_record``) with the values of
        masked columns it carries masked, as ``masks`` (a SessionMasks) say."""
        ...

    def result_record(self, n: int, result: Result) -> dict[str, Any]:
        """What the trail keeps of command ``n``'s result, with the secrets the backend echoed
        scrubbed."""
        ...

    def error_record(self, error: ErrorInfo) -> dict[str, Any]:
        """What the trail keeps of an error that belongs to no command, scrubbed."""
        ...

    def refusal(self, why: str, message: str) -> Refusal:
        """The fatal error that ends a session for reason ``why`` (one of REASONS)."""
        ...

    def close(self) -> list[Event]:
        """The session ended: the results of the commands that never finished."""
        ...

    def wire(self, limit: int) -> Tap:
        """A tap for this session's raw messages, recording at most ``limit`` bytes."""
        ...
