"""Loading the guardrail rules: what is accepted, and errors that name the rule and the key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from appliance import config
from appliance.config import ConfigError
from appliance.policy import functions, kinds
from appliance.policy.rules import PolicyError, PolicySettings, load_file, parse, parse_document

BASE = """
[[backend]]
name = "orders"
address = "10.0.0.5"
port = 5432

[[listener]]
listen = "127.0.0.1:6432"
backend = "orders"
"""

POLICY = """
default = "block"
unknown = "allow"
functions = ["app.*", "my_fn"]

[[rules]]
name = "no-ddl"
action = "block"
message = "DDL is for the migration pipeline"
kinds = ["ddl"]

[[rules]]
name = "dba"
action = "allow"
groups = ["dba"]
backends = ["orders"]
databases = ["shop"]

[[rules]]
name = "reads"
action = "allow"
kinds = ["select", "read"]
tables = ["public.*", "Orders"]
subjects = ["s1"]
emails = ["a@x.org"]
reads = ["r"]
writes = ["w"]
functions = ["f*"]
no_where = true
multiple = true
unknown = true
"""


def policy(text: str) -> PolicySettings:
    return parse(tomllib.loads(text), Path("/"))


def test_a_whole_policy_loads() -> None:
    got = policy(POLICY)
    assert (got.default, got.unknown, got.functions) == ("block", "allow", ("app.*", "my_fn"))
    assert [r.name for r in got.rules] == ["no-ddl", "dba", "reads"]
    ddl, dba, reads = got.rules
    assert (ddl.action, ddl.message, ddl.kinds) == (
        "block",
        "DDL is for the migration pipeline",
        ("ddl",),
    )
    assert (dba.groups, dba.backends, dba.databases, dba.message) == (
        ("dba",),
        ("orders",),
        ("shop",),
        None,
    )
    assert reads.tables == ("public.*", "orders")  # compared lower-case, as names are
    assert (reads.no_where, reads.multiple, reads.unknown) == (True, True, True)
    assert got.summary() == "3 rules, default block, unknown allow, 2 extra functions"


def test_the_defaults_allow_what_is_known_and_block_what_is_not() -> None:
    got = policy("")
    assert (got.default, got.unknown, got.rules) == ("allow", "block", ())
    assert got.summary() == "0 rules, default allow, unknown block"


def rule(**keys: Any) -> dict[str, Any]:
    return {"name": "no-ddl", "action": "block", **keys}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            rule(kinds=["dleete"]),
            "policy.rules[1] (\"no-ddl\"): kinds: unknown kind 'dleete' (did you mean 'delete'?)",
        ),
        (rule(kinds="delete"), 'policy.rules[1] ("no-ddl"): kinds: expected a non-empty list'),
        (rule(kinds=[]), 'policy.rules[1] ("no-ddl"): kinds: expected a non-empty list'),
        (rule(kinds=["unknown"]), "'unknown' is not a kind: write unknown = true"),
        (
            rule(kind=["delete"]),
            "policy.rules[1] (\"no-ddl\"): kind: unknown key (did you mean 'kinds'?)",
        ),
        (rule(action="mask"), "action: 'mask' is not an action (expected allow, block or hold"),
        (
            rule(action="deny"),
            'policy.rules[1] ("no-ddl"): action: expected allow, block or hold',
        ),
        ({"name": "no-ddl"}, 'policy.rules[1] ("no-ddl"): action: required'),
        ({"action": "block"}, "policy.rules[1]: name: every rule needs a name"),
        (rule(name=""), "policy.rules[1]: name: expected a non-empty string"),
        (rule(name="first"), 'policy.rules[1] ("first"): name: already the name of rules[0]'),
        (rule(action="allow", message="hi"), "message: only a block or hold rule has a message"),
        (rule(message=3), 'policy.rules[1] ("no-ddl"): message: expected a non-empty string'),
        (
            rule(subjects=[1]),
            'policy.rules[1] ("no-ddl"): subjects[0]: expected a non-empty string',
        ),
        (rule(emails=[""]), 'policy.rules[1] ("no-ddl"): emails[0]: expected a non-empty string'),
        (rule(groups="dba"), 'policy.rules[1] ("no-ddl"): groups: expected a non-empty list'),
        (rule(backends=[]), 'policy.rules[1] ("no-ddl"): backends: expected a non-empty list'),
        (
            rule(databases=[None]),
            'policy.rules[1] ("no-ddl"): databases[0]: expected a non-empty string',
        ),
        (
            rule(tables=["a.b.c"]),
            'policy.rules[1] ("no-ddl"): tables[0]: expected NAME or SCHEMA.NAME',
        ),
        (
            rule(reads=["billing."]),
            'policy.rules[1] ("no-ddl"): reads[0]: expected NAME or SCHEMA.NAME',
        ),
        (
            rule(writes=[".x"]),
            'policy.rules[1] ("no-ddl"): writes[0]: expected NAME or SCHEMA.NAME',
        ),
        (rule(functions=["a..b"]), 'policy.rules[1] ("no-ddl"): functions[0]: expected NAME'),
        (rule(no_where=False), 'policy.rules[1] ("no-ddl"): no_where: only true is meaningful'),
        (rule(multiple="yes"), 'policy.rules[1] ("no-ddl"): multiple: only true is meaningful'),
        (rule(unknown=1), 'policy.rules[1] ("no-ddl"): unknown: only true is meaningful'),
        ("no-ddl", "policy.rules[1]: expected a table"),
    ],
)
def test_a_bad_rule_is_refused_naming_the_rule_and_the_key(raw: Any, message: str) -> None:
    data = {"rules": [{"name": "first", "action": "allow"}, raw]}
    with pytest.raises(PolicyError) as caught:
        parse(data, Path("/"))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"default": "deny"}, "policy.default: expected allow or block, got 'deny'"),
        ({"default": "mask"}, "policy.default: 'mask' is not an action"),
        ({"default": "hold"}, "policy.default: expected allow or block, got 'hold'"),
        ({"unknown": "maybe"}, "policy.unknown: expected block or allow"),
        ({"functions": "lower"}, "policy.functions: expected a non-empty list"),
        ({"functions": ["x.y.z"]}, "policy.functions[0]: expected NAME or SCHEMA.NAME"),
        ({"rules": {"name": "x"}}, "policy.rules: expected an array of tables"),
        ({"rule": []}, "policy.rule: unknown key (did you mean 'rules'?)"),
        ({"file": "p.toml", "default": "block"}, "policy.default: the policy is in policy.file"),
        ({"file": ""}, "policy.file: expected a non-empty string"),
    ],
)
def test_a_bad_top_level_key_is_named(data: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse(data, Path("/"))
    assert message in str(caught.value)


def test_every_kind_the_analysis_documents_can_be_named() -> None:
    for word in (
        "select",
        "insert",
        "update",
        "delete",
        "merge",
        "truncate",
        "copy_from",
        "copy_to",
        "copy_program",
        "do",
        "call",
        "grant",
        "revoke",
        "set_role",
        "set_session_authorization",
        "alter_system",
        "lock",
        "create_table",
        "drop_index",
        "begin",
        "commit",
        "read",
        "write",
        "ddl",
    ):
        assert word in kinds.WORDS
    assert kinds.category("delete") == "write"
    assert kinds.category("drop_table") == "ddl"
    assert kinds.category("something_new") == "other"


def test_no_function_with_side_effects_is_allowed() -> None:
    assert not functions.BUILTIN & functions.NEVER
    for name in ("pg_sleep", "set_config", "nextval", "pg_read_file", "dblink", "lo_import"):
        assert not functions.builtin(name)
        assert not functions.builtin(f"pg_catalog.{name}")
    assert functions.builtin("count") and functions.builtin("pg_catalog.lower")
    assert not functions.builtin("public.lower")  # a shadow of a built-in is not the built-in


# --- in witness.toml, or in a file it names ---------------------------------------------


def test_the_policy_table_in_witness_toml(tmp_path: Path) -> None:
    path = tmp_path / "witness.toml"
    path.write_text(BASE + "\n[policy]\n" + POLICY.replace("[[rules]]", "[[policy.rules]]"))
    assert [r.name for r in config.load(path).policy.rules] == ["no-ddl", "dba", "reads"]


def test_no_policy_table_means_no_decisions(tmp_path: Path) -> None:
    """Without [policy], commands are recorded and none is decided: adding Witness to a
    host never starts blocking what its agents ran before."""
    path = tmp_path / "witness.toml"
    path.write_text(BASE)
    assert config.load(path).policy is None
    path.write_text(BASE + "\n[policy]\n")
    assert config.load(path).policy == PolicySettings()


def test_a_policy_file_beside_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text(POLICY)
    path = tmp_path / "witness.toml"
    path.write_text(BASE + '\n[policy]\nfile = "policy.toml"\n')
    loaded = config.load(path).policy
    assert loaded.file == tmp_path / "policy.toml"
    assert loaded.rules == policy(POLICY).rules


def test_an_error_in_a_policy_file_names_the_file_the_rule_and_the_key(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text(
        '[[rules]]\nname = "x"\naction = "block"\nkinds = ["dleete"]\n'
    )
    path = tmp_path / "witness.toml"
    path.write_text(BASE + '\n[policy]\nfile = "policy.toml"\n')
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(caught.value) == (
        f"{tmp_path / 'policy.toml'}: rules[0] (\"x\"): kinds: unknown kind 'dleete'"
        " (did you mean 'delete'?)"
    )


def test_a_missing_or_broken_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such policy file"):
        load_file(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("rules = [")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_file(tmp_path / "bad.toml")


def test_a_rule_naming_a_backend_that_is_not_configured_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "witness.toml"
    text = '[[policy.rules]]\nname = "x"\naction = "block"\nbackends = ["ordres"]\n'
    path.write_text(BASE + "\n" + text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(caught.value) == (
        "policy.rules[0] (\"x\"): backends[0]: no backend is named 'ordres' (orders)"
    )


def test_parse_document_prefix_is_the_callers() -> None:
    with pytest.raises(PolicyError, match=r"^p\.toml: defualt: unknown key"):
        parse_document({"defualt": "block"}, "p.toml: ")
