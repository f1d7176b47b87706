"""What an install carries besides the Python modules: every file of the package that is not
Python is declared as package data in pyproject.toml, so a wheel holds it (the demo's
identity provider, run from an installed Witness, needs provider.mjs and its lockfile).

The check reads the configuration rather than building a wheel: a build needs the build
requirements, from the network, and half a minute of mypyc.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "appliance"
# Made where the package is built or used, never shipped from the sources.
LOCAL = {"__pycache__", "node_modules"}
BUILT = (".py", ".pyc", ".so")
BUILT_FILES = {PACKAGE / "native.json"}  # written by a compiled build into what it builds


def package_data() -> dict[str, list[str]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    found: dict[str, list[str]] = config["tool"]["setuptools"]["package-data"]
    return found


def data_files() -> list[Path]:
    """The package's files that are not Python and not made locally."""
    found = []
    for current, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if d not in LOCAL and not d.startswith("."))
        for name in sorted(files):
            path = Path(current) / name
            if not name.endswith(BUILT) and path not in BUILT_FILES and not name.startswith("."):
                found.append(path)
    return found


def owner(path: Path) -> tuple[str, str]:
    """The Python package a data file belongs to (its nearest directory with an
    __init__.py) and its path relative to that package, as package-data names it."""
    package = path.parent
    while not (package / "__init__.py").exists():
        package = package.parent
    name = ".".join(package.relative_to(REPO).parts)
    return name, path.relative_to(package).as_posix()


def test_the_providers_files_are_package_data() -> None:
    declared = package_data()["appliance.lab"]
    for name in ("provider.mjs", "package.json", "package-lock.json"):
        assert any(fnmatch.fnmatch(f"provider/{name}", glob) for glob in declared), name


def test_every_data_file_of_the_package_is_declared() -> None:
    declared = package_data()
    files = data_files()
    assert files, "no data files found: the walk is broken"
    undeclared = [
        str(path.relative_to(REPO))
        for path in files
        if not any(fnmatch.fnmatch(owner(path)[1], g) for g in declared.get(owner(path)[0], []))
    ]
    assert undeclared == [], f"add these to [tool.setuptools.package-data]: {undeclared}"


def test_every_declaration_names_a_file() -> None:
    """A glob that matches nothing (a file renamed or moved) would ship nothing, silently."""
    matched = {owner(path) for path in data_files()}
    for package, globs in package_data().items():
        for glob in globs:
            assert any(p == package and fnmatch.fnmatch(f, glob) for p, f in matched), glob
