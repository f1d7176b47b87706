"""Group commit: events recorded during one turn of the event loop are committed together,
and the sessions holding bytes behind them are released (or refused) once the commit ends."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from appliance.trail.store import Batch, Trail, TrailLost, TrailWriteError

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
# Events that hold no bytes back (results, session ends) wait at most this long for a
# command's commit to carry them, so an idle session costs no commit of its own.
LAZY_SECONDS = 0.005


class Gated(Protocol):
    """Something holding bytes that may only move once its records are committed."""

    def released(self) -> None: ...

    def refused(self, reason: str) -> None: ...


class NotCommitted(Exception):
    """The events waited for could not be committed; the message says why."""


class _Commit:
    """Resolves a future once the events recorded before it are committed (or refused)."""

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future

    def released(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def refused(self, reason: str) -> None:
        if not self.future.done():
            self.future.set_exception(NotCommitted(reason))


class Recorder:
    """Commits on the event loop with ``durability = "process"``: a commit that needs no
    fsync takes microseconds, less than a hand-off to a thread. With ``"power"`` every
    commit waits for the disk, so it runs in a worker thread, one at a time; meanwhile the
    loop relays, and what is recorded gathers for the next commit."""

    def __init__(self, trail: Trail, loop: asyncio.AbstractEventLoop) -> None:
        self.trail = trail
        self.loop = loop
        self.failing: str | None = None
        self._scheduled = False
        self._waiting: list[Gated] = []
        self._retry: asyncio.TimerHandle | None = None
        self._lazy: asyncio.TimerHandle | None = None
        self._worker: ThreadPoolExecutor | None = None
        if trail.durability == "power":
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="witness-commit")
        self._writing: asyncio.Future[None] | None = None
        self._closed = False

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
        self._kick()

    async def committed(self) -> None:
        """Wait until what was recorded so far is committed; NotCommitted if it cannot be."""
        future: asyncio.Future[None] = self.loop.create_future()
        self.gate(_Commit(future))
        await future

    def _kick(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._writing is not None or self._closed:
            return  # the waiters wait for the commit after this one, which _written starts
        waiting, self._waiting = self._waiting, []
        try:
            if self._worker is None:
                self.trail.commit()
            else:
                batch = self.trail.stage()
                if batch is not None:
                    self._write_off_loop(batch, waiting)
                    return
        except TrailWriteError as exc:
            self._failed(exc, waiting)
            return
        except Exception as exc:
            # A bug, not a full disk: still nothing held may move without its record.
            log.exception("the group commit failed")
            self._failed(TrailWriteError(f"the commit failed: {exc!r}"), waiting)
            return
        self._succeeded(waiting)

    def _write_off_loop(self, batch: Batch, waiting: list[Gated]) -> None:
        assert self._worker is not None
        writing = self.loop.run_in_executor(self._worker, self.trail.write, batch)
        self._writing = writing
        writing.add_done_callback(lambda done: self._written(done, batch, waiting))

    def _written(self, done: asyncio.Future[None], batch: Batch, waiting: list[Gated]) -> None:
        """Back on the loop after a commit in the worker: settle it, and start the next."""
        self._writing = None
        try:
            done.result()
            self.trail.settle(batch)
        except TrailWriteError as exc:
            self._failed(exc, waiting)
        except Exception as exc:
            log.exception("the group commit failed")
            self._failed(TrailWriteError(f"the commit failed: {exc!r}"), waiting)
        else:
            self._succeeded(waiting)
        if self._waiting or (self.trail.pending and self.failing is None):
            self._kick()

    def _succeeded(self, waiting: list[Gated]) -> None:
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
        if self._retry is None and not self._closed:
            self._retry = self.loop.call_later(RETRY_SECONDS, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._flush()

    def checkpoint(self) -> None:
        """Have the next commit sign what is unsigned, and start it (called on a timer)."""
        self.trail.request_checkpoint()
        self._kick()

    async def sign_every(self, seconds: float) -> None:
        """Checkpoint every ``seconds`` until cancelled; a failure is logged, never the end."""
        while True:
            await asyncio.sleep(seconds)
            try:
                self.checkpoint()
            except Exception:
                log.exception("the checkpoint failed; the next one is in %.1f s", seconds)

    async def close(self) -> None:
        """Let the commit under way end, then commit the rest, sign and close the trail
        (here, on the loop: there is nothing left to relay), and stop the worker.

        Raises TrailWriteError when the trail's last commit fails, or was lost."""
        while self._writing is not None:
            await asyncio.wait([self._writing])
            await asyncio.sleep(0)  # for _written, which may start one more commit
        self._closed = True
        for timer in (self._retry, self._lazy):
            if timer is not None:
                timer.cancel()
        waiting, self._waiting = self._waiting, []
        try:
            self.trail.close()
        except TrailWriteError as exc:
            self._failed(exc, waiting)
            raise
        else:
            self._succeeded(waiting)
        finally:
            if self._worker is not None:
                self._worker.shutdown()
