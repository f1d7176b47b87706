"""``witness policy check|test``: validate a policy, and see what it would have decided for
the commands a trail recorded."""

from __future__ import annotations

import json
import sqlite3
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from appliance import config
from appliance.cli.common import (
    ask_central,
    bastion_option,
    central_option,
    fail,
    json_option,
    trail_option,
    trail_settings,
)
from appliance.cli.terminal import When, clean, progress
from appliance.config import ConfigError
from appliance.policy import replay
from appliance.policy.guardrails import Policy
from appliance.policy.rules import PolicyError, PolicySettings, load_file
from appliance.trail import centralquery, db
from appliance.trail.db import TrailError

# Tables only witness.toml has: a file with one of them is a configuration, not a policy.
_CONFIG_TABLES = ("policy", "backend", "listener", "trail", "identity", "enforce", "capture")


def load(path: Path) -> PolicySettings:
    """The policy in ``path``: a policy file, or a witness.toml (its ``[policy]``, after the
    whole file is validated). Exit 2 with the error when it is invalid."""
    try:
        try:
            data = tomllib.loads(path.read_bytes().decode("utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            data = {}  # the loader below says what is wrong, in its words
        if any(table in data for table in _CONFIG_TABLES):
            found = config.load(path).policy
            if found is None:
                fail(f"{path} has no [policy] table: nothing is decided, only recorded", 2)
            return found
        return load_file(path)
    except (PolicyError, ConfigError) as exc:
        fail(str(exc), 2)


@click.group("policy")
def policy_group() -> None:
    """Check a policy, and test it against a recorded trail."""


@policy_group.command("check")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def check_command(file: Path) -> None:
    """Validate FILE (a policy file, or a witness.toml with a [policy] table)."""
    click.echo(f"{file}: {load(file).summary()}")


@policy_group.command("test")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@trail_option
@click.option("--since", type=When(), default=None, help="Commands at or after TIME.")
@click.option("--until", type=When(), default=None, help="Commands at or before TIME.")
@click.option(
    "--identity", default=None, help="Only commands of this subject or email (ignoring case)."
)
@central_option
@bastion_option
@json_option
@click.pass_context
def test_command(
    ctx: click.Context,
    *,
    file: Path,
    trail: Path | None,
    since: int | None,
    until: int | None,
    identity: str | None,
    central_dsn: str | None,
    bastion: str | None,
    as_json: bool,
) -> None:
    """What the policy in FILE would have decided for each command the trail recorded (or
    the central store holds, with --central): counts by rule and action, with examples."""
    settings = load(file)
    policy = Policy(settings)
    if central_dsn is not None:

        def replayed(conn: Any) -> replay.Report:
            rows = centralquery.replay_rows(conn, until, bastion)
            return replay.replay(policy, rows, since=since, who=identity)

        report = ask_central(central_dsn, replayed)
    else:
        path = trail_settings(ctx, trail).path
        try:
            with db.reading(path) as conn:
                report = _run(conn, policy, since, until, identity)
        except TrailError as exc:
            fail(str(exc))
    names = [rule.name for rule in settings.rules]
    if as_json:
        click.echo(json.dumps(report.as_dict(names), ensure_ascii=False, indent=2))
        return
    _show(report, names)


def _run(
    conn: sqlite3.Connection, policy: Policy, since: int | None, until: int | None, who: str | None
) -> replay.Report:
    rows = replay.events(conn, since, until)
    with progress("deciding") as tell:
        if tell is None:
            return replay.replay(policy, rows, since=since, who=who)
        last = db.last_seq(conn)
        return replay.replay(
            policy, rows, since=since, who=who, progress=lambda seq: tell(seq, last)
        )


def _show(report: replay.Report, names: list[str]) -> None:
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    console.print(Text(clean(f"policy: {report.policy}")))
    table = Table()
    for name in ("decided by", "action", "commands", "examples (session, seq: text)"):
        table.add_column(name, overflow="fold")
    for tally in report.ordered(names):
        who = f"rule {tally.rule}" if tally.by == "rule" else tally.by
        examples = "\n".join(
            f"{e['session']}, {e['seq']}: {e['text']}"
            + (f"\n  ({e['reason']})" if "reason" in e else "")
            for e in tally.examples
        )
        table.add_row(*(Text(clean(v)) for v in (who, tally.action, str(tally.commands), examples)))
    console.print(table)
    line = f"{report.commands} commands decided, {report.cancels} cancel requests skipped"
    if report.skipped:
        line += f", {report.skipped} commands of other identities left out"
    console.print(Text(line))


def register(group: click.Group) -> None:
    group.add_command(policy_group)
