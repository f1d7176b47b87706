"""``witness warden``: run the root warden in the foreground (see :mod:`appliance.enforce.warden`).

It is the only part of ``witness run`` that needs root, and it runs apart from the recorder
so that the recorder never does: the recorder, as the service user, asks it over
``identity.warden_socket`` to move a ``witness run`` process into an agent cgroup of its own.
"""

from __future__ import annotations

import logging
import os
import pwd
from pathlib import Path

import click

from appliance import config
from appliance.cli.common import fail
from appliance.config import ConfigError
from appliance.enforce import cgroups
from appliance.enforce.warden import Warden, WardenError


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Configuration file [default: witness --config, or /etc/witness/witness.toml].",
)
@click.option(
    "--agent-root",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The agent cgroup root, below the cgroup2 mount [default: <cgroup2>/witness-agents]. "
    "For tests and labs: a real install uses the default, which witness up makes.",
)
@click.pass_context
def warden(ctx: click.Context, config_path: Path | None, agent_root: Path | None) -> None:
    """Run the warden, as root, in the foreground: it moves `witness run` callers into agent
    cgroups of their own when the recorder asks, and removes those cgroups once empty.

    It listens on identity.warden_socket (root and the service user's group, 0660) and answers
    only enforce.service_user and root. SIGTERM or SIGINT stops it; placed agents keep running.
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if os.geteuid() != 0:
        fail("the warden must run as root: only root may move processes into agent cgroups")
    path = config_path or ctx.find_root().obj or config.DEFAULT_CONFIG
    try:
        resolved = config.load(path)
    except ConfigError as exc:
        fail(str(exc), 2)
    user = resolved.enforce.service_user
    try:
        service = pwd.getpwnam(user)
    except KeyError:
        fail(f"enforce.service_user: no user {user!r} (the recorder's user)", 2)
    try:
        server = Warden(
            resolved.identity.warden_socket,
            service.pw_uid,
            service.pw_gid,
            root=agent_root.absolute() if agent_root is not None else None,
        )
        server.serve()
    except (WardenError, cgroups.CgroupError) as exc:
        fail(str(exc))


def register(group: click.Group) -> None:
    group.add_command(warden)
