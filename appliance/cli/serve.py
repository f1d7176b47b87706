"""``witness serve``: run the recorder in the foreground."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from appliance import daemon
from appliance.cli.common import fail, settings
from appliance.config import (
    Capture,
    ConfigError,
    IdentitySettings,
    Listener,
    Settings,
    TrailSettings,
    parse_backend_url,
    parse_hostport,
)
from appliance.trail.store import TrailError, TrailWriteError


def quick_settings(listen: str, backend: str, trail: Path, unbound: str = "allow") -> Settings:
    """Settings for a run with no configuration file: no issuers, so connections are
    recorded without identities unless ``unbound`` is ``refuse``."""
    address, port = parse_hostport(listen, "--listen")
    target = parse_backend_url(backend)
    return Settings(
        listeners=(Listener(address, port, target.name),),
        backends={target.name: target},
        trail=TrailSettings.beside(trail),
        capture=Capture(),
        identity=IdentitySettings(unbound=unbound),
    )


@click.command()
@click.option("--listen", metavar="ADDRESS:PORT", help="Listen here (quick start, no file).")
@click.option("--backend", metavar="URL", help="postgresql://ADDRESS:PORT to relay to.")
@click.option("--trail", type=click.Path(path_type=Path, dir_okay=False), help="Trail file.")
@click.option(
    "--unbound",
    type=click.Choice(["allow", "refuse"]),
    default=None,
    help="Quick start: record connections with no identity (allow, the default there), or "
    "refuse them. A configuration file says this in [identity] (refuse by default).",
)
@click.option("--verbose", "-v", is_flag=True, help="Log every session.")
@click.pass_context
def serve(  # noqa: PLR0917 - one parameter per click option
    ctx: click.Context,
    listen: str | None,
    backend: str | None,
    trail: Path | None,
    unbound: str | None,
    verbose: bool,
) -> None:
    """Run the recorder in the foreground.

    With --listen, --backend and --trail it runs with no configuration file; otherwise it
    reads --config (default /etc/witness/witness.toml).
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if verbose:  # our own sessions, not every library's debug messages
        for name in ("appliance", "witness"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    quick = (listen, backend, trail)
    if any(quick):
        if not all(quick):
            fail("--listen, --backend and --trail go together (or use --config)", 2)
        try:
            resolved = quick_settings(
                listen or "", backend or "", trail or Path(), unbound or "allow"
            )
        except ConfigError as exc:
            fail(str(exc), 2)
    else:
        if unbound is not None:
            fail("--unbound is for the quick start; with a file, set [identity] unbound", 2)
        resolved = settings(ctx)
    try:
        daemon.serve(resolved)
    except (daemon.StartError, TrailError, TrailWriteError) as exc:
        fail(str(exc))


def register(group: click.Group) -> None:
    group.add_command(serve)
