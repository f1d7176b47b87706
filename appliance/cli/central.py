"""``witness central schema|maintain`` and ``witness verify --central``: the central store of
every bastion's events, made, kept, and checked."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click
import psycopg

from appliance.cli.common import fail
from appliance.cli.terminal import progress
from appliance.config import AnchorSettings, TrailSettings
from appliance.trail import anchor, central, keys
from appliance.trail.central import CentralError
from appliance.trail.centralverify import TrailReport, compare_local, verify_trail
from appliance.trail.db import TrailError


@click.group("central")
def central_group() -> None:
    """The central store every bastion ships its events to."""


@central_group.command("schema")
@click.option(
    "--bastion",
    "bastions",
    metavar="ROLE",
    multiple=True,
    help="Also make a login role for this bastion to ship as (repeatable).",
)
def schema(bastions: tuple[str, ...]) -> None:
    """Print the SQL that makes the store's tables, roles and policies (run it with psql, as
    a superuser or the database's owner; running it again changes nothing), then run
    ``witness central maintain``."""
    click.echo(central.SCHEMA, nl=False)
    for role in bastions:
        click.echo(anchor.bastion_sql(role), nl=False)


@central_group.command("maintain")
@click.option("--dsn", required=True, metavar="DSN", help="The store, as its owner.")
@click.option("--ahead", default=7, show_default=True, help="Days of partitions made ahead.")
@click.option("--behind", default=2, show_default=True, help="Past days made if missing.")
@click.option(
    "--retain-days",
    type=click.IntRange(1),
    default=None,
    help="Drop the days older than this many days (recorded in witness.retention).",
)
def maintain(dsn: str, ahead: int, behind: int, retain_days: int | None) -> None:
    """Make the coming days' partitions, and drop what retention no longer keeps; run daily."""
    settings = AnchorSettings(dsn, timeout=300.0)
    try:
        with central.open_store(settings) as conn:
            done = central.maintain(
                conn, today=datetime.now(UTC).date(), ahead=ahead, behind=behind, retain=retain_days
            )
    except (CentralError, psycopg.Error) as exc:
        fail(f"central store {anchor.where(settings)}: {' '.join(str(exc).split())}")
    click.echo(
        f"witness: {len(done.created)} partition(s) made{_listed(done.created)};"
        f" {len(done.dropped)} dropped{_listed(done.dropped)}"
    )


def _listed(names: list[str]) -> str:
    return f" ({', '.join(names)})" if names else ""


def verify_central(  # noqa: PLR0917 - the verify command's options, passed on
    dsn: str,
    bastion: str | None,
    public_key: Path | None,
    keys_dir: Path | None,
    local: TrailSettings | None,
    as_json: bool,
) -> bool:
    """Check every trail the store holds (of ``bastion``); print one line (or JSON object)
    per trail; whether all are good. ``local``: this bastion's own trail, compared with
    what it shipped."""
    settings = AnchorSettings(dsn, timeout=60.0)
    reports: list[TrailReport] = []
    try:
        with central.open_store(settings) as conn:
            found = central.trails(conn, bastion)
            if not found:
                fail(f"central store {anchor.where(settings)}: no trail"
                     f"{f' of bastion {bastion}' if bastion else ''}")  # fmt: skip
            for who, trail in found:
                public = keys.load_public(_key_of(who, public_key, keys_dir))
                with progress(f"verifying {who}/{trail[:8]}") as tell:
                    told = None if tell is None else lambda seq, tell=tell: tell(seq, 0)
                    report = verify_trail(conn, who, trail, public, told)
                if local is not None and report.ok and local.path.exists():
                    report = compare_local(conn, who, report, local.path)
                reports.append(report)
    except (CentralError, TrailError, psycopg.Error) as exc:
        fail(str(exc))
    for report in reports:
        click.echo(json.dumps(report.as_dict()) if as_json else _describe(report))
    return all(r.ok for r in reports)


def _key_of(bastion: str, public_key: Path | None, keys_dir: Path | None) -> Path:
    if keys_dir is not None:
        path = keys_dir / f"{bastion}.pub"
        if not path.exists():
            raise TrailError(f"{path}: no public key for bastion {bastion}")
        return path
    if public_key is None:
        raise TrailError("give --public-key or --keys DIR (with BASTION.pub in it)")
    return public_key


def _describe(report: TrailReport) -> str:
    name = f"{report.bastion}/{report.trail}"
    if not report.ok:
        where = "" if report.first_bad_seq is None else f" at event {report.first_bad_seq}"
        return f"{name}: FAULT{where}: {report.reason}"
    start = "its genesis" if report.cut is None else f"event {report.cut} (retention's cut)"
    line = (
        f"{name}: ok, events {start} to {report.events} verified"
        f" ({report.checkpoints} checkpoints; {report.uncovered} after the last)"
    )
    if report.anchored:
        line += f"; {report.anchored} checkpoints vouched for by the anchor"
    return line + (f"; {report.local}" if report.local else "")


def register(group: click.Group) -> None:
    group.add_command(central_group)
