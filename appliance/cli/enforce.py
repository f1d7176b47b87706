"""``witness up``, ``witness down``, ``witness status``: host enforcement.

``up`` validates the configuration, renders the ``inet witness`` table, checks it with
``nft -c`` and only then replaces the live table in one transaction; a bad configuration
exits 2 and leaves the running ruleset as it was. Then it creates the agent cgroup root
(``<cgroup2>/witness-agents``) and, when :func:`appliance.enforce.bpf.probe` says eBPF can be
loaded here, attaches the eBPF programs to it: owner attribution by eBPF, raw sockets and
IPv6 (or ``::ffff:``) connections to protected ranges denied. Without BCC or kernel headers
it stops after nftables, and owners are attributed through sock_diag; ``up`` and ``status``
say why. ``down`` removes the table, the programs, their pins and the agent root, and
nothing else. ``status`` compares the live table with what the configuration renders now,
and tells which attribution mode is active.

cgroups are host-wide, not per network namespace: with ``--netns`` (the lab), ``up`` leaves
the host's cgroups alone unless ``--ebpf`` is given.
"""

from __future__ import annotations

import json
import pwd
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from appliance.cli.common import fail, json_option, settings
from appliance.config import AnchorSettings, ConfigError, Settings, TrailSettings
from appliance.enforce import bpf, cgroups, nft
from appliance.export import forward
from appliance.trail import db, publisher, segments, shipper
from appliance.trail.anchor import where
from appliance.trail.db import TrailError

SOCK_DIAG_WHY = "owners are found through sock_diag and /proc when the recorder accepts"

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


def _agent_root() -> Path | None:
    mount = cgroups.cgroup2_mount()
    return None if mount is None else mount / cgroups.AGENT_ROOT_NAME


def _up_ebpf(plan: nft.Plan) -> None:
    """Create the agent root and attach the programs; says on stderr why not, never fails."""
    found = bpf.probe()
    if not found.available:
        click.echo(f"witness: attribution by sock_diag: {found.why}", err=True)
        return
    try:
        root = cgroups.create_root()
        try:
            reader_gid: int | None = pwd.getpwuid(plan.service_uid).pw_gid
        except KeyError:
            reader_gid = None
        done = bpf.attach((*plan.networks(4), *plan.networks(6)), root, reader_gid=reader_gid)
    except (cgroups.CgroupError, bpf.BpfError) as exc:
        click.echo(f"witness: eBPF not attached, attribution by sock_diag: {exc}", err=True)
        return
    click.echo(
        f"witness: eBPF attached to {done.root} ({', '.join(done.programs)}), "
        f"{done.protected} protected range(s) denied over IPv6, maps pinned in {done.pins}"
    )
    if not bpf.pids_are_ours():
        click.echo(f"witness: attribution by sock_diag all the same: {bpf.FOREIGN_PIDS}", err=True)


@click.command()
@netns_option
@click.option(
    "--ebpf/--no-ebpf",
    default=None,
    help="Attach the eBPF programs to the agent cgroup root [default: when BCC and kernel "
    "headers are here, and no --netns is given].",
)
@click.pass_context
def up(ctx: click.Context, netns: str | None, ebpf: bool | None) -> None:
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
    if netns is None:
        # The agents' cgroups are made below it by the warden, with or without eBPF.
        try:
            cgroups.create_root()
        except cgroups.CgroupError as exc:
            click.echo(
                f"witness: no agent cgroup root, so witness run cannot start agents: {exc}",
                err=True,
            )
    if ebpf or (ebpf is None and netns is None):
        _up_ebpf(plan)


def _down_ebpf() -> list[str]:
    """Detach, unpin, remove the agent root; what was done, or fail() with what was not."""
    root = _agent_root()
    done: list[str] = []
    try:
        if root is not None or bpf.PIN_DIR.exists():
            done += bpf.detach(root or Path("/nonexistent"), bpf.PIN_DIR)
        if root is not None:
            done += [f"removed cgroup {path}" for path in cgroups.remove(root)]
    except (bpf.BpfError, cgroups.CgroupError) as exc:
        fail(str(exc))
    return done


@click.command()
@netns_option
def down(netns: str | None) -> None:
    """Remove the inet witness table, the eBPF programs and the agent cgroup root; nothing else.

    Not an error when they are absent. The agent root can be removed only once no agent
    runs in it: down says which processes hold it, after removing everything else.
    """
    try:
        nft.down(netns)
    except nft.NftError as exc:
        fail(str(exc))
    click.echo("witness: table inet witness is down")
    done = _down_ebpf()
    if done:
        click.echo(f"witness: eBPF and agent cgroups removed ({len(done)} step(s))")


def attribution() -> tuple[str, str]:
    """The active attribution mode (``ebpf`` or ``sock_diag``) and why."""
    root = _agent_root()
    pinned = (bpf.PIN_DIR / bpf.OWNER_MAP).exists()
    try:
        progs = bpf.programs_at(root) if root is not None else {}
    except (OSError, bpf.BpfError) as exc:
        return "sock_diag", f"cannot query the programs on {root}: {exc}; {SOCK_DIAG_WHY}"
    if pinned and "sock_ops" in progs and "connect4" in progs:
        attached = f"programs attached to {root} ({', '.join(sorted(progs))})"
        if not bpf.pids_are_ours():
            return "sock_diag", f"{attached}, but {bpf.FOREIGN_PIDS}; {SOCK_DIAG_WHY}"
        return "ebpf", (
            f"{attached}, owner map pinned at {bpf.PIN_DIR / bpf.OWNER_MAP}; sock_diag for "
            "owners outside the agent cgroups or evicted from the map"
        )
    found = bpf.probe()
    if not found.available:
        return "sock_diag", f"eBPF unavailable: {found.why}; {SOCK_DIAG_WHY}"
    if pinned or progs:
        return "sock_diag", (
            f"eBPF is only partly in place (pinned: {pinned}, attached: {sorted(progs)}): "
            f"run witness up; {SOCK_DIAG_WHY}"
        )
    return "sock_diag", f"eBPF is available but not attached (run witness up); {SOCK_DIAG_WHY}"


def anchoring(resolved: Settings) -> dict[str, Any] | None:
    """How far the anchor is behind the trail: None with no [trail.anchor]."""
    settings = resolved.trail.anchor
    return None if settings is None else _lag(resolved, settings, "anchor", publisher.lag)


def shipping(resolved: Settings) -> dict[str, Any] | None:
    """How far the central store is behind the trail: None with no [trail.central]."""
    settings = resolved.trail.central
    return None if settings is None else _lag(resolved, settings, "central", shipper.lag)


def _lag(
    resolved: Settings,
    settings: AnchorSettings,
    name: str,
    read: Callable[[TrailSettings], publisher.Lag],
) -> dict[str, Any]:
    found: dict[str, Any] = {name: where(settings), "bastion": settings.bastion}
    try:
        lag = read(resolved.trail)
    except TrailError as exc:
        return {**found, "unreadable": str(exc)}
    found.update(lag.as_dict())
    found["seconds_behind"] = None if lag.oldest is None else round(time.time() - lag.oldest, 1)
    return found


def storing(resolved: Settings) -> dict[str, Any]:
    """What the trail keeps on this host: the active file, the sealed segments, and how
    much was retired (held off the host, deleted here)."""
    path = resolved.trail.path
    sealed = segments.sealed(path)
    found: dict[str, Any] = {
        "path": str(path),
        "active_bytes": sum(
            f.stat().st_size for f in (path, path.with_name(path.name + "-wal")) if f.exists()
        ),
        "sealed": len(sealed),
        "sealed_bytes": sum(s.size for s in sealed),
        "sealed_limit": segments.MAX_SEALED,
        "segment_bytes": resolved.trail.segment_bytes,
        "retire": resolved.trail.retire,
    }
    try:
        with db.reading(path) as conn:
            row = conn.execute("SELECT seq FROM events ORDER BY seq LIMIT 1").fetchone()
            found["first_event"] = None if row is None else int(row[0])
            found["last_event"] = db.last_seq(conn)
    except TrailError as exc:
        found["unreadable"] = str(exc)
    return found


def _storing_lines(found: dict[str, Any]) -> list[str]:
    lines = [f"{'trail:':<20}{found['path']}"]
    if "unreadable" in found:
        return [*lines, f"  {found['unreadable']}"]
    first, last = found["first_event"], found["last_event"]
    held = f"events {first} to {last}" if first is not None else "no events"
    retired = f"; events 1 to {first - 1} retired" if first and first > 1 else ""
    lines.append(f"  holds:            {held}{retired}")
    mib = 1 << 20
    seal = found["segment_bytes"]
    sealing = f"sealed at {seal / mib:.0f} MiB" if seal else "never sealed: segment_mb = 0"
    lines.append(f"  on disk:          {found['active_bytes'] / mib:.1f} MiB active ({sealing})")
    full = " (the limit: the active file grows until one is retired)"
    lines.append(
        f"  sealed segments:  {found['sealed']}, {found['sealed_bytes'] / mib:.1f} MiB"
        f"{full if found['sealed'] >= found['sealed_limit'] else ''}; retired by"
        f" {found['retire'] or 'nothing (retire = never): kept on this host'}"
    )
    return lines


def exporting(resolved: Settings) -> list[dict[str, Any]]:
    """How far each ``[[export]]`` is behind the trail."""
    found = []
    for export in resolved.exports:
        try:
            found.append(forward.lag(resolved.trail, export))
        except TrailError as exc:
            found.append({"name": export.name, "unreadable": str(exc)})
    return found


def _export_lines(found: list[dict[str, Any]]) -> list[str]:
    lines = []
    now = time.time()
    for export in found:
        title = f"export {export['name']}:"
        if "unreadable" in export:
            lines.append(f"{title:<20}{export['unreadable']}")
            continue
        waiting = export["waiting"]
        behind = f"{waiting} events wait{_oldest(export['seconds_behind'])}"
        lines.append(
            f"{title:<20}{export['format']}, up to event {export['exported']}, last"
            f" {_ago(export['exported_at'], now)}; {behind if waiting else 'none waiting'}"
        )
        if export["error"]:
            lines.append(f"  last error:       {export['error']} ({_ago(export['error_at'], now)})")
    return lines


def _oldest(seconds: float | None) -> str:
    return "" if seconds is None else f", the oldest {seconds:.0f} s old"


def _ago(when: float | None, now: float) -> str:
    return "never" if when is None else f"{now - when:.0f} s ago"


def _lag_lines(found: dict[str, Any] | None, name: str, what: str, title: str) -> list[str]:
    """``witness status``'s lines for the anchor (``what``: checkpoints) or the central
    store (events)."""
    if found is None:
        return [f"{title + ':':<20}none ([trail.{name}]): {what} stay on this host only"]
    lines = [f"{title + ':':<20}{found[name]} (bastion {found['bastion'] or '?'})"]
    if "unreadable" in found:
        return [*lines, f"  trail:            {found['unreadable']}"]
    now = time.time()
    published = found["published"]
    upto = f"up to event {published}" if published else "nothing yet"
    lines.append(f"  sent:             {upto}, last {_ago(found['published_at'], now)}")
    behind = found["unpublished"]
    waiting = f"{behind} {what}{_oldest(found['seconds_behind'])}" if behind else "none"
    lines.append(f"  not yet sent:     {waiting}")
    if found["error"]:
        lines.append(f"  last error:       {found['error']} ({_ago(found['error_at'], now)})")
    return lines


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
    mode, why = attribution()
    anchored = anchoring(resolved)
    shipped = shipping(resolved)
    exported = exporting(resolved)
    stored = storing(resolved)
    if as_json:
        report = {
            "table": state,
            "service_user": resolved.enforce.service_user,
            "service_uid": plan.service_uid,
            "redirect_port": plan.redirect_port,
            "protected": backends,
            "attribution": {"mode": mode, "why": why},
            "anchor": anchored,
            "central": shipped,
            "exports": exported,
            "trail": stored,
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
        click.echo(f"attribution:        {mode} ({why})")
        anchor_lines = _lag_lines(anchored, "anchor", "checkpoints", "anchor")
        central_lines = _lag_lines(shipped, "central", "events", "central store")
        for line in (
            *_storing_lines(stored),
            *anchor_lines,
            *central_lines,
            *_export_lines(exported),
        ):
            click.echo(line)
    ctx.exit(0 if state == "up" else 1)


def register(group: click.Group) -> None:
    for command in (up, down, status):
        group.add_command(command)
