"""Read the statements a PostgreSQL server logged with ``log_statement=all``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+ \w+ \[(\d+)\] (\w+):  ", re.M)
_STATEMENT = re.compile(r"^(?:statement|execute [^:]*): (.*)$", re.S)


def statements(log: Path, offset: int = 0) -> Iterator[tuple[int, str]]:
    """(backend pid, statement text) for each statement logged after byte ``offset``."""
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    starts = list(_ENTRY.finditer(text))
    for i, entry in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        if entry.group(2) != "LOG":
            continue
        # The server's log puts a tab after every newline inside a message.
        body = text[entry.end() : end].rstrip("\n").replace("\n\t", "\n")
        match = _STATEMENT.match(body)
        if match:
            yield int(entry.group(1)), match.group(1)


def size(log: Path) -> int:
    return log.stat().st_size
