"""Connection limits per backend: how many sessions an identity, or a Unix user, may hold open,
and how fast an identity may open new ones.

Sans-io and pure (the clock is given): the relay asks once per connection, after the
connect-time policy admitted it and before it dials the backend, and gives the lease back
when the session ends. A refusal (too_many: PostgreSQL's 53300) has a message that names
the limit. One agent that opens connections without end therefore runs into its
own limits, and the backend keeps slots for everyone else.

A connection with no identity (where unbound connections are allowed) counts against its
owner's uid only. CancelRequests are not counted: a limit must never stop an agent, or an
operator, from cancelling a runaway query.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from appliance.config import Backend

Who = tuple[str, str]  # (issuer, subject)
K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Lease:
    """What one admitted connection holds; given back with :meth:`Limits.release`."""

    backend: str
    who: Who | None
    uid: int | None


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class Limits:
    """Open connections by (backend, identity) and (backend, uid), and a token bucket of new
    connections per (backend, identity) that refills at the backend's rate per second."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_who: dict[tuple[str, Who], int] = {}
        self._by_uid: dict[tuple[str, int | None], int] = {}
        self._buckets: dict[tuple[str, Who], _Bucket] = {}

    def acquire(
        self, backend: Backend, who: Who | None, label: str, uid: int | None
    ) -> tuple[Lease | None, str | None]:
        """A lease for one more connection, or None and why not (``label`` names ``who``)."""
        name = backend.name
        held_by_uid = self._by_uid.get((name, uid), 0)
        if held_by_uid >= backend.max_connections_per_uid:
            user = "an unknown user" if uid is None else f"uid {uid}"
            return None, (
                f"{user} has {held_by_uid} connections open to backend {name}, its limit"
                f" (max_connections_per_uid {backend.max_connections_per_uid}); close one first"
            )
        if who is not None:
            held = self._by_who.get((name, who), 0)
            if held >= backend.max_connections_per_identity:
                return None, (
                    f"{label} has {held} connections open to backend {name}, its limit"
                    f" (max_connections_per_identity {backend.max_connections_per_identity});"
                    " close one first"
                )
            if not self._take(backend, who):
                rate = backend.max_new_connections_per_second
                return None, (
                    f"{label} opens connections to backend {name} faster than its limit of"
                    f" {rate:g} a second (max_new_connections_per_second); wait and retry"
                )
            self._by_who[(name, who)] = held + 1
        self._by_uid[(name, uid)] = held_by_uid + 1
        return Lease(name, who, uid), None

    def release(self, lease: Lease) -> None:
        _drop(self._by_uid, (lease.backend, lease.uid))
        if lease.who is not None:
            _drop(self._by_who, (lease.backend, lease.who))

    def _take(self, backend: Backend, who: Who) -> bool:
        """One token from the identity's bucket, which holds at most one second's worth."""
        rate = backend.max_new_connections_per_second
        now = self._clock()
        key = (backend.name, who)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(rate, now)
            if len(self._buckets) > 100_000:
                self._forget_idle(now)
        bucket.tokens = min(rate, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _forget_idle(self, now: float) -> None:
        """Drop buckets unused for a second: they are full again, and a new one is too."""
        self._buckets = {key: b for key, b in self._buckets.items() if now - b.at < 1.0}

    def open_count(self, backend: str, *, who: Who | None = None, uid: int | None = None) -> int:
        """How many leases are held (for status and tests)."""
        if who is not None:
            return self._by_who.get((backend, who), 0)
        return self._by_uid.get((backend, uid), 0)


def _drop(counts: dict[K, int], key: K) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
