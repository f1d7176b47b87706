"""``witness up``, ``witness down``, ``witness status``: host enforcement.

``up`` validates the configuration, renders the ``inet witness`` table, checks it with
``nft -c`` and only then replaces the live table in one transaction; a bad configuration
exits 2 and leaves the running ruleset as it was. ``down`` removes that table and nothing
else. ``status`` compares the live table with what the configuration renders now.
"""

from __future__ import annotations

import json

import click

from appliance.cli.common import fail, json_option, settings
from appliance.config import ConfigError, Settings
from appliance.enforce import nft

ATTRIBUTION = "sock_diag"
ATTRIBUTION_WHY = (
    "the eBPF programs are not built yet: owners are found through sock_diag and /proc "
    "when the recorder accepts a connection"
)

netns_option = click.option(
    "--netns",
    metavar="NAME",
    default=None,
    help="Run nft inside this network namespace (the lab) instead of the host's.",
)


def _plan(ctx: click.Context) -> tuple[Settings, nft.Plan]:
    resolved = settings(ctx)
    try:
        return resolved, nft.plan(resolved)
    except ConfigError as exc:
        fail(str(exc), 2)


@click.command()
@netns_option
@click.pass_context
def up(ctx: click.Context, netns: str | None) -> None:
    """Divert and guard the protected backends (replaces the inet witness table)."""
    resolved, plan = _plan(ctx)
    try:
        nft.up(plan, netns)
    except nft.NftError as exc:
        fail(str(exc))
    click.echo(
        f"witness: table inet witness is up: {len(plan.protected)} backend(s) protected, "
        f"diverted to port {plan.redirect_port}, "
        f"{resolved.enforce.service_user} (uid {plan.service_uid}) exempt"
    )


@click.command()
@netns_option
def down(netns: str | None) -> None:
    """Remove the inet witness table (nothing else); not an error when it is absent."""
    try:
        nft.down(netns)
    except nft.NftError as exc:
        fail(str(exc))
    click.echo("witness: table inet witness is down")


def _state(current: list[nft.Json] | None, plan: nft.Plan) -> str:
    if current is None:
        return "absent"
    return "up" if nft.matches(plan, current) else "differs"


@click.command()
@netns_option
@json_option
@click.pass_context
def status(ctx: click.Context, netns: str | None, as_json: bool) -> None:
    """Whether enforcement is up and matches the configuration; exit 1 when it is not."""
    resolved, plan = _plan(ctx)
    try:
        state = _state(nft.live(netns), plan)
    except nft.NftError as exc:
        fail(str(exc))
    backends = [
        {
            "name": b.name,
            "networks": [str(n) for n in b.networks],
            "ports": list(b.ports),
        }
        for b in plan.protected
    ]
    if as_json:
        report = {
            "table": state,
            "service_user": resolved.enforce.service_user,
            "service_uid": plan.service_uid,
            "redirect_port": plan.redirect_port,
            "protected": backends,
            "attribution": {"mode": ATTRIBUTION, "why": ATTRIBUTION_WHY},
        }
        click.echo(json.dumps(report, indent=2))
    else:
        described = {
            "up": "present, matches the configuration",
            "absent": "absent: nothing is diverted or guarded (run witness up)",
            "differs": "present, but differs from what the configuration renders "
            "(changed by hand, or the configuration changed: run witness up)",
        }
        click.echo(f"table inet witness: {described[state]}")
        click.echo(f"service user:       {resolved.enforce.service_user} (uid {plan.service_uid})")
        click.echo(f"redirect port:      {plan.redirect_port}")
        click.echo("protected:")
        for p in plan.protected:
            nets = ", ".join(str(n) for n in p.networks)
            ports = ", ".join(str(port) for port in p.ports)
            click.echo(f"  {p.name}: {nets} (diverted ports: {ports})")
        click.echo(f"attribution:        {ATTRIBUTION} ({ATTRIBUTION_WHY})")
    ctx.exit(0 if state == "up" else 1)


def register(group: click.Group) -> None:
    for command in (up, down, status):
        group.add_command(command)
