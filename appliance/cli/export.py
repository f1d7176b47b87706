"""``witness export``: the trail, or what a selection takes of it, as JSONL, OCSF, CEF or pcap,
to a file, standard output or a syslog server."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import click

from appliance.cli.common import fail, trail_option, trail_settings
from appliance.cli.terminal import When, progress
from appliance.config import FRAMINGS, TRANSPORTS, host_port
from appliance.export import formats
from appliance.export.run import export
from appliance.export.select import Selection
from appliance.export.sinks import OutFile, SinkError, Syslog
from appliance.trail import db, query
from appliance.trail.db import TrailError


@click.command("export")
@click.option(
    "--format",
    "format_name",
    type=click.Choice(list(formats.FORMATS)),
    required=True,
    help="jsonl: every event with its chain fields (verify --jsonl checks it); ocsf: OCSF"
    " Datastore Activity; cef: CEF lines; pcap: the sessions' recorded wire messages.",
)
@click.option("--since", type=When(), default=None, help="Events at or after TIME.")
@click.option("--until", type=When(), default=None, help="Events at or before TIME.")
@click.option(
    "--identity",
    "identities",
    multiple=True,
    help="Only events of this identity: a subject, or an email (any case); repeatable.",
)
@click.option(
    "--backend", "backends", multiple=True, help="Only events of this backend; repeatable."
)
@click.option("--session", default=None, help="Only this session's events (ID or a prefix).")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write to FILE (replaced once the export is complete) [default: standard output].",
)
@click.option(
    "--syslog",
    "syslog_to",
    metavar="HOST:PORT",
    default=None,
    help="Send each CEF line to this syslog server instead.",
)
@click.option("--transport", type=click.Choice(TRANSPORTS), default="udp", show_default=True)
@click.option("--framing", type=click.Choice(FRAMINGS), default="rfc5424", show_default=True)
@trail_option
@click.pass_context
def export_command(  # noqa: PLR0917 - one parameter per click option
    ctx: click.Context,
    format_name: str,
    since: int | None,
    until: int | None,
    identities: tuple[str, ...],
    backends: tuple[str, ...],
    session: str | None,
    out: Path | None,
    syslog_to: str | None,
    transport: str,
    framing: str,
    trail: Path | None,
) -> None:
    """Export the trail's events in seq order, streaming (a progress bar shows on a
    terminal): all of them, or those of a time range, sessions, identities and backends."""
    fmt = formats.get(format_name)
    if out is not None and syslog_to is not None:
        fail("--out and --syslog go separately", 2)
    if syslog_to is not None:
        if not fmt.syslog:
            fail(f"--syslog sends CEF lines; {format_name} goes to a file (--out)", 2)
        try:
            host_port(syslog_to)
        except ValueError as exc:
            fail(f"--syslog: {exc}", 2)
    if out is None and syslog_to is None and not fmt.text and sys.stdout.isatty():
        fail(f"{format_name} is binary: give --out FILE, or redirect standard output", 2)
    path = trail_settings(ctx, trail).path
    host = socket.gethostname()
    try:
        if session is not None:
            with db.reading(path) as conn:
                session = query.resolve(conn, session)
        selection = Selection(since, until, session, identities, backends)
        sink: OutFile | Syslog
        if syslog_to is not None:
            sink = Syslog(syslog_to, fmt, transport=transport, framing=framing, host=host)
        else:
            sink = OutFile(out, fmt)
        complete = False
        try:
            with progress("exporting") as tell:
                count = export(path, selection, fmt, sink, host=host, progress=tell)
            complete = True
        finally:
            sink.close(complete=complete)
    except (TrailError, SinkError) as exc:
        fail(str(exc))
    except BrokenPipeError:
        return
    where = out or syslog_to
    if where is not None:
        unit = "message" if syslog_to else "record"
        click.echo(
            f"exported {count} {unit}{'' if count == 1 else 's'} ({format_name}) to {where}",
            err=True,
        )


def register(group: click.Group) -> None:
    group.add_command(export_command)
