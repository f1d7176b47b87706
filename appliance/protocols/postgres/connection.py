"""One PostgreSQL session, sans-io: client and server bytes in, commands and their results out."""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from appliance.model import Command, Decision, Decoding, ErrorInfo, Prepared, Result
from appliance.policy.masking import CopyPlan, Field, Plan, SessionMasks, masked_text, rebuild_row
from appliance.protocols.errors import ProtocolError
from appliance.protocols.postgres import copyrows, decode, sql
from appliance.protocols.postgres.certainty import NO_OPS, Certainty
from appliance.protocols.postgres.events import (
    BackendKey,
    CancelRequest,
    CommandFinished,
    CommandStarted,
    Event,
    NegotiationRequest,
    Ready,
    SessionError,
    Startup,
    Terminate,
)
from appliance.protocols.postgres.framing import Framer, Phase, types
from appliance.protocols.postgres.messages import (
    BLOCKED,
    BLOCKED_STATEMENT,
    CLIENT_MESSAGES,
    NO_ENCRYPTION,
    SERVER_MESSAGES,
    close_message,
    error_response,
    notice_response,
    parse_message,
    query_message,
    without_detail,
)
from appliance.protocols.postgres.portals import Portal, Reread
from appliance.protocols.postgres.reading import Reader
from appliance.protocols.postgres.statements import Statement, key
from appliance.protocols.splice import Splicer


def _packet(body: bytes) -> bytes:
    """An untyped startup-phase packet as it came: its length, then ``body``."""
    return (len(body) + 4).to_bytes(4, "big") + body


_PROTOCOL_3 = 3
_REFRESHED_LIMIT = 1024
_CANCEL = 80877102
NEGOTIATIONS = {80877103: "ssl", 80877104: "gss"}


class _Command:
    """A command the server has not finished with."""

    __slots__ = (
        "blocked",
        "columns",
        "command",
        "copy",
        "copy_rows",
        "formats",
        "mark",
        "n",
        "ops",
        "plan",
        "reread",
        "result",
        "room",
        "shaped",
        "span",
        "started",
        "until_ready",
        "window",
    )

    def __init__(
        self,
        n: int,
        command: Command,
        formats: tuple[int, ...],
        *,
        started: float,
        mark: int,
        room: int,
        ops: list[int],
        reread: Reread | None,
        span: tuple[int, int],
    ):
        self.n = n
        self.mark = mark  # server bytes seen when it was sent
        self.command = command
        self.started = started
        self.result = Result("ok")
        self.until_ready = command.kind != "execute"  # simple Query and FunctionCall end at 'Z'
        self.formats = formats  # of the result columns, for row capture
        self.room = room  # capture bytes left; -1 once capture stopped
        self.ops = ops  # the statements (by index) that define or drop prepared statements
        self.reread = reread
        self.span = span  # where its message lies in the client stream
        self.blocked: ErrorInfo | None = None  # what the client is told instead, if blocked
        self.window = 0  # the pipeline it was sent in (Syncs, Queries sent before it)
        # Masking: how its result's columns are masked (None: none is), whether their shape
        # is known, their formats, and the plan of its COPY TO STDOUT.
        self.plan: Plan | None = None
        self.shaped = False
        self.columns: tuple[int, ...] = ()
        self.copy: CopyPlan | None = None
        self.copy_rows = 0


@dataclass(frozen=True, slots=True)
class _Marker:
    """A request other than a command that the server answers in turn."""

    kind: str  # Sync, Parse, Close, Describe
    statement: Statement | None = None  # Describe: the statement described
    tracked: bool = False  # a Parse or Close that Statements waits to hear about
    injected: bool = False  # sent by Witness (a refresh): its answer is not the client's


_SYNC = _Marker("Sync")
_READY = {status: Ready(status) for status in "ITE"}  # immutable, so shared
_TERMINATE = Terminate()
_Pending = _Command | _Marker


class PostgresConnection:
    """Parses both directions of one session and correlates the server's answers with requests.

    ``receive_client`` and ``receive_server`` return the events their bytes complete. They
    raise ProtocolError on malformed input, after which every further call raises too. The
    events of a failed call are not returned: the commands it started are forgotten (their
    bytes must not be forwarded), and the commands it finished are reported by ``close``.

    A command's record states a text only where the wire vouches for it: what is and is not
    certain about prepared statements is in ``statements`` (and applied by ``certainty``),
    about client encodings in ``reading``.
    """

    def __init__(
        self,
        *,
        capture_rows: int = 0,
        capture_bytes: int = 65536,
        max_message: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
        refresh: bool = False,
    ) -> None:
        self.backend_key: BackendKey | None = None
        self.params: dict[str, str] = {}
        self._capture_rows = capture_rows
        # A row over max_message could never be captured, so it is not buffered either.
        capture_bytes = min(capture_bytes, max_message - 4)
        self._capture_bytes = capture_bytes if capture_rows > 0 else -1
        self._clock = clock
        self._events: list[Event] = []
        self._queue: deque[_Pending] = deque()  # what the server has yet to answer, in order
        # A command's bytes are the server's while it heads the queue: from the later of its
        # sending and the last answer to what came before it, up to its own last answer.
        self._answered_at = 0
        self._reader = Reader()
        self._certain = Certainty(self._reader)
        self._statements = self._certain.statements
        self._portals: dict[str, Portal] = {}
        self._n = 0
        # Sync, Query and FunctionCall end transactions, and with them portals; counted both
        # as sent and as answered, so a ReadyForQuery drops only the portals it outlived.
        self._bounds_sent = 0
        self._bounds_done = 0
        self._failing = False  # an extended-protocol error: the server skips to the next Sync
        self._copy_in: _Command | None = None
        self._describing = False  # the next RowDescription/NoData answers a statement Describe
        self._error: ProtocolError | None = None
        self._closed = False
        self._unreported: list[Event] = []
        self._client_bytes = 0  # client bytes received so far
        self._chunk_start = 0  # where the chunk last received starts in the client stream
        # Where in the client stream forwarding starts (after the startup packet, which the
        # parser hands over itself), and that packet until it is handed over.
        self._forward_from = sys.maxsize
        self._startup_packet: bytes | None = None
        # Blocked commands: what goes to the server in their place, and the errors that come
        # back for them replaced by the ones the clients are told.
        self._out = Splicer()
        self._back = Splicer()
        self._notices: list[bytes] = []  # for the client, at the next message boundary
        self._server_bytes = 0
        self._rewrites = 0  # answers still to come that the client gets otherwise, or not
        # portal -> its Bind's offset, the command and the pipeline it was sent after
        self._bound: dict[str, tuple[int, int, int]] = {}
        # Where the first Bind not yet followed by an Execute (or a Sync, a Flush) starts:
        # held from there, so that a blocked Execute's Bind, and its planning, never go.
        self._binding = -1
        self._max_message = max_message
        # Where the first command that cannot be decided yet starts (defer): held from there.
        self._deferred = -1
        # Refresh: a named statement the wire can no longer vouch for is parsed again, from
        # the bytes it was defined with, just before a Bind to it (see _refresh).
        self.refresh = refresh
        self._refreshed: dict[int, bytes] = {}  # a refreshed Bind's offset -> what went first
        self._client = Framer(
            "client",
            self,
            CLIENT_STARTUP,
            names=CLIENT_MESSAGES,
            max_message=max_message,
            account=PostgresConnection._client_account,
            untyped=PostgresConnection._startup,
        )
        self._server = Framer(
            "server",
            self,
            SERVER_STARTUP,
            names=SERVER_MESSAGES,
            max_message=max_message,
            account=PostgresConnection._server_account,
        )
        self._server_ready = SERVER_READY
        self.masks: SessionMasks | None = None
        self._masking = False  # results are masked on the wire: parsed before they go
        self._described: Statement | None = None  # the statement a Describe is answered for
        if capture_rows > 0:
            self._server_ready = SERVER_READY_CAPTURE
            self._server.row_room = capture_bytes

    def mask(self, masks: SessionMasks) -> None:
        """Mask results from now on (before any command's answer has come): with a mask on
        the wire, every server message is parsed before it goes, and DataRows and COPY rows
        are rebuilt with the masked values."""
        self.masks = masks
        if not masks.wire:
            return
        self._masking = True
        server = self._server
        server.row_room = sys.maxsize
        ready = server.phase is self._server_ready
        self._server_ready = SERVER_READY_MASK
        if ready:
            server.phase = SERVER_READY_MASK

    def formats(self, n: int) -> tuple[int, ...]:
        """The result formats command ``n`` asked for (its Bind's; none for a Query)."""
        return self._find(n).formats

    def _room(self, room: int) -> None:
        if not self._masking:  # masking reads every row
            self._server.row_room = room

    def receive_client(self, data: bytes | bytearray | memoryview) -> list[Event]:
        self._chunk_start = self._client_bytes
        self._client_bytes += len(data)
        return self._receive(self._client, data)

    def client_payload(self, data: bytes) -> bytes:
        """What of ``data``, the chunk last given to ``receive_client``, goes to the server.

        Everything from the startup packet on, with blocked commands replaced, and less the
        start of a message that is not whole yet (it goes once it is, unless it is blocked).
        Before the startup packet come the requests answered here and never forwarded
        (SSLRequest, GSSENCRequest), or a CancelRequest, after which nothing is forwarded;
        the reads may split any of them anywhere, so until the startup packet is whole
        nothing is released, and then the packet is released as parsed.
        """
        start = self._chunk_start
        hold = self._held()
        if self._forward_from <= start:
            return self._out.take(data, self._client_bytes, hold)
        if self._startup_packet is None:
            return b""  # still before the startup packet, or a cancel
        packet, self._startup_packet = self._startup_packet, None
        self._out.skip_to(self._forward_from)
        rest = data[self._forward_from - start :]
        return packet + self._out.take(rest, self._client_bytes, hold)

    def receive_server(self, data: bytes | bytearray | memoryview) -> list[Event]:
        rewriting = self.rewriting
        self._server_bytes += len(data)
        events = self._receive(self._server, data)
        if not rewriting:  # the relay hands the chunk on whole: see ``rewriting``
            self._back.skip_to(self._server_bytes)
        elif self._notices:
            self._place_notices()
        return events

    def notice(self, code: str, message: str, hint: str | None = None) -> bytes:
        """A NoticeResponse for the client: returned if it can go at once (every server byte
        received has gone on, and ended a message), else sent between the server's messages
        as soon as one ends (the relay then parses the server's bytes first)."""
        data = notice_response(code, message, hint)
        back = self._back
        if (
            not self._notices
            and not self._server._buf
            and back.sent == self._server_bytes
            and not back.edits
            and not back.tail
        ):
            return data
        self._notices.append(data)
        self._place_notices()
        return b""

    def _place_notices(self) -> None:
        """Put waiting notices at the end of the last whole server message, if it has not
        gone on yet (a message cut by the fast path went whole-chunk: wait for the next)."""
        boundary = self._server_bytes - len(self._server._buf)
        back = self._back
        if boundary < back.sent or (back.edits and boundary < back.edits[-1][1]):
            return
        back.replace(boundary, boundary, b"".join(self._notices))
        self._notices.clear()

    @property
    def rewriting(self) -> bool:
        """Whether the server's next bytes may need changing before the client sees them
        (the answer to a blocked command): if so, the relay hands on ``server_payload`` of
        each chunk, after ``receive_server``; if not, the chunk as it came, at once."""
        back = self._back
        return (
            self._masking
            or self._rewrites > 0
            or bool(back.edits)
            or bool(back.tail)
            or bool(self._notices)
        )

    def server_payload(self, data: bytes) -> bytes:
        """What of ``data``, the chunk last given to ``receive_server``, goes to the client."""
        hold = len(self._server._buf) if self._rewrites or self._masking else 0
        return self._back.take(data, self._server_bytes, hold)

    def defer(self, n: int) -> None:
        """Command ``n``, started by the chunk last received, cannot be decided yet (its
        session is not established): its bytes, and all that follow, wait for ``release``;
        ``block`` can still reach it until then."""
        cmd = self._find(n)
        start = cmd.span[0]
        if self._binding >= 0:
            start = min(start, self._binding)
        if self._deferred < 0 or start < self._deferred:
            self._deferred = start

    @property
    def deferred_bytes(self) -> int:
        """Client bytes held for commands not decided yet."""
        return 0 if self._deferred < 0 else self._client_bytes - self._deferred

    def release(self) -> bytes:
        """The deferred commands are decided: their bytes, blocked ones replaced."""
        if self._deferred < 0:
            return b""
        self._deferred = -1
        return self._out.take(b"", self._client_bytes, self._held())

    def _held(self) -> int:
        """How many of the client bytes received so far must wait: an unfinished message,
        a Bind not yet followed by its Execute (or a Sync, a Flush), commands deferred."""
        hold = len(self._client._buf)
        if self._binding >= 0:
            if self._client_bytes - self._binding > self._max_message:
                self._binding = -1  # no client binds this much before it runs or flushes
            else:
                hold = max(hold, self._client_bytes - self._binding)
        if self._deferred >= 0:
            hold = max(hold, self._client_bytes - self._deferred)
        return hold

    def _find(self, n: int) -> _Command:
        for entry in reversed(self._queue):
            if isinstance(entry, _Command) and entry.n == n:
                return entry
        raise ValueError(f"command {n} is not one the server has yet to answer")

    def block(self, n: int, decision: Decision, code: str = "42501") -> None:
        """Command ``n``, started by the chunk last received (or deferred), must not reach
        the server; the client is told ``code`` (insufficient_privilege by default).

        The server gets a statement its grammar refuses in its place (a simple Query for a
        Query or FunctionCall; for an Execute a Parse, from the portal's Bind when that was
        in the same unsent bytes, so that its planning does not run either). It answers
        with an error where the command's answer would have been, and that error reaches
        the client as ``code``, naming the rule. Everything else is as for any failed
        command: the server's own state machine aborts the transaction block, or skips the
        extended-protocol batch to its Sync, as it would have.
        """
        cmd = self._find(n)
        if cmd.blocked is not None:
            raise ValueError(f"command {n} is blocked already")
        start, end = cmd.span
        if cmd.until_ready:
            instead = query_message(BLOCKED)
        else:
            instead = parse_message(BLOCKED_STATEMENT, BLOCKED)
            bound = self._bound.get(key(cmd.command.portal or ""))
            edits = self._out.edits
            if bound is not None and edits and edits[-1][0] == bound[0]:
                # The Bind was refreshed: what went before it still goes, then the block.
                edits.pop()
                instead = self._refreshed.pop(bound[0], b"") + instead
            floor = max(self._out.sent, edits[-1][1] if edits else 0)
            # From the Bind only within its pipeline: a Sync between them ends the error the
            # replacement raises, and must reach the server.
            if (
                bound is not None
                and bound[1] == n - 1
                and bound[2] == cmd.window
                and floor <= bound[0] < start
            ):
                start = bound[0]
        self._out.replace(start, end, instead)
        who = f"rule {decision.rule!r}" if decision.rule else "the policy's default"
        cmd.blocked = ErrorInfo("ERROR", code, f"witness: blocked by {who}: {decision.reason}")
        self._rewrites += 1

    def _receive(
        self, framer: Framer[PostgresConnection], data: bytes | bytearray | memoryview
    ) -> list[Event]:
        if self._error is not None or self._closed:
            raise self._refusal(framer.side, data)
        first_new = self._n + 1  # commands this call starts are forgotten if it fails
        try:
            framer.feed(data)
        except ProtocolError as exc:
            self._fail(exc, first_new)
            raise
        events = self._events
        if not events:
            return []
        self._events = []
        return events

    def close(self) -> list[Event]:
        """The session ended: every unfinished command finishes as ``aborted``."""
        if self._closed:
            return []
        self._closed = True
        events, self._unreported = self._unreported, []
        now = self._clock()
        queue = self._queue
        if queue and isinstance(queue[0], _Command):
            queue[0].result.bytes = self._server.seen - max(queue[0].mark, self._answered_at)
        for entry in queue:
            if isinstance(entry, _Command):
                entry.result.status = "aborted"
                entry.result.duration_ms = (now - entry.started) * 1000.0
                events.append(CommandFinished(entry.n, entry.result))
        self._queue.clear()
        return events

    def _refusal(self, side: str, data: bytes | bytearray | memoryview) -> ProtocolError:
        if self._error is not None:
            return ProtocolError(
                self._error.side, f"the session already failed: {self._error.message}"
            )
        return ProtocolError(side, f"{len(data)} bytes arrived after close()")

    def _fail(self, exc: ProtocolError, first_new: int) -> None:
        self._error = exc
        self._queue = deque(
            e for e in self._queue if not isinstance(e, _Command) or e.n < first_new
        )
        self._unreported = [
            e for e in self._events if isinstance(e, CommandFinished | SessionError)
        ]
        self._events = []

    # --- client: startup ------------------------------------------------------------------

    def _startup(self, body: bytes) -> None:
        code = int.from_bytes(body[:4], "big")
        major, minor = code >> 16, code & 0xFFFF
        kind = NEGOTIATIONS.get(code)
        if kind is not None:
            if len(body) != 4:
                raise decode.DecodeError(
                    f"a {kind} request has {len(body) - 4} bytes after its code"
                )
            self._events.append(NegotiationRequest(kind, NO_ENCRYPTION))
        elif code == _CANCEL:
            pid, secret = decode.cancel_key(body)
            self._events.append(CancelRequest(pid, secret, _packet(body)))
            self._client.untyped = None
            self._client.phase = CLIENT_CANCELLED
        elif major == _PROTOCOL_3:
            self.params = decode.startup_params(body)
            self._startup_packet = _packet(body)
            # The stream is read in order: the packet ends where the bytes read so far end,
            # less what of the current chunk is still unread.
            self._forward_from = self._client_bytes - self._client.unread
            self._events.append(Startup((major, minor), dict(self.params)))
            self._client.untyped = None
            self._client.phase = CLIENT_AUTHENTICATION
            self._server.phase = SERVER_AUTHENTICATION
        else:
            raise ProtocolError(
                "client",
                f"startup packet with code {code} (protocol {major}.{minor}); expected protocol"
                " 3.x, SSLRequest, GSSENCRequest or CancelRequest",
            )

    # --- client: commands ------------------------------------------------------------------

    def _start(
        self,
        command: Command,
        formats: tuple[int, ...] = (),
        ops: list[int] | None = None,
        reread: Reread | None = None,
    ) -> None:
        self._n += 1
        self._binding = -1
        framer, base = self._client, self._forward_from
        cmd = _Command(
            self._n,
            command,
            formats,
            started=self._clock(),
            mark=self._server.seen,
            room=self._capture_bytes,
            ops=NO_OPS if ops is None else ops,
            reread=reread,
            span=(base + framer.start, base + framer.seen),
        )
        cmd.window = self._bounds_sent
        self._queue.append(cmd)
        self._events.append(CommandStarted(self._n, command))

    def _query(self, body: bytes) -> None:
        raw = decode.query(body)
        n = self._n + 1
        text, decoding = self._reader.read(raw, self._bounds_done)
        reread = None if decoding is None else self._reread(decoding, text=raw)
        self._statements.simple_query()
        self._portals.pop("", None)
        script = sql.script(text) if decoding is None else sql.UNREADABLE
        prepared, ops = self._certain.run(script, n, self._bounds_sent, self._bounds_done)
        self._certain.commit()  # the end of the Query's implicit transaction, if it had one
        self._statements.sync()
        self._bounds_sent += 1
        self._reader.boundary()
        command = Command("query", text, (), prepared=prepared, decoding=decoding)
        self._start(command, (), ops, reread)

    def _parse(self, body: bytes) -> None:
        parse = decode.parse(body, self._reader.codec)
        text, decoding = self._reader.read(parse.text, self._bounds_done)
        script = sql.script(text) if decoding is None else sql.UNREADABLE
        statement = Statement(text, parse.oids, script, defined=self._n)
        if self.refresh and parse.statement:
            statement.source = parse.text
            statement.codec = self._reader.codec
        if decoding is not None:
            statement.decoding = decoding
            if decoding.changed_by is not None:
                statement.raw = parse.text
                statement.window = self._bounds_sent
                statement.final = self._reader.final()
        if self._certain.guessed(parse.statement, self._bounds_done) >= 0:
            self._certain.code(self._n + 1, self._bounds_sent)  # it may be filed under another name
        self._statements.parse(parse.statement, statement)
        self._queue.append(_Marker("Parse", tracked=True))

    def _bind(self, body: bytes) -> None:
        bind = decode.bind(body, self._reader.codec)
        n = self._n + 1  # a Bind counts with the command sent next, usually its Execute
        statement, doubt = self._certain.statement(bind.statement, self._bounds_done)
        if (
            doubt is not None
            and self.refresh
            and statement is not None
            and doubt.doubt in ("changed", "unconfirmed")
            and self._refresh(bind.statement, statement, body)
        ):
            statement, doubt = self._certain.statement(bind.statement, self._bounds_done)
        oids = statement.oids if statement is not None else ()
        codec = self._reader.codec
        params, undecoded = decode.render_params(bind.formats, bind.values, oids, codec)
        changer = self._reader.unsure(self._bounds_done)  # read before its planning runs
        final = changer >= 0 and self._reader.final()
        if doubt is not None or statement is None or statement.script.planned or bind.values:
            # Planning runs the functions it can fold, and a parameter's input function runs
            # its type's checks (a domain's CHECK may call anything): the agent's code, both.
            self._certain.code(n, self._bounds_sent)
        # A Bind to a portal that is still open fails, and takes its transaction down with it,
        # so the old portal can never run again: replacing it is always safe.
        if doubt is None:
            text = "" if statement is None else statement.text
        elif statement is not None and doubt is statement.doubt:
            text = statement.sentence
        else:
            text = doubt.describe()
        portal = Portal(
            bind.statement,
            statement,
            doubt,
            text,
            params,
            formats=bind.result_formats,
            epoch=self._bounds_sent,
            defined=self._n,
        )
        texts = decode.texts(bind.formats, bind.values, oids) if changer >= 0 else []
        if not all(raw.isascii() for raw in texts):
            portal.decoding = Decoding(codec.name, raw=undecoded, changed_by=changer)
            portal.values = bind.values
            portal.param_formats = bind.formats
            portal.oids = oids
            portal.final = final
        elif undecoded:
            portal.decoding = Decoding(codec.name, raw=True)
        guessed = self._certain.guessed(bind.portal, self._bounds_done)
        if guessed >= 0:
            portal.changed_by = guessed  # the backend may have bound another name
        elif bind.portal:
            self._certain.bound(portal, self._portals)
        self._portals[key(bind.portal)] = portal
        at = self._forward_from + self._client.start
        self._bound[key(bind.portal)] = (at, self._n, self._bounds_sent)
        if self._binding < 0:
            self._binding = at

    def _refresh(self, name: str, statement: Statement, bind: bytes) -> bool:
        """Make a named statement's text certain again before this Bind: Witness sends Close
        and Parse of it, from the very bytes it was defined with, in front of the Bind, so
        nothing can run between them. Their answers are Witness's, and the client never
        sees them; if the Parse fails (its table is gone, say), the client gets that error
        where its Bind's answer would be, and the server skips to the Sync. False where the
        bytes would not read the same now (the client encoding changed, or may have)."""
        source = statement.source
        if source is None or not name.isascii() or statement.decoding is not None:
            return False
        if self._reader.unsure(self._bounds_done) >= 0:
            return False
        if not source.isascii() and statement.codec is not self._reader.codec:
            return False
        fresh = Statement(statement.text, statement.oids, statement.script, defined=self._n)
        fresh.source = source
        fresh.codec = statement.codec
        self._statements.close(name)
        self._queue.append(_Marker("Close", tracked=True, injected=True))
        self._statements.parse(name, fresh)
        self._queue.append(_Marker("Parse", tracked=True, injected=True))
        self._rewrites += 2
        first = close_message("S", name) + parse_message(name, source, statement.oids)
        base = self._forward_from
        start = base + self._client.start
        self._out.replace(start, base + self._client.seen, first + b"B" + _packet(bind))
        self._refreshed[start] = first
        if len(self._refreshed) > _REFRESHED_LIMIT:  # those not blocked are not looked up
            self._refreshed = {k: v for k, v in self._refreshed.items() if k >= self._out.sent}
        return True

    def _describe(self, body: bytes) -> None:
        kind, name = decode.target(body, self._reader.codec)
        if kind == "S":  # answered by ParameterDescription, then RowDescription or NoData
            statement = self._statements.get(name)
            if statement is not None and self._statements.unconfirmed(name):
                statement = None
            self._queue.append(_Marker("Describe", statement))

    def _execute(self, body: bytes) -> None:
        name = decode.execute(body, self._reader.codec)
        n = self._n + 1
        certain = self._certain
        window = self._bounds_sent
        portal = self._portals.get(key(name))
        guessed = certain.guessed(name, self._bounds_done)
        if portal is not None and guessed >= 0:
            doubt = Prepared(name, portal.text, "bound", portal.defined, "name", guessed, "portal")
            certain.code(n, window)
            text = doubt.describe()
            self._start(Command("execute", text, portal.params, portal.statement, name, (doubt,)))
            return
        if portal is None:  # a cursor DECLAREd in SQL or opened by code, or none at all
            changed = certain.unseen(name)
            unseen = Prepared(name, None, doubt="unseen", changed_by=changed, kind="portal")
            certain.code(n, window)
            self._start(Command("execute", unseen.describe(), (), None, name, (unseen,)))
            return
        statement = portal.source
        if portal.values is not None or (statement is not None and statement.raw is not None):
            portal.settle(self._reader, self._bounds_done)
        prepared: tuple[Prepared, ...] = ()
        text = portal.text
        replaced_by = portal.changed_by
        if portal.doubt is not None:
            prepared = (portal.doubt,)
        elif replaced_by:
            replaced = Prepared(
                name, text, "bound", portal.defined, "changed", replaced_by, "portal"
            )
            prepared = (replaced,)
            text = replaced.describe()
        ops = NO_OPS
        if prepared or statement is None:
            certain.code(n, window)
        else:
            prepared, ops = certain.run(statement.script, n, window, self._bounds_done)
        if name and not replaced_by and portal.changed_by == n:
            # Marked by its own run alone: a running portal cannot be dropped.
            portal.changed_by = 0
            certain.fresh.append(portal)
        decoding = None
        reread = None
        if portal.decoding is not None or (statement is not None and statement.decoding):
            decoding = portal.decoding_with(statement)
            if decoding is not None and decoding.changed_by is not None:
                reread = Reread(portal.epoch, portal=portal)
        command = Command(
            "execute", text, portal.params, portal.statement, name, prepared, decoding
        )
        self._start(command, portal.formats, ops, reread)
        if self.masks is not None and statement is not None and statement.fields is not None:
            # Described as a statement (asyncpg), so its rows come with no RowDescription.
            found = statement.fields
            formats = decode.expand_formats(portal.formats, len(found))
            shape = [
                Field(f[0], f[1], f[2], f[3], fmt) for f, fmt in zip(found, formats, strict=True)
            ]
            cmd = self._queue[-1]
            assert isinstance(cmd, _Command)
            cmd.plan = self.masks.plan(shape)
            cmd.shaped = True
            cmd.columns = tuple(formats)

    def _flush(self, body: bytes) -> None:
        self._binding = -1  # the client waits for the answers to what it sent

    def _sync(self, body: bytes) -> None:
        self._binding = -1
        if self._copy_in is None:  # PostgreSQL ignores Sync during COPY FROM STDIN
            self._certain.commit()
            self._bounds_sent += 1
            self._reader.boundary()
            self._queue.append(_SYNC)
            self._statements.sync()

    def _close(self, body: bytes) -> None:
        kind, name = decode.target(body, self._reader.codec)
        if self._certain.guessed(name, self._bounds_done) >= 0:
            # The backend may close another statement or portal.
            self._certain.code(self._n + 1, self._bounds_sent)
        if kind == "S":
            self._statements.close(name)
        else:
            self._portals.pop(key(name), None)
        self._queue.append(_Marker("Close", tracked=kind == "S"))

    def _function_call(self, body: bytes) -> None:
        call = decode.function_call(body)
        n = self._n + 1
        codec = self._reader.codec
        params, undecoded = decode.render_params(call.formats, call.args, (), codec)
        changer = self._reader.unsure(self._bounds_done)
        texts = decode.texts(call.formats, call.args, ()) if changer >= 0 else []
        decoding = None
        reread = None
        if not all(raw.isascii() for raw in texts):
            decoding = Decoding(codec.name, raw=undecoded, changed_by=changer)
            if not self._reader.final():
                reread = Reread(self._bounds_sent, values=call.args, formats=call.formats)
        elif undecoded:
            decoding = Decoding(codec.name, raw=True)
        self._certain.code(n, self._bounds_sent)
        self._certain.commit()
        self._bounds_sent += 1
        self._reader.boundary()
        command = Command("function_call", f"function {call.oid}", params, decoding=decoding)
        self._start(command, (), None, reread)

    def _reread(self, decoding: Decoding, text: bytes) -> Reread | None:
        """Bytes to read again once their encoding is known (not if it never will be)."""
        if decoding.changed_by is None or self._reader.final():
            return None
        return Reread(self._bounds_sent, text=text)

    def _copy_end(self, body: bytes) -> None:
        self._copy_in = None

    def _terminate(self, body: bytes) -> None:
        self._binding = -1
        self._events.append(_TERMINATE)
        self._client.phase = CLIENT_CLOSED

    def _client_account(self, copied: int, rows: int) -> None:
        if copied and self._copy_in is not None:
            self._copy_in.result.copy_bytes += copied

    # --- server: authentication ---------------------------------------------------------------

    def _auth_error(self, body: bytes) -> None:
        self._events.append(SessionError(decode.error_info(body)))

    def _parameter_status(self, body: bytes) -> None:
        name, value = decode.parameter_status(body)
        # A change is reported just before the ReadyForQuery that ends the pipeline it
        # happened in: the next pipeline is the first read in the new encoding.
        window = self._bounds_done + 1 if self._server.phase is self._server_ready else 0
        self._reader.reported(name, value, window)

    def _backend_key(self, body: bytes) -> None:
        self.backend_key = BackendKey(*decode.backend_key(body))
        self._events.append(self.backend_key)

    def _first_ready(self, body: bytes) -> None:
        status = decode.ready_status(body)
        self._server.phase = self._server_ready
        if self._client.phase is CLIENT_AUTHENTICATION:
            self._client.phase = CLIENT_READY
        self._answered_at = self._server.seen  # the login's bytes are no command's
        self._reader.logged_in()
        self._events.append(_READY[status])

    # --- server: answers ---------------------------------------------------------------------

    def _server_account(self, copied: int, rows: int) -> None:
        queue = self._queue
        if queue:
            head = queue[0]
            if isinstance(head, _Command):
                head.result.copy_bytes += copied
                if rows:  # DataRows the framer skipped: capture is full
                    head.result.truncated = True
                    self._stop_capture(head)

    def _head(self, what: str) -> _Command:
        if self._queue:
            head = self._queue[0]
            if isinstance(head, _Command):
                return head
        raise ProtocolError("server", f"{what} arrived while {self._awaiting()}")

    def _head_marker(self, what: str, kind: str) -> _Marker:
        if self._queue:
            head = self._queue[0]
            if isinstance(head, _Marker) and head.kind == kind:
                self._queue.popleft()
                self._answered_at = self._server.seen
                return head
        raise ProtocolError("server", f"{what} arrived while {self._awaiting()}")

    def _awaiting(self) -> str:
        if not self._queue:
            return "no request awaited an answer"
        head = self._queue[0]
        if isinstance(head, _Command):
            return f"command {head.n} ({head.command.kind}) awaited its answer"
        return f"a {head.kind} awaited its answer"

    def _finish(self, cmd: _Command, status: str, error: ErrorInfo | None = None) -> None:
        result = cmd.result
        if cmd.blocked is not None:
            self._rewrites -= 1
            if status == "error":  # the substitute's error, told as the block
                status, error, result.error = "blocked", cmd.blocked, cmd.blocked
        result.status = status
        if cmd.ops:
            self._settle_ops(cmd, status)
        if cmd.reread is not None:
            result.reading = cmd.reread.reading(cmd.command, self._reader, self._bounds_done)
        if error is not None and result.error is None:
            result.error = error
        result.duration_ms = (self._clock() - cmd.started) * 1000.0
        seen = self._server.seen
        result.bytes = seen - max(cmd.mark, self._answered_at)
        self._answered_at = seen
        if self._copy_in is cmd:
            self._copy_in = None
        self._events.append(CommandFinished(cmd.n, result))
        if self._capture_rows:
            self._room(self._capture_bytes)

    def _settle_ops(self, cmd: _Command, status: str) -> None:
        """The answer to a command that defines or drops prepared statements: a Query's
        statements ran up to its first error; an Execute's either ran or did not."""
        if status in ("ok", "suspended"):
            ran = len(cmd.ops)
        elif status == "error" and cmd.until_ready:
            ran = len(cmd.result.tags)
        else:
            ran = 0
        for index in cmd.ops:
            if index < ran:
                self._statements.confirm()
            else:
                self._statements.fail()

    def _complete(self, body: bytes) -> None:
        tag, rows = decode.command_complete(body)
        cmd = self._head("CommandComplete")
        result = cmd.result
        result.tags.append(tag)
        result.rows += rows
        if not cmd.until_ready:
            self._queue.popleft()
            self._finish(cmd, "ok")

    def _empty_query(self, body: bytes) -> None:
        cmd = self._head("EmptyQueryResponse")
        cmd.result.tags.append("")
        if not cmd.until_ready:
            self._queue.popleft()
            self._finish(cmd, "ok")

    def _suspended(self, body: bytes) -> None:
        cmd = self._head("PortalSuspended")
        if cmd.until_ready:
            raise ProtocolError("server", f"PortalSuspended arrived for {cmd.command.kind} {cmd.n}")
        self._queue.popleft()
        self._finish(cmd, "suspended")

    def _copy_in_response(self, body: bytes) -> None:
        self._copy_in = self._head("CopyInResponse")
        # Syncs the client sent before it saw this reach the server in copy-in mode, which
        # ignores them; the client sends another once the copy ends.
        queue = self._queue
        while len(queue) > 1 and queue[1] is _SYNC:
            del queue[1]
            self._bounds_sent -= 1

    def _copy_out_response(self, body: bytes) -> None:
        cmd = self._head("CopyOutResponse")  # its CopyData is counted as it passes
        if not self._masking:
            return
        masks = self.masks
        assert masks is not None
        cmd.copy = plan = masks.copy_plan(cmd.command.text)
        if plan is not None and body[:1] != b"\0":
            # Refused at the decision point; should one come anyway, nothing of it goes.
            raise ProtocolError("server", "a binary COPY of a masked table cannot be masked")

    def _parse_complete(self, body: bytes) -> None:
        if self._head_marker("ParseComplete", "Parse").injected:
            self._strip(body)
        self._statements.confirm()

    def _close_complete(self, body: bytes) -> None:
        marker = self._head_marker("CloseComplete", "Close")
        if marker.injected:
            self._strip(body)
        if marker.tracked:
            self._statements.confirm()

    def _strip(self, body: bytes) -> None:
        """The answer just read was to a request of Witness's: the client never sees it."""
        end = self._server.seen
        self._back.replace(end - len(body) - 5, end, b"")
        self._rewrites -= 1

    def _parameter_types(self, body: bytes) -> None:
        oids = decode.parameter_types(body)
        marker = self._head_marker("ParameterDescription", "Describe")
        if marker.statement is not None:
            marker.statement.oids = oids
        self._described = marker.statement
        self._describing = self._capture_rows > 0 or self.masks is not None

    def _withhold_detail(self, kind: bytes, body: bytes) -> None:
        """In a masked session, a server's error or notice goes without its DETAIL, which
        may quote a row's masked values."""
        hidden = without_detail(body)
        if hidden is not None:
            end = self._server.seen
            message = kind + (len(hidden) + 4).to_bytes(4, "big") + hidden
            self._back.replace(end - len(body) - 5, end, message)

    def _notice(self, body: bytes) -> None:
        if self._masking:
            self._withhold_detail(b"N", body)

    def _error_response(self, body: bytes) -> None:
        if self._masking:
            self._withhold_detail(b"E", body)
        info = decode.error_info(body, self._reader.at(self._bounds_done))
        self._copy_in = None
        self._describing = False
        queue = self._queue
        if self._failing or not queue:
            self._events.append(SessionError(info))  # a FATAL shutdown, say
            return
        head = queue[0]
        if isinstance(head, _Command) and head.until_ready:
            if head.result.error is None:  # the rest of the query string is not run
                head.result.error = info
                self._answer_blocked(head, info, body)
            return
        # An extended-protocol error: the server skips everything up to the next Sync.
        # Requests before the first Execute failed or were skipped; that Execute gets the
        # error, since it is what did not run because of it.
        self._failing = True
        while queue and queue[0] is not _SYNC:
            entry = queue[0]
            if isinstance(entry, _Command):
                if entry.until_ready:
                    break  # a simple Query is skipped like the rest
                queue.popleft()
                self._answer_blocked(entry, info, body)
                self._finish(entry, "error", info)
                return
            queue.popleft()
            self._unanswered(entry)
        self._answered_at = self._server.seen
        self._events.append(SessionError(info))

    def _answer_blocked(self, cmd: _Command, info: ErrorInfo, body: bytes) -> None:
        """The server's error for a blocked command's substitute: the client is told the
        block instead. A FATAL or PANIC is the server's own news, and goes on as it is."""
        told = cmd.blocked
        if told is not None and info.severity == "ERROR":
            end = self._server.seen
            reply = error_response("ERROR", told.code, told.message)
            self._back.replace(end - len(body) - 5, end, reply)

    def _unanswered(self, marker: _Marker) -> None:
        if marker.injected:
            self._rewrites -= 1
        if marker.tracked:
            self._statements.fail()

    def _ready(self, body: bytes) -> None:
        status = decode.ready_status(body)
        queue = self._queue
        if self._failing:
            self._failing = False
            self._answered_at = self._server.seen  # what the server skipped cost it nothing
            while queue:
                entry = queue.popleft()
                if entry is _SYNC:
                    self._bounds_done += 1
                    break
                if isinstance(entry, _Command):
                    self._bounds_done += entry.until_ready
                    self._finish(entry, "skipped")
                else:
                    self._unanswered(entry)
        elif queue and queue[0] is _SYNC:
            queue.popleft()
            self._bounds_done += 1
        else:
            cmd = self._head("ReadyForQuery")
            if not cmd.until_ready:
                raise ProtocolError("server", f"ReadyForQuery arrived while {self._awaiting()}")
            queue.popleft()
            self._bounds_done += 1
            self._finish(cmd, "error" if cmd.result.error else "ok")
        self._certain.ready(status, self._bounds_done, self._bounds_sent)
        if status == "I" and self._portals:
            done = self._bounds_done
            self._portals = {k: p for k, p in self._portals.items() if p.epoch >= done}
        self._copy_in = None
        self._describing = False
        self._answered_at = self._server.seen
        self._events.append(_READY[status])

    # --- server: row capture -----------------------------------------------------------------

    def _row_description(self, body: bytes) -> None:
        masks = self.masks
        if self._describing:
            self._describing = False
            if masks is not None and self._described is not None:
                codec = self._reader.at(self._bounds_done)
                self._described.fields = tuple(decode.fields(body, codec))
            return
        if masks is not None:
            self._shape(masks, body)
        if self._capture_rows <= 0:
            return
        names, formats = decode.row_description(body, self._reader.at(self._bounds_done))
        cmd = self._capturing()
        if cmd is None:
            return
        result = cmd.result
        if result.columns is None:
            result.columns = names
            result.captured = []
            cmd.formats = formats
        else:
            self._stop_capture(cmd)  # a second result set: its rows have another shape

    def _shape(self, masks: SessionMasks, body: bytes) -> None:
        """A result's columns are known: how each is masked, for the command at the head."""
        queue = self._queue
        if not queue or not isinstance(queue[0], _Command):
            return
        cmd = queue[0]
        found = [Field(*f) for f in decode.fields(body, self._reader.at(self._bounds_done))]
        cmd.plan = masks.plan(found)
        cmd.shaped = True
        cmd.columns = tuple(f.format for f in found)

    def _data_row(self, body: bytes) -> None:
        sent = self._mask_row(body) if self._masking else None
        cmd = self._capturing()
        if cmd is None:
            return
        result = cmd.result
        if result.captured is None:
            result.captured = []
        if len(body) > cmd.room or len(result.captured) >= self._capture_rows:
            result.truncated = True
            self._stop_capture(cmd)
            return
        codec = self._reader.at(self._bounds_done)
        row = decode.data_row(body, cmd.formats, codec)
        masks = self.masks
        if masks is not None:  # what the trail keeps of a masked value is masked too
            plan, formats = self._plan_of(cmd, len(row))
            if plan is not None:
                # The wire's masked values where it masked them: not worked out twice.
                raws, wired = sent if sent is not None else (decode.row_values(body), None)
                kept: list[str | None] = []
                for i, (cell, value, raw) in enumerate(zip(plan, row, raws, strict=True)):
                    fmt = formats[i] if i < len(formats) else 0
                    if cell is None:
                        kept.append(value)
                    elif wired is not None and cell.wire:
                        kept.append(masks.trail_shown(cell, value, raw, wired[i], fmt, codec))
                    else:
                        kept.append(masks.trail_value(cell, value, raw, fmt, codec))
                row = kept
        result.captured.append(row)
        cmd.room -= len(body)
        # Once full, let the framer skip rows unread; it reports them, which sets truncated.
        full = len(result.captured) >= self._capture_rows
        self._room(-1 if full else cmd.room)

    def _plan_of(self, cmd: _Command, count: int) -> tuple[Plan | None, tuple[int, ...]]:
        """The command's plan and its columns' formats; every column masked when the shape
        of its result is not known (no Describe told it), or is not the row's."""
        masks = self.masks
        assert masks is not None
        if cmd.shaped and (cmd.plan is None or len(cmd.plan) == count):
            return cmd.plan, cmd.columns
        formats = tuple(decode.expand_formats(cmd.formats, count))
        return masks.unknown_plan(count), formats

    def _mask_row(self, body: bytes) -> tuple[list[bytes | None], list[bytes | None]] | None:
        """A DataRow with its masked values replaced, in place, on the way to the client:
        its values as they came and as they went (None: no column is masked)."""
        queue = self._queue
        if not queue or not isinstance(queue[0], _Command):
            return None
        masks = self.masks
        assert masks is not None
        came = decode.row_values(body)
        plan, formats = self._plan_of(queue[0], len(came))
        if plan is None:
            return None
        values = list(came)
        codec = self._reader.at(self._bounds_done)
        changed = False
        for i, raw in enumerate(came):
            cell = plan[i]
            if cell is None or not cell.wire or raw is None:
                continue
            fmt = formats[i] if i < len(formats) else 0
            masked = masks.wire_value(cell, raw, fmt, codec)
            if masked != raw:
                values[i] = masked
                changed = True
        if changed:
            rebuilt = rebuild_row(values)
            end = self._server.seen
            message = b"D" + (len(rebuilt) + 4).to_bytes(4, "big") + rebuilt
            self._back.replace(self._server.start, end, message)
        return came, values

    def _copy_data(self, body: bytes) -> None:
        """A row of COPY TO STDOUT output, masked on the way if its table is."""
        queue = self._queue
        if not queue or not isinstance(queue[0], _Command):
            return
        cmd = queue[0]
        cmd.result.copy_bytes += len(body)
        plan = cmd.copy
        if plan is None:
            return
        cmd.copy_rows += 1
        if plan.copy.header and cmd.copy_rows == 1:
            return
        masks = self.masks
        assert masks is not None
        cells = plan.cells

        def mask(index: int, value: str) -> str:
            cell = None if plan.everything or index >= len(cells) else cells[index]
            if cell is None:
                return masked_text(None, value, masks.key)
            return masks.text(cell, value) or value

        codec = self._reader.at(self._bounds_done)
        flags = () if plan.everything else tuple(c is not None for c in cells)
        row = copyrows.mask_row(body, plan.copy, flags, mask, codec.python or "utf-8")
        if row != body:
            end = self._server.seen
            message = b"d" + (len(row) + 4).to_bytes(4, "big") + row
            self._back.replace(self._server.start, end, message)

    def _no_data(self, body: bytes) -> None:
        self._describing = False

    def _capturing(self) -> _Command | None:
        if self._queue:
            head = self._queue[0]
            if isinstance(head, _Command) and head.room >= 0:
                return head
        return None

    def _stop_capture(self, cmd: _Command) -> None:
        cmd.room = -1
        self._room(-1)


_C = PostgresConnection
_CLIENT_COMMANDS = {
    b"Q": _C._query,
    b"P": _C._parse,
    b"B": _C._bind,
    b"D": _C._describe,
    b"E": _C._execute,
    b"S": _C._sync,
    b"C": _C._close,
    b"F": _C._function_call,
    b"c": _C._copy_end,
    b"f": _C._copy_end,
    b"X": _C._terminate,
    b"H": _C._flush,
}
# Password messages are hopped over unread: no secret is ever decoded or kept.
CLIENT_STARTUP: Phase[_C] = Phase("startup", types(""), {})
CLIENT_AUTHENTICATION: Phase[_C] = Phase("authentication", types("pd"), _CLIENT_COMMANDS)
CLIENT_READY: Phase[_C] = Phase("ready", types("d"), _CLIENT_COMMANDS)
CLIENT_CANCELLED: Phase[_C] = Phase("cancel", types(""), {})
CLIENT_CLOSED: Phase[_C] = Phase("terminated", types(""), {})

SERVER_STARTUP: Phase[_C] = Phase("startup", types(""), {})
SERVER_AUTHENTICATION: Phase[_C] = Phase(
    "authentication",
    types("RNv"),
    {
        b"E": _C._auth_error,
        b"K": _C._backend_key,
        b"S": _C._parameter_status,
        b"Z": _C._first_ready,
    },
)
_SERVER_ANSWERS = {
    b"C": _C._complete,
    b"I": _C._empty_query,
    b"s": _C._suspended,
    b"E": _C._error_response,
    b"Z": _C._ready,
    b"G": _C._copy_in_response,
    b"W": _C._copy_in_response,
    b"H": _C._copy_out_response,
    b"1": _C._parse_complete,
    b"3": _C._close_complete,
    b"t": _C._parameter_types,
    b"S": _C._parameter_status,
}
SERVER_READY: Phase[_C] = Phase("ready", types("dDTn2NAVc"), _SERVER_ANSWERS)
SERVER_READY_MASK: Phase[_C] = Phase(
    "ready",
    types("2AVc"),
    {
        **_SERVER_ANSWERS,
        b"N": _C._notice,
        b"T": _C._row_description,
        b"D": _C._data_row,
        b"n": _C._no_data,
        b"d": _C._copy_data,
    },
)
SERVER_READY_CAPTURE: Phase[_C] = Phase(
    "ready",
    types("d2NAVc"),
    {**_SERVER_ANSWERS, b"T": _C._row_description, b"D": _C._data_row, b"n": _C._no_data},
)
