"""``witness demo``: see Witness record a PostgreSQL session, end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.cli.common import fail
from appliance.lab import demo as lab_demo
from appliance.lab.postgres import LabError


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the demo keeps its trail [default: ./witness-demo].",
)
@click.option(
    "--keep/--no-keep",
    default=None,
    help="Stay up for trying it by hand until Ctrl-C [default: when run in a terminal].",
)
def demo(directory: Path | None, keep: bool | None) -> None:
    """Record a few psql commands through Witness and show the trail they left."""
    try:
        lab_demo.run(
            directory or lab_demo.default_directory(),
            sys.stdin.isatty() if keep is None else keep,
            click.echo,
        )
    except LabError as exc:
        fail(str(exc))


def register(group: click.Group) -> None:
    group.add_command(demo)
