"""The Ansible role for real: ``ansible/site.yml`` run against this machine (connection=local),
then the daemons it installed started the way its systemd units say, in the namespace lab.

Everything the play installs goes under a temporary root (0755, so that the agents reach the
venv): the prefix, the configuration, the state directory, the units, the sockets' directories
and the public key fetched back. The play makes the lab's users (a service user and two agents,
recorded in the lab's state before it runs, so ``lab.down()`` deletes them after a crash too).
``witness_manage_service`` is false (no systemd here): the test reads each installed unit and
runs its commands itself, as systemd would, with the user, capabilities, bounding set,
no_new_privs and umask the unit names. ``witness_compile`` is false to save the half minute
mypyc takes (the compiled build is covered by scripts/bootstrap and the other tests).

It checks the installed files, their owners and modes; the units' hardening (and
``systemd-analyze verify``); that the public key came back and the private key did not; a boot
that is closed before the recorder is up (the saved table alone refuses an agent); ``witness
status``; an agent's psql through ``witness run`` recorded under its OIDC identity, and the
trail verified with the fetched public key; and that a second run of the play changes nothing.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import roleplay
from labmarks import lab_marks
from roleplay import PLAYBOOK, lab_variables

from appliance.enforce import bpf, cgroups
from appliance.lab import users
from appliance.lab.idp import IdP, missing
from appliance.lab.netns import Lab
from appliance.lab.postgres import LabError, postgres_bindir

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
MOUNT = cgroups.cgroup2_mount()
PSQL = postgres_bindir() / "psql"
HOST = "localhost"  # the inventory's name for this machine: <HOST>.pub is fetched
UNITS = ("witness-enforce.service", "witness-warden.service", "witness.service")
RECORDER_CAPS = {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_BPF"}
READY = "hot path:"  # the recorder logs it once it listens
WAIT = 20.0

pytestmark = [
    *lab_marks("netns, nftables, cgroups, users", "nft", "setpriv", "useradd", timeout=600),
    pytest.mark.skipif(PLAYBOOK is None, reason="ansible-playbook is not installed (ansible)"),
    pytest.mark.skipif(MOUNT is None, reason="cgroup2 is not mounted"),
    pytest.mark.skipif(missing() is not None, reason=f"no identity provider: {missing()}"),
]


@dataclass
class World:
    lab: Lab
    idp: IdP
    root: Path
    service: str
    agents: list[str]
    recap: dict[str, int]
    output: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    claimed_agent_root: bool = False

    @property
    def prefix(self) -> Path:
        return self.root / "opt"

    @property
    def witness(self) -> str:
        return str(self.prefix / "venv" / "bin" / "witness")

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def config(self) -> Path:
        return self.config_dir / "witness.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def systemd_dir(self) -> Path:
        return self.root / "systemd"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def control_socket(self) -> Path:
        return self.root / "run-witness" / "control.sock"

    @property
    def warden_socket(self) -> Path:
        return self.root / "run-witness-warden" / "warden.sock"

    @property
    def netns(self) -> str:
        return f"--net=/run/netns/{self.lab.topology.bastion}"

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"


# --- running the play -----------------------------------------------------------------------


def snapshot(dest: Path) -> Path:
    """The checkout as the controller holds it (build products included: the role must leave
    them out), copied once, so that edits made to the tree meanwhile cannot change the second
    run's source."""
    dest.mkdir()
    skip = shutil.ignore_patterns("node_modules", ".mypy_cache", ".pytest_cache")
    for name in ("appliance", "bpf"):
        shutil.copytree(REPO / name, dest / name, ignore=skip, symlinks=True)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    return dest


def extra_vars(
    world_root: Path, service: str, agents: list[str], lab: Lab, idp: IdP
) -> dict[str, Any]:
    return {
        "witness_source_dir": str(world_root / "checkout"),
        "witness_prefix": str(world_root / "opt"),
        "witness_config_dir": str(world_root / "etc"),
        "witness_state_dir": str(world_root / "state"),
        "witness_systemd_dir": str(world_root / "systemd"),
        "witness_public_key_dir": str(world_root / "keys"),
        "witness_bin_link": "",
        "witness_user": service,
        "witness_agent_users": agents,
        "witness_manage_service": False,
        # mypyc takes half a minute; the compiled build is covered by scripts/bootstrap.
        "witness_compile": False,
        # The packages are installed already; no apt-get update against the network.
        "witness_apt_update_cache": False,
        "witness_control_socket": str(world_root / "run-witness" / "control.sock"),
        "witness_warden_socket": str(world_root / "run-witness-warden" / "warden.sock"),
        **lab_variables(lab, idp),
    }


def play(root: Path, *options: str, succeed: bool = True) -> tuple[dict[str, int], str]:
    """Run site.yml once against this machine (see roleplay.play)."""
    return roleplay.play(root, HOST, *options, succeed=succeed)


# --- the units, read and run as systemd would ----------------------------------------------


def unit(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> its values in order (a key may repeat, like ExecStart)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return values


def caps(names: str, sign: str = "+") -> str:
    """``CAP_SYS_PTRACE CAP_BPF`` as setpriv takes them: ``+sys_ptrace,+bpf``."""
    return ",".join(sign + n.removeprefix("CAP_").lower() for n in names.split())


def as_unit(world: World, name: str, argv: list[str]) -> list[str]:
    """``argv`` in the bastion with the user, capabilities and no_new_privs the unit names."""
    u = unit(world.systemd_dir / name)
    priv = ["setpriv"]
    user = u.get("Service.User", [None])[0]
    if user is not None:
        who = pwd.getpwnam(user)
        priv += [f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--clear-groups"]
    ambient = u.get("Service.AmbientCapabilities", [""])[0]
    if ambient:
        priv += [f"--inh-caps={caps(ambient)}", f"--ambient-caps={caps(ambient)}"]
    bounding = u.get("Service.CapabilityBoundingSet", [""])[0]
    if bounding:
        priv.append(f"--bounding-set=-all,{caps(bounding)}")
    if u.get("Service.NoNewPrivileges") == ["yes"]:
        priv.append("--no-new-privs")
    return ["nsenter", world.netns, *priv, "--", *argv]


def start(world: World, name: str, unit_name: str, ready: Callable[[], bool]) -> None:
    """Start unit ``unit_name``'s daemon as the unit says (its ExecStart, in the bastion;
    logged to <name>.log) and wait until ``ready()`` says it is up."""
    u = unit(world.systemd_dir / unit_name)
    (command,) = u["Service.ExecStart"]
    argv = as_unit(world, unit_name, shlex.split(command))
    umask = int(u.get("Service.UMask", ["0022"])[0], 8)
    with world.log(name).open("ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, umask=umask
        )
    world.procs[name] = proc
    deadline = time.monotonic() + WAIT
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the {name} exited: {world.log(name).read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the {name} was not up within {WAIT:.0f}s")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def as_agent(
    world: World, agent: str, argv: list[str], timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    who = pwd.getpwnam(agent)
    return subprocess.run(
        [
            "nsenter", world.netns,
            "setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--clear-groups",
            "--", *argv,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )  # fmt: skip


def witness(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed witness, as root, with the installed configuration."""
    return subprocess.run(
        [world.witness, "--config", str(world.config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def psql(world: World, sql: str) -> list[str]:
    """psql as an agent runs it, to the backend's address: nothing tells it about Witness."""
    host = str(world.lab.topology.backend_ipv4)
    return [str(PSQL), "-X", "-At", "-h", host, "-U", "postgres", "-c", sql]


# --- the fixture ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    suffix = f"ans{uuid.uuid4().hex[:6]}"
    lab = Lab(suffix, tmp_path_factory.mktemp("lab-state"))
    names = users.names(lab.topology.name, 2)
    homes = [Path("/home") / agent for agent in names.agents]
    made_homes: list[Path] = []
    idp: IdP | None = None
    built: World | None = None
    try:
        taken = [n for n in names.all if users.exists(n)] + [str(h) for h in homes if h.exists()]
        if taken:
            raise LabError(f"{', '.join(taken)} exist already; this test did not make them")
        lab.up()
        root = Path(tempfile.mkdtemp(prefix="witness-ansible-"))
        lab.record("directory", str(root))
        root.chmod(0o755)  # agents run the venv's witness from below it
        # Recorded before the play makes them, so that lab.down() deletes them whatever happens.
        lab.record("users", list(names.all))
        made_homes = homes
        idp = IdP(netns=lab.topology.bastion)
        idp.start()
        snapshot(root / "checkout")
        (root / "vars.json").write_text(
            json.dumps(extra_vars(root, names.service, list(names.agents), lab, idp), indent=1)
        )
        (root / "inventory.yml").write_text(
            "bastions:\n  hosts:\n"
            f"    {HOST}:\n      ansible_connection: local\n"
            "      ansible_python_interpreter: /usr/bin/python3\n"
        )
        recap, output = play(root)
        built = World(lab, idp, root, names.service, list(names.agents), recap, output)
        yield built
    finally:
        if built is not None:
            for name in ("recorder", "warden"):
                proc = built.procs.get(name)
                if proc is not None:
                    stop(proc)
            if built.claimed_agent_root and Path(built.witness).exists():
                # The table goes with the namespace; this also removes the agent root.
                subprocess.run(
                    [built.witness, "down", "--netns", lab.topology.bastion],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
        if idp is not None:
            idp.close()
        lab.down()  # kills what is left, removes the users, agent cgroups, namespaces, root
        for home in made_homes:
            shutil.rmtree(home, ignore_errors=True)


# --- the tests ------------------------------------------------------------------------------


def owner(path: Path) -> tuple[str, str, int]:
    found = path.stat()
    return (
        pwd.getpwuid(found.st_uid).pw_name,
        grp.getgrgid(found.st_gid).gr_name,
        stat.S_IMODE(found.st_mode),
    )


def test_the_play_installs_the_files_with_their_owners_and_modes(world: World) -> None:
    assert world.recap["changed"] > 0 and world.recap["failed"] == 0, world.recap
    print("\n".join(line for line in world.output.splitlines() if line.startswith(HOST)))
    svc = world.service
    assert owner(world.config_dir) == ("root", svc, 0o750)
    assert owner(world.config) == ("root", svc, 0o640)
    assert owner(world.state_dir) == (svc, svc, 0o700)
    assert owner(world.state_dir / "signing.key") == (svc, svc, 0o600)
    assert owner(world.state_dir / "signing.key.pub") == (svc, svc, 0o644)
    assert owner(world.prefix) == ("root", "root", 0o755)
    assert owner(world.control_socket.parent) == (svc, svc, 0o755)
    assert owner(world.warden_socket.parent) == ("root", "root", 0o755)

    text = world.config.read_text()
    assert f'service_user = "{svc}"' in text and "redirect_port = 15432" in text, text
    assert f'path = "{world.state_dir}/trail.db"' in text, text
    assert witness(world, "check").returncode == 0

    table = json.loads((world.config_dir / "witness.nft.json").read_text())
    assert {"add": {"table": {"family": "inet", "name": "witness"}}} in table["nftables"]
    checked = subprocess.run(
        ["nft", "-c", "-j", "-f", str(world.config_dir / "witness.nft.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr

    service = pwd.getpwnam(svc)
    assert service.pw_shell == "/usr/sbin/nologin" and service.pw_dir == str(world.state_dir)
    for agent in world.agents:
        found = pwd.getpwnam(agent)
        assert found.pw_uid >= 1000 and found.pw_shell == "/bin/bash", found
        groups = subprocess.run(["id", "-Gn", agent], capture_output=True, text=True, check=True)
        assert groups.stdout.split() == [agent]  # its own group, nothing else

    venv = world.prefix / "venv"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    # BCC comes from Debian's python3-bpfcc, through the system site packages.
    bcc = subprocess.run([str(venv / "bin" / "python"), "-c", "import bcc"], check=False)
    assert bcc.returncode == 0
    # An agent can run it (the prefix and the source are readable by all).
    version = as_agent(world, world.agents[0], [world.witness, "--version"])
    assert version.returncode == 0 and "witness, version" in version.stdout, version.stderr
    # Installed from a wheel built on the host: the venv runs its site-packages, and no
    # source tree or build is left to run from.
    assert not (world.prefix / "src").exists() and not (world.prefix / "build").exists()
    found = subprocess.run(  # from /: not the checkout that -c would put first on the path
        [str(venv / "bin" / "python"), "-c", "import appliance; print(appliance.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    package = Path(found.stdout.strip()).parent
    assert package.is_relative_to(venv) and package.parent.name == "site-packages", package
    assert (venv / "share" / "witness" / "bpf" / "witness.c").is_file()
    provider = {p.name for p in (package / "lab" / "provider").iterdir()}
    assert provider == {"provider.mjs", "package.json", "package-lock.json"}
    # Only what pip needs was shipped: none of the controller's build products (and with
    # witness_compile false, nothing was compiled on the host either).
    assert not list(package.rglob("*.so")) and not (package / "native.json").exists()


def test_the_units_are_hardened(world: World) -> None:
    for name in UNITS:
        assert owner(world.systemd_dir / name) == ("root", "root", 0o644)
    enforce = unit(world.systemd_dir / "witness-enforce.service")
    assert enforce["Service.Type"] == ["oneshot"] and enforce["Service.RemainAfterExit"] == ["yes"]
    assert enforce["Unit.DefaultDependencies"] == ["no"]
    assert "network-pre.target" in " ".join(enforce["Unit.Before"])
    nft_json = world.config_dir / "witness.nft.json"
    assert enforce["Service.ExecStart"] == [
        f"/usr/sbin/nft -j -f {nft_json}",
        f"{world.witness} --config {world.config} up",
    ]
    assert "Service.ExecStop" not in enforce  # only witness down, by hand, opens the host

    warden = unit(world.systemd_dir / "witness-warden.service")
    assert warden["Service.ExecStart"] == [f"{world.witness} --config {world.config} warden"]
    assert warden["Unit.Wants"] == ["witness-enforce.service"]
    assert "Unit.Requires" not in warden  # a restart of enforcement does not restart it
    assert "Service.User" not in warden  # root, with one capability
    assert warden["Service.CapabilityBoundingSet"] == ["CAP_CHOWN"]

    rec = unit(world.systemd_dir / "witness.service")
    assert rec["Service.User"] == rec["Service.Group"] == [world.service]
    assert rec["Service.ExecStart"] == [f"{world.witness} --config {world.config} serve"]
    assert set(rec["Service.AmbientCapabilities"][0].split()) == RECORDER_CAPS
    assert set(rec["Service.CapabilityBoundingSet"][0].split()) == RECORDER_CAPS
    # Writable: the trail's directory, and the control socket's (outside /run in this test).
    assert rec["Service.ReadWritePaths"][0].split() == [
        str(world.state_dir),
        str(world.control_socket.parent),
    ]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "UMask": "0077",
        "SystemCallArchitectures": "native",
        "SystemCallFilter": "@system-service bpf",
        "SystemCallErrorNumber": "EPERM",
        "MemoryDenyWriteExecute": "yes",
        "Restart": "on-failure",
    }.items():
        assert rec[f"Service.{key}"] == [value], key
    assert "Service.ProtectProc" not in rec  # it must read other users' /proc
    assert "witness-enforce.service" in rec["Unit.After"][0]


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (systemd)")
def test_systemd_accepts_the_units(world: World) -> None:
    assert SYSTEMD_ANALYZE is not None
    paths = [str(world.systemd_dir / name) for name in UNITS]
    verified = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout + verified.stderr == "", verified.stderr  # no unknown key, no warning
    security = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", paths[-1]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    level = re.search(
        r"Overall exposure level for witness\.service: ([\d.]+) (\w+)", security.stdout
    )
    assert level is not None, security.stdout + security.stderr
    assert level.group(2) in ("PERFECT", "SAFE", "OK"), level.group(0)


def test_the_public_key_comes_back_and_the_private_key_does_not(world: World) -> None:
    fetched = world.keys_dir / f"{HOST}.pub"
    assert fetched.read_bytes() == (world.state_dir / "signing.key.pub").read_bytes()
    secret = (world.state_dir / "signing.key").read_bytes()
    for path in world.keys_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret not in data and b"PRIVATE KEY" not in data, path
    assert [p.name for p in world.keys_dir.iterdir()] == [f"{HOST}.pub"]


def test_boot_is_closed_then_an_agent_is_recorded_under_its_identity(world: World) -> None:
    lab, bastion = world.lab, world.lab.topology.bastion
    agent = world.agents[0]
    enforce = unit(world.systemd_dir / "witness-enforce.service")["Service.ExecStart"]

    # Boot, as witness-enforce.service runs it: the saved table first, nft alone.
    loaded = subprocess.run(
        ["nsenter", world.netns, *shlex.split(enforce[0])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loaded.returncode == 0, loaded.stderr
    status = witness(world, "status", "--netns", bastion)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "present, matches the configuration" in status.stdout, status.stdout
    # Closed until the recorder is up: diverted to a port no one listens on.
    early = as_agent(world, agent, psql(world, "select 1"))
    assert early.returncode != 0 and "Connection refused" in early.stderr, early.stderr

    # Then witness up (--netns: the lab's namespace), and the agent root the warden places
    # agents below (up makes it itself when it runs on the host, not in a lab's namespace).
    for taken in (cgroups.default_root(), bpf.PIN_DIR):
        if taken.exists():
            raise LabError(f"{taken} exists: a Witness enforces on this host, or a lab was left")
    lab.record("agent_cgroups", {"root": str(cgroups.default_root()), "pins": str(bpf.PIN_DIR)})
    world.claimed_agent_root = True
    up = subprocess.run(
        [*shlex.split(enforce[1]), "--netns", bastion],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert up.returncode == 0, up.stdout + up.stderr
    cgroups.create_root()

    start(world, "warden", "witness-warden.service", world.warden_socket.is_socket)
    start(
        world,
        "recorder",
        "witness.service",
        lambda: READY in world.log("recorder").read_text(),
    )
    status = witness(world, "status", "--netns", bastion)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "present, matches the configuration" in status.stdout, status.stdout

    # The agent's token, in a file only it can read.
    token = world.root / "agent1.jwt"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        who = pwd.getpwnam(agent)
        os.fchown(fd, who.pw_uid, who.pw_gid)
        os.write(fd, world.idp.client_credentials("agent-ci").encode() + b"\n")
    finally:
        os.close(fd)
    probe = f"ansible-probe-{uuid.uuid4().hex[:12]}"
    ran = as_agent(
        world,
        agent,
        [
            world.witness, "run", "--socket", str(world.control_socket),
            "--token-file", str(token), "--", *psql(world, f"select '{probe}'"),
        ],
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr + world.log("recorder").read_text()[-3000:]
    assert ran.stdout.split() == [probe], ran.stdout
    assert "witness: running as agent-ci@example.test in /witness-agents/run-" in ran.stderr

    deadline = time.monotonic() + 10
    while True:
        listed = witness(world, "sessions", "list", "--identity", "agent-ci@example.test", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        if rows:
            break
        assert time.monotonic() < deadline, "no session under agent-ci@example.test"
        time.sleep(0.1)
    assert len(rows) == 1, rows
    assert rows[0]["identity"]["email"] == "agent-ci@example.test", rows[0]
    assert rows[0]["identity"]["issuer"] == world.idp.issuer, rows[0]
    shown = witness(world, "sessions", "show", rows[0]["id"], "--json")
    assert shown.returncode == 0 and probe in shown.stdout, shown.stdout + shown.stderr

    # SIGTERM, as systemd stops it: the recorder signs a last checkpoint.
    stop(world.procs["recorder"])
    assert world.procs["recorder"].returncode == 0, world.log("recorder").read_text()[-3000:]
    verified = witness(world, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # ... and a verifier off the host checks it with the key the play fetched.
    fetched = witness(world, "verify", "--public-key", str(world.keys_dir / f"{HOST}.pub"))
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr


def test_a_second_run_changes_nothing(world: World) -> None:
    recap, output = play(world.root)
    assert recap["changed"] == 0 and recap["failed"] == 0, output[-6000:]
    print("\n".join(line for line in output.splitlines() if line.startswith(HOST)))
    # Nor would it, says check mode.
    recap, output = play(world.root, "--check", "--diff")
    assert recap["changed"] == 0 and recap["failed"] == 0, output[-6000:]


def test_a_bad_configuration_is_refused_and_the_one_in_place_kept(world: World) -> None:
    before = world.config.read_bytes()
    bad = world.root / "bad.json"
    backend = {"name": "lab", "address": "10.77.0.2", "port": 70000}
    bad.write_text(json.dumps({"witness_backends": [backend]}))
    recap, output = play(world.root, "-e", f"@{bad}", succeed=False)
    assert recap["failed"] == 1, output[-6000:]
    assert "backend[0].port: expected an integer from 1 to 65535, got 70000" in output, output
    assert world.config.read_bytes() == before
