"""Connect-time policy: unbound, expired, admitted and denied connections."""

from __future__ import annotations

from appliance.config import Backend
from appliance.identity.bindings import Bindings, Caller
from appliance.model import Identity, Owner
from appliance.policy.access import Access
from appliance.protocols.handler import DENIED, NOT_BOUND

ALICE = Identity("https://idp.test", "alice-sub", "Alice@Example.test", "Alice", ("dba",))
OPEN = Backend("orders", "10.0.0.5", 5432)
CALLER = Caller(pid=1, uid=1001, gid=1001)
AGENT = Owner(uid=1001, cgroup="/witness-agents/agent1")


def access(unbound: str = "refuse", now: float = 1000.0) -> Access:
    bindings = Bindings(clock=lambda: now)
    return Access(bindings, unbound, clock=lambda: now)


def test_an_unbound_owner_is_refused_and_told_how_to_bind() -> None:
    binding, refusal = access().admit(OPEN, AGENT)
    assert binding is None and refusal is not None
    assert refusal.why == NOT_BOUND
    assert "uid 1001, cgroup /witness-agents/agent1" in refusal.message
    assert "witness login" in refusal.message and "witness run" in refusal.message


def test_unbound_allowed_passes_an_open_backend_but_not_a_restricted_one() -> None:
    gate = access("allow")
    assert gate.admit(OPEN, AGENT) == (None, None)
    restricted = Backend("orders", "10.0.0.5", 5432, allow_groups=("dba",))
    _, refusal = gate.admit(restricted, AGENT)
    assert refusal is not None and refusal.why == NOT_BOUND
    assert "admits only" in refusal.message


def test_an_expired_identity_is_refused_with_the_time_it_expired() -> None:
    gate = access(now=2000.0)
    gate.bindings.bind_uid(1001, ALICE, 1999.0, CALLER)
    binding, refusal = gate.admit(OPEN, AGENT)
    assert binding is not None and refusal is not None
    assert refusal.why == NOT_BOUND
    assert "expired at 1970-01-01T00:33:19Z" in refusal.message
    assert "Alice@Example.test" in refusal.message


def test_allow_lists_match_email_any_case_subject_exactly_or_a_group() -> None:
    gate = access()
    gate.bindings.bind_uid(1001, ALICE, 5000.0, CALLER)
    admitted = [
        Backend("a", "10.0.0.5", 1, allow_identities=("alice@example.TEST",)),
        Backend("b", "10.0.0.5", 1, allow_identities=("alice-sub",)),
        Backend("c", "10.0.0.5", 1, allow_groups=("ops", "dba")),
    ]
    for backend in admitted:
        assert gate.admit(backend, AGENT)[1] is None, backend.name
    denied = [
        Backend("d", "10.0.0.5", 1, allow_identities=("ALICE-SUB",)),
        Backend("e", "10.0.0.5", 1, allow_groups=("DBA",)),
        Backend("f", "10.0.0.5", 1, allow_identities=("bob@example.test",), allow_groups=("x",)),
    ]
    for backend in denied:
        _, refusal = gate.admit(backend, AGENT)
        assert refusal is not None and refusal.why == DENIED, backend.name
        assert f"may not connect to backend {backend.name}" in refusal.message
