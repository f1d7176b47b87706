"""``witness sessions list|show|replay`` and ``witness search``: reading the trail."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.table import Table

from appliance.cli.common import (
    ask_central,
    bastion_option,
    central_option,
    fail,
    json_option,
    trail_option,
    trail_settings,
)
from appliance.cli.terminal import FloatParam, When, cell, clean, cut, show, when
from appliance.trail import centralquery, db, query
from appliance.trail.db import TrailError
from appliance.trail.query import CommandView, Event, SessionInfo

T = TypeVar("T")


class Speed(FloatParam):
    """A replay speed: a factor, or 0 / max for no pauses at all."""

    name = "SPEED"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        if str(value).lower() == "max":
            return 0.0
        try:
            speed = float(value)
        except ValueError:
            speed = -1.0
        if not speed >= 0:
            self.fail(f"{value!r} is not a speed (a number, 0 or max)", param, ctx)
        return speed


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _owner(owner: Any) -> str:
    if not isinstance(owner, dict):
        return "-"
    parts = [f"uid {owner.get('uid')}", f"pid {owner.get('pid')}"]
    if owner.get("exe"):
        parts.append(str(owner["exe"]))
    return " ".join(parts)


def _identity(identity: dict[str, Any] | None) -> str:
    return query.identity_label(identity) or "-"


def _refusal(refused: dict[str, Any] | None, prefix: str = "refused ") -> str | None:
    """A connect-time refusal as its SQLSTATE and message."""
    if refused is None:
        return None
    return f"{prefix}{refused.get('code')}: {refused.get('message')}"


def _epoch(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    return when(int(seconds * 1_000_000)) + " UTC"


def _backend(backend: Any, destination: Any = None) -> str:
    """The backend's name and the address the session went to (a diverted session's original
    destination, which may be another address in the backend's protected ranges)."""
    if not isinstance(backend, dict):
        return f"- ({destination})" if destination else "-"
    where = destination or f"{backend.get('address')}:{backend.get('port')}"
    return f"{backend.get('name')} ({where})"


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


def _read(ctx: click.Context, trail: Path | None, ask: Callable[[sqlite3.Connection], T]) -> T:
    """Run one query against the trail, opened read-only; any problem is a one-line failure."""
    try:
        with db.reading(trail_settings(ctx, trail).path) as conn:
            return ask(conn)
    except TrailError as exc:
        fail(str(exc))


# --- sessions list -----------------------------------------------------------------------


@click.group("sessions")
def sessions_group() -> None:
    """List, show and replay recorded sessions."""


@sessions_group.command("list")
@click.option("--since", type=When(), default=None, help="Active at or after TIME.")
@click.option("--until", type=When(), default=None, help="Started at or before TIME.")
@click.option("--user", default=None, help="Database user or owner uid.")
@click.option("--backend", default=None, help="Backend name.")
@click.option(
    "--identity",
    default=None,
    help="Identity's email (ignoring case) or subject (exactly).",
)
@click.option("--group", default=None, help="A group of the identity.")
@click.option(
    "--wide",
    is_flag=True,
    help="Every column: end, duration, client, owner, database user and name, application,"
    " destination, bytes.",
)
@trail_option
@central_option
@bastion_option
@json_option
@click.pass_context
def list_command(
    ctx: click.Context,
    *,
    since: int | None,
    until: int | None,
    user: str | None,
    backend: str | None,
    identity: str | None,
    group: str | None,
    wide: bool,
    trail: Path | None,
    central_dsn: str | None,
    bastion: str | None,
    as_json: bool,
) -> None:
    """One row per session: who, to which backend, how many commands, how it ended (with
    --wide: also from where, as whom, how long and how much)."""
    filters: dict[str, Any] = {
        "since": since,
        "until": until,
        "user": user,
        "backend": backend,
        "identity": identity,
        "group": group,
    }
    if central_dsn is not None:
        found = ask_central(
            central_dsn, lambda conn: centralquery.list_sessions(conn, bastion=bastion, **filters)
        )
    else:
        found = _read(ctx, trail, lambda conn: query.list_sessions(conn, **filters))
    if as_json:
        _echo_json([s.as_dict() for s in found])
        return
    if not found:
        click.echo("no sessions")
        return
    show(_wide_table(found) if wide else _sessions_table(found))


def _sessions_table(found: Iterable[SessionInfo]) -> Table:
    """One line per session, fitted to the terminal: the id, time and count stay whole;
    identity, backend and outcome are cut short, never wrapped, when the width runs out."""
    table = Table()
    table.add_column("id", no_wrap=True)
    table.add_column("start", no_wrap=True)
    table.add_column("identity")
    table.add_column("backend")
    table.add_column("commands", justify="right", no_wrap=True)
    table.add_column("outcome")
    for s in found:
        backend = s.start_payload.get("backend")
        name = backend.get("name") if isinstance(backend, dict) else None
        table.add_row(
            cell(s.id),
            when(s.start),
            cut(_identity(s.identity)),
            cut(name or "-"),
            str(s.commands),
            cut(_end_reason(s)),
        )
    return table


def _wide_table(found: Iterable[SessionInfo]) -> Table:
    table = Table()
    for name in ("id", "start", "end"):
        table.add_column(name, no_wrap=True)  # kept whole: people copy them into show
    for name in ("duration", "client", "identity", "owner", "db user", "database"):
        table.add_column(name, overflow="fold")
    for name in ("application", "backend", "commands", "bytes in/out", "end reason"):
        table.add_column(name, overflow="fold")
    for s in found:
        d = s.as_dict()
        table.add_row(
            *map(
                cell,
                (
                    s.id,
                    when(s.start),
                    when(s.end),
                    _duration(s.duration),
                    d["client"],
                    _identity(s.identity),
                    _owner(d["owner"]),
                    d["db_user"],
                    d["database"],
                    d["application_name"],
                    _backend(d["backend"], d["destination"]),
                    s.commands,
                    f"{d['bytes_in'] if d['bytes_in'] is not None else '-'}"
                    f"/{d['bytes_out'] if d['bytes_out'] is not None else '-'}",
                    _end_reason(s),
                ),
            )
        )
    return table


def _end_reason(s: SessionInfo) -> str:
    """How the session ended; a session refused at connect time says so first."""
    reason = (s.end_payload or {}).get("reason")
    if s.refused is not None:
        # The message up to its advice, and the recorder's own reason unless it only repeats
        # the message or that the connection was refused; `sessions show` has it all.
        message = str(s.refused.get("message", ""))
        brief = f"refused {s.refused.get('code')}: {message.partition(';')[0]}"
        return brief + (f" ({reason})" if reason and reason not in ("refused", message) else "")
    return str(reason) if reason else ("open" if s.end is None else "-")


# --- sessions show -----------------------------------------------------------------------


@sessions_group.command("show")
@click.argument("session_id")
@trail_option
@central_option
@bastion_option
@json_option
@click.pass_context
def show_command(  # noqa: PLR0917 - one parameter per click option
    ctx: click.Context,
    session_id: str,
    trail: Path | None,
    central_dsn: str | None,
    bastion: str | None,
    as_json: bool,
) -> None:
    """The session's header, then each command with its result (ID may be a unique prefix)."""
    if central_dsn is not None:
        detail = ask_central(
            central_dsn, lambda conn: centralquery.session_detail(conn, session_id, bastion)
        )
    else:
        detail = _read(ctx, trail, lambda conn: query.session_detail(conn, session_id))
    if as_json:
        _echo_json(detail.as_dict())
        return
    show(_header(detail.info), _commands_table(detail.commands))
    for error in detail.errors:
        show(cell(f"error at {when(error.ts)}: {_error_line(error.payload)}"))


def _header(info: SessionInfo) -> Table:
    d, refused = info.as_dict(), info.refused
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows = [
        ("session", info.id),
        ("start", when(info.start) + " UTC"),
        ("end", f"{when(info.end)} ({d['end_reason'] or ('refused' if refused else 'open')})"),
        ("duration", _duration(info.duration)),
        ("client", d["client"]),
        ("owner", _owner_full(d["owner"])),
        *_identity_rows(info.identity),
        *([("refused", _refusal(refused, prefix=""))] if refused else []),
        ("db user", d["db_user"]),
        ("database", d["database"]),
        ("application", d["application_name"]),
        ("backend", _backend(d["backend"], d["destination"])),
        ("diverted", "yes, by the nftables redirect" if d["diverted"] else "no"),
        ("commands", info.commands),
        ("bytes in/out", f"{d['bytes_in']}/{d['bytes_out']}"),
    ]
    for name, value in rows:
        grid.add_row(name, cell(value))
    return grid


def _owner_full(owner: Any) -> str:
    if not isinstance(owner, dict):
        return "-"
    extra = [f"{k} {owner[k]}" for k in ("comm", "cgroup", "source", "detail") if owner.get(k)]
    if owner.get("cgroup_id") is not None:
        extra.append(f"cgroup id {owner['cgroup_id']}")
    return ", ".join([_owner(owner), *extra])


def _identity_rows(identity: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The header's lines for the bound identity: one "-" line when there is none."""
    if identity is None:
        return [("identity", "-")]
    groups = identity.get("groups")
    rows: list[tuple[str, Any]] = [
        ("identity", _identity(identity)),
        ("issuer", identity.get("issuer") or "-"),
        ("subject", identity.get("subject") or "-"),
        ("email", identity.get("email") or "-"),
        ("name", identity.get("name") or "-"),
        ("groups", ", ".join(map(str, groups)) if isinstance(groups, list) and groups else "-"),
    ]
    binding = identity.get("binding")
    if isinstance(binding, dict):
        expires = binding.get("expires")
        until = "no expiry" if expires is None else f"expires {_epoch(expires)}"
        rows.append(("binding", f"{binding.get('kind')} {binding.get('target')}, {until}"))
    return rows


def _command_text(
    payload: dict[str, Any], result: dict[str, Any] | None = None, *, params: bool = True
) -> str:
    """A command as the record has it, with what is not known said on lines of its own: the
    prepared statements an EXECUTE ran, how its bytes were decoded, and how the backend read
    them when that was learned later."""
    lines = [str(payload.get("text", ""))]
    values = payload.get("params")
    if values and params:
        lines.append("params: " + json.dumps(values, ensure_ascii=False))
    if payload.get("kind") == "query":
        lines += [
            f"runs {_prepared(p)}" for p in payload.get("prepared") or () if isinstance(p, dict)
        ]
    decoding = payload.get("decoding")
    if isinstance(decoding, dict):
        lines.append(_decoding(decoding))
    reading = (result or {}).get("reading")
    if isinstance(reading, dict):
        lines.append(_reading(reading, params=params))
    return "\n".join(lines)


def _prepared(entry: dict[str, Any]) -> str:
    prepared = query.prepared_of(entry)
    if prepared.known:
        return f"{prepared.kind} {prepared.name!r}: {prepared.text}"
    return prepared.describe()


def _decoding(decoding: dict[str, Any]) -> str:
    encoding = decoding.get("encoding")
    changed = decoding.get("changed_by")
    read = f"not valid {encoding}, kept as hex" if decoding.get("raw") else f"read as {encoding}"
    if changed is None:
        if decoding.get("raw"):
            return f"(bytes {read})"
        return f"(parameters not valid {encoding} are kept as hex)"
    who = (
        "the login had not yet reported" if changed == 0 else f"command {changed} may have changed"
    )
    return f"(encoding unsure: {read}, but {who} client_encoding before the backend read it)"


def _reading(reading: dict[str, Any], *, params: bool = True) -> str:
    line = f"read by the backend as {reading.get('encoding')}: {reading.get('text')}"
    values = reading.get("params")
    if values and params:
        line += "\nparams: " + json.dumps(values, ensure_ascii=False)
    return line


def result_line(payload: dict[str, Any]) -> str:
    """A result on one line: its command's number, status, rows, bytes, time and error."""
    p = payload
    line = (
        f"<- #{p.get('n')} {p.get('status')} rows={p.get('rows')} bytes={p.get('bytes')}"
        f" {p.get('duration_ms')}ms"
    )
    return line + (f" {_error_line(p)}" if isinstance(p.get("error"), dict) else "")


def _error_line(payload: dict[str, Any]) -> str:
    error = payload.get("error")
    if isinstance(error, dict):
        return f"{error.get('code')} {error.get('message')}"
    return f"{payload.get('where', '')}: {payload.get('message', '')}"


def _commands_table(commands: Iterable[CommandView]) -> Table:
    table = Table()
    for name in ("n", "kind", "text", "status", "rows", "bytes", "ms", "hold / error / refused"):
        table.add_column(name, overflow="fold")
    for view in commands:
        c = view.command.payload
        r = view.result.payload if view.result is not None else {}
        problem = []
        held = view.held()
        if held is not None:
            problem.append(held)
        if c.get("refused"):
            problem.append(f"refused: {c['refused']}")
        if isinstance(r.get("error"), dict):
            problem.append(_error_line(r))
        table.add_row(
            *map(
                cell,
                (
                    c.get("n"),
                    c.get("kind"),
                    _command_text(c, r),
                    r.get("status", "-"),
                    r.get("rows", "-"),
                    r.get("bytes", "-"),
                    r.get("duration_ms", "-"),
                    "\n".join(problem),
                ),
            )
        )
    return table


# --- sessions replay ---------------------------------------------------------------------


@sessions_group.command("replay")
@click.argument("session_id")
@click.option(
    "--speed",
    type=Speed(),
    default=1.0,
    show_default=True,
    help="Replay this many times faster; 0 or max: no pauses.",
)
@trail_option
@click.pass_context
def replay_command(ctx: click.Context, session_id: str, speed: float, trail: Path | None) -> None:
    """Print the session's events as they happened, pausing as long as they took."""
    events = _read(ctx, trail, lambda conn: query.session_detail(conn, session_id).events)
    started = events[0].ts if events else 0
    last = started
    for event in events:
        if speed > 0 and event.ts > last:
            time.sleep((event.ts - last) / 1e6 / speed)
        last = max(last, event.ts)
        # Continuation lines are indented so a command's text cannot pass for an event.
        body = clean(_replay_line(event)).replace("\n", "\n" + " " * 13)
        click.echo(f"+{(event.ts - started) / 1e6:9.3f}s  {body}")


def _replay_line(event: Event) -> str:
    p = event.payload
    if event.type == "session_start":
        line = (
            f"session start: {p.get('client')} as {p.get('db_user')} on {p.get('database')}"
            f" via {_backend(p.get('backend'), p.get('destination'))},"
            f" owner {_owner(p.get('owner'))}, identity {_identity(query.identity_of(p))}"
        )
        refused = p.get("refused")
        return line + (f"\n   {_refusal(refused)}" if isinstance(refused, dict) else "")
    if event.type == "command":
        line = f"-> #{p.get('n')} {p.get('kind')}: {_command_text(p)}"
        return line + (f"\n   refused: {p['refused']}" if p.get("refused") else "")
    if event.type == "result":
        line = result_line(p)
        reading = p.get("reading")
        return line + (f"\n   {_reading(reading)}" if isinstance(reading, dict) else "")
    if event.type == "session_end":
        return (
            f"session end: {p.get('reason')}, {p.get('commands')} commands,"
            f" {p.get('bytes_in')} bytes in, {p.get('bytes_out')} out"
        )
    if event.type == "error":
        return f"!! error {_error_line(p)}"
    return f"{event.type}: {json.dumps(p, ensure_ascii=False)}"


# --- search ------------------------------------------------------------------------------


@click.command("search")
@click.argument("text")
@trail_option
@central_option
@bastion_option
@json_option
@click.pass_context
def search_command(  # noqa: PLR0917 - one parameter per click option
    ctx: click.Context,
    text: str,
    trail: Path | None,
    central_dsn: str | None,
    bastion: str | None,
    as_json: bool,
) -> None:
    """Commands whose text contains TEXT (ignoring case), oldest first."""
    if central_dsn is not None:
        found = ask_central(central_dsn, lambda conn: centralquery.search(conn, text, bastion))
    else:
        found = _read(ctx, trail, lambda conn: query.search(conn, text))
    if as_json:
        _echo_json([m.as_dict() for m in found])
        return
    if not found:
        click.echo("no commands match")
        return
    table = Table()
    for name in ("session", "time", "identity", "n", "text", "status"):
        table.add_column(name, overflow="fold")
    for match in found:
        d = match.as_dict()
        status = d["status"] or ("refused" if d["refused"] else "-")
        at, who = when(match.command.ts), d["identity"] or "-"
        text = _command_text(match.command.payload, match.result, params=False)
        table.add_row(*map(cell, (d["session"], at, who, d["n"], text, status)))
    show(table)


def register(group: click.Group) -> None:
    group.add_command(sessions_group)
    group.add_command(search_command)
