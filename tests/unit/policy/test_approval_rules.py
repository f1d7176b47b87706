"""The approvals bookkeeping: who may decide a hold, how many must agree, and windows."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.config import ApprovalSettings
from appliance.policy import approvals as ap
from appliance.policy.approvals import ApprovalError, Approvals


def person(name: str, *groups: str, issuer: str = "https://idp") -> dict[str, Any]:
    return {"issuer": issuer, "subject": name, "email": f"{name}@x.test", "groups": list(groups)}


AGENT = person("agent", "agents")
BOB = person("bob", "dba")
CAROL = person("carol", "dba")
EVE = person("eve", "agents")


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def desk(required: int = 1, window: int = 10) -> tuple[Approvals, Clock]:
    clock = Clock()
    settings = ApprovalSettings(groups=("dba",), required=required, max_window_minutes=window)
    return Approvals(settings, clock), clock


def held(approvals: Approvals, identity: dict[str, Any] | None = AGENT) -> ap.Hold:
    return approvals.request(
        session="s1",
        n=3,
        identity=identity,
        backend="orders",
        database="shop",
        text="DELETE FROM t WHERE id = 1",
        rule="hold-deletes",
        reason="deleting needs a DBA",
        shape="DELETE FROM t WHERE id = \0n",
    )


def test_one_approval_from_an_approver_ends_it_approved() -> None:
    approvals, _ = desk()
    hold = held(approvals)
    assert approvals.pending() == [hold]
    approvals.vote(hold.id, BOB, approve=True, reason="ok")
    assert hold.state == ap.APPROVED and hold.why == "approved by bob@x.test"
    assert approvals.pending() == []
    with pytest.raises(ApprovalError, match="approved already"):
        approvals.vote(hold.id, CAROL, approve=False)


@pytest.mark.parametrize(
    ("voter", "message"),
    [
        (AGENT, "agent@x.test sent this statement, and may not decide its own hold"),
        # the same person under another subject, by email
        ({**AGENT, "subject": "other", "groups": ["dba"]}, "may not decide its own hold"),
        (EVE, "eve@x.test may not decide holds: approvers are members of dba"),
        (None, "you have no identity bound"),
    ],
)
def test_the_sender_outsiders_and_the_unbound_may_not_decide(
    voter: dict[str, Any] | None, message: str
) -> None:
    approvals, _ = desk()
    hold = held(approvals)
    for approve in (True, False):
        with pytest.raises(ApprovalError, match=message):
            approvals.vote(hold.id, voter, approve=approve)
    assert hold.state == ap.PENDING and hold.votes == []


def test_a_dba_agent_may_not_approve_its_own_statement() -> None:
    approvals, _ = desk()
    hold = held(approvals, identity=BOB)
    with pytest.raises(ApprovalError, match="may not decide its own hold"):
        approvals.vote(hold.id, BOB, approve=True)


def test_two_approvals_needed_one_denial_is_enough_and_no_one_votes_twice() -> None:
    approvals, _ = desk(required=2)
    hold = held(approvals)
    approvals.vote(hold.id, BOB, approve=True)
    assert hold.state == ap.PENDING and hold.approvals == 1
    with pytest.raises(ApprovalError, match=r"voted on hold .* already"):
        approvals.vote(hold.id, BOB, approve=True)
    approvals.vote(hold.id, CAROL, approve=True)
    assert hold.state == ap.APPROVED

    other = held(approvals)
    approvals.vote(other.id, BOB, approve=True)
    approvals.vote(other.id, CAROL, approve=False, reason="no")
    assert other.state == ap.DENIED and other.why == "denied by carol@x.test: no"


def test_a_window_lets_the_same_shape_from_the_same_identity_through_until_it_ends() -> None:
    approvals, clock = desk()
    hold = held(approvals)
    with pytest.raises(ApprovalError, match="longer than the 10 allowed"):
        approvals.vote(hold.id, BOB, approve=True, window_minutes=11)
    approvals.vote(hold.id, BOB, approve=True, window_minutes=5)
    shape = hold.shape
    assert approvals.granted(AGENT, "orders", "shop", shape) == hold.id
    assert approvals.granted(EVE, "orders", "shop", shape) is None  # another identity
    assert approvals.granted(AGENT, "billing", "shop", shape) is None  # another backend
    assert approvals.granted(AGENT, "orders", "shop", "DROP TABLE t") is None
    clock.now += 5 * 60
    assert approvals.granted(AGENT, "orders", "shop", shape) is None


def test_a_denial_grants_no_window_and_an_ended_hold_ends_once() -> None:
    approvals, _ = desk()
    hold = held(approvals)
    with pytest.raises(ApprovalError, match="only an approval grants a window"):
        approvals.vote(hold.id, BOB, approve=False, window_minutes=5)
    approvals.end(hold, ap.EXPIRED, "no decision within 300 s")
    with pytest.raises(ApprovalError, match="expired already"):
        approvals.end(hold, ap.WITHDRAWN, "late")
    with pytest.raises(ApprovalError, match="no hold has the id"):
        approvals.get("nope")


def test_waiting_counts_one_identity_s_pending_holds() -> None:
    approvals = Approvals(ApprovalSettings(groups=("dba",)), clock=lambda: 1000.0)

    def hold(who: dict[str, Any]) -> ap.Hold:
        return approvals.request(
            session="s", n=1, identity=who, backend="pg", database="db", text="delete",
            rule="r", reason="why", shape=None,
        )  # fmt: skip

    first, _, _ = hold(AGENT), hold(AGENT), hold(EVE)
    assert approvals.waiting(AGENT) == 2 and approvals.waiting(EVE) == 1
    approvals.end(first, "denied", "no")
    assert approvals.waiting(AGENT) == 1
