"""``witness verify``: prove the trail is whole, or name the first event that is not."""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance.cli.common import fail, json_option, trail_option, trail_settings
from appliance.trail import keys
from appliance.trail.db import TrailError
from appliance.trail.verify import Report, verify


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
@json_option
@click.pass_context
def verify_command(  # noqa: PLR0917 - one parameter per click option
    ctx: click.Context,
    trail: Path | None,
    public_key: Path | None,
    checkpoint_path: Path | None,
    open_tail: bool,
    as_json: bool,
) -> None:
    """Check the hash chain, every signature and the unsigned tail; exit 1 at the first fault."""
    settings = trail_settings(ctx, trail)
    if not settings.path.exists():
        fail(f"{settings.path}: no such trail file")
    if public_key is None and not settings.public_key.exists():
        fail(f"{settings.public_key}: no public key to check signatures with (give --public-key)")
    if checkpoint_path is not None and not checkpoint_path.exists():
        fail(f"{checkpoint_path}: no such checkpoint file")
    try:
        public = keys.load_public(public_key or settings.public_key)
        report = verify(
            settings.path,
            public,
            checkpoint_path or settings.checkpoint_file,
            open_tail=open_tail,
        )
    except TrailError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(_describe(settings.path, report))
    if not report.ok:
        ctx.exit(1)


def _describe(path: Path, report: Report) -> str:
    if not report.ok:
        where = "" if report.first_bad_seq is None else f" at event {report.first_bad_seq}"
        return f"{path}: FAULT{where}: {report.reason}"
    signed = f"{report.checkpoints} checkpoint{'' if report.checkpoints == 1 else 's'}"
    line = f"{path}: ok, trail {report.trail}, {report.events} events verified ({signed})"
    if report.uncovered or not report.checkpoints:
        return f"{line}; the last {report.uncovered} are not yet covered by a signed checkpoint"
    return line + "; all covered by a signed checkpoint"


def register(group: click.Group) -> None:
    group.add_command(verify_command)
