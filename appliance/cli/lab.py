"""``witness demo`` (see Witness record a PostgreSQL session, end to end) and
``witness lab up|down`` (the network-namespace lab)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from appliance.cli.common import fail
from appliance.lab import demo as lab_demo
from appliance.lab import netns
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


@click.group()
def lab() -> None:
    """The network-namespace lab: a bastion and a backends namespace with PostgreSQL."""


suffix_option = click.option(
    "--suffix",
    default="",
    help="Name the lab witness-lab-SUFFIX, beside any other lab [default: witness-lab].",
)
state_dir_option = click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=netns.DEFAULT_STATE_DIR,
    show_default=True,
    help="Where the lab records what it created.",
)


@lab.command()
@suffix_option
@state_dir_option
def up(suffix: str, state_dir: Path) -> None:
    """Build the lab and start PostgreSQL in its backends namespace (needs root)."""
    _require_root()
    try:
        built = netns.Lab(suffix, state_dir, click.echo)
        if built.up():
            topo = built.topology
            click.echo(
                f"lab {topo.name} is up: run agents with 'ip netns exec {topo.bastion} ...'; "
                f"PostgreSQL at {topo.backend_ipv4}, {topo.backend_ipv4_other} and "
                f"[{topo.backend_ipv6}], port {topo.service('postgres').port}"
            )
    except LabError as exc:
        fail(str(exc))


@lab.command()
@suffix_option
@state_dir_option
def down(suffix: str, state_dir: Path) -> None:
    """Remove what 'witness lab up' created; safe to repeat, and after a crash."""
    _require_root()
    try:
        built = netns.Lab(suffix, state_dir, click.echo)
        if built.down():
            click.echo(f"lab {built.topology.name} is down")
        else:
            click.echo(f"lab {built.topology.name} was not up: nothing to remove")
    except LabError as exc:
        fail(str(exc))


def _require_root() -> None:
    if os.geteuid() != 0:
        fail("the lab creates network namespaces and needs root: run it with sudo")


def register(group: click.Group) -> None:
    group.add_command(demo)
    group.add_command(lab)
