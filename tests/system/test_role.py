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

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import threading
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

from appliance import __version__
from appliance.lab.idp import IdP, missing
from appliance.lab.netns import Lab
from appliance.lab.postgres import PostgresServer

HOST = "bastion"
UNITS = ("witness-enforce.service", "witness-warden.service", "witness.service")
AGENT = "agent1"
WHEELS = "/opt/wheelhouse"
PROBE = Path(__file__).with_name("sandbox_probe.py")
PYTHON = "/opt/witness/venv/bin/python"  # the recorder's, with Witness
# An agent's command started under its OIDC identity (the token the first test writes).
WITNESS_RUN = ("/usr/local/bin/witness", "run", "--token-file", f"/home/{AGENT}/jwt", "--")

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


def psql(backend: str, sql: str, port: int = 5432, program: str = "psql") -> list[str]:
    return [program, "-X", "-At", "-h", backend, "-p", str(port), "-U", "postgres", "-c", sql]


def recorded(provisioned: Provisioned, port: int = 5432, program: str = "psql") -> str:
    """An agent's psql through witness run: the text it ran, once found in the trail."""
    host = provisioned.host
    probe = f"system-probe-{uuid.uuid4().hex[:12]}"
    backend = str(provisioned.lab.topology.backend_ipv4)
    ran = as_agent(host, *WITNESS_RUN, *psql(backend, f"select '{probe}'", port, program))
    journal = ["journalctl", "--no-pager", *(f"--unit={unit}" for unit in UNITS)]
    assert ran.returncode == 0 and ran.stdout.split() == [probe], (
        ran.stdout + ran.stderr + host.run(*journal, check=False).stdout[-4000:]
    )
    deadline = time.monotonic() + 10
    while probe not in host.run("witness", "search", probe, "--json").stdout:
        assert time.monotonic() < deadline, f"{probe} is not in the trail"
        time.sleep(0.1)
    return probe


def session_of(host: Container, text: str) -> dict[str, Any]:
    """The recorded session that ran the one command with ``text``."""
    found = json.loads(host.run("witness", "search", text, "--json").stdout)
    assert len(found) == 1, found
    shown = host.run("witness", "sessions", "show", found[0]["session"], "--json")
    session: dict[str, Any] = json.loads(shown.stdout)["session"]
    return session


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


def test_ebpf_attaches_but_owners_come_from_the_hosts_own_pids(
    provisioned: Provisioned,
) -> None:
    """witness up (as root, at boot) compiled and attached the eBPF programs. But the host is
    a container with a PID namespace of its own, and eBPF records the outer host's process
    ids: the recorder does not take them, and attributes owners through sock_diag and its
    own /proc, so the process, program and cgroup it names are the agent's."""
    if not provisioned.headers:
        pytest.skip("the test machine has no header tree for its kernel: BCC cannot compile")
    host = provisioned.host
    status = json.loads(host.run("witness", "status", "--json", check=False).stdout)
    up = host.run("journalctl", "--no-pager", "--unit=witness-enforce.service", check=False)
    attribution = status["attribution"]
    assert attribution["mode"] == "sock_diag", (attribution, up.stdout[-3000:])
    assert "programs attached" in attribution["why"], attribution
    assert "PID namespace of its own" in attribution["why"], attribution
    owner = session_of(host, recorded(provisioned))["owner"]
    uid = int(host.run("id", "-u", AGENT).stdout)
    assert owner["source"] == "sock_diag" and owner["uid"] == uid, owner
    assert owner["exe"] == "/usr/lib/postgresql/15/bin/psql", owner
    assert owner["cgroup"].startswith("/witness-agents/run-"), owner


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


def probe_sandbox(host: Container, unit: bool) -> dict[str, int]:
    """sandbox_probe.py's findings: run under the recorder's own unit file, its ExecStart
    replaced (``unit``), or as the service user with no sandbox at all."""
    host.run("tee", "/usr/local/lib/sandbox_probe.py", input=PROBE.read_text())
    out = "/var/lib/witness/probe.json"
    if unit:
        rendered = host.run("cat", "/etc/systemd/system/witness.service").stdout
        # Not its RuntimeDirectory: systemd would remove the recorder's /run/witness, with
        # its control socket in it, when the probe ends.
        probe = [
            line
            for line in rendered.splitlines()
            if not line.startswith(("Restart", "Type=", "RuntimeDirectory"))
        ]
        probe = [
            f"ExecStart={PYTHON} /usr/local/lib/sandbox_probe.py {out}"
            if line.startswith("ExecStart=")
            else line
            for line in probe
        ]
        probe.insert(probe.index("[Service]") + 1, "Type=oneshot")
        host.run("tee", "/run/systemd/system/witness-probe.service", input="\n".join(probe))
        host.run("systemctl", "daemon-reload")
        host.run("systemctl", "start", "witness-probe.service")
        host.run("rm", "/run/systemd/system/witness-probe.service")
        host.run("systemctl", "daemon-reload")
    else:
        host.run(
            "setpriv", "--reuid=witness", "--regid=witness", "--clear-groups",
            PYTHON, "/usr/local/lib/sandbox_probe.py", out,
        )  # fmt: skip
    found: dict[str, int] = json.loads(host.run("cat", out).stdout)
    host.run("rm", out)
    return found


def test_the_recorders_filters_hold_from_inside(provisioned: Provisioned) -> None:
    """Under the recorder's unit: only unix, inet, inet6 and netlink sockets; no call outside
    @system-service (and bpf); no writable and executable memory. The same probe outside the
    unit, as the same user, is stopped by none of them."""
    host = provisioned.host
    # With eBPF attached, the owner map is pinned; without (no kernel headers), it is not.
    pinned = 0 if provisioned.headers else errno.ENOENT
    sandboxed = probe_sandbox(host, unit=True)
    # systemd 252 (Debian 12) enforces MemoryDenyWriteExecute with seccomp (EPERM); from
    # 254 it uses the kernel's PR_SET_MDWE where it can (EACCES).
    assert sandboxed.pop("mmap_wx") in (errno.EPERM, errno.EACCES), sandboxed
    assert sandboxed == {
        "socket:AF_UNIX": 0,
        "socket:AF_INET": 0,
        "socket:AF_INET6": 0,
        "socket:AF_NETLINK": 0,
        "socket:AF_PACKET": errno.EAFNOSUPPORT,
        "pidfd_getfd": errno.EPERM,
        "owner_map": pinned,
    }, sandboxed
    bare = probe_sandbox(host, unit=False)
    # Whether opening a pin needs CAP_BPF depends on the kernel (6.1 yes, later ones no):
    # the bare user's owner_map is not compared. AF_PACKET needs CAP_NET_RAW, which it
    # lacks: refused, but by the kernel's check (EPERM), not the unit's filter.
    del bare["owner_map"]
    assert bare == {**{k: 0 for k in bare}, "socket:AF_PACKET": errno.EPERM}, bare


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


def test_an_agents_program_in_its_home_is_named(provisioned: Provisioned) -> None:
    """The recorder cannot see /home (ProtectHome), yet it names the program of an agent
    that runs one from there: /proc/PID/exe is the kernel's, not the recorder's view."""
    host = provisioned.host
    program = f"/home/{AGENT}/bin/psql"
    host.run("install", "-D", "-o", AGENT, "-g", AGENT, "-m", "0755",
             "/usr/lib/postgresql/15/bin/psql", program)  # fmt: skip
    owner = session_of(host, recorded(provisioned, program=program))["owner"]
    assert owner["exe"] == program and owner["comm"] == "psql", owner


def invocation(host: Container, unit: str) -> str:
    """The unit's current invocation: a new one at each start or restart."""
    shown = host.run("systemctl", "show", unit, "--property=InvocationID", "--value")
    return shown.stdout.strip()


def test_a_new_backend_restarts_enforcement_and_the_recorder_only(
    provisioned: Provisioned,
) -> None:
    """A second PostgreSQL, on another port of the protected range (so agents are rejected
    from it, not diverted), is added to witness_backends: the play re-applies enforcement
    and restarts the recorder, leaves the warden running, and from then on the new backend
    is diverted to the recorder and recorded. (It changes the host's configuration.)"""
    host, lab, root = provisioned.host, provisioned.lab, provisioned.root
    topo = lab.topology
    backend = str(topo.backend_ipv4)
    port = topo.service("postgres").port + 1
    with PostgresServer(host=backend, port=port, netns=topo.backends, trust=topo.networks):
        # Not diverted yet: the range is protected, so the agent's connection is rejected.
        direct = as_agent(host, *psql(backend, "select 'not yet'", port))
        assert direct.returncode != 0 and "Connection refused" in direct.stderr, direct
        before = {unit: invocation(host, unit) for unit in UNITS}
        values = json.loads((root / "vars.json").read_text())
        values["witness_backends"].append({
            "name": "second", "address": backend, "port": port,
            "protect": list(topo.networks), "protect_ports": [port],
        })  # fmt: skip
        (root / "vars.json").write_text(json.dumps(values, indent=1))
        recap, output = play(root, lab)
        assert recap["changed"] > 0 and recap["failed"] == 0, output[-3000:]
        after = {unit: invocation(host, unit) for unit in UNITS}
        assert after["witness-warden.service"] == before["witness-warden.service"]
        assert after["witness-enforce.service"] != before["witness-enforce.service"]
        assert after["witness.service"] != before["witness.service"]
        # Protected: a direct connection is diverted to the recorder, which refuses an
        # owner with no identity; through witness run it is recorded.
        direct = as_agent(host, *psql(backend, "select 'direct'", port))
        assert direct.returncode != 0 and "witness login" in direct.stderr, direct
        session = session_of(host, recorded(provisioned, port=port))
        assert session["destination"].endswith(f":{port}"), session
        status = host.run("witness", "status", check=False)
        assert status.returncode == 0, status.stdout + status.stderr


def next_release(into: Path) -> tuple[Path, str]:
    """A copy of the checkout whose version is one patch release on (what the role installs
    as an upgrade), and that version."""
    ignore = shutil.ignore_patterns("__pycache__", "node_modules", "*.so", "*.egg-info")
    for name in ("appliance", "bpf"):
        shutil.copytree(REPO / name, into / name, ignore=ignore)
    for name in ("setup.py", "README.md", "pyproject.toml"):
        shutil.copy2(REPO / name, into / name)
    major, minor, patch = __version__.split(".")
    bumped = f"{major}.{minor}.{int(patch) + 1}"
    init = into / "appliance" / "__init__.py"
    text = init.read_text()
    assert f'__version__ = "{__version__}"' in text
    init.write_text(text.replace(f'__version__ = "{__version__}"', f'__version__ = "{bumped}"'))
    return into, bumped


def test_an_upgrade_under_load_loses_no_command(provisioned: Provisioned, tmp_path: Path) -> None:
    """The role upgrades the host to the next release while agents work: short sessions one
    after another, and one long session that the recorder's restart cuts. Every command that
    reached the backend (each writes a mark into a table) is in the trail; the cut session
    is recorded as ended, and why; the chain runs on across the restart and verifies."""
    host, lab, root = provisioned.host, provisioned.lab, provisioned.root
    topo = lab.topology
    backend = str(topo.backend_ipv4)

    def on_backend(sql: str) -> str:
        """``sql`` from the backends' own namespace, where no Witness stands in the way."""
        return subprocess.run(
            ["ip", "netns", "exec", topo.backends, *psql(backend, sql)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    on_backend("create table upgrade_marks (mark text primary key)")
    script = "".join(
        f"insert into upgrade_marks values ('long-{i}'); select pg_sleep(0.1);\n"
        for i in range(5000)  # 500 s at least: the play restarts the recorder long before
    )
    script_file = f"/home/{AGENT}/long.sql"
    host.run("tee", script_file, input=script)
    host.run("chown", AGENT, script_file)
    values = json.loads((root / "vars.json").read_text())
    newer, expected = next_release(tmp_path / "next")
    values["witness_source_dir"] = str(newer)
    (root / "vars.json").write_text(json.dumps(values, indent=1))

    stop = threading.Event()
    short: list[tuple[float, int]] = []  # when each short session ended, and its exit code

    def short_sessions() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            sql = f"insert into upgrade_marks values ('short-{i}')"
            ran = as_agent(host, *WITNESS_RUN, *psql(backend, sql))
            short.append((time.monotonic(), ran.returncode))

    long_argv = [
        *WITNESS_RUN,
        "psql",
        "-X",
        "-At",
        "-h",
        backend,
        "-U",
        "postgres",
        "-f",
        script_file,
    ]
    long_session: list[subprocess.CompletedProcess[str]] = []
    workers = [
        threading.Thread(target=short_sessions),
        threading.Thread(target=lambda: long_session.append(as_agent(host, *long_argv))),
    ]
    for worker in workers:
        worker.start()
    try:
        time.sleep(3)
        recap, output = play(root, lab)
        upgraded = time.monotonic()
        time.sleep(3)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=180)
    assert recap["failed"] == 0 and recap["changed"] > 0, output[-3000:]
    version = host.run("/usr/local/bin/witness", "--version").stdout
    assert version.split()[-1] == expected, version
    assert any(code == 0 for at, code in short if at > upgraded), short  # working again

    # Every mark the backend holds was recorded before it got there.
    marks = set(on_backend("select mark from upgrade_marks").split())
    found = json.loads(host.run("witness", "search", "upgrade_marks", "--json").stdout)
    in_trail = {m for row in found for m in re.findall(r"'((?:short|long)-\d+)'", row["text"])}
    assert {"short-1", "long-0"} <= marks, sorted(marks)
    assert marks <= in_trail, sorted(marks - in_trail)

    # The long session was cut by the restart, and the trail says so.
    assert long_session and long_session[0].returncode != 0, long_session
    cut = session_of(host, "'long-0'")
    assert cut["end"] is not None and cut["end_reason"] == "recorder shutting down", cut
    listed = json.loads(host.run("witness", "sessions", "list", "--json").stdout)
    assert all(row["end"] is not None for row in listed), [r for r in listed if not r["end"]]
    verified = host.run("witness", "verify", "--open-tail", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
