"""The Ansible role for real, on a Debian 12 host booted with systemd as PID 1: the controller
(this machine, in the lab's bastion namespace) reaches the host over SSH and runs
``ansible/site.yml`` with ``witness_manage_service: true``, as an operator would.

The host has no network to a package mirror or to PyPI: its root holds the role's Debian
packages, and the Python packages Witness needs (and its build needs) are given to pip as a
wheelhouse, bound read-only into the host (``witness_pip_args``). ``witness_compile`` is
false, to save the minutes mypyc would take; the compiled build is covered elsewhere.

After the first run the units are enabled and active, ``witness status`` exits 0, and an
agent's psql, started through ``witness run`` with a token from the lab's identity
provider, is recorded under its OIDC identity; the trail verifies. A second run changes
nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import roleplay
from container import Container
from roleplay import PLAYBOOK, REPO, lab_variables

from appliance.lab.idp import IdP, missing
from appliance.lab.netns import Lab

HOST = "bastion"
UNITS = ("witness-enforce.service", "witness-warden.service", "witness.service")
AGENT = "agent1"
WHEELS = "/opt/wheelhouse"

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(900),
    pytest.mark.skipif(PLAYBOOK is None, reason="ansible-playbook is not installed (ansible)"),
    pytest.mark.skipif(missing() is not None, reason=f"no identity provider: {missing()}"),
]


@dataclass
class Provisioned:
    host: Container
    lab: Lab
    idp: IdP
    root: Path  # the controller's directory: inventory, variables, fetched keys
    recap: dict[str, int]
    output: str
    headers: bool  # the host was given the test machine's kernel headers (eBPF expected)


def wheelhouse(into: Path) -> Path:
    """Wheels of everything pip needs on the host to build and install Witness offline."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [*project["build-system"]["requires"], *project["project"]["dependencies"]]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--wheel-dir", str(into), *wanted],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return into


def kernel_headers() -> tuple[tuple[Path, str], ...]:
    """The test machine's header tree for its kernel, to bind into the host read-only: the
    host runs that kernel, whose headers no Debian package of the host's can match, and BCC
    compiles the eBPF programs against them. None when the machine has no tree."""
    modules = Path("/lib/modules") / os.uname().release
    if not (modules / "build").is_dir():
        return ()
    return ((modules, str(modules)), (Path("/usr/src"), "/usr/src"))


def variables(root: Path, lab: Lab, idp: IdP) -> dict[str, Any]:
    return {
        "witness_source_dir": str(REPO),
        "witness_public_key_dir": str(root / "keys"),
        "witness_agent_users": [AGENT],
        "witness_manage_service": True,
        "witness_compile": False,
        "witness_apt_update_cache": False,
        "witness_pip_args": ["--no-index", "--find-links", WHEELS],
        **lab_variables(lab, idp),
    }


def play(root: Path, lab: Lab) -> tuple[dict[str, int], str]:
    """site.yml, run from the bastion namespace (where the host's SSH server listens)."""
    prefix = ("ip", "netns", "exec", lab.topology.bastion)
    return roleplay.play(root, HOST, prefix=prefix, timeout=780)


def as_agent(host: Container, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` as the agent, a service of the host's systemd (in a cgroup of its own)."""
    return host.run(
        "systemd-run", "--quiet", "--wait", "--pipe", f"--uid={AGENT}", "--", *argv, check=False
    )


def psql(backend: str, sql: str) -> list[str]:
    return ["psql", "-X", "-At", "-h", backend, "-U", "postgres", "-c", sql]


def recorded(provisioned: Provisioned) -> str:
    """An agent's psql through witness run: the text it ran, once found in the trail."""
    host = provisioned.host
    probe = f"system-probe-{uuid.uuid4().hex[:12]}"
    backend = str(provisioned.lab.topology.backend_ipv4)
    ran = as_agent(
        host, "/usr/local/bin/witness", "run", "--token-file", f"/home/{AGENT}/jwt", "--",
        *psql(backend, f"select '{probe}'"),
    )  # fmt: skip
    journal = ["journalctl", "--no-pager", *(f"--unit={unit}" for unit in UNITS)]
    assert ran.returncode == 0 and ran.stdout.split() == [probe], (
        ran.stdout + ran.stderr + host.run(*journal, check=False).stdout[-4000:]
    )
    deadline = time.monotonic() + 10
    while probe not in host.run("witness", "search", probe, "--json").stdout:
        assert time.monotonic() < deadline, f"{probe} is not in the trail"
        time.sleep(0.1)
    return probe


@pytest.fixture(scope="module")
def provisioned(
    lab: Lab, image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Provisioned]:
    root = tmp_path_factory.mktemp("controller")
    wheels = wheelhouse(tmp_path_factory.mktemp("wheelhouse"))
    disk = tmp_path_factory.mktemp("disk")
    lab.record("directory", str(disk))  # removed with the lab, after a crash too
    headers = kernel_headers()
    host = Container(
        lab, image, root / "console.log", binds=((wheels, WHEELS), *headers), disk=disk / "root"
    )
    idp = IdP(netns=lab.topology.bastion)
    try:
        host.boot()
        idp.start()
        key = root / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        host.run("install", "-d", "-m", "0700", "/root/.ssh")
        host.run("tee", "/root/.ssh/authorized_keys", input=(root / "id_ed25519.pub").read_text())
        (root / "inventory.yml").write_text(
            "bastions:\n  hosts:\n"
            f"    {HOST}:\n      ansible_host: 127.0.0.1\n      ansible_user: root\n"
            f"      ansible_ssh_private_key_file: {key}\n"
            "      ansible_ssh_common_args: >-\n"
            "        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null\n"
            "      ansible_python_interpreter: /usr/bin/python3\n"
        )
        (root / "vars.json").write_text(json.dumps(variables(root, lab, idp), indent=1))
        recap, output = play(root, lab)
        yield Provisioned(host, lab, idp, root, recap, output, bool(headers))
    finally:
        idp.close()
        host.stop()
        shutil.rmtree(disk, ignore_errors=True)


def test_the_first_run_starts_the_units_and_records_an_agent(provisioned: Provisioned) -> None:
    host = provisioned.host
    assert provisioned.recap["changed"] > 0, provisioned.output[-3000:]
    for unit in UNITS:
        assert host.run("systemctl", "is-enabled", unit).stdout.strip() == "enabled"
        active = host.run("systemctl", "is-active", unit, check=False).stdout.strip()
        assert active == "active", host.run("journalctl", "-u", unit, "--no-pager").stdout
    status = host.run("witness", "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "present, matches the configuration" in status.stdout, status.stdout

    # The agent's token, in a file only it can read; psql through witness run.
    token = provisioned.idp.client_credentials("agent-ci")
    host.run("install", "-o", AGENT, "-g", AGENT, "-m", "0600", "/dev/null", f"/home/{AGENT}/jwt")
    host.run("tee", f"/home/{AGENT}/jwt", input=token + "\n")
    probe = recorded(provisioned)
    listed = host.run(
        "witness", "sessions", "list", "--identity", "agent-ci@example.test", "--json"
    )
    rows = json.loads(listed.stdout)
    assert len(rows) == 1 and rows[0]["identity"]["issuer"] == provisioned.idp.issuer, rows
    shown = host.run("witness", "sessions", "show", rows[0]["id"], "--json")
    assert probe in shown.stdout
    verified = host.run("witness", "verify", "--open-tail", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    fetched = provisioned.root / "keys" / f"{HOST}.pub"
    assert fetched.is_file()


def test_the_sandboxed_recorder_reads_owners_from_the_pinned_map(
    provisioned: Provisioned,
) -> None:
    """witness up (as root, at boot) compiled and attached the eBPF programs and pinned the
    owner map; the recorder, under its system call filter, read-only /sys and three
    capabilities, takes the agent's owner from that map, not from sock_diag."""
    if not provisioned.headers:
        pytest.skip("the test machine has no header tree for its kernel: BCC cannot compile")
    host = provisioned.host
    status = json.loads(host.run("witness", "status", "--json", check=False).stdout)
    up = host.run("journalctl", "--no-pager", "--unit=witness-enforce.service", check=False)
    assert status["attribution"]["mode"] == "ebpf", (status["attribution"], up.stdout[-3000:])
    probe = recorded(provisioned)
    found = json.loads(host.run("witness", "search", probe, "--json").stdout)
    shown = host.run("witness", "sessions", "show", found[0]["session"], "--json")
    owner = json.loads(shown.stdout)["session"]["owner"]
    uid = int(host.run("id", "-u", AGENT).stdout)
    assert owner["source"] == "ebpf" and owner["uid"] == uid, owner


def test_a_second_run_changes_nothing(provisioned: Provisioned) -> None:
    recap, output = play(provisioned.root, provisioned.lab)
    assert recap["changed"] == 0, "\n".join(
        line for line in output.splitlines() if line.startswith("changed")
    )


def since_boot(host: Container, unit: str) -> int:
    """When ``unit`` became active, in microseconds after the boot (0: never)."""
    shown = host.run("systemctl", "show", unit, "--property=ActiveEnterTimestampMonotonic")
    return int(shown.stdout.strip().partition("=")[2] or 0)


def test_the_boot_is_closed_until_the_recorder_starts(provisioned: Provisioned) -> None:
    host = provisioned.host
    backend = str(provisioned.lab.topology.backend_ipv4)
    host.run("systemctl", "disable", "witness.service")
    try:
        host.reboot()
        # The table was loaded before the network came up, and the recorder is not running.
        enforced = since_boot(host, "witness-enforce.service")
        assert 0 < enforced <= since_boot(host, "network-pre.target")
        assert host.run("systemctl", "is-active", "witness", check=False).stdout.strip() == (
            "inactive"
        )
        # An agent's connection to the backend is refused, and stays refused.
        for _ in range(2):
            direct = as_agent(host, *psql(backend, "select 1"))
            assert direct.returncode != 0 and "Connection refused" in direct.stderr, direct
            time.sleep(1)
        host.run("systemctl", "start", "witness.service")
        deadline = time.monotonic() + 20
        while "Connection refused" in as_agent(host, *psql(backend, "select 1")).stderr:
            assert time.monotonic() < deadline, "the recorder did not start"
            time.sleep(0.2)
        recorded(provisioned)
    finally:
        host.run("systemctl", "enable", "--now", "witness.service", check=False)


def test_a_flushed_ruleset_is_reported_by_status(provisioned: Provisioned) -> None:
    host = provisioned.host
    host.run("nft", "flush", "ruleset")
    try:
        status = host.run("witness", "status", check=False)
        assert status.returncode == 1, status.stdout + status.stderr
        assert "table inet witness: absent" in status.stdout, status.stdout
    finally:
        host.run("systemctl", "restart", "witness-enforce.service")
    status = host.run("witness", "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr


RECORDER_CAPS = {"cap_sys_ptrace", "cap_dac_read_search", "cap_bpf"}
# `systemd-analyze security`'s exposure for each unit as the role installs it (lower is
# safer): a change to a unit must not raise it.
# witness-enforce is a oneshot as root that loads the table: it is left unconfined.
EXPOSURE = {"witness.service": 2.2, "witness-warden.service": 3.7, "witness-enforce.service": 9.5}


def recorder_pid(host: Container) -> str:
    pid = host.run("systemctl", "show", "witness.service", "--property=MainPID", "--value")
    assert pid.stdout.strip() not in ("", "0"), "the recorder is not running"
    return pid.stdout.strip()


def in_recorder(
    host: Container, *argv: str, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``argv`` in the running recorder's mount namespace, without a capability: as root by
    default (the owner of /usr, /etc and /var, whom only the unit's sandbox stops from
    writing there), or as ``user``."""
    who = [] if user is None else [f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    return host.run(
        "nsenter", f"--target={recorder_pid(host)}", "--mount", "--",
        "setpriv", *who, "--inh-caps=-all", "--bounding-set=-all", "--", *argv,
        check=False,
    )  # fmt: skip


def test_the_recorder_holds_exactly_its_capabilities(provisioned: Provisioned) -> None:
    host = provisioned.host
    pid = recorder_pid(host)
    status = host.run("cat", f"/proc/{pid}/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # a filter: the address families, the arch
    for name in ("CapEff", "CapPrm", "CapBnd"):
        decoded = host.run("capsh", f"--decode={fields[name].strip()}", check=False)
        held = set(decoded.stdout.strip().partition("=")[2].split(","))
        assert held == RECORDER_CAPS, (name, decoded.stdout)


def test_the_recorder_writes_only_its_state_directory(provisioned: Provisioned) -> None:
    host = provisioned.host
    # Outside it, the host can write these; the recorder's view of them is read-only.
    for outside in ("/usr/local/probe", "/etc/probe", "/var/log/probe", "/opt/witness/probe"):
        assert host.run("touch", outside).returncode == 0
        host.run("rm", outside)
        tried = in_recorder(host, "touch", outside)
        assert tried.returncode != 0 and "Read-only file system" in tried.stderr, tried
    inside = in_recorder(host, "touch", "/var/lib/witness/probe", user="witness")
    assert inside.returncode == 0, inside.stderr
    in_recorder(host, "rm", "/var/lib/witness/probe", user="witness")
    # ProtectHome: the homes are empty and unwritable to it.
    host.run("touch", f"/home/{AGENT}/probe")
    for home in ("/root", f"/home/{AGENT}"):
        listed = in_recorder(host, "ls", "-A", home)
        assert listed.stdout.strip() == "", (home, listed.stdout)
    host.run("rm", f"/home/{AGENT}/probe")


def test_the_units_exposure_does_not_grow(provisioned: Provisioned) -> None:
    host = provisioned.host
    found = {}
    for unit in EXPOSURE:
        scored = host.run("systemd-analyze", "security", "--no-pager", unit, check=False)
        overall = re.search(r"Overall exposure level for \S+: ([\d.]+)", scored.stdout)
        assert overall is not None, scored.stdout + scored.stderr
        found[unit] = float(overall.group(1))
    print(found)
    assert all(found[unit] <= EXPOSURE[unit] for unit in EXPOSURE), found
