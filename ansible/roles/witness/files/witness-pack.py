"""Pack a Witness checkout into a source archive for the bastion: the same bytes every time.

Run on the controller by the role: ``python3 witness-pack.py CHECKOUT ARCHIVE``. Only what
``pip install`` needs goes in (the package, the eBPF source, pyproject.toml, setup.py and the
README its metadata names); build products and local state do not (bytecode, compiled
modules and their manifest, node_modules, egg-info, dot files). Entries are sorted, owned by
0:0, dated the same fixed time and given modes 0644 or 0755, and the gzip header carries no
name and no time, so an unchanged checkout packs to an identical archive and the copy to the
host reports no change.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import sys
import tarfile
from pathlib import Path

TOP = ("appliance", "bpf", "pyproject.toml", "setup.py", "README.md")
SKIP_DIRS = {"__pycache__", "node_modules"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".so", ".egg-info")
SKIP_FILES = {"appliance/native.json"}  # written by a compiled build, for that build only
MTIME = 315619200  # 1980-01-02: wheels cannot hold earlier times


def wanted(relative: str, name: str) -> bool:
    return not (
        name.startswith(".")
        or name in SKIP_DIRS
        or name.endswith(SKIP_SUFFIXES)
        or relative in SKIP_FILES
    )


def members(root: Path) -> list[str]:
    """The relative paths to pack, directories included, sorted."""
    found: list[str] = []
    for top in TOP:
        if not (root / top).exists():
            raise SystemExit(f"witness-pack: no {root / top}: is {root} a Witness checkout?")
        found.append(top)
        if not (root / top).is_dir():
            continue
        for current, dirs, files in os.walk(root / top):
            base = Path(current).relative_to(root).as_posix()
            dirs[:] = [d for d in dirs if wanted(f"{base}/{d}", d)]
            found += [f"{base}/{d}" for d in dirs]
            found += [f"{base}/{f}" for f in files if wanted(f"{base}/{f}", f)]
    return sorted(found)


def pack(root: Path) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for relative in members(root):
            path = root / relative
            info = tarfile.TarInfo(relative)
            info.mtime = MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif stat.S_ISREG(mode):
                info.size = path.stat().st_size
                info.mode = 0o755 if mode & stat.S_IXUSR else 0o644
                with path.open("rb") as data:
                    tar.addfile(info, data)
            else:
                raise SystemExit(f"witness-pack: {path} is neither a file nor a directory")
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: witness-pack.py CHECKOUT ARCHIVE", file=sys.stderr)
        return 2
    root, archive = Path(argv[1]).resolve(), Path(argv[2])
    data = pack(root)
    if archive.exists() and archive.read_bytes() == data:
        print(f"witness-pack: {archive} is current")
        return 0
    partial = archive.with_name(archive.name + ".partial")
    partial.write_bytes(data)
    partial.replace(archive)
    print(f"witness-pack: {archive} written from {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
