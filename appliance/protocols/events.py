"""The events every protocol's handler yields for commands: a command, and its result."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.model import Command, Result


@dataclass(slots=True)  # made for every command: see Command on frozen dataclasses
class CommandStarted:
    """A client command; ``n`` numbers commands within the session from 1."""

    n: int
    command: Command


@dataclass(slots=True)  # made for every command: see Command on frozen dataclasses
class CommandFinished:
    """The backend finished (or discarded) command ``n``."""

    n: int
    result: Result
