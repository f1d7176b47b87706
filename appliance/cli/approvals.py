"""``witness approvals list|show|approve|deny``: the statements held for a person's decision.

Approvers act as themselves: the recorder learns who is asking from the kernel (the control
socket's SO_PEERCRED) and the identity bound to that user or cgroup, exactly as for an
agent's connection. Nothing here names who you are; `witness login` first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from appliance.cli.common import json_option
from appliance.cli.identity import _ask, _Channel, _socket_path, socket_option


def _who(identity: dict[str, Any] | None) -> str:
    if not identity:
        return "-"
    return str(identity.get("email") or identity.get("subject") or "-")


def _clock(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%H:%M:%S", time.localtime(epoch))


def _line(hold: dict[str, Any]) -> str:
    """One hold on one line (the statement cut to fit)."""
    text = " ".join(str(hold["text"]).split())
    if len(text) > 48:
        text = text[:47] + "…"
    if hold["state"] == "pending":
        left = max(0.0, hold["deadline"] - time.time())
        state = f"pending {left:.0f}s left"
    else:
        state = hold["state"]
    return (
        f"{hold['id']}  {_clock(hold['requested'])}  {_who(hold['identity']):<24} "
        f"{hold['backend']:<10} {state:<18} {text}"
    )


def _detail(hold: dict[str, Any]) -> str:
    lines = [
        f"hold {hold['id']}: {hold['state']}",
        f"  from      {_who(hold['identity'])}",
        f"  where     {hold['backend']}/{hold['database'] or '-'}, session {hold['session']},"
        f" command {hold['n']}",
        f"  rule      {hold['rule'] or '(the default)'}: {hold['reason']}",
        f"  requested {_clock(hold['requested'])}, deadline {_clock(hold['deadline'])}",
    ]
    for vote in hold["votes"]:
        verb = "approved" if vote["approve"] else "denied"
        said = f": {vote['reason']}" if vote["reason"] else ""
        lines.append(f"  {verb:<9} by {_who(vote['by'])} at {_clock(vote['at'])}{said}")
    if hold["why"]:
        lines.append(f"  ended     {_clock(hold['ended'])}: {hold['why']}")
    lines.append("  statement:")
    lines.extend(f"    {row}" for row in str(hold["text"]).splitlines() or [""])
    return "\n".join(lines)


@click.group()
def approvals() -> None:
    """Statements held for approval: list them, and approve or deny them as yourself."""


@approvals.command("list")
@click.option("--all", "everything", is_flag=True, help="Also the holds that have ended.")
@click.option("--watch", is_flag=True, help="Keep watching: show each hold's steps as they come.")
@socket_option
@json_option
@click.pass_context
def list_(
    ctx: click.Context, everything: bool, watch: bool, socket_path: Path | None, as_json: bool
) -> None:
    """The pending holds (approvers see all; anyone else, their own)."""
    path = _socket_path(ctx, socket_path)
    if watch:
        _watch(path, as_json)
        return
    answer = _ask(path, {"op": "approvals", "action": "list", "all": everything})
    holds = answer["holds"]
    if as_json:
        click.echo(json.dumps(holds, indent=2))
        return
    if not holds:
        click.echo("no statement is held" if not everything else "no hold on record")
        return
    for hold in holds:
        click.echo(_line(hold))


def _watch(path: Path, as_json: bool) -> None:
    channel = _Channel(path, {"op": "approvals", "action": "watch"})
    try:
        while True:
            message = channel.answer()
            step = message.get("step")
            if step == "alive" or "hold" not in message:
                continue
            if as_json:
                click.echo(json.dumps({"step": step, "hold": message["hold"]}), nl=True)
            else:
                click.echo(f"{step:<10} {_line(message['hold'])}")
    except KeyboardInterrupt:
        pass
    finally:
        channel.close()


@approvals.command()
@click.argument("hold_id", metavar="ID")
@socket_option
@json_option
@click.pass_context
def show(ctx: click.Context, hold_id: str, socket_path: Path | None, as_json: bool) -> None:
    """One hold in full: the statement, who sent it, the votes, how it ended."""
    hold = _ask(
        _socket_path(ctx, socket_path), {"op": "approvals", "action": "show", "id": hold_id}
    )
    if as_json:
        click.echo(json.dumps(hold["hold"], indent=2))
    else:
        click.echo(_detail(hold["hold"]))


def _decide(ctx: click.Context, request: dict[str, Any], path: Path | None, as_json: bool) -> None:
    action = request["action"]
    hold = _ask(_socket_path(ctx, path), {"op": "approvals", **request})["hold"]
    if as_json:
        click.echo(json.dumps(hold, indent=2))
    elif hold["state"] == "pending":
        required = "more approvals are" if action == "approve" else "a decision is"
        click.echo(f"hold {hold['id']}: your vote is recorded; {required} still needed")
    else:
        click.echo(f"hold {hold['id']}: {hold['state']} ({hold['why']})")


@approvals.command()
@click.argument("hold_id", metavar="ID")
@click.option("--reason", default=None, help="Why, for the trail.")
@click.option(
    "--window",
    type=click.IntRange(0),
    default=0,
    help="Also let the same statement shape from the same identity go on for this many "
    "minutes (at most approvals.max_window_minutes).",
)
@socket_option
@json_option
@click.pass_context
def approve(  # noqa: PLR0917  (click passes every option)
    ctx: click.Context,
    hold_id: str,
    reason: str | None,
    window: int,
    socket_path: Path | None,
    as_json: bool,
) -> None:
    """Approve a held statement: once enough approvers have, it runs."""
    request = {"action": "approve", "id": hold_id, "reason": reason, "window_minutes": window}
    _decide(ctx, request, socket_path, as_json)


@approvals.command()
@click.argument("hold_id", metavar="ID")
@click.option("--reason", default=None, help="Why, for the trail and the client.")
@socket_option
@json_option
@click.pass_context
def deny(
    ctx: click.Context, hold_id: str, reason: str | None, socket_path: Path | None, as_json: bool
) -> None:
    """Deny a held statement: it never runs, and the client gets an error in its place."""
    _decide(ctx, {"action": "deny", "id": hold_id, "reason": reason}, socket_path, as_json)


def register(group: click.Group) -> None:
    group.add_command(approvals)
