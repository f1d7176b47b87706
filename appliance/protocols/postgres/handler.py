"""PostgreSQL behind the relay's protocol-neutral interface (:mod:`appliance.protocols.handler`).

The parser (:mod:`appliance.protocols.postgres.connection`) does the work; this says its
events in the relay's words and its errors in PostgreSQL's: SQLSTATEs, ErrorResponses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from appliance.model import Command, Decision, ErrorInfo, Result
from appliance.policy.masking import SessionMasks, withheld
from appliance.policy.redact import SCRUBBED, Redactor
from appliance.protocols import handler as h
from appliance.protocols.postgres import events as ev
from appliance.protocols.postgres.connection import PostgresConnection
from appliance.protocols.postgres.messages import error_response
from appliance.protocols.postgres.wire import PostgresTap

# The relay's reasons as SQLSTATEs.
SQLSTATE = {
    h.NOT_BOUND: "28000",  # invalid_authorization_specification
    h.DENIED: "42501",  # insufficient_privilege
    h.TOO_MANY: "53300",  # too_many_connections
    h.DIVERSION: "08004",  # sqlserver_rejected_establishment_of_sqlconnection
    h.UNREACHABLE: "08006",  # connection_failure
    h.PROTOCOL: "08P01",  # protocol_violation
    h.TRAIL: "58030",  # io_error
    h.INTERNAL: "XX000",  # internal_error
    h.EXPIRED: "28000",
    h.CANCELLED: "57014",  # query_canceled
}
_HELD = "01000"  # warning: a NOTICE's code
_READY = {status: h.Ready(status) for status in "ITE"}
_CLOSED = h.Closed()
_REMEMBERED = 32  # secrets of recent commands, to scrub from errors that name no command
_MOVED = ("search_path",)


def _moves_search_path(params: dict[str, str]) -> bool:
    """Whether the startup packet sets search_path: as a parameter of its own, or in
    ``options`` (``-c search_path=...``, in any spelling the server accepts)."""
    return any(
        "search_path" in name.lower() or (name == "options" and "search_path" in value.lower())
        for name, value in params.items()
    )


class PostgresHandler:
    """One PostgreSQL session's handler."""

    def __init__(
        self,
        *,
        capture_rows: int,
        capture_bytes: int,
        max_message: int,
        redactor: Redactor,
        refresh: bool = False,
    ) -> None:
        self.pg = PostgresConnection(
            capture_rows=capture_rows,
            capture_bytes=capture_bytes,
            max_message=max_message,
            refresh=refresh,
        )
        self.redactor = redactor
        self.max_message = max_message
        self._secrets: dict[int, list[str]] = {}  # command -> what its result may echo
        self._recent: list[str] = []

    @property
    def rewriting(self) -> bool:
        return self.pg.rewriting

    def receive_client(self, data: bytes) -> list[h.Event]:
        return _neutral(self.pg.receive_client(data))

    def client_payload(self, data: bytes) -> bytes:
        return self.pg.client_payload(data)

    def receive_server(self, data: bytes) -> list[h.Event]:
        return _neutral(self.pg.receive_server(data))

    def server_payload(self, data: bytes) -> bytes:
        return self.pg.server_payload(data)

    def block(self, n: int, decision: Decision, why: str = h.DENIED) -> None:
        self.pg.block(n, decision, SQLSTATE[why])

    def notice(self, message: str, hint: str | None = None) -> bytes:
        return self.pg.notice(_HELD, message, hint)

    def mask(self, masks: Any) -> None:
        self.pg.mask(masks)

    def formats(self, n: int) -> tuple[int, ...]:
        return self.pg.formats(n)

    def defer(self, n: int) -> None:
        self.pg.defer(n)

    @property
    def deferred_bytes(self) -> int:
        return self.pg.deferred_bytes

    def release(self) -> bytes:
        return self.pg.release()

    def command_record(self, n: int, command: Command) -> dict[str, Any]:
        """The command's record, its secrets redacted: literals in its text and in the
        prepared texts it names, and the bind parameters that stand for them."""
        payload = command.as_dict()
        payload["n"] = n
        redactor = self.redactor
        found = redactor.command(command.text)
        secrets: list[str] = []
        if found is not None:
            payload["text"] = found.text
            secrets += found.secrets
            if found.params and command.params:
                payload["params"] = _scrubbed(command.params, found.params)
        for entry in payload.get("prepared", ()):
            text = entry.get("text")
            inner = None if text is None else redactor.command(text)
            if inner is not None:
                entry["text"] = inner.text
                secrets += inner.secrets
        if found is not None or secrets:
            payload["redacted"] = True
        if secrets:
            self._secrets[n] = secrets
            self._recent = (self._recent + secrets)[-_REMEMBERED:]
        return payload

    def mask_record(self, n: int, payload: dict[str, Any], masks: SessionMasks | None) -> None:
        """The command's record with the values of masked columns it carries masked (its
        text's, its parameters', the prepared texts'); the clear values are scrubbed from
        what the server answers it. With no ``masks`` (none is known yet), every value."""
        clear: list[str] = []
        params = payload.get("params") or []
        # An EXECUTE's arguments are the parameters of the statement it runs: if that one
        # puts a parameter in a masked column, every argument is masked.
        whole = masks is None
        for entry in payload.get("prepared", ()):
            text = entry.get("text")
            if text is None:
                continue
            whole = whole or (masks is not None and masks.carries_params(text))
            inner = withheld(text, ()) if masks is None else masks.recorded(text, ())
            if inner is not None:
                entry["text"] = inner.text
                clear += inner.clear
        text = payload["text"]
        found = withheld(text, params) if whole or masks is None else masks.recorded(text, params)
        if found is not None:
            payload["text"] = found.text
            if found.params:
                payload["params"] = [found.params.get(i, v) for i, v in enumerate(params, 1)]
            clear += found.clear
        if clear:
            payload["masked"] = True
            self._secrets[n] = [*self._secrets.get(n, ()), *clear]
            self._recent = (self._recent + clear)[-_REMEMBERED:]

    def result_record(self, n: int, result: Result) -> dict[str, Any]:
        payload = result.as_dict()
        payload["n"] = n
        secrets = self._secrets.pop(n, None)
        reading = payload.get("reading")
        if reading is not None:  # the text read again: as secret as the first reading
            found = self.redactor.command(reading["text"])
            if found is not None:
                reading["text"] = found.text
                secrets = [*(secrets or ()), *found.secrets]
                if found.params and reading.get("params"):
                    reading["params"] = _scrubbed(reading["params"], found.params)
        error = payload.get("error")
        if error is not None and secrets:
            error["message"] = self.redactor.scrub(error["message"], secrets)
        return payload

    def error_record(self, error: ErrorInfo) -> dict[str, Any]:
        payload = error.as_dict()
        if self._recent:
            payload["message"] = self.redactor.scrub(payload["message"], self._recent)
        return payload

    def refusal(self, why: str, message: str) -> h.Refusal:
        code = SQLSTATE[why]
        return h.Refusal(code, error_response("FATAL", code, message))

    def close(self) -> list[h.Event]:
        return _neutral(self.pg.close())

    def wire(self, limit: int) -> h.Tap:
        return PostgresTap(self.redactor, limit, self.max_message)


def _scrubbed(params: Sequence[str | None], secret: frozenset[int]) -> list[str | None]:
    """The parameters with those numbered in ``secret`` (1-based) scrubbed."""
    return [SCRUBBED if i in secret else value for i, value in enumerate(params, 1)]


def _neutral(events: list[ev.Event]) -> list[h.Event]:
    """The parser's events in the relay's words, in place (the list is the parser's fresh
    one each call); the command events, most of them, are already."""
    out = cast(list[h.Event], events)
    for i, event in enumerate(events):
        if isinstance(event, ev.CommandStarted | ev.CommandFinished):
            continue
        if isinstance(event, ev.Ready):
            out[i] = _READY[event.status]
        elif isinstance(event, ev.BackendKey):
            out[i] = h.CancelKey((event.pid, event.secret), event.pid)
        elif isinstance(event, ev.SessionError):
            out[i] = h.Failed(event.error)
        elif isinstance(event, ev.Startup):
            params = event.params
            user = params.get("user")
            moved = _MOVED if _moves_search_path(params) else ()
            out[i] = h.Opened(user, params.get("database", user), params, moved)
        elif isinstance(event, ev.NegotiationRequest):
            out[i] = h.Reply(event.reply, event.kind)
        elif isinstance(event, ev.CancelRequest):
            key = (event.pid, event.secret)
            out[i] = h.Cancel(key, f"cancel backend pid {event.pid}", event.packet)
        elif isinstance(event, ev.Terminate):
            out[i] = _CLOSED
    return out
