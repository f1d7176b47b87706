"""``witness demo``, the README's main job: the lab comes up enforcing, an unprivileged agent's
session is recorded under its OIDC identity, the ways around Witness fail, the trail verifies,
the lab stays up for trying by hand, and ``--down`` removes all of it.

The demo runs here under a suffix, directory and state directory of its own, so it never meets
a demo someone left running on this host. The CLI's own checks (root, option clashes) are
driven through ``witness demo`` itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from labmarks import lab_marks

from appliance.enforce import cgroups
from appliance.lab import demo, netns
from appliance.lab.enforced import WITNESS
from appliance.lab.idp import missing
from appliance.lab.postgres import LabError

pytestmark = [
    *lab_marks("netns, nftables, cgroups, users", "nft", "setpriv", timeout=240),
    pytest.mark.skipif(missing() is not None, reason=str(missing())),
]


class Run:
    def __init__(self, tmp: Path) -> None:
        self.suffix = f"d{uuid.uuid4().hex[:8]}"
        self.directory = tmp / "demo"
        self.state_dir = tmp / "state"
        self.lines: list[str] = []
        self.made: demo.Demo | None = None

    @property
    def out(self) -> str:
        return "\n".join(self.lines)

    def up(self) -> demo.Demo:
        self.made = demo.up(self.lines.append, self.directory, self.state_dir, self.suffix)
        return self.made

    def down(self) -> bool:
        return demo.down(self.lines.append, self.directory, self.state_dir, self.suffix)


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    if cgroups.default_root().exists():
        pytest.skip(
            f"{cgroups.default_root()} exists: a Witness or a lab holds this host's cgroups"
        )
    # Like /var/lib, where the demo lives: its service user and agent must reach the directory.
    tmp = Path(tempfile.mkdtemp(prefix="witness-demo-test-"))
    tmp.chmod(0o755)
    started = Run(tmp)
    try:
        started.up()
        yield started
    finally:
        started.down()
        shutil.rmtree(tmp, ignore_errors=True)


def _trail(run: Run, *argv: str) -> list[dict[str, object]]:
    assert run.made is not None
    done = subprocess.run(
        [WITNESS, *argv, "--json", "--trail", run.made.trail],
        capture_output=True,
        text=True,
        check=True,
    )
    found: list[dict[str, object]] = json.loads(done.stdout)
    return found


def test_the_agents_session_is_recorded_under_its_identity(run: Run) -> None:
    assert run.made is not None
    sessions = _trail(run, "sessions", "list", "--identity", "agent-ci@example.test")
    assert len(sessions) == 1, sessions
    shown = subprocess.run(
        [WITNESS, "sessions", "show", str(sessions[0]["id"]), "--json", "--trail", run.made.trail],
        capture_output=True,
        text=True,
        check=True,
    )
    session = json.loads(shown.stdout)
    texts = [c["text"] for c in session["commands"]]
    assert texts == [line for line in demo.AGENT_SQL.splitlines() if line], texts
    info = session["session"]
    assert info["identity"]["subject"] == "agent-ci"
    assert all(c["identity"]["subject"] == "agent-ci" for c in session["commands"])
    assert info["owner"]["uid"] != 0
    assert "/witness-agents/run-" in info["owner"]["cgroup"]
    # The demo's policy blocked the DELETE without a WHERE; the script went on.
    [delete] = [c for c in session["commands"] if c["text"] == "delete from orders;"]
    assert delete["decision"]["rule"] == "no-wipe", delete
    assert "ERROR:  witness: blocked by rule 'no-wipe'" in run.out


def test_the_ways_around_fail_and_the_direct_one_is_recorded_as_refused(run: Run) -> None:
    assert "FATAL:  witness: no identity is bound" in run.out
    assert "port 5433 failed: Connection refused" in run.out
    refused = [s for s in _trail(run, "sessions", "list") if s.get("refused")]
    assert len(refused) == 1, refused
    assert refused[0]["refused"]["code"] == "28000"


def test_it_shows_the_trail_and_verifies_it_signed(run: Run) -> None:
    for shown in ("$ witness sessions list", "$ witness sessions show", "$ witness verify"):
        assert shown in run.out
    assert "all covered by a signed checkpoint" in run.out, run.out


def test_it_stays_up_and_a_second_demo_is_refused(run: Run) -> None:
    assert run.made is not None
    assert f"{netns.Topology.named(run.suffix).bastion}" in netns.namespaces()
    assert "demo --shell" in run.out and "demo --down" in run.out
    with pytest.raises(LabError, match="up already"):
        run.up()


def test_the_shell_is_the_agent_in_the_bastion_with_a_working_token(run: Run) -> None:
    backend = demo.Demo.load(run.directory).backend
    script = (
        "id -un\n"
        "witness run --token-file ~/token -- "
        f"psql -X -At -h {backend} -U postgres -c 'select 6 * 7'\n"
        "exit\n"
    )
    done = subprocess.run(
        [
            *_python(),
            "-c",
            f"from pathlib import Path; from appliance.lab import demo; "
            f"demo.shell(Path({str(run.directory)!r}))",
        ],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.made is not None
    assert run.made.agent in done.stdout and "\n42\n" in done.stdout, done.stdout + done.stderr


def _python() -> list[str]:
    return [str(Path(WITNESS).parent / "python")]


def test_down_removes_everything_and_can_be_repeated(tmp_path: Path) -> None:
    other = Run(tmp_path)
    other.directory.mkdir()
    (other.directory / "demo.json").write_text("{}")
    assert other.down() is True  # a half-made demo's directory goes
    assert not other.directory.exists()
    assert other.down() is False


def test_the_cli_wants_root_and_one_action() -> None:
    both = subprocess.run(
        [WITNESS, "demo", "--shell", "--down"], capture_output=True, text=True, check=False
    )
    assert both.returncode == 2 and "not both" in both.stderr
    if os.geteuid() == 0:
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        done = subprocess.run(
            [*as_nobody, WITNESS, "demo"], capture_output=True, text=True, check=False
        )
        assert done.returncode == 1 and "needs root" in done.stderr, done.stderr
