"""Builds the relay's hot path (the PostgreSQL parser, the chain, the store, the relay itself)
into C extensions with mypyc, from the same type-checked sources.

Everything else is plain Python, and so is the hot path where no C compiler or Python headers
are present (or WITNESS_COMPILE=0): same behaviour, slower. The build writes
``appliance/native.json`` with the digest of each compiled source, and ``appliance.native``
uses it to load a compiled module only while it matches its source.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HOT_PATH = [
    "appliance/model.py",
    "appliance/policy/guardrails.py",
    "appliance/policy/shape.py",
    "appliance/protocols/errors.py",
    "appliance/protocols/events.py",
    "appliance/protocols/postgres/certainty.py",
    "appliance/protocols/postgres/connection.py",
    "appliance/protocols/postgres/copyrows.py",
    "appliance/protocols/postgres/decode.py",
    "appliance/protocols/postgres/encodings.py",
    "appliance/protocols/postgres/events.py",
    "appliance/protocols/postgres/framing.py",
    "appliance/protocols/postgres/handler.py",
    "appliance/protocols/postgres/messages.py",
    "appliance/protocols/postgres/portals.py",
    "appliance/protocols/postgres/reading.py",
    "appliance/protocols/postgres/sql.py",
    "appliance/protocols/postgres/statements.py",
    "appliance/protocols/splice.py",
    "appliance/proxy/recorder.py",
    "appliance/proxy/server.py",
    "appliance/proxy/states.py",
    "appliance/trail/chain.py",
    "appliance/trail/store.py",
    "appliance/trail/walcheck.py",
]
MANIFEST = "appliance/native.json"
# The eBPF programs are compiled by BCC where they are loaded: an install carries the source.
DATA_FILES = [("share/witness/bpf", ["bpf/witness.c"])]


def _why_not() -> str | None:
    """Why the hot path cannot be compiled here, or None if it can."""
    if os.environ.get("WITNESS_COMPILE", "1") == "0":
        return "WITNESS_COMPILE=0"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (python3-dev)"
    return None


class BuildWithManifest(build_ext):
    """build_ext that also records which sources the extensions were compiled from."""

    def run(self) -> None:
        super().run()
        root = Path(".") if self.inplace else Path(self.build_lib)
        digests = {
            source[: -len(".py")].replace("/", "."): hashlib.sha256(
                Path(source).read_bytes()
            ).hexdigest()
            for source in HOT_PATH
        }
        (root / MANIFEST).write_text(json.dumps({"modules": digests}, indent=1) + "\n")


reason = _why_not()
if reason is None:
    from mypyc.build import mypycify

    Path(MANIFEST).unlink(missing_ok=True)
    setup(
        ext_modules=mypycify(HOT_PATH, opt_level="3", group_name="appliance.hotpath"),
        cmdclass={"build_ext": BuildWithManifest},
        data_files=DATA_FILES,
    )
else:
    print(f"witness: the hot path stays pure Python: {reason}", file=sys.stderr)
    Path(MANIFEST).unlink(missing_ok=True)
    for source in HOT_PATH:  # an earlier in-place build would otherwise shadow the sources
        for binary in Path(source).parent.glob(f"{Path(source).stem}.*.so"):
            binary.unlink()
    for binary in Path("appliance").glob("hotpath__mypyc.*.so"):
        binary.unlink()
    setup(data_files=DATA_FILES)
