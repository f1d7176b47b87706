"""A lab's state file names the process that built it, so that a lab left by a killed run
is known to be no one's (tests/lab/conftest.py takes such labs down before the lab tests)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from labsweep import abandoned_labs

from appliance.lab import netns


def _state(directory: Path, suffix: str, creator: object) -> netns.Lab:
    lab = netns.Lab(suffix, directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {"name": lab.topology.name, "phase": "up", "namespaces": []}
    if creator is not None:
        state["creator"] = creator
    lab.state_path.write_text(json.dumps(state))
    return lab


def _ended_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_a_lab_whose_builder_runs_is_not_abandoned(tmp_path: Path) -> None:
    me = netns._this_process()
    assert me["pid"] == os.getpid()
    assert not _state(tmp_path, "mine", me).abandoned()


def test_a_lab_whose_builder_has_gone_is_abandoned(tmp_path: Path) -> None:
    assert _state(tmp_path, "gone", {"pid": _ended_pid(), "start": 1}).abandoned()


def test_a_reused_pid_is_not_the_builder(tmp_path: Path) -> None:
    me = netns._this_process()
    assert _state(tmp_path, "reused", {**me, "start": me["start"] + 1}).abandoned()


def test_a_lab_that_does_not_name_its_builder_is_abandoned(tmp_path: Path) -> None:
    assert _state(tmp_path, "old", None).abandoned()
    assert not netns.Lab("none", tmp_path).abandoned()  # no state file: no lab


def test_the_sweep_finds_only_abandoned_labs_of_earlier_runs(tmp_path: Path) -> None:
    _state(tmp_path / "pytest-7" / "lab-state0", "live", netns._this_process())
    gone = _state(tmp_path / "pytest-7" / "lab-state1", "dead", {"pid": _ended_pid(), "start": 1})
    (tmp_path / "pytest-7" / "lab-state1" / "witness-lab-Bad_Name.json").write_text("{}")
    (tmp_path / "elsewhere").mkdir()
    _state(tmp_path / "elsewhere", "other", None)
    found = abandoned_labs(tmp_path)
    assert [lab.state_path for lab in found] == [gone.state_path]
