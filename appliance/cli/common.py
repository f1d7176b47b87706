"""What the command groups share: finding the configuration and the trail, clean failures."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from appliance import config
from appliance.config import ConfigError, Settings, TrailSettings

T = TypeVar("T")


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


def ask_central(dsn: str, ask: Callable[[Any], T]) -> T:
    """Run one query against the central store (``ask`` gets a psycopg connection); any
    problem is a one-line failure."""
    import psycopg  # noqa: PLC0415 (only commands given --central need it)

    from appliance.trail import central  # noqa: PLC0415
    from appliance.trail.anchor import where  # noqa: PLC0415
    from appliance.trail.central import CentralError  # noqa: PLC0415
    from appliance.trail.db import TrailError  # noqa: PLC0415

    settings = config.AnchorSettings(dsn, timeout=60.0)
    try:
        with central.open_store(settings) as conn:
            return ask(conn)
    except (CentralError, TrailError) as exc:
        fail(str(exc))
    except psycopg.Error as exc:
        fail(f"central store {where(settings)}: {' '.join(str(exc).split())}")


central_option = click.option(
    "--central",
    "central_dsn",
    metavar="DSN",
    default=None,
    help="Ask the central store (a libpq connection string) instead of this host's trail.",
)
bastion_option = click.option("--bastion", default=None, help="With --central: this bastion only.")
