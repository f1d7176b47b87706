"""Trail text on an operator's terminal: times given and shown, text made safe, tables fitted."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

if TYPE_CHECKING:
    IntParam = click.ParamType[int]
    FloatParam = click.ParamType[float]
else:  # older clicks (Debian 12's 8.1) take no type parameter at run time
    IntParam = FloatParam = click.ParamType


class When(IntParam):
    """ISO 8601 (naive means UTC) or an age such as 10m, 2h, 1d: microseconds since the epoch."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        relative = _RELATIVE.fullmatch(text)
        if relative:
            seconds = float(relative[1]) * _UNIT[relative[2]]
            return int((time.time() - seconds) * 1_000_000)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r} is neither ISO 8601 nor an age like 10m, 2h, 1d", param, ctx)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1_000_000)


def clean(value: Any) -> str:
    """Trail text made safe for a terminal: control and format characters become escapes.

    Commands come from agents, so they may carry escape sequences meant for the operator's
    terminal, or bidirectional overrides that make text read differently than it runs.
    """
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode() for c in text
    )


def one_line(value: Any) -> str:
    """``clean`` text on one line: every run of whitespace (newlines too) becomes one space."""
    return " ".join(clean(value).split())


def cell(value: Any) -> Text:
    # Text, not str: rich would read "[...]" in a command as its own markup.
    return Text(clean(value))


def cut(value: Any) -> Text:
    """A cell that never wraps: on one line, and cut with an ellipsis when its column is
    narrowed to fit the terminal (the column itself stays one rich may narrow)."""
    return Text(one_line(value), no_wrap=True, overflow="ellipsis")


def when(us: int | None) -> str:
    """Microseconds since the epoch as the UTC time people read (to the second)."""
    if us is None:
        return "-"
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S")


def show(*renderables: Any) -> None:
    """Print to stdout, fitted to the terminal (or to COLUMNS when it is set)."""
    # Piped or captured output has no terminal width to fit; rather than crush the table
    # into 80 columns, give it room (COLUMNS still wins when it is set).
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    Console(highlight=False, width=wide).print(*renderables)


@contextlib.contextmanager
def progress(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr while the block runs, if stderr is a terminal: the callback
    takes (done, total). None otherwise, so scripts and tests see the output alone."""
    if not sys.stderr.isatty():
        yield None
        return
    columns = (TextColumn(label), BarColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
