"""``witness demo`` (Witness enforcing in the lab, an agent under an OIDC identity) and
``witness lab up|down`` (the network-namespace lab)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from appliance.cli.common import fail
from appliance.lab import demo as lab_demo
from appliance.lab import netns
from appliance.lab.postgres import LabError


@click.command()
@click.option("--shell", is_flag=True, help="Open a shell as the demo's agent, in the bastion.")
@click.option("--down", is_flag=True, help="Remove everything the demo made.")
def demo(shell: bool, down: bool) -> None:
    """Witness enforcing in a lab: an agent's session under an OIDC identity, and its trail.

    Needs root. Without options it builds the lab and leaves it running.
    """
    if shell and down:
        fail("--shell or --down, not both", 2)
    _require_root()
    try:
        if down:
            removed = lab_demo.down(click.echo)
            click.echo("the demo is down" if removed else "the demo was not up: nothing to remove")
        elif shell:
            lab_demo.shell()
        else:
            lab_demo.up(click.echo)
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
        fail("needs root: the lab makes network namespaces, users and cgroups (use sudo)")


def register(group: click.Group) -> None:
    group.add_command(demo)
    group.add_command(lab)
