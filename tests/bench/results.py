"""How every benchmark hands over its figures: printed, and written to its ``--out`` file."""

from __future__ import annotations

from pathlib import Path


def report(lines: list[str], out: Path) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
