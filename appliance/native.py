"""Whether the hot path runs compiled, and a guard against compiled modules that are stale.

setup.py compiles the hot path with mypyc and records each source's digest in
``native.json``. Python's import system would load a compiled module over its source even
after the source changed, so at import time every compiled module found in the package is
checked against that record. If any does not match (a source edited after the build, a build
that failed half way), all of them are loaded from source instead: the compiled modules call
each other directly, so they are only used as a set. ``STATUS`` says which, and why.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).resolve().parent
MANIFEST = PACKAGE / "native.json"
REBUILD = "run scripts/bootstrap (or pip install the package again) to rebuild it"


@dataclass(frozen=True)
class Status:
    compiled: bool
    detail: str

    def __str__(self) -> str:
        return f"{'compiled' if self.compiled else 'pure Python'} ({self.detail})"


class _FromSource(importlib.abc.MetaPathFinder):
    """Finds the listed modules' sources, ahead of the compiled modules beside them."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self.sources = sources

    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        source = self.sources.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def _compiled_modules() -> dict[str, Path]:
    """Module name -> source, for every module of the package that has a compiled build."""
    found = {}
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for binary in PACKAGE.rglob(f"*{suffix}"):
            source = binary.with_name(binary.name[: -len(suffix)] + ".py")
            if source.exists():
                parts = source.relative_to(PACKAGE.parent).with_suffix("").parts
                found[".".join(parts)] = source
    return found


def _check(compiled: dict[str, Path]) -> str | None:
    """Why the compiled modules cannot be trusted, or None if every one matches its source."""
    try:
        recorded = json.loads(MANIFEST.read_text())["modules"]
    except FileNotFoundError:
        return f"compiled modules without {MANIFEST.name}: the build did not finish; {REBUILD}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST.name} is unreadable ({exc}); {REBUILD}"
    stale = sorted(
        name
        for name, source in compiled.items()
        if recorded.get(name) != hashlib.sha256(source.read_bytes()).hexdigest()
    )
    missing = sorted(set(recorded) - set(compiled))
    if stale:
        return f"{', '.join(stale)} changed after the build; {REBUILD}"
    if missing:
        return f"the build of {', '.join(missing)} is missing; {REBUILD}"
    return None


def _decide() -> Status:
    compiled = _compiled_modules()
    if not compiled:
        return Status(False, "not compiled: no C compiler at install time, or WITNESS_COMPILE=0")
    problem = _check(compiled)
    if problem is None:
        return Status(True, f"{len(compiled)} modules built with mypyc")
    sys.meta_path.insert(0, _FromSource(compiled))
    return Status(False, problem)


STATUS = _decide()
