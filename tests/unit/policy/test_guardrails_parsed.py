"""Hostile texts through the real analysis (PostgreSQL's grammar) and the rules together: what
an agent writes to slip past a rule must still meet it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from appliance.model import Command, Decision
from appliance.policy.guardrails import Policy
from appliance.policy.rules import parse

analysis = pytest.importorskip("appliance.policy.analysis")
if not hasattr(analysis, "analyse"):
    pytest.skip("the statement analysis is not built yet", allow_module_level=True)

AGENT = {"issuer": "https://idp", "subject": "agent", "email": "agent@x.org", "groups": ["bots"]}

POLICY = """
[[rules]]
name = "no-billing"
action = "block"
writes = ["billing.invoices"]
message = "billing is read-only"

[[rules]]
name = "no-wipe"
action = "block"
no_where = true
kinds = ["update", "delete"]

[[rules]]
name = "no-delete"
action = "block"
kinds = ["delete"]
tables = ["audit.*"]

[[rules]]
name = "no-ddl"
action = "block"
kinds = ["ddl"]
"""


def decide(text: str) -> Decision:
    policy = Policy(parse(tomllib.loads(POLICY), Path("/")))
    return policy.decide(AGENT, "main", "shop", Command("query", text))


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        # search_path moved, then the table written bare: the SET itself is unknown, so it
        # meets the first blocking rule ...
        ("SET search_path = billing; UPDATE invoices SET paid = true WHERE id = 1", "no-billing"),
        # ... and the bare name meets the block on billing.invoices anyway.
        ("UPDATE invoices SET paid = true WHERE id = 1", "no-billing"),
        ('UPDATE "billing"."invoices" SET paid = true WHERE id = 1', "no-billing"),
        ('UPDATE billing."invoices" SET paid = true WHERE id = 1', "no-billing"),
        ("update  Billing . Invoices set paid = true where id = 1", "no-billing"),
        # The DELETE in the CTE has no WHERE: the earlier rule on that meets it first.
        ("WITH gone AS (DELETE FROM audit.log RETURNING *) SELECT count(*) FROM gone", "no-wipe"),
        ("WITH gone AS (DELETE FROM audit.log WHERE id = 1 RETURNING *) TABLE gone", "no-delete"),
        ("EXPLAIN ANALYZE DELETE FROM audit.log WHERE id = 1", "no-delete"),
        ("SELECT 1; DELETE FROM audit.log WHERE id = 1", "no-delete"),
        ("DELETE FROM orders WHERE true", "no-wipe"),
        ("DELETE FROM orders", "no-wipe"),
        ("UPDATE orders SET x = 1 WHERE 1 = 1", "no-wipe"),
        ("SELECT 1; CREATE TABLE t (x int)", "no-ddl"),
        ("DO $$ BEGIN DELETE FROM audit.log; END $$", "no-billing"),  # unknown: first block
        ("SELECT pg_catalog.set_config('search_path', 'billing', false)", "no-billing"),
    ],
)
def test_hostile_texts_are_blocked(text: str, rule: str) -> None:
    decision = decide(text)
    assert decision.action == "block", decision
    assert decision.rule == rule, decision


@pytest.mark.parametrize(
    "text",
    [
        "SELECT count(*) FROM billing.invoices",
        "UPDATE orders SET x = 1 WHERE id = 7",
        "DELETE FROM public.orders WHERE id = 7",
        "SELECT lower(name), now() FROM customers",
        "SET statement_timeout = 1000",
    ],
)
def test_ordinary_work_is_allowed(text: str) -> None:
    assert decide(text).action == "allow", decide(text)


def test_an_unqualified_delete_meets_a_schema_wildcard() -> None:
    """``orders`` might be audit.orders (search_path): the block on audit.* fails closed."""
    assert decide("DELETE FROM orders WHERE id = 7").rule == "no-delete"


def test_a_statement_that_does_not_parse_is_blocked() -> None:
    decision = decide("SELEC 1")
    assert decision.action == "block"
    assert "does not parse" in decision.reason


def test_a_quoted_upper_case_schema_is_another_schema() -> None:
    """PostgreSQL folds unquoted names to lower case and keeps quoted ones: "BILLING" is not
    billing, so writing to it is not writing to billing.invoices."""
    decision = decide('UPDATE "BILLING".invoices SET paid = true WHERE id = 1')
    assert decision.action == "allow", decision


def test_texts_that_differ_only_in_literal_values_are_decided_once() -> None:
    calls: list[str] = []

    def counting(text: str) -> object:
        calls.append(text)
        return analysis.analyse(text)

    policy = Policy(parse(tomllib.loads(POLICY), Path("/")), counting)  # type: ignore[arg-type]
    for aid in (1, 22, 333):
        text = f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
        assert policy.decide(AGENT, "main", "shop", Command("query", text)).action == "allow"
    assert len(calls) == 1
    # A literal of another kind is another shape; and an unparseable text keeps its own.
    policy.decide(AGENT, "main", "shop", Command("query", "SELECT 'x' FROM t"))
    for bad in ("SELEC 1", "SELEC 22"):
        assert policy.decide(AGENT, "main", "shop", Command("query", bad)).action == "block"
    assert len(calls) == 4
