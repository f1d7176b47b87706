"""The approvals desk: carries out holds for the recorder's sessions.

A session whose statement a ``hold`` rule matched hands it here and stops reading its
client. Each step is a trail event (type ``approval``), committed before anything moves:
``requested`` before the client is told (a NOTICE with the approval id) and the webhook is
called; ``notified`` when the webhook took it (or gave up); ``vote`` for an approval that is
not yet enough; then exactly one end: ``approved`` (the held bytes go on), ``denied``,
``expired`` or ``withdrawn`` (the statement never reaches the backend, and the client gets
the protocol's error in its place). Other sessions are never held up: nothing here blocks
the event loop, and a session's hold is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from appliance.policy import approvals as ap
from appliance.policy.approvals import ApprovalError, Approvals, Hold
from appliance.protocols.handler import CANCELLED, DENIED
from appliance.proxy.notify import Webhook, message
from appliance.proxy.recorder import NotCommitted, Recorder

log = logging.getLogger(__name__)
EVENT = "approval"
RESTARTED = "the recorder restarted while the statement was held; it was never forwarded"
SHUTTING_DOWN = "the recorder shut down while the statement was held; it was never forwarded"


class HeldSession(Protocol):
    """What the desk needs of a session (proxy.server.Session)."""

    id: str
    ended: str | None

    def tell_held(self, hold: Hold) -> None:
        """The hold is recorded: tell the client."""
        ...

    def resolve(self, hold: Hold, why: str) -> None:
        """The hold ended: go on (approved), or answer the statement with reason ``why``."""
        ...


class _Step:
    """Runs ``then`` once the events recorded before it are committed, ``failed`` if not."""

    def __init__(self, then: Any, failed: Any) -> None:
        self.then = then
        self.failed = failed

    def released(self) -> None:
        self.then()

    def refused(self, reason: str) -> None:
        self.failed(reason)


class Desk:
    """Every hold of one recorder, the sessions they stop, their timers and watchers."""

    def __init__(
        self, approvals: Approvals, recorder: Recorder, webhook: Webhook | None = None
    ) -> None:
        self.approvals = approvals
        self.recorder = recorder
        self.webhook = webhook
        self.sessions: dict[str, HeldSession] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.watchers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- a hold's life -------------------------------------------------------------------

    def hold(
        self,
        session: HeldSession,
        n: int,
        payload: dict[str, Any],
        *,
        rule: str | None,
        reason: str,
        where: tuple[str, str | None],
        shape: str | None,
    ) -> Hold:
        """Hold command ``n`` of ``session`` (its record is ``payload``, already recorded)."""
        backend, database = where
        hold = self.approvals.request(
            session=session.id,
            n=n,
            identity=payload.get("identity"),
            backend=backend,
            database=database,
            text=str(payload.get("text", "")),
            rule=rule,
            reason=reason,
            shape=shape,
        )
        self.sessions[hold.id] = session
        self._record(
            hold,
            "requested",
            text=hold.text,
            rule=rule,
            reason=reason,
            backend=backend,
            database=database,
            identity=hold.identity,
            deadline=hold.deadline,
        )
        self.recorder.gate(
            _Step(lambda: self._requested(hold), lambda why: self._unrecorded(hold, why))
        )
        loop = asyncio.get_running_loop()
        self.timers[hold.id] = loop.call_at(
            loop.time() + (hold.deadline - hold.requested), self._expire, hold.id
        )
        return hold

    def _requested(self, hold: Hold) -> None:
        if hold.state != ap.PENDING:
            return
        session = self.sessions.get(hold.id)
        if session is not None:
            session.tell_held(hold)
        self._publish(hold, "requested")
        if self.webhook is not None:
            self._spawn(self._notify(hold, self.webhook))

    def _unrecorded(self, hold: Hold, why: str) -> None:
        """The request could not be committed: the statement is refused, as any would be."""
        if hold.state == ap.PENDING:
            self.approvals.end(hold, ap.DENIED, f"the hold could not be recorded: {why}")
            self._resolve(hold, DENIED)

    async def _notify(self, hold: Hold, webhook: Webhook) -> None:
        attempts, error = await webhook.send(message(hold))
        if error is None:
            self._record(hold, "notified", ok=True, attempts=attempts)
        else:
            log.warning("approval %s: the webhook was not taken: %s", hold.id, error)
            self._record(hold, "notified", ok=False, attempts=attempts, error=error)

    async def vote(
        self,
        hold_id: str,
        identity: dict[str, Any] | None,
        approve: bool,
        reason: str | None = None,
        window_minutes: int = 0,
    ) -> Hold:
        """A person's vote, committed to the trail before it counts for anything outside:
        the hold as it stands after it. Raises ApprovalError if refused."""
        hold = self.approvals.vote(hold_id, identity, approve, reason, window_minutes)
        vote = {"by": identity, "reason": reason}
        if hold.state == ap.PENDING:
            self._record(hold, "vote", **vote, window_minutes=window_minutes)
            self._publish(hold, "vote")
            await self._committed()
            return hold
        self._end(hold, DENIED, **vote)
        await self._committed()
        return hold

    def _expire(self, hold_id: str) -> None:
        self.timers.pop(hold_id, None)
        hold = self.approvals.holds.get(hold_id)
        if hold is None or hold.state != ap.PENDING:
            return
        timeout = self.approvals.settings.timeout_seconds
        self.approvals.end(hold, ap.EXPIRED, f"no decision within {timeout:g} s")
        self._end(hold, DENIED)

    def withdraw(self, session: HeldSession, why: str, cancelled: bool = False) -> int:
        """Withdraw the session's pending holds (the client cancelled, or the session
        ended); how many there were."""
        count = 0
        for hold in self._pending_of(session):
            self.approvals.end(hold, ap.WITHDRAWN, why)
            self._end(hold, CANCELLED if cancelled else DENIED)
            count += 1
        return count

    def deny_session(self, session: HeldSession, why: str) -> None:
        """Deny the session's pending holds (its identity expired, the recorder stops)."""
        for hold in self._pending_of(session):
            self.approvals.end(hold, ap.DENIED, why)
            self._end(hold, DENIED)

    def _pending_of(self, session: HeldSession) -> list[Hold]:
        return [
            self.approvals.holds[i]
            for i, s in list(self.sessions.items())
            if s is session and self.approvals.holds[i].state == ap.PENDING
        ]

    def _end(self, hold: Hold, why: str, **extra: Any) -> None:
        """Record the hold's end; once committed, the session goes on or answers with
        ``why``. An approval that cannot be committed is carried out as a denial."""
        timer = self.timers.pop(hold.id, None)
        if timer is not None:
            timer.cancel()
        waited = (hold.ended or hold.requested) - hold.requested
        self._record(hold, hold.state, why=hold.why, waited_ms=round(waited * 1000.0, 1), **extra)
        self._publish(hold, hold.state)

        def failed(reason: str) -> None:
            if hold.state == ap.APPROVED:
                log.error("approval %s not committed (%s): denied instead", hold.id, reason)
                hold.state, hold.why = ap.DENIED, f"the approval could not be recorded: {reason}"
            self._resolve(hold, why)

        self.recorder.gate(_Step(lambda: self._resolve(hold, why), failed))

    def _resolve(self, hold: Hold, why: str) -> None:
        session = self.sessions.pop(hold.id, None)
        if session is not None and not session.ended:
            session.resolve(hold, why)

    # --- the recorder's life -----------------------------------------------------------

    def shutdown(self) -> None:
        """The recorder stops: every pending hold is denied, and recorded as such."""
        for hold in self.approvals.pending():
            self.approvals.end(hold, ap.DENIED, SHUTTING_DOWN)
            self._end(hold, DENIED)
        for task in list(self._tasks):
            task.cancel()
        if self.webhook is not None:
            self.webhook.close()

    def deny_left_over(self, left: list[dict[str, Any]]) -> None:
        """Holds a stopped recorder left pending (from the trail): denied, recorded."""
        for entry in left:
            self.recorder.record(
                EVENT,
                entry["session"],
                {"step": ap.DENIED, "id": entry["id"], "n": entry.get("n"), "why": RESTARTED},
            )

    # --- watchers ----------------------------------------------------------------------

    def watch(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1024)
        self.watchers.add(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.watchers.discard(queue)

    def _publish(self, hold: Hold, step: str) -> None:
        for queue in list(self.watchers):
            with contextlib.suppress(asyncio.QueueFull):  # a stuck watcher misses news
                queue.put_nowait({"step": step, "hold": hold.as_dict()})

    # --- helpers -----------------------------------------------------------------------

    def _record(self, hold: Hold, step: str, **fields: Any) -> None:
        self.recorder.record(
            EVENT, hold.session, {"step": step, "id": hold.id, "n": hold.n, **fields}
        )

    async def _committed(self) -> None:
        try:
            await self.recorder.committed()
        except NotCommitted as exc:
            raise ApprovalError(f"the trail cannot be written: {exc}") from None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
