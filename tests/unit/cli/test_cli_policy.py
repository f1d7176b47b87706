"""witness policy check|test, against policy files and a real trail written through Trail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from appliance.cli import policy
from appliance.config import TrailSettings
from appliance.policy import analysis
from appliance.trail.store import Trail

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
MAIN = {"name": "main", "address": "127.0.0.1", "port": 5432, "protocol": "postgresql"}
ISSUER = "https://idp.example.com"
ALICE = {"issuer": ISSUER, "subject": "s-alice", "email": "Alice@Example.com", "groups": ["dev"]}
BOB = {"issuer": ISSUER, "subject": "s-bob", "email": "bob@example.com", "groups": ["dba"]}

POLICY = """
[[rules]]
name = "dba"
action = "allow"
groups = ["dba"]

[[rules]]
name = "no-wipe"
action = "block"
databases = ["shop"]
no_where = true
message = "add a WHERE"

[[rules]]
name = "no-ddl"
action = "block"
databases = ["shop"]
kinds = ["ddl"]
"""


@pytest.fixture
def cli() -> click.Group:
    group = click.Group("witness")
    policy.register(group)
    return group


def run(cli: click.Group, *args: str) -> Result:
    return CliRunner(env={"COLUMNS": "300"}).invoke(cli, list(args))


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


# --- check --------------------------------------------------------------------------------


def test_check_a_good_policy_file(cli: click.Group, policy_file: Path) -> None:
    result = run(cli, "policy", "check", str(policy_file))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{policy_file}: 3 rules, default allow, unknown block\n"


def test_check_a_bad_policy_file_names_the_rule_and_the_key(
    cli: click.Group, tmp_path: Path
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY.replace('kinds = ["ddl"]', 'kinds = ["dll"]'))
    result = run(cli, "policy", "check", str(path))
    assert result.exit_code == 2
    assert (
        f"{path}: rules[2] (\"no-ddl\"): kinds: unknown kind 'dll' (did you mean 'ddl'?)"
        in result.stderr
    )


def test_check_a_witness_toml_with_a_policy_table(cli: click.Group, tmp_path: Path) -> None:
    path = tmp_path / "witness.toml"
    base = '[[backend]]\nname = "main"\naddress = "127.0.0.1"\nport = 5432\n'
    base += '[[listener]]\nlisten = "127.0.0.1:6432"\nbackend = "main"\n'
    path.write_text(
        base + '[policy]\ndefault = "block"\n' + POLICY.replace("[[rules]]", "[[policy.rules]]")
    )
    result = run(cli, "policy", "check", str(path))
    assert result.exit_code == 0, result.output
    assert "3 rules, default block, unknown block" in result.stdout
    path.write_text(base + '[policy]\ndefault = "deny"\n')
    result = run(cli, "policy", "check", str(path))
    assert result.exit_code == 2
    assert "policy.default: expected allow or block, got 'deny'" in result.stderr


def test_check_a_missing_file(cli: click.Group, tmp_path: Path) -> None:
    result = run(cli, "policy", "check", str(tmp_path / "nope.toml"))
    assert result.exit_code == 2
    assert "no such policy file" in result.stderr


# --- test ---------------------------------------------------------------------------------

needs_analysis = pytest.mark.skipif(
    not hasattr(analysis, "analyse"), reason="the statement analysis is not built yet"
)


def start(identity: dict[str, Any] | None, database: str = "shop") -> dict[str, Any]:
    return {
        "client": "10.0.0.7:40000",
        "backend": MAIN,
        "owner": {"uid": 1000, "pid": 4000},
        "db_user": "app",
        "database": database,
        "identity": identity,
    }


@pytest.fixture
def trail_path(tmp_path: Path) -> Path:
    """Alice (dev) reads, wipes, runs a DO block, drops a table and cancels; Bob (dba) drops
    a table an hour later; an unbound session runs a DO block in another database."""
    now = [T0]
    settings = TrailSettings.beside(tmp_path / "trail.db")
    t = Trail.open(settings, clock=lambda: now[0])

    def at(offset: float, type_: str, session: str, payload: dict[str, Any]) -> None:
        now[0] = T0 + offset
        t.append(type_, session, payload)
        t.commit()

    commands = [
        ("query", "SELECT * FROM orders WHERE id = 1"),
        ("query", "SELECT * FROM orders WHERE id = 1"),
        ("query", "DELETE FROM orders"),
        ("query", "DO $$ BEGIN PERFORM 1; END $$"),
        ("cancel", ""),
        ("query", "DROP TABLE orders"),
        ("execute", "SELECT * FROM orders WHERE id = $1"),
        ("query", "SELECT 1; SELECT 2; SELECT 3; SELECT 4"),
        ("query", "SELECT 5"),
    ]
    at(0, "session_start", "alice", start(ALICE))
    for n, (kind, text) in enumerate(commands, 1):
        at(n, "command", "alice", {"n": n, "kind": kind, "text": text})
    at(20, "session_end", "alice", {"reason": "client closed", "commands": len(commands)})
    at(3600, "session_start", "bob", start(BOB))
    at(3601, "command", "bob", {"n": 1, "kind": "query", "text": "DROP TABLE orders"})
    at(3700, "session_start", "anon", start(None, "scratch"))
    at(3701, "command", "anon", {"n": 1, "kind": "query", "text": "DO $$ BEGIN END $$"})
    t.close()
    return settings.path


def tallies(cli: click.Group, *args: str) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    result = run(cli, "policy", "test", *args, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    return {(d["by"], d["rule"], d["action"]): d for d in report["decisions"]} | {
        ("total", None, ""): report
    }


@needs_analysis
def test_a_report_by_rule_and_action(cli: click.Group, policy_file: Path, trail_path: Path) -> None:
    found = tallies(cli, str(policy_file), "--trail", str(trail_path))
    total = found.pop(("total", None, ""))
    assert (total["commands"], total["cancels"]) == (10, 1)
    assert found[("rule", "dba", "allow")]["commands"] == 1
    wipe = found[("rule", "no-wipe", "block")]
    # Alice's DO block meets the first blocking rule that applies to her: it might wipe.
    assert wipe["commands"] == 2
    assert [(e["session"], e["text"]) for e in wipe["examples"]] == [
        ("alice", "DELETE FROM orders"),
        ("alice", "DO $$ BEGIN PERFORM 1; END $$"),
    ]
    assert found[("rule", "no-ddl", "block")]["commands"] == 1  # alice's; bob is a dba
    # In scratch no blocking rule applies: the setting for what cannot be known decides.
    unknown = found[("unknown", None, "block")]
    assert unknown["commands"] == 1
    assert unknown["examples"][0]["session"] == "anon"
    assert "DO block" in unknown["examples"][0]["reason"]
    default = found[("default", None, "allow")]
    assert default["commands"] == 5
    assert len(default["examples"]) == 3  # no more than three
    assert [e["seq"] for e in default["examples"]] == sorted(e["seq"] for e in default["examples"])


@needs_analysis
def test_filters_by_identity_and_time(
    cli: click.Group, policy_file: Path, trail_path: Path
) -> None:
    bob = tallies(
        cli, str(policy_file), "--trail", str(trail_path), "--identity", "BOB@example.com"
    )
    assert bob.pop(("total", None, ""))["filtered_out"] == 9
    assert {k: v["commands"] for k, v in bob.items()} == {("rule", "dba", "allow"): 1}
    alice = tallies(cli, str(policy_file), "--trail", str(trail_path), "--identity", "s-alice")
    assert alice[("total", None, "")]["commands"] == 8
    # Bob's session started before --since, his command after: his identity still applies.
    since = "2023-11-14T23:13:20.500"
    later = tallies(cli, str(policy_file), "--trail", str(trail_path), "--since", since)
    assert later.pop(("total", None, ""))["commands"] == 2
    assert later[("rule", "dba", "allow")]["commands"] == 1
    early = tallies(
        cli, str(policy_file), "--trail", str(trail_path), "--until", "2023-11-14T22:14:00"
    )
    assert early[("total", None, "")]["commands"] == 8


@needs_analysis
def test_a_report_for_people(cli: click.Group, policy_file: Path, trail_path: Path) -> None:
    result = run(cli, "policy", "test", str(policy_file), "--trail", str(trail_path))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "rule no-wipe" in out and "alice, " in out and "DELETE FROM orders" in out
    assert "10 commands decided, 1 cancel requests skipped" in out
    assert out.index("rule dba") < out.index("rule no-wipe") < out.index("rule no-ddl")


def test_a_bad_policy_is_refused_before_the_trail_is_read(cli: click.Group, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('default = "mask"\n')
    result = run(cli, "policy", "test", str(path), "--trail", str(tmp_path / "none.db"))
    assert result.exit_code == 2
    assert "default: 'mask' is not an action" in result.stderr


@needs_analysis
def test_a_missing_trail_is_a_clean_failure(
    cli: click.Group, policy_file: Path, tmp_path: Path
) -> None:
    result = run(cli, "policy", "test", str(policy_file), "--trail", str(tmp_path / "none.db"))
    assert result.exit_code == 1
    assert "no such trail file" in result.stderr
