"""Labs an earlier test run left behind: a run that is killed (a timeout, a machine stopped
mid-run) cannot take its labs down, and what they hold (the host's agent cgroup root, the
eBPF pins, users, namespaces) would stop every later lab test. Each lab's state file names
the process that built it; a lab whose builder has gone is no one's."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.lab import netns
from appliance.lab.postgres import LabError


def abandoned_labs(runs: Path) -> list[netns.Lab]:
    """The labs with state files below ``runs`` (pytest's directory of runs) whose builder
    has gone."""
    found = []
    for state in sorted(runs.glob(f"pytest-*/**/{netns.PREFIX}*.json")):
        suffix = state.stem.removeprefix(netns.PREFIX).removeprefix("-")
        try:
            lab = netns.Lab(suffix, state.parent)
        except LabError:
            continue  # not a name a lab is given: not a lab's file
        if lab.state_path == state and lab.abandoned():
            found.append(lab)
    return found


def sweep(runs: Path) -> None:
    """Take down, as ``witness lab down`` would, the abandoned labs below ``runs`` (as root;
    nothing otherwise)."""
    if os.geteuid() != 0:
        return
    for lab in abandoned_labs(runs):
        print(f"taking down {lab.topology.name}, left by an earlier run ({lab.state_path})")
        lab.down()
