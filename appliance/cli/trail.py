"""``witness verify``: prove the trail is whole, or name the first event that is not; and
``witness anchor schema``: the SQL that makes the anchor it is checked against."""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance import config
from appliance.cli.central import verify_central
from appliance.cli.common import fail, json_option, trail_option, trail_settings
from appliance.cli.terminal import progress
from appliance.config import AnchorSettings, TrailSettings
from appliance.export import jsonl
from appliance.trail import anchor, db, keys
from appliance.trail.anchor import AnchorError
from appliance.trail.checkpoint import Checkpoint
from appliance.trail.db import TrailError
from appliance.trail.verify import ExportReport, Report, verify, verify_export


@click.command("verify")
@trail_option
@click.option(
    "--public-key",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Public key that signs the checkpoints [default: the signing key's .pub beside it].",
)
@click.option(
    "--checkpoint",
    "checkpoint_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The checkpoint file, which the recorder keeps outside the trail to show a cut"
    " tail [default: the one beside the signing key; it must exist].",
)
@click.option(
    "--open-tail",
    is_flag=True,
    help="Accept events no checkpoint covers yet, however many and however old: the trail"
    " is still being written, or its recorder crashed.",
)
@click.option(
    "--anchor",
    "anchor_dsn",
    metavar="DSN",
    default=None,
    help="Also check the trail against the checkpoints this anchor holds (a libpq"
    " connection string) [default: the configured [trail.anchor], if any].",
)
@click.option("--no-anchor", is_flag=True, help="Do not check against the configured anchor.")
@click.option(
    "--central",
    "central_dsn",
    metavar="DSN",
    default=None,
    help="Check the central store instead: every bastion's chain it holds (with --public-key"
    " or --keys), and, on a bastion, its own trail against what it shipped.",
)
@click.option("--bastion", default=None, help="With --central: only this bastion's trails.")
@click.option(
    "--keys",
    "keys_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="With --central: a directory of the bastions' public keys, BASTION.pub.",
)
@click.option(
    "--jsonl",
    "jsonl_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Check this JSONL export (witness export --format jsonl) instead of the trail,"
    " with the trail's public key (or --public-key).",
)
@click.option(
    "--partial",
    is_flag=True,
    help="With --jsonl: accept events no signed checkpoint in the export vouches for (a"
    " filtered export's, or its last ones, not yet signed when it was made).",
)
@json_option
@click.pass_context
def verify_command(  # noqa: PLR0917 - one parameter per click option
    ctx: click.Context,
    trail: Path | None,
    public_key: Path | None,
    checkpoint_path: Path | None,
    open_tail: bool,
    anchor_dsn: str | None,
    no_anchor: bool,
    central_dsn: str | None,
    bastion: str | None,
    keys_dir: Path | None,
    jsonl_path: Path | None,
    partial: bool,
    as_json: bool,
) -> None:
    """Check the hash chain, every signature, what vouches for the trail outside it (the
    checkpoint file, the anchor) and the unsigned tail; exit 1 at the first fault. With
    --central, check the central store's chains instead; with --jsonl, an export of the
    trail, the same way."""
    if central_dsn is not None:
        local = _local_trail(ctx, trail)
        key = public_key or (local.public_key if local and local.public_key.exists() else None)
        if not verify_central(central_dsn, bastion, key, keys_dir, local, as_json):
            ctx.exit(1)
        return
    if jsonl_path is not None:
        _verify_jsonl(
            ctx,
            jsonl_path,
            public_key or trail_settings(ctx, trail).public_key,
            partial=partial,
            as_json=as_json,
        )
        return
    if partial:
        fail("--partial goes with --jsonl", 2)
    settings = trail_settings(ctx, trail)
    if not settings.path.exists():
        fail(f"{settings.path}: no such trail file")
    if public_key is None and not settings.public_key.exists():
        fail(f"{settings.public_key}: no public key to check signatures with (give --public-key)")
    if checkpoint_path is not None and not checkpoint_path.exists():
        fail(f"{checkpoint_path}: no such checkpoint file")
    if anchor_dsn is not None and no_anchor:
        fail("--anchor and --no-anchor go separately", 2)
    where = settings.anchor if anchor_dsn is None else AnchorSettings(anchor_dsn)
    try:
        public = keys.load_public(public_key or settings.public_key)
        anchored = None if where is None or no_anchor else _anchored(settings.path, where)
        with progress("verifying") as tell:
            report = verify(
                settings.path,
                public,
                checkpoint_path or settings.checkpoint_file,
                anchor=anchored,
                open_tail=open_tail,
                progress=tell,
            )
    except (TrailError, AnchorError) as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(_describe(settings.path, report))
    if not report.ok:
        ctx.exit(1)


def _local_trail(ctx: click.Context, trail: Path | None) -> TrailSettings | None:
    """This host's trail, to compare with what it shipped, if there is one."""
    if trail is None and ctx.find_root().obj is None and not config.DEFAULT_CONFIG.exists():
        return None
    return trail_settings(ctx, trail)


def _verify_jsonl(
    ctx: click.Context, path: Path, public_key: Path, *, partial: bool, as_json: bool
) -> None:
    """Check an export line by line, streaming, with the walk the trail's check uses."""
    try:
        public = keys.load_public(public_key)
        with path.open("rb") as lines:
            rows = (jsonl.row(line, number) for number, line in enumerate(lines, 1))
            report = verify_export(rows, public, partial=partial)
    except TrailError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{path}: cannot read: {exc.strerror}")
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(_describe_export(path, report))
    if not report.ok:
        ctx.exit(1)


def _describe_export(path: Path, report: ExportReport) -> str:
    if not report.ok:
        where = "" if report.first_bad_seq is None else f" at event {report.first_bad_seq}"
        return f"{path}: FAULT{where}: {report.reason}"
    signed = f"{report.checkpoints} checkpoint{'' if report.checkpoints == 1 else 's'}"
    trail = f"trail {report.trail}, " if report.trail else ""
    line = (
        f"{path}: ok, {trail}events {report.first} to {report.last}: {report.events}"
        f" verified ({signed})"
    )
    if report.complete:
        line += ", the whole chain from its genesis"
    else:
        line += f", {report.gaps} gap{'' if report.gaps == 1 else 's'}"
    if report.unvouched:
        return line + (
            f"; {report.vouched} vouched for by a signed checkpoint, {report.unvouched} not"
            f" (from event {report.first_unvouched})"
        )
    return line + "; all vouched for by a signed checkpoint"


def _anchored(path: Path, where: AnchorSettings) -> list[Checkpoint] | None:
    """The anchor's checkpoints of this trail (None: the trail names none, verify says so).

    They must all come from one bastion, and from the configured one when it is known: a
    checkpoint of this trail published by another would be a forgery the anchor let in.
    """
    with db.reading(path) as conn:
        trail = db.trail_id(conn)
    if trail is None:
        return None
    found = anchor.fetch(where, trail)
    bastions = sorted({a.bastion for a in found})
    expected = where.bastion
    if len(bastions) > 1 or (expected is not None and bastions and bastions != [expected]):
        raise AnchorError(
            f"the anchor holds checkpoints of trail {trail} published by"
            f" {', '.join(bastions)}{f', not only {expected}' if expected else ''}:"
            " another bastion published for this trail"
        )
    return [a.checkpoint for a in found]


def _describe(path: Path, report: Report) -> str:
    if not report.ok:
        where = "" if report.first_bad_seq is None else f" at event {report.first_bad_seq}"
        return f"{path}: FAULT{where}: {report.reason}"
    signed = f"{report.checkpoints} checkpoint{'' if report.checkpoints == 1 else 's'}"
    if report.retired:
        held = f"events {report.retired + 1} to {report.events}"
        line = (
            f"{path}: ok, trail {report.trail}, {held} verified ({signed}); events 1 to"
            f" {report.retired} were retired (held off the host, deleted here)"
        )
    else:
        line = f"{path}: ok, trail {report.trail}, {report.events} events verified ({signed})"
    if report.uncovered or not report.checkpoints:
        line += f"; the last {report.uncovered} are not yet covered by a signed checkpoint"
    else:
        line += "; all covered by a signed checkpoint"
    if report.anchored is not None:
        line += (
            f"; the anchor holds {report.anchored} of its checkpoints, all as the trail has"
            f" them ({report.unanchored} newer not yet there)"
        )
    return line


@click.group("anchor")
def anchor_group() -> None:
    """The anchor off the host that the recorder publishes its checkpoints to."""


@anchor_group.command("schema")
@click.option(
    "--bastion",
    "bastions",
    metavar="ROLE",
    multiple=True,
    help="Also make a login role for this bastion to publish as (repeatable).",
)
def schema(bastions: tuple[str, ...]) -> None:
    """Print the SQL that makes the anchor's table, roles and policies (run it with psql, as
    a superuser, in the anchor's database; running it again changes nothing)."""
    click.echo(anchor.SCHEMA, nl=False)
    for role in bastions:
        click.echo(anchor.bastion_sql(role), nl=False)


def register(group: click.Group) -> None:
    group.add_command(verify_command)
    group.add_command(anchor_group)
