"""``witness tail``: the trail's commands as they are committed, with who sent them, what the
policy decided and how they ended."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from appliance.cli.common import fail, json_option, trail_option, trail_settings
from appliance.cli.sessions import result_line
from appliance.cli.terminal import one_line, when
from appliance.trail.db import TrailError
from appliance.trail.follow import Entry, Reader, Tail
from appliance.trail.query import identity_label

POLL_SECONDS = 0.25
"""How often a follow looks for new commits (each look is one indexed read by seq)."""


@click.command("tail")
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Keep printing commands as they are committed (Ctrl-C ends).",
)
@click.option(
    "-n",
    "--lines",
    "count",
    type=click.IntRange(0),
    default=10,
    show_default=True,
    help="Start with the last N commands.",
)
@click.option(
    "--identity", default=None, help="Only commands of this subject, or email (any case)."
)
@click.option("--backend", default=None, help="Only commands sent to this backend.")
@trail_option
@json_option
@click.pass_context
def tail_command(
    ctx: click.Context,
    *,
    follow: bool,
    count: int,
    identity: str | None,
    backend: str | None,
    trail: Path | None,
    as_json: bool,
) -> None:
    """The last commands of the trail, each with its identity, decision and result; with -f,
    then every command as it is committed. Results follow their commands as they come."""
    reader = Reader(trail_settings(ctx, trail).path)
    emit = _json_line if as_json else _line
    try:
        _follow(Tail(reader, identity=identity, backend=backend), count, follow, emit)
    except TrailError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass  # how a follow ends: what was printed stands, and the exit status is 0
    except BrokenPipeError:
        # Whoever read the output stopped (| head): so do we, without a word on stderr
        # (Python would complain again flushing stdout at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        reader.close()


def _follow(tail: Tail, count: int, follow: bool, emit: Callable[[Entry], None]) -> None:
    last = tail.head()
    seq = tail.start(last, count)
    while True:
        batch = tail.read(seq, None if follow else last)
        for entry in batch.entries:
            emit(entry)
        seq = batch.seq
        if batch.more:
            continue
        if not follow:
            return
        time.sleep(POLL_SECONDS)


def _json_line(entry: Entry) -> None:
    click.echo(json.dumps(entry.as_dict(), ensure_ascii=False))


def _line(entry: Entry) -> None:
    """One line: when, session, identity, backend; then the command, or its result."""
    event = entry.event
    who = identity_label(entry.identity) or "-"
    if event.type == "result":
        what = result_line(event.payload)
    else:
        p = event.payload
        what = f"-> #{p.get('n')} {_decision(p)}: {p.get('text', '')}"
    fields = (when(event.ts), event.session, who, entry.backend or "-", what)
    click.echo("  ".join(one_line(field) for field in fields))


def _decision(command: dict[str, Any]) -> str:
    """What became of a command before it was sent: refused by the recorder, the policy's
    action and the rule that decided, or only recorded (no policy decides here)."""
    if command.get("refused"):
        return "refused"
    decision = command.get("decision")
    if not isinstance(decision, dict):
        return "recorded"
    rule = decision.get("rule")
    return f"{decision.get('action')} ({rule})" if rule else str(decision.get("action"))


def register(group: click.Group) -> None:
    group.add_command(tail_command)
