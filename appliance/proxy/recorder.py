"""Group commit: events recorded during one turn of the event loop are committed together,
and the sessions holding bytes behind them are released (or refused) once the commit ends."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from appliance.trail.store import Trail, TrailLost, TrailWriteError

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
# Events that hold no bytes back (results, session ends) wait at most this long for a
# command's commit to carry them, so an idle session costs no commit of its own.
LAZY_SECONDS = 0.005


class Gated(Protocol):
    """Something holding bytes that may only move once its records are committed."""

    def released(self) -> None: ...

    def refused(self, reason: str) -> None: ...


class Recorder:
    def __init__(self, trail: Trail, loop: asyncio.AbstractEventLoop) -> None:
        self.trail = trail
        self.loop = loop
        self.failing: str | None = None
        self._scheduled = False
        self._waiting: list[Gated] = []
        self._retry: asyncio.TimerHandle | None = None
        self._lazy: asyncio.TimerHandle | None = None

    def record(self, type_: str, session: str | None, payload: dict[str, Any]) -> dict[str, Any]:
        """Append an event. It is committed with the next gated commit, or within
        LAZY_SECONDS; while the store is failing, by the retry timer, so that a broken disk
        is not hammered."""
        pending = self.trail.append(type_, session, payload)
        if self._lazy is None and self.failing is None:
            self._lazy = self.loop.call_later(LAZY_SECONDS, self._lazy_flush)
        return pending

    def _lazy_flush(self) -> None:
        # Not cancelled by gated commits: one timer per window is cheaper than re-arming one
        # per event. By now a gated commit has usually carried everything already.
        self._lazy = None
        if self.trail.pending and not self._scheduled and self.failing is None:
            self._flush()

    def gate(self, waiter: Gated) -> None:
        """Call ``waiter.released()`` after the next commit, or ``refused()`` if it fails.

        A waiter always gets an attempt of its own, even while the store is failing: a
        command must be either recorded and forwarded, or refused, never left waiting.
        """
        self._waiting.append(waiter)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, []
        try:
            self.trail.commit()
        except TrailWriteError as exc:
            self._failed(exc, waiting)
            return
        except Exception as exc:
            # A bug, not a full disk: still nothing held may move without its record.
            log.exception("the group commit failed")
            self._failed(TrailWriteError(f"the commit failed: {exc!r}"), waiting)
            return
        if self.failing is not None:
            log.warning("the trail is writable again after: %s", self.failing)
            self.failing = None
        for waiter in waiting:
            try:
                waiter.released()
            except Exception:  # one broken session must not keep the others gated
                log.exception("releasing a session after its commit failed")

    def _failed(self, exc: TrailWriteError, waiting: list[Gated]) -> None:
        reason = str(exc)
        if isinstance(exc, TrailLost):
            if self.failing != reason:
                log.critical(
                    "THE TRAIL LOST EVENTS: %s. Every command is refused until the recorder"
                    " is restarted on a trail that verifies (witness verify)",
                    reason,
                )
        elif self.failing is None:
            log.error("the trail cannot be written: %s; commands are refused", reason)
        self.failing = reason
        for waiter in waiting:
            try:
                waiter.refused(reason)
            except Exception:
                log.exception("refusing a session after a failed commit failed")
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._retry is None:
            self._retry = self.loop.call_later(RETRY_SECONDS, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._flush()

    def checkpoint(self) -> None:
        """Sign what has been committed so far (called on a timer and at shutdown)."""
        try:
            self.trail.checkpoint()
        except TrailWriteError as exc:
            self._failed(exc, [])

    async def sign_every(self, seconds: float) -> None:
        """Checkpoint every ``seconds`` until cancelled; a failure is logged, never the end."""
        while True:
            await asyncio.sleep(seconds)
            try:
                self.checkpoint()
            except Exception:
                log.exception("the checkpoint failed; the next one is in %.1f s", seconds)
