"""The compiled hot path: built by the install, and never used once it is older than its source."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import appliance
from appliance import native

BUILT = any(native.PACKAGE.rglob("*.so"))
PROBE = """
import json, appliance, appliance.proxy.server as server, appliance.trail.chain as chain
print(json.dumps([appliance.native.STATUS.compiled, appliance.native.STATUS.detail,
                  server.__file__, chain.__file__]))
"""


@pytest.mark.skipif(
    os.environ.get("WITNESS_COMPILE") == "0", reason="WITNESS_COMPILE=0: built pure on purpose"
)
def test_the_install_compiled_the_hot_path() -> None:
    assert native.STATUS.compiled, native.STATUS.detail
    from appliance.proxy import server
    from appliance.trail import store

    assert server.__file__ is not None and server.__file__.endswith(".so")
    assert store.__file__ is not None and store.__file__.endswith(".so")


def probe(tmp_path: Path) -> tuple[bool, str, str, str]:
    """Import a copy of the package from ``tmp_path`` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    compiled, detail, server, chain = json.loads(out)
    return compiled, detail, server, chain


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    if not BUILT:
        pytest.skip("the hot path is not compiled in this install")
    shutil.copytree(Path(appliance.__file__).parent, tmp_path / "appliance")
    return tmp_path


def test_a_faithful_copy_runs_compiled(copy: Path) -> None:
    compiled, _, server, chain = probe(copy)
    assert compiled
    assert server.endswith(".so") and chain.endswith(".so")


def test_an_edited_source_puts_the_whole_hot_path_back_on_its_sources(copy: Path) -> None:
    chain_py = copy / "appliance" / "trail" / "chain.py"
    chain_py.write_text(chain_py.read_text() + "\n# edited after the build\n")
    compiled, detail, server, chain = probe(copy)
    assert not compiled
    assert "appliance.trail.chain changed after the build" in detail
    assert "scripts/bootstrap" in detail
    # All or nothing: compiled modules call each other directly.
    assert chain == str(chain_py)
    assert server.endswith("server.py")


def test_a_build_without_its_manifest_is_not_trusted(copy: Path) -> None:
    (copy / "appliance" / "native.json").unlink()
    compiled, detail, server, _ = probe(copy)
    assert not compiled
    assert "did not finish" in detail
    assert server.endswith("server.py")


def test_a_module_missing_from_the_build_is_reported(copy: Path) -> None:
    for binary in (copy / "appliance" / "trail").glob("store.*.so"):
        binary.unlink()
    compiled, detail, server, _ = probe(copy)
    assert not compiled
    assert "appliance.trail.store is missing" in detail
    assert server.endswith("server.py")


def test_no_build_at_all_is_plain_python(copy: Path) -> None:
    for binary in (copy / "appliance").rglob("*.so"):
        binary.unlink()
    (copy / "appliance" / "native.json").unlink()
    compiled, detail, server, _ = probe(copy)
    assert not compiled
    assert "not compiled" in detail
    assert server.endswith("server.py")
