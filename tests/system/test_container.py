"""The system tests' host itself: systemd runs as its PID 1, in the lab's bastion namespace
beside the backends; nftables, eBPF's filesystem and a writable cgroup2 subtree are there;
and nothing of it outlives the lab, even when the run that booted it was killed."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from container import Container

from appliance.lab.netns import Lab, namespaces

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]


def test_systemd_is_pid_1_and_the_system_is_up(host: Container) -> None:
    assert host.run("cat", "/proc/1/comm").stdout.strip() == "systemd"
    state = host.run("systemctl", "is-system-running", check=False).stdout.strip()
    assert state == "running", host.run("systemctl", "--failed", check=False).stdout
    assert host.run("systemctl", "is-active", "ssh").stdout.strip() == "active"


def test_it_is_a_host_of_the_lab_with_what_witness_needs(host: Container, lab: Lab) -> None:
    # Its network is the bastion's: the lab's PostgreSQL answers at the backend address.
    backend = str(lab.topology.backend_ipv4)
    asked = host.run("psql", "-h", backend, "-U", "postgres", "-Atc", "select 1")
    assert asked.stdout.strip() == "1"
    # nftables in its own namespace.
    host.run("nft", "add", "table", "inet", "probe")
    assert "table inet probe" in host.run("nft", "list", "tables").stdout
    host.run("nft", "delete", "table", "inet", "probe")
    # cgroup2, its own subtree, writable; bpffs.
    assert host.run("stat", "-fc", "%T", "/sys/fs/cgroup").stdout.strip() == "cgroup2fs"
    host.run("mkdir", "/sys/fs/cgroup/probe")
    host.run("rmdir", "/sys/fs/cgroup/probe")
    assert host.run("stat", "-fc", "%T", "/sys/fs/bpf").stdout.strip() == "bpf_fs"
    # Its own bpffs: what the host pins is not this machine's.
    probe = f"probe-{uuid.uuid4().hex[:8]}"
    host.run("mkdir", f"/sys/fs/bpf/{probe}")
    assert not Path("/sys/fs/bpf", probe).exists()


def test_a_container_left_by_a_killed_run_goes_with_its_lab(
    image: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    lab = Lab(f"s{uuid.uuid4().hex[:10]}", tmp_path_factory.mktemp("lab-state"))
    lab.up()
    left = Container(lab, image, tmp_path_factory.mktemp("left") / "console.log")
    try:
        left.boot()
        nspawn, leader, bpffs = left.proc, left.leader, left.bpffs
        assert nspawn is not None and bpffs is not None and bpffs.is_mount()
        # The run is killed here: all the next one has is the lab's state file.
        assert lab.down() is True
        assert nspawn.wait(timeout=30) is not None  # nspawn went with its container
        assert not Path(f"/proc/{leader}").exists()
        assert not bpffs.exists()  # its bpffs unmounted, the mount point removed
    finally:
        left.stop()
        lab.down()
    assert lab.topology.bastion not in namespaces()
