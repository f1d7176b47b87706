"""Connection limits as a pure table: counts per identity and per uid, and the rate bucket."""

from __future__ import annotations

from appliance.config import Backend
from appliance.policy.limits import Limits

ALICE = ("https://idp.test", "alice")
BOB = ("https://idp.test", "bob")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def backend(**limits: float) -> Backend:
    return Backend("orders", "10.0.0.5", 5432, **limits)  # type: ignore[arg-type]


def test_an_identity_at_its_limit_is_refused_and_others_are_not() -> None:
    limits, orders = Limits(Clock()), backend(max_connections_per_identity=3)
    leases = [limits.acquire(orders, ALICE, "alice@x", 1001)[0] for _ in range(3)]
    assert all(leases)
    lease, why = limits.acquire(orders, ALICE, "alice@x", 1001)
    assert lease is None and why is not None
    assert "alice@x has 3 connections open to backend orders" in why
    assert "max_connections_per_identity 3" in why
    assert limits.acquire(orders, BOB, "bob@x", 1002)[0] is not None  # room for others
    other = Backend("other", "10.0.0.6", 5432, max_connections_per_identity=3)
    assert limits.acquire(other, ALICE, "alice@x", 1001)[0] is not None
    first = leases[0]
    assert first is not None
    limits.release(first)
    assert limits.acquire(orders, ALICE, "alice@x", 1001)[0] is not None


def test_a_user_is_limited_across_its_identities_and_without_one() -> None:
    limits, orders = Limits(Clock()), backend(max_connections_per_uid=2)
    assert limits.acquire(orders, ALICE, "alice@x", 1001)[0] is not None
    assert limits.acquire(orders, None, "no identity", 1001)[0] is not None
    lease, why = limits.acquire(orders, BOB, "bob@x", 1001)
    assert lease is None and why is not None and "uid 1001 has 2 connections" in why
    assert limits.acquire(orders, None, "no identity", 1002)[0] is not None
    # A refused connection holds nothing.
    assert limits.open_count("orders", who=BOB) == 0


def test_new_connections_per_second_refill_over_time() -> None:
    clock = Clock()
    limits, orders = Limits(clock), backend(max_new_connections_per_second=5)
    for _ in range(5):
        lease = limits.acquire(orders, ALICE, "alice@x", 1001)[0]
        assert lease is not None
        limits.release(lease)  # short connections: the count drops, the rate does not
    lease, why = limits.acquire(orders, ALICE, "alice@x", 1001)
    assert lease is None and why is not None and "faster than its limit of 5 a second" in why
    assert limits.open_count("orders", uid=1001) == 0
    assert limits.acquire(orders, BOB, "bob@x", 1002)[0] is not None
    clock.now += 0.2  # one more token
    assert limits.acquire(orders, ALICE, "alice@x", 1001)[0] is not None
    assert limits.acquire(orders, ALICE, "alice@x", 1001)[0] is None
    clock.now += 60  # never more than one second's worth
    granted = [limits.acquire(orders, ALICE, "alice@x", 1001)[0] for _ in range(6)]
    assert sum(g is not None for g in granted) == 5
