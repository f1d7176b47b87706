"""The live demo: Witness enforcing in the namespace lab, an agent under an OIDC identity.

``up`` (as root) builds lab ``witness-lab-demo`` with a real PostgreSQL in its backends
namespace, starts the lab's OpenID Provider on the bastion's loopback, applies ``witness up``
there (eBPF too when it can be loaded here), and runs the warden and the recorder, the latter
as the demo's service user with the embedded SQLite trail. Then the demo's agent user,
unprivileged, runs a psql script through ``witness run`` under a machine identity
(``agent-ci@example.test``), and tries two ways around Witness that fail. It prints what the
trail holds, and leaves everything running for trying it by hand (:func:`shell`) until
:func:`down` removes it.

Everything is the enforced lab's (:mod:`appliance.lab.enforced`), so the demo's users, cgroups,
pins and directory are recorded in the lab's state file before they are made, and ``down``
removes them after a crash too. The recorder, the warden and the provider run in sessions of
their own, so they outlive the ``witness demo`` that started them.

The service user and the agent run Witness's own command, so it must be reachable by users
other than root. A checkout under ``/root`` (mode 0700) is not: then the demo installs Witness
once into a virtualenv of its own in the demo's directory, the way a bastion has it installed.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from appliance.enforce import bpf
from appliance.lab import idp, netns
from appliance.lab.enforced import WITNESS, EnforcedLab, give
from appliance.lab.postgres import LabError, postgres_bindir

SUFFIX = "demo"
DIRECTORY = Path("/var/lib/witness-demo")
AGENT_CLIENT = "agent-ci"
TOKEN_TTL = 8 * 3600  # the demo's tokens last a working day
CHECKPOINT_SECONDS = 1.0  # so that verify, right after the session, finds it all signed
NOBODY = 65534

# The agent's session: a few statements through one connection, one of them failing and one
# blocked by the demo's policy.
AGENT_SQL = """\
create table orders (id int primary key, customer text, total numeric);
insert into orders values (1, 'ada', 12.50), (2, 'grace', 99.00), (3, 'linus', 7.25);
select customer, total from orders where total > 10 order by id;
update orders set total = total * 1.1 where id = 2;
select * from invoices;
delete from orders;
select count(*) from orders;
"""
POLICY = """\
[policy]
default = "allow"

[[policy.rules]]
name = "no-wipe"
action = "block"
kinds = ["update", "delete"]
no_where = true
message = "UPDATE and DELETE need a WHERE"
"""

Say = Callable[[str], None]


@dataclass(frozen=True)
class Demo:
    """What ``up`` made that ``shell`` and the instructions need; kept in ``demo.json``."""

    directory: Path
    witness: str
    bastion: str
    agent: str
    issuer: str
    control_socket: str
    trail: str
    backend: str

    @property
    def home(self) -> Path:
        """The agent's home in the demo: its token, its shell history."""
        return self.directory / "agent"

    def save(self) -> None:
        data = {k: str(v) for k, v in self.__dict__.items()}
        (self.directory / "demo.json").write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Demo:
        try:
            data = json.loads((directory / "demo.json").read_text())
        except FileNotFoundError:
            raise LabError("the demo is not up: run witness demo first") from None
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read {directory / 'demo.json'}: {exc}") from None
        return cls(**{**data, "directory": Path(data["directory"])})


def up(
    say: Say,
    directory: Path = DIRECTORY,
    state_dir: Path = netns.DEFAULT_STATE_DIR,
    suffix: str = SUFFIX,
) -> Demo:
    """Build the demo, run the agent's session through it, print the trail; leave it up.

    ``directory``, ``state_dir`` and ``suffix`` let a test run a demo beside the real one."""
    lab_state = netns.Lab(suffix, state_dir)
    if lab_state.state() is not None or (directory / "demo.json").exists():
        raise LabError(
            "the demo is up already: 'witness demo --shell' to try it, "
            "'witness demo --down' to remove it"
        )
    why = idp.missing()
    if why is not None:
        raise LabError(f"the demo's identity provider cannot run: {why}")
    probe = bpf.probe()
    say(
        "Attribution: eBPF (programs on the agent cgroups)"
        if probe.available
        else f"Attribution: sock_diag, since eBPF cannot be loaded here ({probe.why})"
    )
    if directory.exists():
        shutil.rmtree(directory)  # a demo that was taken down by hand, half-way
    directory.mkdir(parents=True, mode=0o755)
    provider = idp.IdP(directory=directory / "idp", detach=True, token_ttl=TOKEN_TTL)

    def identity(built: EnforcedLab) -> str:
        provider.netns = built.bastion
        say(f"Starting the OpenID Provider in {built.bastion} ...")
        provider.start()
        say(f"  issuer {provider.issuer}")
        return idp.identity_table(
            provider.settings(), built.control_socket, warden_socket=built.warden_socket
        )

    lab = EnforcedLab(
        suffix,
        state_dir,
        agents=1,
        ebpf=probe.available,
        identity=identity,
        policy=POLICY,
        warden=True,
        directory=directory,
        witness=_reachable_witness(directory, say),
        detach=True,
        checkpoint_seconds=CHECKPOINT_SECONDS,
    )
    say(f"Building lab {lab.topology.name}: namespaces, PostgreSQL, users, witness up ...")
    lab.start()  # removes everything it made if it fails
    try:
        demo = Demo(
            directory=directory,
            witness=lab.witness,
            bastion=lab.bastion,
            agent=lab.agent_user(1),
            issuer=provider.issuer,
            control_socket=str(lab.control_socket),
            trail=str(lab.trail),
            backend=str(lab.topology.backend_ipv4),
        )
        _give_token(demo)
        demo.save()
        _agent_session(lab, demo, say)
    except BaseException:
        lab.close()
        raise
    _show(demo, say)
    return demo


def _reachable_witness(directory: Path, say: Say) -> str:
    """A ``witness`` command users other than root can run: this one, or a copy installed once."""
    probe = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if (
        subprocess.run([*probe, WITNESS, "--version"], capture_output=True, check=False).returncode
        == 0
    ):
        return WITNESS
    source = Path(__file__).resolve().parents[2]
    if not (source / "pyproject.toml").is_file():  # installed, not a checkout
        raise LabError(
            f"{WITNESS} cannot be run by users other than root, as the demo's service and"
            " agent users must: install Witness where every user can read it (a venv under"
            " /opt, say)"
        )
    venv = directory / "venv"
    say(f"{source} is not readable by other users: installing Witness into {venv} ...")
    env = {**os.environ, "WITNESS_COMPILE": "0"}
    for argv in (
        ["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", "--ignore-installed", str(source)],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise LabError(f"installing Witness for the demo failed: {done.stderr[-2000:]}")
    return str(venv / "bin" / "witness")


def _give_token(demo: Demo) -> Path:
    """A fresh token of the demo's agent client, in the agent's home (0600, the agent's)."""
    secret = idp.stored_secret(demo.directory / "idp", AGENT_CLIENT)
    token = idp.client_token(demo.issuer, AGENT_CLIENT, secret, demo.bastion)
    who = pwd.getpwnam(demo.agent)
    demo.home.mkdir(mode=0o700, exist_ok=True)
    os.chown(demo.home, who.pw_uid, who.pw_gid)
    path = demo.home / "token"
    path.unlink(missing_ok=True)
    return give(path, demo.agent, token, 0o600)


def _psql(demo: Demo, *args: str, port: int = 5432) -> list[str]:
    conninfo = f"host={demo.backend} port={port} user=postgres dbname=postgres connect_timeout=5"
    return [str(postgres_bindir() / "psql"), "-X", *args, conninfo]


def _agent_session(lab: EnforcedLab, demo: Demo, say: Say) -> None:
    token = str(demo.home / "token")
    run = [demo.witness, "run", "--socket", demo.control_socket, "--token-file", token, "--"]
    say(
        f"\nThe agent ({demo.agent}, unprivileged) runs a script through psql, under the "
        f"identity of its token:\n  $ witness run --token-file ~/token -- psql -h {demo.backend}"
        " -e -f script.sql\n"
    )
    _as_agent(lab, say, [*run, *_psql(demo, "-e", "-f", "-")], AGENT_SQL)
    say("\nThe agent tries to get around Witness. Straight to the database, without witness run:")
    _as_agent(lab, say, _psql(demo, "-c", "select count(*) from orders"))
    say("Another port on the backend, which Witness does not relay:")
    _as_agent(lab, say, _psql(demo, "-c", "select 1", port=5433))


def _as_agent(lab: EnforcedLab, say: Say, argv: list[str], stdin: str | None = None) -> None:
    """``argv`` as the agent user in the bastion (no agent cgroup of its own: ``witness run``
    gives it one), its output and errors as a terminal would show them."""
    try:
        code, out, _, _ = lab.run_agent(
            1, argv, in_cgroup=False, stdin=stdin, timeout=60, interleave=True
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"the agent's {Path(argv[0]).name} did not finish within 60 s") from None
    for line in out.splitlines():
        say(f"    {line}")
    if code != 0:
        say(f"    (exit status {code})")


def _witness(demo: Demo, say: Say, argv: list[str]) -> str:
    say(f"\n$ witness {' '.join(argv)}")
    done = subprocess.run([demo.witness, *argv], capture_output=True, text=True, check=False)
    say((done.stdout + done.stderr).rstrip())
    return done.stdout


def _show(demo: Demo, say: Say) -> None:
    trail = ["--trail", demo.trail]
    listed = subprocess.run(
        [demo.witness, "sessions", "list", "--json", "--identity", "agent-ci@example.test", *trail],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        agent_session = str(json.loads(listed.stdout)[0]["id"])
    except (ValueError, IndexError, KeyError):
        raise LabError(f"the agent's session is not in the trail: {listed.stderr}") from None
    _witness(demo, say, ["sessions", "list", *trail])
    _witness(demo, say, ["sessions", "show", agent_session, *trail])
    time.sleep(2 * CHECKPOINT_SECONDS)  # the recorder signs what the session wrote
    _witness(demo, say, ["verify", *trail])
    say(instructions(demo))


def instructions(demo: Demo) -> str:
    """How to go on by hand, with root's ``witness`` as it is found from here."""
    witness = "witness" if shutil.which("witness") == WITNESS else WITNESS
    return (
        "\nThe demo stays up. To try it by hand, as root:\n"
        f"  {witness} demo --shell     a shell as the agent in the bastion, with a fresh token\n"
        f"    $ witness run --token-file ~/token -- psql -h {demo.backend} -U postgres\n"
        f"    $ psql -h {demo.backend} -U postgres       (refused: no identity)\n"
        "  In another terminal, watch the trail:\n"
        f"    {witness} tail -f --trail {demo.trail}\n"
        f"    {witness} sessions list --trail {demo.trail}\n"
        f"    {witness} search orders --trail {demo.trail}\n"
        f"  {witness} demo --down      remove everything the demo made"
    )


def shell(directory: Path = DIRECTORY) -> NoReturn:
    """Replace this process with a shell as the demo's agent inside the bastion."""
    demo = Demo.load(directory)
    _give_token(demo)
    who = pwd.getpwnam(demo.agent)
    bindirs = [str(Path(demo.witness).parent), str(postgres_bindir()), "/usr/bin", "/bin"]
    argv = [
        "nsenter", f"--net=/run/netns/{demo.bastion}",
        "setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--clear-groups", "--",
        "env", "-i", f"HOME={demo.home}", f"PATH={':'.join(bindirs)}", "TERM=" + _term(),
        f"WITNESS_SOCKET={demo.control_socket}", f"PS1={demo.agent}@bastion:\\w$ ",
        "bash", "--norc", "-i",
    ]  # fmt: skip
    print(
        f"A shell as {demo.agent} in {demo.bastion}; your token is ~/token.\n"
        f"  witness run --token-file ~/token -- psql -h {demo.backend} -U postgres\n"
        "Exit the shell to leave.",
        file=sys.stderr,
    )
    os.chdir(demo.home)
    os.execvp(argv[0], argv)  # noqa: S606 - a fixed argv, no shell


def _term() -> str:
    return os.environ.get("TERM", "dumb")


def down(
    say: Say,
    directory: Path = DIRECTORY,
    state_dir: Path = netns.DEFAULT_STATE_DIR,
    suffix: str = SUFFIX,
) -> bool:
    """Remove everything the demo made; False when there was nothing."""
    lab = netns.Lab(suffix, state_dir, say)
    removed = lab.down()
    if directory.exists():
        shutil.rmtree(directory)
        removed = True
    return removed
