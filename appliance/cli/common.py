"""What the command groups share: finding the configuration and the trail, clean failures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from appliance import config
from appliance.config import ConfigError, Settings, TrailSettings


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    click.echo(f"witness: {message}", err=True)
    sys.exit(code)


def settings(ctx: click.Context) -> Settings:
    """The configuration named by ``--config`` (or the default file); exit 2 if invalid."""
    path = ctx.find_root().obj or config.DEFAULT_CONFIG
    try:
        return config.load(path)
    except ConfigError as exc:
        fail(str(exc), 2)


def trail_settings(ctx: click.Context, trail: Path | None) -> TrailSettings:
    """The trail given with ``--trail`` (its key beside it), else the configured one."""
    if trail is not None:
        return TrailSettings.beside(trail)
    if ctx.find_root().obj is None and not config.DEFAULT_CONFIG.exists():
        fail(f"no trail given: pass --trail FILE, or --config (no {config.DEFAULT_CONFIG})", 2)
    return settings(ctx).trail


trail_option = click.option(
    "--trail",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Trail file [default: the configured one].",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
