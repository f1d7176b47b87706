"""Shipping off the recorder's path: rounds of work in a worker thread, run at once when
woken, else every so often, retried with a growing pause while they fail."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor


async def rounds(
    work: Callable[[], int],
    worker: Executor,
    wake: asyncio.Event,
    *,
    poll: float,
    retry_max: float,
    full: int,
    failed: Callable[[str], None],
    recovered: Callable[[int], None],
) -> None:
    """Run ``work`` in ``worker`` until cancelled: first at once, then when ``wake`` is set
    or ``poll`` seconds have passed, and again at once after a round that did ``full``
    items (more are waiting). A round that raises is tried again after 1, 2, 4... seconds,
    at most ``retry_max`` apart; ``failed`` hears of each new reason, ``recovered`` of the
    first round that works again (with what it did)."""
    loop = asyncio.get_running_loop()
    wake.set()  # whatever the last run left, first
    delay = 0.0
    failing: str | None = None
    while True:
        if delay:
            await asyncio.sleep(delay)
        else:
            # Not wait_for: on Python 3.11 it swallows a cancellation that comes as the event
            # is set, which the trail's last checkpoint does as the daemon stops.
            waiter = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait({waiter}, timeout=poll)
            finally:
                waiter.cancel()
        wake.clear()
        try:
            done = await loop.run_in_executor(worker, work)
        except Exception as exc:  # whatever fails, the next round tries again
            delay = min(retry_max, max(1.0, delay * 2))
            if str(exc) != failing:
                failing = str(exc)
                failed(failing)
            continue
        if failing is not None:
            recovered(done)
            failing = None
        delay = 0.0
        if done == full:
            wake.set()
