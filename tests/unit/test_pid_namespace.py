"""eBPF records process ids as the initial PID namespace numbers them: a recorder in a PID
namespace of its own (a container) must not read them as its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from appliance.enforce import bpf

ASK = "from appliance.enforce import bpf, owners; print(bpf.pids_are_ours(), owners.PIDS_ARE_OURS)"


@pytest.mark.skipif(os.geteuid() != 0, reason="a PID namespace of its own needs root")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is not installed")
def test_in_a_pid_namespace_of_its_own_the_ebpf_pids_are_not_ours() -> None:
    inside = subprocess.run(
        ["unshare", "--pid", "--fork", sys.executable, "-c", ASK],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert inside.stdout.split() == ["False", "False"]


def test_without_procfs_the_pids_are_not_taken_as_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*_args: object, **_kwargs: object) -> os.stat_result:
        raise FileNotFoundError("/proc/self/ns/pid")

    monkeypatch.setattr(bpf.os, "stat", missing)
    assert bpf.pids_are_ours() is False
