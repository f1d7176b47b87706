"""The decision for one command, on statements given as the analysis would describe them.

These tests are about matching rules, not about reading SQL: each text is described by hand
(the ``Described`` stand-in below). What the real grammar makes of hostile texts is tested in
test_guardrails_parsed.py.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from appliance.model import Command, Decision, Decoding, Prepared
from appliance.policy.analysis import Analysis, Statement
from appliance.policy.guardrails import Policy
from appliance.policy.rules import parse

ALICE = {"issuer": "https://idp", "subject": "s-alice", "email": "Alice@X.org", "groups": ["dev"]}
BOB = {"issuer": "https://idp", "subject": "s-bob", "email": "bob@x.org", "groups": ["dba", "dev"]}

SELECT = Statement("select", "read", reads=frozenset({"orders"}))
COUNT = Statement("select", "read", reads=frozenset({"orders"}), functions=frozenset({"count"}))
INSERT = Statement("insert", "write", writes=frozenset({"orders"}))
DELETE_ALL = Statement("delete", "write", writes=frozenset({"orders"}), no_where=True)
DELETE_ONE = Statement("delete", "write", writes=frozenset({"orders"}))
BILLING = Statement("update", "write", writes=frozenset({"billing.invoices"}))
INVOICES = Statement("update", "write", writes=frozenset({"invoices"}))
PUBLIC = Statement("update", "write", writes=frozenset({"public.orders"}))
DROP = Statement("drop_table", "ddl", writes=frozenset({"orders"}))
DO = Statement("do", "code", unknown="a DO block runs code")
CALL = Statement("call", "code", unknown="a procedure", functions=frozenset({"app.tidy"}))
SLEEP = Statement("select", "read", functions=frozenset({"pg_sleep"}))
APP_FN = Statement("select", "read", functions=frozenset({"app.total", "count"}))
SET_CONFIG = Statement("select", "read", functions=frozenset({"pg_catalog.set_config"}))
HIDDEN = Statement(
    "select",
    "read",
    reads=frozenset({"orders"}),
    writes=frozenset({"orders"}),
    inner=frozenset({"delete"}),
)
EXECUTE = Statement("execute", "code", unknown="runs a prepared statement")

TEXTS: dict[str, tuple[Statement, ...]] = {
    "select": (SELECT,),
    "count": (COUNT,),
    "insert": (INSERT,),
    "delete all": (DELETE_ALL,),
    "delete one": (DELETE_ONE,),
    "billing": (BILLING,),
    "invoices": (INVOICES,),
    "public": (PUBLIC,),
    "drop": (DROP,),
    "do": (DO,),
    "call": (CALL,),
    "sleep": (SLEEP,),
    "app fn": (APP_FN,),
    "set_config": (SET_CONFIG,),
    "hidden": (HIDDEN,),
    "select; delete all": (SELECT, DELETE_ALL),
    "select; select": (SELECT, SELECT),
    "execute p": (EXECUTE,),
    "": (),
}
SET = Statement("set", "session")
MOVES = (
    "SET search_path = billing",
    'SET "SEARCH_PATH" TO billing, public',
    "SET LOCAL search_path TO billing",
    "SET SCHEMA 'billing'",
    'SET U&"search\\005fpath" = billing',
    "RESET search_path",
)
TEXTS.update((text, (SET,)) for text in (*MOVES, "SET statement_timeout = 0"))


class Described:
    """A stand-in for the analysis: each text's statements, as listed in TEXTS."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, text: str) -> Analysis:
        self.calls.append(text)
        if text not in TEXTS:
            return Analysis((), error=f"syntax error in {text!r}")
        return Analysis(TEXTS[text])


def make(text: str, analyse: Described | None = None) -> Policy:
    return Policy(parse(tomllib.loads(text), Path("/")), analyse or Described())


def query(text: str, prepared: tuple[Prepared, ...] = ()) -> Command:
    return Command("query", text, prepared=prepared)


def decide(
    policy: Policy,
    text: str,
    identity: dict[str, Any] | None = ALICE,
    backend: str = "main",
    database: str | None = "shop",
) -> Decision:
    return policy.decide(identity, backend, database, query(text))


def rules(*tables: str, default: str = "allow", unknown: str = "block") -> str:
    head = f'default = "{default}"\nunknown = "{unknown}"\n'
    return head + "".join(f"[[rules]]\n{t}\n" for t in tables)


# --- each match key ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "matched", "unmatched"),
    [
        ('subjects = ["s-alice"]', [("select", ALICE)], [("select", BOB), ("select", None)]),
        ('emails = ["alice@x.org"]', [("select", ALICE)], [("select", BOB), ("select", None)]),
        ('groups = ["dba"]', [("select", BOB)], [("select", ALICE), ("select", None)]),
        ('kinds = ["delete"]', [("delete one", None)], [("select", None), ("insert", None)]),
        ('kinds = ["write"]', [("insert", None), ("delete one", None)], [("select", None)]),
        ('kinds = ["ddl"]', [("drop", None)], [("insert", None)]),
        ('reads = ["orders"]', [("select", None)], [("insert", None)]),
        ('writes = ["orders"]', [("insert", None)], [("select", None)]),
        ('tables = ["ord*"]', [("insert", None), ("select", None)], [("billing", None)]),
        ('tables = ["billing.*"]', [("billing", None), ("insert", None)], [("public", None)]),
        ('tables = ["billing.inv*"]', [("billing", None), ("invoices", None)], [("insert", None)]),
        ('functions = ["count"]', [("count", None)], [("select", None)]),
        ("no_where = true", [("delete all", None)], [("delete one", None)]),
        ("multiple = true", [("select; select", None)], [("select", None)]),
    ],
)
def test_each_match_key(
    keys: str,
    matched: list[tuple[str, dict[str, Any] | None]],
    unmatched: list[tuple[str, dict[str, Any] | None]],
) -> None:
    policy = make(rules(f'name = "r"\naction = "block"\n{keys}'))
    for text, who in matched:
        assert decide(policy, text, who).rule == "r", (text, who)
    for text, who in unmatched:
        assert decide(policy, text, who) == Decision(
            "allow", None, "no rule matched: the default is to allow"
        ), (text, who)


def test_backends_and_databases() -> None:
    policy = make(rules('name = "r"\naction = "block"\nbackends = ["main"]\ndatabases = ["shop"]'))
    assert decide(policy, "select", backend="main", database="shop").action == "block"
    assert decide(policy, "select", backend="other", database="shop").action == "allow"
    assert decide(policy, "select", backend="main", database="hr").action == "allow"
    assert decide(policy, "select", backend="main", database=None).action == "allow"


def test_all_keys_of_a_rule_must_match() -> None:
    policy = make(rules('name = "r"\naction = "block"\ngroups = ["dev"]\nkinds = ["delete"]'))
    assert decide(policy, "delete one", ALICE).action == "block"
    assert decide(policy, "select", ALICE).action == "allow"
    assert decide(policy, "delete one", None).action == "allow"


def test_a_session_without_identity_matches_no_identity_key_even_an_allow() -> None:
    policy = make(rules('name = "devs"\naction = "allow"\ngroups = ["dev"]', default="block"))
    assert decide(policy, "select", ALICE).rule == "devs"
    assert decide(policy, "select", None) == Decision(
        "block", None, "no rule matched: the default is to block"
    )
    identity = {"issuer": "i", "subject": "x", "groups": "dev"}  # not a list: no groups
    assert decide(policy, "select", identity).action == "block"


# --- order, default ----------------------------------------------------------------------


def test_the_first_matching_rule_wins() -> None:
    policy = make(
        rules(
            'name = "dba-may"\naction = "allow"\ngroups = ["dba"]',
            'name = "no-delete"\naction = "block"\nkinds = ["delete"]\nmessage = "ask a DBA"',
            'name = "rest"\naction = "allow"',
        )
    )
    assert decide(policy, "delete one", BOB) == Decision(
        "allow", "dba-may", "allowed by rule 'dba-may'"
    )
    assert decide(policy, "delete one", ALICE) == Decision("block", "no-delete", "ask a DBA")
    assert decide(policy, "select", ALICE).rule == "rest"


def test_default_block_and_a_block_without_message() -> None:
    policy = make(rules('name = "no-ddl"\naction = "block"\nkinds = ["ddl"]', default="block"))
    assert decide(policy, "drop") == Decision(
        "block", "no-ddl", "blocked by the policy's rule 'no-ddl'"
    )
    assert decide(policy, "select").action == "block"
    assert decide(policy, "select").rule is None


def test_several_statements_one_blocked_blocks_the_string() -> None:
    policy = make(
        rules('name = "wipe"\naction = "block"\nno_where = true', 'name = "ok"\naction = "allow"')
    )
    assert decide(policy, "select; delete all") == Decision(
        "block", "wipe", "blocked by the policy's rule 'wipe'"
    )
    assert decide(policy, "select; select") == Decision("allow", "ok", "allowed by rule 'ok'")


# --- what cannot be known -----------------------------------------------------------------


def test_a_do_block_is_unknown_and_blocked_by_default() -> None:
    policy = make(rules())
    decision = decide(policy, "do")
    assert (decision.action, decision.rule) == ("block", None)
    assert "the effect of a DO block cannot be known" in decision.reason
    assert "no rule names it" in decision.reason


def test_unknown_allow_setting() -> None:
    assert decide(make(rules(unknown="allow")), "do").action == "allow"


def test_an_allow_rule_must_name_the_doubt() -> None:
    everything = make(rules('name = "all"\naction = "allow"', default="block"))
    assert decide(everything, "do").action == "block"  # a catch-all allow does not cover DO
    assert decide(everything, "select").rule == "all"
    by_kind = make(rules('name = "do-ok"\naction = "allow"\nkinds = ["do"]'))
    assert decide(by_kind, "do").rule == "do-ok"
    by_category = make(rules('name = "code-ok"\naction = "allow"\nkinds = ["code"]'))
    assert decide(by_category, "do").action == "block"  # a category is not the exact kind
    by_flag = make(rules('name = "u"\naction = "allow"\nunknown = true'))
    assert decide(by_flag, "do").rule == "u"
    assert decide(by_flag, "select").rule is None  # unknown = true matches only the unknown


def test_a_block_rule_meets_an_unknown_statement_whatever_it_asks() -> None:
    policy = make(
        rules(
            'name = "no-billing"\naction = "block"\ntables = ["billing.invoices"]\nmessage = "no"'
        )
    )
    decision = decide(policy, "do")
    assert (decision.action, decision.rule) == ("block", "no-billing")
    assert decision.reason.startswith("no (the effect of a DO block cannot be known")
    assert decide(policy, "select").action == "allow"


def test_but_a_block_rule_keeps_its_identity_and_place_criteria() -> None:
    policy = make(
        rules(
            'name = "dba"\naction = "block"\ngroups = ["dba"]\nbackends = ["main"]', unknown="allow"
        )
    )
    assert decide(policy, "do", BOB).rule == "dba"
    assert decide(policy, "do", ALICE).rule is None
    assert decide(policy, "do", BOB, backend="other").rule is None


def test_an_unlisted_function_is_unknown_unless_allowed() -> None:
    policy = make(rules('name = "reads"\naction = "allow"\nkinds = ["read"]', default="block"))
    assert decide(policy, "count").rule == "reads"  # count is a built-in
    decision = decide(policy, "sleep")
    assert (decision.action, decision.rule) == ("block", None)
    assert "it calls pg_sleep, outside the allowed functions" in decision.reason
    assert decide(policy, "app fn").action == "block"
    extra = make(
        'functions = ["app.*"]\n'
        + rules('name = "reads"\naction = "allow"\nkinds = ["read"]', default="block")
    )
    assert decide(extra, "app fn").rule == "reads"
    assert decide(extra, "sleep").action == "block"


def test_an_allow_rule_covers_unlisted_functions_only_when_it_names_them_all() -> None:
    app = make(rules('name = "app"\naction = "allow"\nfunctions = ["app.*"]'))
    assert decide(app, "app fn").rule == "app"
    sleep = make(rules('name = "app"\naction = "allow"\nfunctions = ["app.*", "count"]'))
    assert decide(sleep, "sleep").action == "block"
    # A dotless glob in an allow rule names the unqualified function only.
    bare = make(rules('name = "t"\naction = "allow"\nfunctions = ["total"]'))
    assert decide(bare, "app fn").action == "block"


def test_a_call_must_have_its_kind_and_its_functions_named() -> None:
    kind_only = make(rules('name = "c"\naction = "allow"\nkinds = ["call"]'))
    assert decide(kind_only, "call").action == "block"
    both = make(rules('name = "c"\naction = "allow"\nkinds = ["call"]\nfunctions = ["app.tidy"]'))
    assert decide(both, "call").rule == "c"


def test_set_config_is_unknown_even_when_listed() -> None:
    policy = make(
        'functions = ["set_config", "pg_catalog.set_config"]\n'
        + rules('name = "f"\naction = "allow"\nfunctions = ["*set_config"]')
    )
    decision = decide(policy, "set_config")
    assert decision.action == "block"
    assert "set_config" in decision.reason
    flagged = make(rules('name = "u"\naction = "allow"\nunknown = true'))
    assert decide(flagged, "set_config").rule == "u"


@pytest.mark.parametrize("text", MOVES)
def test_moving_the_search_path_is_unknown_however_it_is_spelt(text: str) -> None:
    policy = make(rules('name = "sets"\naction = "allow"\nkinds = ["set"]'))
    decision = decide(policy, text)
    assert decision.action == "block"
    assert "search_path" in decision.reason
    flagged = make(rules('name = "u"\naction = "allow"\nunknown = true'))
    assert decide(flagged, text).rule == "u"


def test_other_settings_are_known() -> None:
    policy = make(rules('name = "sets"\naction = "allow"\nkinds = ["set"]', default="block"))
    assert decide(policy, "SET statement_timeout = 0").rule == "sets"


def test_text_that_does_not_parse_is_unknown() -> None:
    decision = decide(make(rules()), "selec 1")
    assert decision.action == "block"
    assert "the text does not parse (syntax error" in decision.reason
    block = make(rules('name = "b"\naction = "block"\nkinds = ["insert"]\nmultiple = true'))
    assert decide(block, "selec 1").rule == "b"  # might be a multi-statement insert


def test_a_function_call_is_unknown() -> None:
    policy = make(rules('name = "all"\naction = "allow"'))
    decision = policy.decide(ALICE, "main", "shop", Command("function_call", "function 1234"))
    assert decision.action == "block"
    assert "fast-path function call" in decision.reason
    flagged = make(rules('name = "u"\naction = "allow"\nunknown = true'))
    assert flagged.decide(ALICE, "main", "shop", Command("function_call", "f")).rule == "u"


def test_a_text_whose_encoding_is_in_doubt_is_unknown() -> None:
    analyse = Described()
    policy = make(rules('name = "all"\naction = "allow"'), analyse)
    command = Command("query", "select", decoding=Decoding("SJIS", changed_by=3))
    decision = policy.decide(ALICE, "main", "shop", command)
    assert decision.action == "block"
    assert "the text the backend runs is not known" in decision.reason
    assert analyse.calls == []  # not even read: it may not be what runs


def test_a_cancel_is_always_allowed() -> None:
    policy = make(rules('name = "all"\naction = "block"', default="block"))
    assert policy.decide(None, "main", None, Command("cancel", "")).action == "allow"


def test_an_empty_text_gets_the_default() -> None:
    assert decide(make(rules(default="block")), "").action == "block"
    assert decide(make(rules()), "").action == "allow"


# --- EXECUTE of a prepared statement ------------------------------------------------------


def test_execute_of_a_known_prepared_statement_is_decided_on_its_text() -> None:
    policy = make(
        rules('name = "wipe"\naction = "block"\nno_where = true', 'name = "ok"\naction = "allow"')
    )
    safe = Prepared("p", "select", how="prepared", defined=1)
    assert policy.decide(ALICE, "main", "shop", query("execute p", (safe,))).rule == "ok"
    wipe = Prepared("p", "delete all", how="prepared", defined=1)
    assert policy.decide(ALICE, "main", "shop", query("execute p", (wipe,))).rule == "wipe"


def test_an_execute_sent_by_the_extended_protocol_is_decided_on_its_text_too() -> None:
    policy = make(
        rules('name = "wipe"\naction = "block"\nno_where = true', 'name = "ok"\naction = "allow"')
    )
    for text, rule in (("select", "ok"), ("delete all", "wipe")):
        runs = Prepared("p", text, how="prepared", defined=1)
        command = Command("execute", "execute p", statement="", prepared=(runs,))
        assert policy.decide(ALICE, "main", "shop", command).rule == rule


def test_execute_of_a_doubtful_prepared_statement_is_unknown() -> None:
    policy = make(rules('name = "ok"\naction = "allow"'))
    doubtful = Prepared("p", "select", how="prepared", defined=1, doubt="changed", changed_by=2)
    decision = policy.decide(ALICE, "main", "shop", query("execute p", (doubtful,)))
    assert decision.action == "block"
    assert "may have been redefined by command 2" in decision.reason


def test_execute_with_nothing_known_is_unknown_but_allowed_by_naming_execute() -> None:
    policy = make(rules('name = "ok"\naction = "allow"'))
    assert decide(policy, "execute p").action == "block"
    named = make(rules('name = "x"\naction = "allow"\nkinds = ["execute"]'))
    assert decide(named, "execute p").rule == "x"


# --- hostile ------------------------------------------------------------------------------


def test_an_unqualified_table_meets_a_blocking_schema_glob() -> None:
    """After SET search_path = billing, ``invoices`` is billing.invoices: a block on
    billing.* must catch it written bare."""
    policy = make(rules('name = "no-billing"\naction = "block"\nwrites = ["billing.*"]'))
    assert decide(policy, "invoices").rule == "no-billing"
    assert decide(policy, "billing").rule == "no-billing"


def test_an_unqualified_table_does_not_meet_an_allowing_schema_glob() -> None:
    policy = make(
        rules('name = "public"\naction = "allow"\nwrites = ["public.*"]', default="block")
    )
    assert decide(policy, "invoices").action == "block"
    bare = make(rules('name = "inv"\naction = "allow"\nwrites = ["invoices"]', default="block"))
    assert decide(bare, "invoices").rule == "inv"
    assert decide(bare, "billing").action == "block"  # billing.invoices is not 'invoices'


def test_a_blocking_schema_wildcard_meets_every_unqualified_name() -> None:
    """Any bare name could be in billing: the price of failing closed. Qualified names
    elsewhere are not caught."""
    policy = make(rules('name = "no-billing"\naction = "block"\nwrites = ["billing.*"]'))
    assert decide(policy, "insert").rule == "no-billing"
    assert decide(policy, "public").rule is None


def test_a_dotless_blocking_glob_meets_the_table_in_any_schema() -> None:
    policy = make(rules('name = "inv"\naction = "block"\nwrites = ["invoices"]'))
    assert decide(policy, "billing").rule == "inv"


def test_a_delete_hidden_in_a_select_is_a_delete() -> None:
    policy = make(rules('name = "no-delete"\naction = "block"\nkinds = ["delete"]'))
    assert decide(policy, "hidden").rule == "no-delete"
    writes = make(rules('name = "no-writes"\naction = "block"\nkinds = ["write"]'))
    assert decide(writes, "hidden").rule == "no-writes"
    reads = make(
        rules('name = "reads"\naction = "allow"\nkinds = ["read"]\nwrites = ["x"]', default="block")
    )
    assert decide(reads, "hidden").action == "block"


# --- the cache ----------------------------------------------------------------------------


def test_decisions_are_cached_by_text_and_by_who() -> None:
    analyse = Described()
    policy = make(
        rules('name = "dba"\naction = "allow"\ngroups = ["dba"]', default="block"), analyse
    )
    for _ in range(3):
        assert decide(policy, "select", BOB).action == "allow"
        assert decide(policy, "select", ALICE).action == "block"
    assert analyse.calls == ["select", "select"]  # once per identity, not once per command


def test_the_cache_is_bounded() -> None:
    analyse = Described()
    policy = Policy(parse({}, Path("/")), analyse, cache_size=2)
    for text in ("select", "insert", "drop", "select"):
        decide(policy, text)
    assert analyse.calls == ["select", "insert", "drop", "select"]  # the first was let go
    assert len(policy._cache) == 2


def test_a_hold_rule_holds_but_never_transaction_control_and_a_block_wins() -> None:
    from appliance.policy.rules import parse_document

    policy = Policy(
        parse_document(
            {
                "rules": [
                    {"name": "no-drop", "action": "block", "kinds": ["drop_table"]},
                    {"name": "hold-all", "action": "hold"},
                ]
            },
            "policy.",
        )
    )
    held = policy.decide(None, "db", None, Command("query", "DELETE FROM t"))
    assert (held.action, held.rule) == ("hold", "hold-all")
    for text in ("BEGIN", "COMMIT", "SAVEPOINT a", "ROLLBACK TO SAVEPOINT a"):
        assert policy.decide(None, "db", None, Command("query", text)).action == "allow", text
    both = policy.decide(None, "db", None, Command("query", "SELECT 1; DROP TABLE t"))
    assert (both.action, both.rule) == ("block", "no-drop")
    # What cannot be known might be a DROP: the block rule, first, takes it.
    unknown = policy.decide(None, "db", None, Command("query", "DO $$ BEGIN END $$"))
    assert (unknown.action, unknown.rule) == ("block", "no-drop")
    only_hold = Policy(parse_document({"rules": [{"name": "h", "action": "hold"}]}, "policy."))
    unknown = only_hold.decide(None, "db", None, Command("query", "DO $$ BEGIN END $$"))
    assert unknown.action == "hold"  # held, like anything a hold rule matches
