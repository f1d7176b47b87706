"""Identities end to end, with the real recorder, psql and a real OpenID Provider.

The recorder runs as this test's user with a plain listener, so every connection's owner is
this test's uid: `witness login` binds that uid, and what psql gets shows the binding.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from witnessproc import WITNESS

from appliance.lab.idp import IdP, identity_table, missing, running_idp
from appliance.lab.net import free_port, wait_port
from appliance.lab.postgres import PostgresServer

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


class Recorder:
    """``witness serve`` with an [identity] table, and the CLI pointed at its socket."""

    def __init__(
        self, pg: PostgresServer, idp: IdP, directory: Path, tables: str = "", **issuer: Any
    ) -> None:
        self.dir = directory
        self.port = free_port()
        self.denied_port = free_port()
        self.ending_port = free_port()
        self.socket = directory / "control.sock"
        self.config = directory / "witness.toml"
        self.config.write_text(
            f'[[backend]]\nname = "orders"\naddress = "127.0.0.1"\nport = {pg.port}\n\n'
            f'[[backend]]\nname = "payroll"\naddress = "127.0.0.1"\nport = {pg.port}\n'
            'allow_groups = ["dba"]\n\n'
            f'[[backend]]\nname = "ledger"\naddress = "127.0.0.1"\nport = {pg.port}\n'
            "end_sessions_at_expiry = true\n\n"
            f'[[listener]]\nlisten = "127.0.0.1:{self.port}"\nbackend = "orders"\n\n'
            f'[[listener]]\nlisten = "127.0.0.1:{self.denied_port}"\nbackend = "payroll"\n\n'
            f'[[listener]]\nlisten = "127.0.0.1:{self.ending_port}"\nbackend = "ledger"\n\n'
            '[trail]\npath = "trail.db"\n\n'
            + identity_table(idp.settings(timeout=2.0, **issuer), self.socket)
            + tables
        )
        self.log = directory / "witness.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [WITNESS, "--config", str(self.config), "serve"], stdout=log, stderr=log
            )
        wait_port(self.port, self.proc)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [WITNESS, "--config", str(self.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env={"WITNESS_SOCKET": str(self.socket), "PATH": "/usr/bin:/bin"},
        )

    def psql(
        self, port: int | None = None, sql: str = "select 'hello'"
    ) -> subprocess.CompletedProcess[str]:
        url = f"postgresql://postgres@127.0.0.1:{port or self.port}/postgres"
        return subprocess.run(
            ["psql", url, "-XAtc", sql], capture_output=True, text=True, timeout=30
        )

    def login_token(self, token: str) -> subprocess.CompletedProcess[str]:
        return self.cli("login", "--token-file", "-", stdin=token)

    def sessions(self, *args: str) -> list[dict[str, Any]]:
        done = self.cli("sessions", "list", "--json", *args)
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    with running_idp() as provider:
        yield provider


@pytest.fixture
def recorder(pg: PostgresServer, idp: IdP, tmp_path: Path) -> Iterator[Recorder]:
    if not idp.proc or idp.proc.poll() is not None:
        idp.start()
    running = Recorder(pg, idp, tmp_path)
    yield running
    running.stop()


def device_login(recorder: Recorder, idp: IdP, account: str) -> subprocess.CompletedProcess[str]:
    """`witness login` as a person would run it: read the code it prints, approve it."""
    proc = subprocess.Popen(
        [WITNESS, "--config", str(recorder.config), "login", "--socket", str(recorder.socket)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    shown = ""
    while "enter the code" not in shown:
        line = proc.stdout.readline()
        assert line, f"witness login printed no code: {shown} {proc.communicate()}"
        shown += line
    code = re.search(r"enter the code (\S+)", shown)
    assert code is not None, shown
    assert f"open {idp.issuer}" in shown
    idp.approve(code.group(1), account)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, shown + out, err)


def test_unbound_is_refused_then_a_device_login_binds_the_person(
    recorder: Recorder, idp: IdP
) -> None:
    refused = recorder.psql()
    assert refused.returncode != 0
    assert "no identity is bound" in refused.stderr and "witness login" in refused.stderr
    whoami = recorder.cli("whoami")
    assert whoami.returncode == 1 and "no identity is bound to you" in whoami.stdout

    done = device_login(recorder, idp, "alice")
    assert done.returncode == 0, done.stderr
    assert "identity: alice@example.test (Alice Example)" in done.stdout
    assert "groups dba, agents" in done.stdout

    whoami = recorder.cli("whoami", "--json")
    assert whoami.returncode == 0, whoami.stderr
    binding = json.loads(whoami.stdout)["binding"]
    assert binding["identity"]["email"] == "alice@example.test" and binding["kind"] == "uid"

    ok = recorder.psql(sql="select 'as alice'")
    assert ok.returncode == 0 and ok.stdout.strip() == "as alice", ok.stderr
    mine = recorder.sessions("--identity", "ALICE@example.test")
    assert len(mine) == 1 and mine[0]["identity"]["groups"] == ["dba", "agents"]
    assert recorder.sessions("--group", "dba") == mine
    assert recorder.sessions("--identity", "bob@example.test") == []
    refusals = [s for s in recorder.sessions() if s["refused"]]
    assert len(refusals) == 1 and refusals[0]["refused"]["code"] == "28000"
    assert refusals[0]["identity"] is None and refusals[0]["backend"]["name"] == "orders"

    shown = recorder.cli("sessions", "show", mine[0]["id"], "--json")
    commands = json.loads(shown.stdout)["commands"]
    assert [c["text"] for c in commands] == ["select 'as alice'"]
    assert commands[0]["identity"]["subject"] == binding["identity"]["subject"]

    out = recorder.cli("logout")
    assert out.returncode == 0 and "removed: alice@example.test" in out.stdout
    again = recorder.psql()
    assert again.returncode != 0 and "no identity is bound" in again.stderr


def test_a_machine_token_binds_and_policy_admits_by_group(recorder: Recorder, idp: IdP) -> None:
    done = recorder.login_token(idp.client_credentials("agent-ci"))
    assert done.returncode == 0, done.stderr
    assert recorder.psql().returncode == 0
    denied = recorder.psql(recorder.denied_port)
    assert denied.returncode != 0
    assert "may not connect to backend payroll" in denied.stderr
    # The ES256 token of the same client binds the same way.
    es = recorder.login_token(idp.client_credentials("agent-ci", resource="urn:witness:es"))
    assert es.returncode == 0, es.stderr
    sessions = recorder.sessions()
    assert [s["refused"]["code"] if s["refused"] else None for s in sessions] == [None, "42501"]


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (lambda idp: idp.client_credentials("agent-ci", resource="urn:other"), "audience"),
        (lambda idp: jwt.encode(idp.claims(), None, algorithm="none"), "'none' is not allowed"),
        (lambda idp: idp.client_credentials("agent-ci")[:-6] + "AAAAAA", "signature"),
        (lambda idp: "not a token", "token rejected"),
    ],
)
def test_a_bad_token_is_refused_and_binds_nothing(
    recorder: Recorder, idp: IdP, token: Any, message: str
) -> None:
    done = recorder.login_token(token(idp))
    assert done.returncode == 1
    assert "token rejected" in done.stderr and message in done.stderr
    assert recorder.cli("whoami").returncode == 1
    assert recorder.psql().returncode != 0


def test_an_issuer_with_a_client_list_binds_only_those_clients(
    pg: PostgresServer, idp: IdP, tmp_path: Path
) -> None:
    recorder = Recorder(pg, idp, tmp_path, allow_clients=("witness-cli", "agent-ci"))
    try:
        for run in (False, True):
            args = (
                ("run", "--token-file", "-", "--", "true")
                if run
                else ("login", "--token-file", "-")
            )
            done = recorder.cli(*args, stdin=idp.client_credentials("agent-two"))
            assert done.returncode == 1
            assert done.stderr == (
                "witness: token rejected: it was issued to client 'agent-two', and issuer "
                "test-idp accepts tokens only from the clients in its allow_clients\n"
            )
        assert recorder.cli("whoami").returncode == 1
        assert recorder.psql().returncode != 0

        done = recorder.login_token(idp.client_credentials("agent-ci"))
        assert done.returncode == 0, done.stderr
        ok = recorder.psql(sql="select 'as agent-ci'")
        assert ok.returncode == 0 and ok.stdout.strip() == "as agent-ci", ok.stderr
        done = device_login(recorder, idp, "alice")  # witness-cli, the sign-in client
        assert done.returncode == 0, done.stderr
    finally:
        recorder.stop()
    binds = [
        json.loads(p)
        for (p,) in sqlite3.connect(tmp_path / "trail.db").execute(
            "select payload from events where type='binding'"
        )
    ]
    assert [b["identity"]["subject"] for b in binds] == ["agent-ci", "alice"]


def test_a_binding_expires_with_its_token(recorder: Recorder, idp: IdP) -> None:
    done = recorder.login_token(idp.client_credentials("agent-short"))
    assert done.returncode == 0, done.stderr
    assert recorder.psql().returncode == 0
    time.sleep(3)
    refused = recorder.psql()
    assert refused.returncode != 0
    assert "expired at" in refused.stderr and "witness login" in refused.stderr
    whoami = recorder.cli("whoami")
    assert whoami.returncode == 1 and "EXPIRED" in whoami.stdout


def test_a_backend_can_end_live_sessions_when_their_identity_expires(
    recorder: Recorder, idp: IdP
) -> None:
    done = recorder.login_token(idp.client_credentials("agent-short"))
    assert done.returncode == 0, done.stderr
    started = time.monotonic()
    # The orders backend keeps its session past expiry; ledger ends its own.
    kept = subprocess.Popen(
        ["psql", f"postgresql://postgres@127.0.0.1:{recorder.port}/postgres", "-XAtc",
         "select pg_sleep(4), 'kept'"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    ended = recorder.psql(recorder.ending_port, "select pg_sleep(8), 'ended'")
    assert ended.returncode != 0
    assert "expired" in ended.stderr and "ends its sessions at expiry" in ended.stderr
    assert time.monotonic() - started < 7
    out, err = kept.communicate(timeout=30)
    assert kept.returncode == 0 and out.strip().endswith("kept"), err
    ledger = recorder.sessions("--backend", "ledger")
    assert len(ledger) == 1 and "expired" in ledger[0]["end_reason"]


HOLD_DELETES = """
[policy]
default = "allow"

[[policy.rules]]
name = "hold-deletes"
action = "hold"
kinds = ["delete"]

[approvals]
groups = ["dba"]
timeout_seconds = 60
"""


def test_a_held_statement_is_denied_when_its_identity_expires(
    pg: PostgresServer, idp: IdP, tmp_path: Path
) -> None:
    """The hold outlives the token: the sweep denies it at expiry, long before the
    timeout, and the statement never reaches the backend."""
    if not idp.proc or idp.proc.poll() is not None:
        idp.start()
    recorder = Recorder(pg, idp, tmp_path, tables=HOLD_DELETES)
    try:
        done = recorder.login_token(idp.client_credentials("agent-short"))
        assert done.returncode == 0, done.stderr
        started = time.monotonic()
        held = recorder.psql(sql="delete from pg_class where false")
        waited = time.monotonic() - started
    finally:
        recorder.stop()
    assert held.returncode != 0
    assert "held for approval" in held.stderr and "denied" in held.stderr, held.stderr
    assert "expired" in held.stderr
    assert waited < 30  # the timeout is 60 s: it was the expiry that ended the hold
    db = sqlite3.connect(tmp_path / "trail.db")
    steps = [
        json.loads(p)
        for (p,) in db.execute("select payload from events where type='approval' order by seq")
    ]
    assert steps[0]["step"] == "requested"
    assert steps[-1]["step"] == "denied" and "expired" in steps[-1]["why"]
    (result,) = [
        json.loads(p) for (p,) in db.execute("select payload from events where type='result'")
    ]
    assert result["status"] == "blocked"  # answered by Witness: it never ran


def test_with_the_idp_down_known_keys_still_serve_and_sign_in_fails_clearly(
    recorder: Recorder, idp: IdP
) -> None:
    first = recorder.login_token(idp.client_credentials("agent-ci"))
    assert first.returncode == 0, first.stderr
    later = idp.client_credentials("agent-two")
    idp.stop()
    try:
        done = recorder.login_token(later)
        assert done.returncode == 0, done.stderr
        assert "agent-two" in done.stdout
        started = time.monotonic()
        signin = recorder.cli("login")
        assert signin.returncode == 1
        assert "unreachable" in signin.stderr, signin.stderr
        assert time.monotonic() - started < 10
    finally:
        idp.start()


def test_witness_run_without_a_warden_says_so(recorder: Recorder, idp: IdP) -> None:
    token = idp.client_credentials("agent-ci")
    done = recorder.cli("run", "--token-file", "-", "--", "true", stdin=token)
    assert done.returncode == 1
    assert "warden is not running" in done.stderr


def test_the_trail_records_every_binding_and_verifies(recorder: Recorder, idp: IdP) -> None:
    recorder.login_token(idp.client_credentials("agent-ci"))
    recorder.cli("logout")
    recorder.stop()
    verify = recorder.cli("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    db = sqlite3.connect(recorder.dir / "trail.db")
    rows = [json.loads(p) for (p,) in db.execute("select payload from events where type='binding'")]
    assert [r["action"] for r in rows] == ["bind", "unbind"]
    assert rows[0]["identity"]["subject"] == rows[1]["identity"]["subject"]
    assert rows[0]["by"]["pid"] > 0 and rows[0]["kind"] == "uid"
