"""The relay: accepts clients, dials backends, and moves bytes between them.

This is the only module that reads or writes the relayed sockets (the control socket is
:mod:`appliance.proxy.control`'s). Client bytes that carry a command are held until the
command's record, with the policy's decision, is committed (write before forward); server
bytes are passed on at once and parsed for the result summaries (parsed first while the
session starts, and while the answer to a blocked command may come).

What the bytes mean is the protocol handler's business (:mod:`appliance.protocols.handler`),
picked by the backend's protocol; a session's lifecycle is :mod:`appliance.proxy.states`'.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, cast

from appliance.config import Backend, Capture
from appliance.enforce.divert import NotDiverted, Routes, original_destination
from appliance.identity.bindings import Binding
from appliance.model import Command, Decision, Owner
from appliance.policy.access import Access
from appliance.policy.approvals import APPROVED, Hold
from appliance.policy.limits import Lease, Limits
from appliance.policy.masking import SessionMasks
from appliance.policy.redact import Redactor
from appliance.policy.shape import shape
from appliance.protocols.errors import ProtocolError
from appliance.protocols.events import CommandFinished, CommandStarted
from appliance.protocols.handler import (
    DIVERSION,
    INTERNAL,
    PROTOCOL,
    TOO_MANY,
    TRAIL,
    UNREACHABLE,
    Cancel,
    CancelKey,
    Failed,
    Handler,
    Opened,
    Ready,
    Reply,
    Tap,
)
from appliance.protocols.registry import handler_for
from appliance.proxy import states as st
from appliance.proxy.catalog import CatalogError
from appliance.proxy.holds import Desk
from appliance.proxy.masks import Masking
from appliance.proxy.recorder import Recorder
from appliance.trail.db import TrailFull

log = logging.getLogger(__name__)

OwnerLookup = Callable[[tuple[str, int], tuple[str, int]], Owner]
# The policy: (identity, backend name, database, command, whether the session moved its
# search_path at connect time) -> the decision for the command.
Decide = Callable[[dict[str, Any] | None, str, str | None, Command, bool], Decision]
# A lookup cheap enough for the event loop (a map read), or None to take the slow one.
QuickLookup = Callable[[tuple[str, int], tuple[str, int]], Owner | None]
_CANCELLED = "cancel request handled"
# The protocol of a diverted connection to no configured backend, for its refusal.
_DEFAULT_PROTOCOL = "postgresql"
# How long a refusal waits for the client's startup packet (see Session._refuse_connection).
STARTUP_WAIT = 5.0
# Client bytes held back (before the session starts, or while their records commit) beyond
# which the client is no longer read until they have been forwarded.
HOLD_LIMIT = 1 << 20
_BACKEND_FULL = 1  # the backend's send buffer is full
_HOLDING = 2  # HOLD_LIMIT bytes are held
_HELD = 4  # a statement is held for approval: nothing more of the session moves


def _hostport(addr: Any) -> tuple[str, int]:
    return (str(addr[0]), int(addr[1])) if addr else ("", 0)


def _who(identity: dict[str, Any] | None) -> tuple[str, str] | None:
    """What makes two recorded identities the same: the issuer and the subject."""
    if identity is None:
        return None
    return (str(identity.get("issuer")), str(identity.get("subject")))


def _label(identity: dict[str, Any] | None) -> str:
    if identity is None:
        return "no identity"
    return str(identity.get("email") or identity.get("subject"))


class Relay:
    """What every session of one listener shares: where to go, and where to record.

    A listener relays to its one ``backend``. The transparent listener (``routes`` given,
    ``backend`` None) takes the connections nftables diverted: each session reads its
    original destination once, when it is accepted, and relays to that address and port if
    it lies in a configured backend's protected ranges and ports, or is refused.

    ``access`` decides, once the owner is known and before the backend is dialled, which
    identity the connection has and whether it may reach the backend; then ``limits``
    (shared by every relay) whether that identity and user may open one more connection.
    """

    def __init__(
        self,
        recorder: Recorder,
        backend: Backend | None,
        capture: Capture,
        max_message: int,
        owner_lookup: OwnerLookup,
        *,
        routes: Routes | None = None,
        quick_lookup: QuickLookup | None = None,
        access: Access | None = None,
        limits: Limits | None = None,
        decide: Decide | None = None,
        desk: Desk | None = None,
        masking: Masking | None = None,
    ) -> None:
        if (backend is None) == (routes is None):
            raise ValueError("a relay has either a backend or routes for diverted connections")
        self.recorder = recorder
        self.backend = backend
        self.routes = routes
        self.capture = capture
        self.max_message = max_message
        self.owner_lookup = owner_lookup
        self.quick_lookup = quick_lookup
        self.access = access
        self.limits = limits
        self.decide = decide
        self.desk = desk  # where held statements wait for approval
        self.masking = masking
        self.redactor = Redactor(dict(capture.redact_functions))
        self.sessions: set[Session] = set()
        # What a cancel request names -> session, so that it reaches the right backend.
        self.keys: dict[object, Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, holding a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def session(self) -> Session:
        return Session(self)

    def handler(self, backend: Backend | None) -> Handler:
        """A new protocol handler for a session to ``backend`` (None: not known yet)."""
        protocol = _DEFAULT_PROTOCOL if backend is None else backend.protocol
        return handler_for(
            protocol, self.capture, self.max_message, self.redactor, certain=self.decide is not None
        )

    def tap(self, handler: Handler) -> Tap | None:
        """What records a session's raw messages: None unless ``[capture] wire`` asks."""
        capture = self.capture
        return handler.wire(capture.wire_bytes) if capture.wire else None


# Session and _Backend are asyncio protocols by their methods, not by inheritance: a class
# deriving from asyncio.Protocol is compiled by mypyc as an ordinary Python class, with its
# attributes in a dict, and these two are on every byte's path.


class _Backend:
    """The backend side of one session: hands everything to the session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # the session takes the transport from create_connection

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def data_received(self, data: bytes) -> None:
        self.session.from_server(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.end(f"backend closed the connection{f': {exc}' if exc else ''}")

    def pause_writing(self) -> None:
        self.session.pause_client()

    def resume_writing(self) -> None:
        self.session.resume_client()


class Session:
    """One client connection and its backend connection.

    Its lifecycle is :mod:`appliance.proxy.states`'; its protocol is its ``handler``'s, and
    this class knows none of it: it records what the handler reports, decides each command
    with the relay's policy, holds the client's bytes until their records are committed,
    and hands on what the handler says goes on.
    """

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.recorder = relay.recorder
        self.id = secrets.token_hex(8)
        self.state = st.ATTRIBUTING
        self.handler: Handler = relay.handler(relay.backend)
        self.tap: Tap | None = relay.tap(self.handler)  # the raw messages, if recorded
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        self.peer = ("", 0)
        self.local = ("", 0)
        backend = relay.backend
        self.backend: Backend | None = backend
        # Where the backend connection goes; a diverted session learns it when accepted.
        self.target: tuple[str, int] | None = (
            None if backend is None else (backend.address, backend.port)
        )
        self.original: tuple[str, int] | None = None  # a diverted client's destination
        self.not_relayable: str | None = None  # why a diverted connection must be refused
        # While REFUSING: the refusal (reason, message, where) waiting for the client to say
        # who it is, and the timer that carries it out anyway.
        self.refusal: tuple[str, str, str] | None = None
        self.refusal_timer: asyncio.TimerHandle | None = None
        self.owner: Owner | None = None
        self.binding: Binding | None = None
        self.lease: Lease | None = None  # this session's place in the connection limits
        # The identity as every record of this session carries it (one shared dict), or None.
        self.identity: dict[str, Any] | None = None
        self.refused_as: dict[str, str] | None = None  # a refusal at connect time, recorded
        self.opened: Opened | None = None
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.paused = 0  # why the client is not being read: _BACKEND_FULL | _HOLDING
        self.cancel: Cancel | None = None  # the connection is a cancel request
        self.gated = False  # held bytes wait for a commit
        self.unconfirmed: list[dict[str, Any]] = []  # command payloads not yet committed
        self.early: list[dict[str, Any]] = []  # commands sent before the session was recorded
        # Of those, the ones a policy has yet to decide (it needs the identity and backend).
        self.undecided: list[tuple[CommandStarted, dict[str, Any]]] = []
        # Held for approval: hold id -> command; and those decided, to hold once recorded.
        self.holds: dict[str, int] = {}
        self.to_hold: list[tuple[CommandStarted, dict[str, Any], Decision, str | None]] = []
        self.bytes_in = 0
        self.bytes_out = 0
        self.commands = 0
        self.backend_pid: int | None = None
        self.key: object = None  # what a cancel request for this session names
        self.ended: str | None = None
        self.started = False  # its session_start is recorded (relayed, or refused)
        self.masks: SessionMasks | None = None  # what is masked of its results
        self.schema_changes: set[int] = set()  # commands after which the catalog is read again

    def _move(self, to: str) -> None:
        self.state = st.move(self.state, to)

    # --- client side -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = cast(asyncio.Transport, transport)
        self.peer = _hostport(transport.get_extra_info("peername"))
        self.local = _hostport(transport.get_extra_info("sockname"))
        self.relay.sessions.add(self)
        if self.relay.routes is not None:
            self._divert(transport)
        self.relay.spawn(self._setup())

    def _divert(self, transport: asyncio.BaseTransport) -> None:
        """Find where a diverted client was going, and the backend that serves it (once)."""
        routes = self.relay.routes
        assert routes is not None
        sock = transport.get_extra_info("socket")
        if sock is None:
            self.not_relayable = "the accepted socket cannot be inspected"
            return
        try:
            self.original = original_destination(sock, self.local)
        except NotDiverted as exc:
            self.not_relayable = str(exc)
            return
        address, port = self.original
        backend = routes.backend_for(address, port)
        if backend is None:
            self.not_relayable = (
                f"{address}:{port} is not a protected backend in the recorder's configuration"
            )
            return
        self.backend = backend
        self.target = self.original
        self.handler = self.relay.handler(backend)
        self.tap = self.relay.tap(self.handler)

    async def _setup(self) -> None:
        try:
            await self._attribute_and_dial()
        except Exception as exc:
            # Never leave a client hanging with its bytes held: fail closed, and say why.
            log.exception("session %s could not be set up", self.id)
            self._refuse_connection(INTERNAL, f"the session could not be set up: {exc!r}")

    async def _attribute_and_dial(self) -> None:
        loop = asyncio.get_running_loop()
        # The client's socket is connected to where it meant to go: for a diverted connection
        # that is the original destination, not this listener.
        seen = self.original or self.local
        quick = self.relay.quick_lookup
        owner = None if quick is None else quick(self.peer, seen)
        if owner is None:  # the slow way (sock_diag walks /proc): off the event loop
            owner = await loop.run_in_executor(None, self.relay.owner_lookup, self.peer, seen)
        self.owner = owner
        if self.state == st.CANCELLING:  # even if the client sent it and left: the backend acts
            self._handle_cancel()
            return
        if self.state == st.ENDED:
            if self.not_relayable is not None and not self.started:
                # The client left before it could be told: the attempt is still recorded.
                self._record_attempt(f"connection refused: {self.not_relayable}", "divert")
            return
        if self.not_relayable is not None:
            self._refuse_connection(
                DIVERSION, f"connection refused: {self.not_relayable}", "divert"
            )
            return
        if self.original is not None and owner.pid == os.getpid():
            # Our own dial came back through the redirect: the recorder is not running as
            # the exempt service user. Refusing ends the loop at its first turn.
            self._refuse_connection(
                DIVERSION,
                "connection refused: the recorder's own connection was diverted back to it "
                "(run it as the [enforce] service_user)",
                "divert",
            )
            return
        backend, target = self.backend, self.target
        assert backend is not None and target is not None
        # Before the backend is dialled: a connection refused here never reaches it.
        refusal = self._admission(owner, backend)
        if refusal is not None:
            self._refuse_connection(*refusal)
            return
        limits = self.relay.limits
        if limits is not None:
            lease, why = limits.acquire(
                backend, _who(self.identity), _label(self.identity), owner.uid
            )
            if lease is None:
                self._refuse_connection(TOO_MANY, f"connection refused: {why}", "limits")
                return
            self.lease = lease
        self._move(st.DIALING)
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(
                    lambda: cast(asyncio.Protocol, _Backend(self)), target[0], target[1]
                ),
                backend.connect_timeout,
            )
        except TimeoutError:
            self._refuse_connection(
                UNREACHABLE,
                f"backend {backend.name} unreachable: no answer within"
                f" {backend.connect_timeout:g} s",
            )
            return
        except OSError as exc:
            self._refuse_connection(
                UNREACHABLE, f"backend {backend.name} unreachable: {exc.strerror or exc}"
            )
            return
        self.dialled(transport)

    def dialled(self, transport: asyncio.Transport) -> None:
        """The backend answered: wait for the client to say who it is, or start."""
        if self.state != st.DIALING:  # ended, or turned into a cancel, meanwhile
            transport.close()
            return
        self.server = transport
        if self.opened is None:
            self._move(st.OPENING)
        else:
            self._begin()

    def _admission(self, owner: Owner, backend: Backend) -> tuple[str, str, str] | None:
        """Whether the owner may reach the backend: a (reason, message, where) refusal, or
        None with the identity now known. An owner in doubt is refused whatever the policy."""
        if owner.doubt is not None:
            return DIVERSION, f"connection refused: {owner.doubt}", "attribution"
        access = self.relay.access
        if access is None:
            return None
        binding, refusal = access.admit(backend, owner)
        self.binding = binding
        self.identity = None if binding is None else binding.record
        if refusal is not None:
            return refusal.why, refusal.message, "identity"
        return None

    def _begin(self) -> None:
        """Start, once the masks that apply to the session know its database's catalog."""
        masking, backend, opened = self.relay.masking, self.backend, self.opened
        if masking is None or backend is None or opened is None:
            self._start()
            return
        rules = masking.rules_for(self.identity, backend.name, opened.database)
        if not rules:
            self._start()
            return
        self.relay.spawn(self._begin_masked(masking, rules))

    async def _begin_masked(self, masking: Masking, rules: Any) -> None:
        backend, opened = self.backend, self.opened
        assert backend is not None and opened is not None
        try:
            masks = await masking.session(rules, backend, opened.database or "")
        except CatalogError as exc:  # nothing is relayed that could not be masked
            self._refuse_connection(INTERNAL, f"connection refused: masking: {exc}")
            return
        if self.ended or self.state not in (st.DIALING, st.OPENING):
            return
        self.masks = masks
        self.handler.mask(masks)
        if self.tap is not None:  # fail closed: no masked value reaches the trail raw
            self.tap.withhold("masks apply to this session: its raw messages are not recorded")
        self._start()

    def _start(self) -> None:
        """The owner, the backend and who the client says it is are all known: decide the
        commands that came early, record the session with them, and let their bytes go once
        committed."""
        self._move(st.LOGIN)
        decide = self.relay.decide
        if decide is not None:
            for event, payload in self.undecided:
                self._decide(decide, event, payload)
            self.undecided.clear()
        self._record_start()
        if self.to_hold:
            self._start_holds()
        if not self.holds:
            data = self.handler.release()
            if data:
                self._hold(data)
        self._gate()

    def _record_start(self) -> None:
        assert self.opened is not None and self.owner is not None
        self.started = True
        opened = self.opened
        backend = self.backend
        destination = self.original or self.target
        self.recorder.record(
            "session_start",
            self.id,
            {
                "client": f"{self.peer[0]}:{self.peer[1]}",
                "listener": f"{self.local[0]}:{self.local[1]}",
                "backend": None if backend is None else backend.as_dict(),
                "destination": None
                if destination is None
                else f"{destination[0]}:{destination[1]}",
                "diverted": self.relay.routes is not None,
                "owner": self.owner.as_dict(),
                "identity": self.identity,
                "db_user": opened.user,
                "database": opened.database,
                "application_name": opened.params.get("application_name"),
                **({} if self.refused_as is None else {"refused": self.refused_as}),
            },
        )
        for payload in self.early:
            payload["identity"] = self.identity
            if "decision" not in payload and self.relay.masking is not None:
                # Sent before a refusal, undecided: no mask is known to say which of its
                # values are masked, so none of them is kept.
                self.handler.mask_record(payload["n"], payload, None)
            if not self._record_command(payload):
                break
        self.early.clear()
        if self.tap is not None:
            self._record_wire(self.tap)
        log.debug(
            "session %s: %s:%d uid %s pid %s -> %s as %s",
            self.id,
            *self.peer,
            self.owner.uid,
            self.owner.pid,
            "-" if backend is None else backend.name,
            opened.user,
        )

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        handler = self.handler
        try:
            events = handler.receive_client(data)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        for event in events:
            if isinstance(event, CommandStarted):
                self.commands += 1
                payload = handler.command_record(event.n, event.command)
                decide = self.relay.decide
                if decide is not None:
                    if self.state in st.RELAYING:
                        self._decide(decide, event, payload)
                    else:  # decided once the session is established; its bytes wait
                        handler.defer(event.n)
                        self.undecided.append((event, payload))
                if self.state in st.RELAYING:
                    payload["identity"] = self.identity
                    if not self._record_command(payload):
                        return
                    if self.to_hold:
                        self._start_holds()
                    self._gate()
                else:  # recorded after session_start, so the session's events stay together
                    self.early.append(payload)
            elif isinstance(event, Reply):
                assert self.client is not None
                self.client.write(event.data)
            elif isinstance(event, Opened):
                self.opened = event
                if self.state == st.REFUSING:
                    self._refuse_now()
                elif self.state == st.OPENING:
                    self._begin()
            elif isinstance(event, Cancel):
                self.cancel = event
                self._cancel_requested()
                return
        tap = self.tap
        if tap is not None:
            tap.client(data)
            self._record_wire(tap)
        data = handler.client_payload(data)
        if data:
            if self.gated or self.held or self.state not in st.RELAYING:
                self._hold(data)
            else:
                assert self.server is not None
                self.server.write(data)
        elif self.undecided and handler.deferred_bytes > HOLD_LIMIT:
            self._pause(_HOLDING)  # bounded as held bytes are: see _hold

    def _record_wire(self, tap: Tap) -> None:
        """Record what the tap made of the bytes so far, once the session is recorded."""
        if self.started:
            for payload in tap.take():
                self.recorder.record("wire", self.id, payload)

    def _decide(self, decide: Decide, event: CommandStarted, payload: dict[str, Any]) -> None:
        """The policy's decision, into the command's record; a block is carried out by the
        handler before any of the command's bytes are handed on."""
        opened, backend = self.opened, self.backend
        assert opened is not None and backend is not None
        moved = bool(opened.moved)
        decision = decide(self.identity, backend.name, opened.database, event.command, moved)
        masking = self.relay.masking
        if masking is not None:
            refused = self._masked(masking, decision, event)
            masks = self.masks
            if masks is not None and masks.trail:
                # A statement refused as a way around the masks may hold a guess at a
                # masked value anywhere: none of its values is kept.
                self.handler.mask_record(event.n, payload, None if refused else masks)
            decision = refused or decision
        if decision.action == "hold":
            decision = self._held(event, payload, decision)
        payload["decision"] = decision.as_dict()
        if decision.action == "block":
            self.handler.block(event.n, decision)

    def _held(self, event: CommandStarted, payload: dict[str, Any], decision: Decision) -> Decision:
        """A statement the policy holds: it goes on at once if an approval's window covers
        it; otherwise its bytes, and all that follow, wait (the hold starts once its record
        is written), and the client is no longer read."""
        desk = self.relay.desk
        if desk is None:  # the configuration requires [approvals] for a hold rule
            return Decision("block", decision.rule, f"{decision.reason} (no one can approve)")
        opened, backend = self.opened, self.backend
        assert opened is not None and backend is not None
        command = event.command
        form = (shape(command.text) or command.text) if command.text_known else None
        approvals = desk.approvals
        granted = approvals.granted(self.identity, backend.name, opened.database, form)
        if granted is not None:
            return Decision("allow", decision.rule, f"within the window approval {granted} granted")
        limit = approvals.settings.max_pending
        if approvals.waiting(self.identity) + len(self.to_hold) >= limit:
            return Decision(
                "block",
                decision.rule,
                f"{decision.reason} (not held: {limit} statements of this identity already"
                " wait for approval)",
            )
        self.handler.defer(event.n)
        self.to_hold.append((event, payload, decision, form))
        self._pause(_HELD)
        return decision

    def _start_holds(self) -> None:
        """The held commands are recorded: hand them to the desk."""
        desk = self.relay.desk
        opened, backend = self.opened, self.backend
        assert desk is not None and opened is not None and backend is not None
        for event, payload, decision, form in self.to_hold:
            hold = desk.hold(
                self,
                event.n,
                payload,
                rule=decision.rule,
                reason=decision.reason,
                where=(backend.name, opened.database),
                shape=form,
            )
            payload["decision"]["approval"] = hold.id  # amended before it is committed
            self.holds[hold.id] = event.n
        self.to_hold.clear()

    def tell_held(self, hold: Hold) -> None:
        """The hold is recorded: the client hears of it at once (the session's socket is
        not read meanwhile, so this is all it hears until there is a decision)."""
        desk = self.relay.desk
        assert desk is not None
        timeout = desk.approvals.settings.timeout_seconds
        rule = f"rule {hold.rule!r}" if hold.rule else "the policy"
        data = self.handler.notice(
            f"witness: this statement is held for approval {hold.id} by {rule}: {hold.reason}",
            f"It waits until an approver runs `witness approvals approve {hold.id}` (or deny),"
            f" for at most {timeout:g} s; cancel it to withdraw the request.",
        )
        if data and self.client is not None and not self.client.is_closing():
            self.client.write(data)
            if self.tap is not None:
                self.tap.server(data)
                self._record_wire(self.tap)

    def resolve(self, hold: Hold, why: str) -> None:
        """The hold ended (its end is committed): the statement goes on if approved, and is
        answered with the protocol's error for ``why`` if not; once no hold is left, the
        session's bytes move again."""
        n = self.holds.pop(hold.id, None)
        if n is None or self.ended:
            return
        if hold.state != APPROVED:
            reason = f"held for approval {hold.id}, and {hold.state}: {hold.why}"
            self.handler.block(n, Decision("block", hold.rule, reason), why)
        if self.holds:
            return
        data = self.handler.release()
        if data:
            self._hold(data)
        self._gate()
        self._resume(_HELD)

    def _masked(
        self, masking: Masking, decision: Decision, event: CommandStarted
    ) -> Decision | None:
        """The block of a way around the session's masks, or None."""
        if masking.changes_schema(event.command):
            self.schema_changes.add(event.n)
        masks = self.masks
        if decision.action == "block" or masks is None:
            return None
        why = masks.refusal(event.command, self.handler.formats(event.n))
        if why is None:
            return None
        rule = next((r.name for r in masks.rules if r.by_column), None)
        return Decision("block", rule, f"masked data: {why}")

    def _record_command(self, payload: dict[str, Any]) -> bool:
        """Record a command to be committed before its bytes move; if the trail cannot keep
        it, refuse the session instead (False): nothing held is forwarded."""
        try:
            self.unconfirmed.append(self.recorder.record("command", self.id, payload))
        except TrailFull as exc:
            self.refused(str(exc))
            return False
        return True

    def _hold(self, data: bytes) -> None:
        """Keep client bytes until their records are committed; past HOLD_LIMIT, stop reading
        from the client until they have gone, so that a client that sends without pause (a
        flood before the session starts, CopyData during authentication) is bounded."""
        self.held.append(data)
        self.held_bytes += len(data)
        if self.held_bytes > HOLD_LIMIT:
            self._pause(_HOLDING)

    def _gate(self) -> None:
        if not self.gated:
            self.gated = True
            self.recorder.gate(self)

    def released(self) -> None:
        """The records behind the held bytes are committed: forward them."""
        self.gated = False
        self.unconfirmed.clear()
        held = self.held
        if held and self.state in st.RELAYING and self.server is not None:
            if len(held) == 1:
                self.server.write(held[0])
            else:
                self.server.writelines(held)
            held.clear()
            self.held_bytes = 0
            self._resume(_HOLDING)
        if self.ended and self.server is not None:
            self.server.close()

    def refused(self, reason: str) -> None:
        """The trail could not be written: nothing held is forwarded, the client is told."""
        self.gated = False
        for payload in self.unconfirmed:
            payload["refused"] = f"trail write failed: {reason}"
        self.unconfirmed.clear()
        self._fatal(
            TRAIL,
            f"witness: the audit trail cannot be written ({reason}); nothing was forwarded",
            f"trail write failed: {reason}",
        )

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.end(f"client closed the connection{f': {exc}' if exc else ''}")

    def pause_writing(self) -> None:
        if self.server is not None:
            self.server.pause_reading()

    def resume_writing(self) -> None:
        if self.server is not None:
            self.server.resume_reading()

    # --- server side -------------------------------------------------------------------

    def from_server(self, data: bytes) -> None:
        self.bytes_out += len(data)
        client = self.client
        assert client is not None
        handler = self.handler
        # Once the session is ready, bytes go on first and are parsed right after: latency
        # off the hot path. Until then (once per connection, and where a wrong port or a
        # service of another protocol shows up), and while the answer to a blocked command
        # may come, they are parsed first and the handler says what goes on.
        fast = self.state == st.READY and not handler.rewriting
        if fast:
            client.write(data)
        try:
            events = handler.receive_server(data)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        if not fast:
            data = handler.server_payload(data)
            if data:
                client.write(data)
        tap = self.tap
        if tap is not None:
            tap.server(data)
            self._record_wire(tap)
        for event in events:
            if isinstance(event, CommandFinished):
                self.recorder.record(
                    "result", self.id, handler.result_record(event.n, event.result)
                )
                if self.schema_changes:
                    self._schema_changed(event.n)
            elif isinstance(event, Ready):
                if self.state == st.LOGIN:
                    self._move(st.READY)
            elif isinstance(event, CancelKey):
                self.backend_pid = event.backend_pid
                self.key = event.key
                self.relay.keys[event.key] = self
            elif isinstance(event, Failed):
                error = handler.error_record(event.error)
                self.recorder.record("error", self.id, {"where": "server", **error})

    def _schema_changed(self, n: int) -> None:
        """Command ``n`` may have changed the schema: masking reads the catalog again."""
        masking, backend, opened = self.relay.masking, self.backend, self.opened
        if n in self.schema_changes:
            self.schema_changes.discard(n)
            if masking is not None and backend is not None and opened is not None:
                masking.changed(backend, opened.database or "")

    def pause_client(self) -> None:
        self._pause(_BACKEND_FULL)

    def resume_client(self) -> None:
        self._resume(_BACKEND_FULL)

    def _pause(self, why: int) -> None:
        """Stop reading from the client, for one more reason (reasons are bits)."""
        if not self.paused and self.client is not None:
            self.client.pause_reading()
        self.paused |= why

    def _resume(self, why: int) -> None:
        """Drop one reason to pause; read from the client again once none is left."""
        if not self.paused & why:
            return
        self.paused &= ~why
        if not self.paused and self.client is not None and not self.client.is_closing():
            self.client.resume_reading()

    # --- cancel ------------------------------------------------------------------------

    def _cancel_requested(self) -> None:
        """The connection is a cancel request: act once its sender is known (the setup comes
        back here when it is not yet)."""
        if self.state == st.ENDED:
            return
        # Attribution is under way, and comes back here; a refusal already decided is the
        # answer whoever sent it.
        waiting = self.owner is None and self.state != st.REFUSING
        self._move(st.CANCELLING)
        if not waiting:
            self._handle_cancel()

    def _handle_cancel(self) -> None:
        """Act on a CancelRequest whose sender is known, then end the connection."""
        self.relay.sessions.discard(self)
        self.ended = _CANCELLED
        refused = self.refusal  # decided before the request came
        self._cancel_refusal()
        self.state = st.move(self.state, st.ENDED)
        if self.server is not None:  # dialled before the request came: a cancel needs none
            self.server.close()
            self.server = None
        try:
            target, refusal = self._cancel_target(refused)
            if target is None:
                self._record_cancel_refused(refusal)
                return
            request = self.cancel
            assert request is not None
            target.commands += 1
            owner = self.owner
            assert owner is not None
            self.recorder.record(
                "command",
                target.id,
                {
                    "n": 0,
                    "kind": "cancel",
                    "text": request.what,
                    "client": f"{self.peer[0]}:{self.peer[1]}",
                    "owner": owner.as_dict(),
                    "identity": self.identity,
                },
            )
            desk = self.relay.desk
            if target.holds and desk is not None:
                # What it cancels is held, not running: withdrawn, and never delivered (it
                # would interrupt whatever the session runs next).
                desk.withdraw(target, "the client cancelled it", cancelled=True)
                if self.client is not None:
                    self.client.close()
                return
            self.recorder.gate(_CancelDelivery(self, target, request.packet))
        except TrailFull:  # unrecorded, so undelivered
            if self.client is not None:
                self.client.close()
        except Exception:
            log.exception("cancel request from %s:%d could not be handled", *self.peer)
            if self.client is not None:
                self.client.close()

    def _cancel_target(self, refused: tuple[str, str, str] | None) -> tuple[Session | None, str]:
        """The session the cancel may be delivered to, or None and why not: its sender is
        admitted like any connection, and may cancel only a session of its own identity."""
        if refused is not None:
            return None, refused[1]
        if self.not_relayable is not None:
            return None, self.not_relayable
        owner, backend = self.owner, self.backend
        assert owner is not None and backend is not None
        refusal = self._admission(owner, backend)
        if refusal is not None:
            return None, refusal[1]
        request = self.cancel
        assert request is not None
        target = self.relay.keys.get(request.key)
        if target is None or target.ended:
            return None, f"no live session has that cancel key ({request.what})"
        if _who(target.identity) != _who(self.identity):
            return None, (
                f"{request.what}: that session is of another identity"
                f" ({_label(target.identity)}, not {_label(self.identity)})"
            )
        return target, ""

    def _record_cancel_refused(self, reason: str) -> None:
        request = self.cancel
        assert request is not None
        self.recorder.record(
            "error",
            None,
            {
                "where": "cancel",
                "message": f"cancel request refused ({request.what}): {reason}",
                "client": f"{self.peer[0]}:{self.peer[1]}",
                "backend": None if self.backend is None else self.backend.name,
                "owner": None if self.owner is None else self.owner.as_dict(),
                "identity": self.identity,
            },
        )
        if self.client is not None:
            self.client.close()

    # --- endings -----------------------------------------------------------------------

    def _protocol_error(self, exc: ProtocolError) -> None:
        self.recorder.record("error", self.id, {"where": exc.side, "message": exc.message})
        self._fatal(PROTOCOL, f"witness: {exc}", str(exc))

    def _refuse_connection(self, why: str, message: str, where: str = "backend") -> None:
        """The session cannot be set up: record the attempt and tell the client.

        Before the client has said who it is, the refusal waits up to STARTUP_WAIT for that
        (REFUSING), so that the record says which user and database were asked for
        whatever the timing. Once it has, the attempt is a session of its own, ended at
        once, and whatever commands came with it are marked refused; without it (a silent
        client, or one that left), it is an error event.
        """
        if self.state in (st.ENDED, st.CANCELLING, st.REFUSING):
            return
        if self.opened is None:
            self.refusal = (why, message, where)
            self._move(st.REFUSING)
            self.refusal_timer = asyncio.get_running_loop().call_later(
                STARTUP_WAIT, self._refuse_now
            )
            return
        self._refuse(why, message, where)

    def _refuse_now(self) -> None:
        """Carry out a refusal that was waiting for the client to say who it is."""
        if self.refusal is not None:
            why, message, where = self.refusal
            self._cancel_refusal()
            self._refuse(why, message, where)

    def _cancel_refusal(self) -> None:
        self.refusal = None
        if self.refusal_timer is not None:
            self.refusal_timer.cancel()
            self.refusal_timer = None

    def _refuse(self, why: str, message: str, where: str) -> None:
        if self.ended:
            return
        told = self.handler.refusal(why, f"witness: {message}")
        if not self.started:
            if self.opened is not None:
                if self.owner is None:
                    self.owner = Owner(source="unknown", detail=message)
                self.refused_as = {"code": told.code, "message": message}
                self._record_start()
                for payload in self.unconfirmed:
                    payload["refused"] = message
                self.unconfirmed.clear()
            else:  # too early for a session record; the attempt is still on the trail
                self._record_attempt(message, where)
        self._tell(told.data)
        self.end(message)

    def _record_attempt(self, message: str, where: str) -> None:
        """An error event for a connection refused before it had a session record."""
        original = self.original
        self.recorder.record(
            "error",
            None,
            {
                "where": where,
                "message": message,
                "client": f"{self.peer[0]}:{self.peer[1]}",
                "listener": f"{self.local[0]}:{self.local[1]}",
                "destination": None if original is None else f"{original[0]}:{original[1]}",
                "backend": None if self.backend is None else self.backend.name,
                "owner": None if self.owner is None else self.owner.as_dict(),
                "identity": self.identity,
            },
        )

    def terminate(self, why: str, message: str) -> None:
        """End a live session from outside (an expired identity): the client is told why."""
        self._fatal(why, f"witness: {message}", message)

    def _fatal(self, why: str, message: str, reason: str) -> None:
        self._tell(self.handler.refusal(why, message).data)
        self.end(reason)

    def _tell(self, data: bytes) -> None:
        """A last word to the client; nothing it held back goes on."""
        if self.client is not None and not self.client.is_closing():
            self.client.write(data)
            if self.tap is not None:
                self.tap.server(data)
        self.held.clear()
        self.held_bytes = 0

    def end(self, reason: str) -> None:
        """Close both sides (once) and record why the session ended."""
        if self.ended:
            return
        if self.refusal is not None:  # the client left while its refusal waited
            self._record_attempt(self.refusal[1], self.refusal[2])
            self._cancel_refusal()
        self.ended = reason
        self.state = st.move(self.state, st.ENDED)
        self.relay.sessions.discard(self)
        if self.lease is not None and self.relay.limits is not None:
            self.relay.limits.release(self.lease)
            self.lease = None
        if self.key is not None:
            self.relay.keys.pop(self.key, None)
        if self.holds and self.relay.desk is not None:
            self.relay.desk.withdraw(self, f"the session ended: {reason}")
        handler = self.handler
        for event in handler.close():
            if isinstance(event, CommandFinished):
                self.recorder.record(
                    "result", self.id, handler.result_record(event.n, event.result)
                )
        log.debug("session %s ended: %s", self.id, reason)
        if self.started:
            end = {
                "reason": reason,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "commands": self.commands,
                "backend_pid": self.backend_pid,
            }
            tap = self.tap
            if tap is not None:
                self._record_wire(tap)
                end["wire"] = dict(tap.sizes)  # what the recorded streams come to
            self.recorder.record("session_end", self.id, end)
        if self.client is not None:
            self.client.close()
        # Bytes still waiting for a commit go out (then the backend closes) in released().
        if self.server is not None and not self.gated:
            self.server.close()


class _CancelDelivery:
    """Delivers a recorded CancelRequest to the backend once its record is committed."""

    def __init__(self, session: Session, target: Session, raw: bytes) -> None:
        self.session = session
        self.target = target.target  # the backend address the cancelled session talks to
        self.raw = raw

    def released(self) -> None:
        self.session.relay.spawn(self._send())

    async def _send(self) -> None:
        target = self.target
        loop = asyncio.get_running_loop()
        if target is None:
            log.warning("cancel request not delivered: the session has no backend")
        else:
            try:
                transport, _ = await loop.create_connection(asyncio.Protocol, target[0], target[1])
            except OSError as exc:
                log.warning("cancel request not delivered to %s:%d: %s", *target, exc)
            else:
                transport.write(self.raw)
                transport.close()
        if self.session.client is not None:
            self.session.client.close()

    def refused(self, reason: str) -> None:
        if self.session.client is not None:
            self.session.client.close()
