"""The ``witness`` command: one click group, one module per command group."""

from __future__ import annotations

from pathlib import Path

import click

from appliance import __version__
from appliance.cli import (
    approvals,
    central,
    enforce,
    export,
    identity,
    lab,
    policy,
    provision,
    serve,
    sessions,
    tail,
    trail,
    warden,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="witness")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Configuration file [default: /etc/witness/witness.toml].",
)
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """Witness records every command agents send to protected backends."""
    ctx.obj = config_path


for module in (
    central,
    serve,
    sessions,
    tail,
    trail,
    export,
    lab,
    enforce,
    warden,
    identity,
    approvals,
    provision,
    policy,
):
    module.register(main)
