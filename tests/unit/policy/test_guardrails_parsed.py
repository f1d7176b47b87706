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


def test_a_quoted_upper_case_schema_is_blocked_too() -> None:
    """PostgreSQL folds unquoted names to lower case and keeps quoted ones: "BILLING" is
    another schema than billing, but a blocking rule meets it too (the safe side)."""
    decision = decide('UPDATE "BILLING".invoices SET paid = true WHERE id = 1')
    assert decision.rule == "no-billing", decision


def _fresh() -> Policy:
    return Policy(parse(tomllib.loads(POLICY), Path("/")))


def test_a_comment_ended_by_a_carriage_return_borrows_no_decision() -> None:
    """PostgreSQL ends a -- comment at \r as at \n: a text that is all comment to a lexer
    that waits for \n must not lend its decision to one that hides a DELETE."""
    policy = _fresh()
    first = policy.decide(AGENT, "main", "shop", Command("query", "SELECT --\r'\n'; --'"))
    assert first.action == "allow"
    hidden = "SELECT --\r'\n'; DELETE FROM audit.log WHERE id = 1; --'"
    assert policy.decide(AGENT, "main", "shop", Command("query", hidden)).action == "block"


@pytest.mark.parametrize(
    ("harmless", "harmful"),
    [
        ("EXPLAIN (ANALYZE 0) DELETE FROM audit.log WHERE id = 1",
         "EXPLAIN (ANALYZE 1) DELETE FROM audit.log WHERE id = 1"),
        ("EXPLAIN (ANALYZE 'off') DELETE FROM audit.log WHERE id = 1",
         "EXPLAIN (ANALYZE 'on') DELETE FROM audit.log WHERE id = 1"),
        ("SET U&\"search!005fpath\" UESCAPE '#' TO evil",
         "SET U&\"search!005fpath\" UESCAPE '!' TO evil"),
    ],
)  # fmt: skip
def test_a_literal_that_decides_a_fact_lends_no_decision(harmless: str, harmful: str) -> None:
    policy = _fresh()
    policy.decide(AGENT, "main", "shop", Command("query", harmless))
    assert policy.decide(AGENT, "main", "shop", Command("query", harmful)).action == "block"


def test_merge_without_a_condition_on_columns_meets_the_no_where_rule() -> None:
    found = decide("MERGE INTO orders USING orders s ON true WHEN MATCHED THEN DELETE")
    assert found.rule == "no-wipe", found


@pytest.mark.parametrize(
    "text",
    [
        "ALTER ROLE CURRENT_USER SET search_path = evil, pg_catalog",
        "ALTER DATABASE shop SET search_path TO evil",
        "ALTER ROLE agent IN DATABASE shop SET search_path = evil",
    ],
)
def test_moving_the_search_path_of_sessions_to_come_is_unknown(text: str) -> None:
    found = decide(text)
    assert found.action == "block" and "search_path" in found.reason, found


def test_an_allowing_rule_must_cover_every_table_it_names() -> None:
    text = """
[[rules]]
name = "scratch"
action = "allow"
writes = ["scratch.*"]

[[rules]]
name = "no-writes"
action = "block"
kinds = ["write"]
"""
    policy = Policy(parse(tomllib.loads(text), Path("/")))
    mixed = (
        "WITH d AS (DELETE FROM billing.invoices WHERE id = 1 RETURNING 1) "
        "INSERT INTO scratch.log SELECT 1 FROM d"
    )
    assert policy.decide(AGENT, "main", "shop", Command("query", mixed)).rule == "no-writes"
    own = "INSERT INTO scratch.log VALUES (1)"
    assert policy.decide(AGENT, "main", "shop", Command("query", own)).rule == "scratch"


def test_a_text_longer_than_the_policy_reads_is_unknown() -> None:
    text = "SELECT " + ", ".join(["1"] * 40_000)
    found = decide(text)
    assert found.action == "block" and "max_text" in found.reason, found


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


def test_a_session_that_set_its_search_path_at_connect_time_knows_nothing() -> None:
    policy = _fresh()
    plain = Command("query", "SELECT lower('x')")
    assert policy.decide(AGENT, "main", "shop", plain).action == "allow"
    moved = policy.decide(AGENT, "main", "shop", plain, moved=True)
    assert moved.action == "block" and "search_path" in moved.reason, moved
