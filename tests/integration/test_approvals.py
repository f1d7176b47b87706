"""Holds, end to end: a real PostgreSQL, the real recorder with a hold rule, real clients
(psql, psycopg, asyncpg) waiting on a held statement, and approvers acting through the real
`witness approvals` as other Unix users bound to their own identities.

The agent is this test's user (root: CI runs as root; the approvers need other uids), bound
statically to agent@example.test; bob and carol (the dba group) and eve (not) are the
approvers' users. PostgreSQL's statement log is the referee of what reached the backend.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import pgwire
import psycopg
import pytest
from pglog import size, statements
from witnessproc import WITNESS, Witness, events

from appliance.lab.postgres import PostgresServer

ISSUER = "https://idp.example.test"
# Users that exist on Debian, standing for three people: their uids are bound to them.
PEOPLE = {"nobody": "bob", "daemon": "carol", "bin": "eve"}

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="approvers act as other Unix users: needs root and setpriv",
)


def _identity(socket: Path) -> str:
    me = pwd.getpwuid(os.geteuid()).pw_name
    lines = [f'unbound = "refuse"\ncontrol_socket = "{socket}"\n']
    bound = [(me, "agent", ["agents"]), *((u, p, ["dba"]) for u, p in PEOPLE.items())]
    for user, person, groups in bound:
        held = ["agents"] if person == "eve" else groups
        lines.append(
            f'[[identity.binding]]\nuser = "{user}"\nissuer = "{ISSUER}"\n'
            f'subject = "{person}"\nemail = "{person}@example.test"\n'
            f"groups = {json.dumps(held)}\n"
        )
    return "\n".join(lines)


def _tables(timeout: float, webhook: int, required: int = 1, max_pending: int = 60) -> str:
    return (
        '[policy]\ndefault = "allow"\n\n'
        '[[policy.rules]]\nname = "hold-deletes"\naction = "hold"\nkinds = ["delete", "truncate"]\n'
        'message = "deleting rows needs a DBA"\n\n'
        f'[approvals]\ngroups = ["dba"]\nrequired = {required}\ntimeout_seconds = {timeout}\n'
        f'max_window_minutes = 10\nwebhook = "http://127.0.0.1:{webhook}/hook"\n'
        f"webhook_attempts = 3\nmax_pending = {max_pending}\n"
    )


class Hook(BaseHTTPRequestHandler):
    """The webhook's receiver: keeps what is posted."""

    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.received.append(json.loads(self.rfile.read(length)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


class Lab:
    def __init__(
        self,
        pg: PostgresServer,
        tmp: Path,
        timeout: float = 60.0,
        required: int = 1,
        max_pending: int = 60,
    ):
        self.pg = pg
        self.dir = Path(tempfile.mkdtemp(prefix="witness-approvals-"))
        os.chmod(self.dir, 0o755)  # the approvers' users reach the control socket here
        self.socket = self.dir / "control.sock"
        self.hook = HTTPServer(("127.0.0.1", 0), Hook)
        self.hook.received = []  # type: ignore[attr-defined]
        threading.Thread(target=self.hook.serve_forever, daemon=True).start()
        self.timeout, self.required, self.max_pending = timeout, required, max_pending
        self.trail = tmp / "trail.db"
        self.start()

    def start(self) -> None:
        self.witness = Witness(
            self.pg.port,
            self.trail,
            tables=_tables(self.timeout, self.hook.server_port, self.required, self.max_pending),
            identity=_identity(self.socket),
        )
        self.config = self.trail.with_suffix(".toml")

    @property
    def received(self) -> list[dict[str, Any]]:
        return self.hook.received  # type: ignore[attr-defined, no-any-return]

    def cli(self, user: str | None, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [WITNESS, "approvals", *args, "--socket", str(self.socket)]
        if user is not None:
            gid = pwd.getpwnam(user).pw_gid
            argv = ["setpriv", f"--reuid={user}", f"--regid={gid}", "--clear-groups", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)

    def watch(self, user: str) -> subprocess.Popen[str]:
        """``witness approvals list --watch --json`` as ``user``, left running."""
        gid = pwd.getpwnam(user).pw_gid
        return subprocess.Popen(
            ["setpriv", f"--reuid={user}", f"--regid={gid}", "--clear-groups", WITNESS,
             "approvals", "list", "--watch", "--json", "--socket", str(self.socket)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def pending(self, count: int = 1, wait: float = 20.0) -> list[dict[str, Any]]:
        """The pending holds, once there are ``count`` of them."""
        deadline = time.monotonic() + wait
        while True:
            done = self.cli(None, "list", "--json")
            assert done.returncode == 0, done.stderr
            holds: list[dict[str, Any]] = json.loads(done.stdout)
            if len(holds) >= count or time.monotonic() > deadline:
                return holds
            time.sleep(0.1)

    def steps(self, hold_id: str) -> list[str]:
        return [
            e["step"] for e in events(self.trail) if e["type"] == "approval" and e["id"] == hold_id
        ]

    def close(self) -> None:
        self.witness.stop()
        self.hook.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def lab(pg: PostgresServer, tmp_path: Path) -> Iterator[Lab]:
    pg.psql(
        "DROP TABLE IF EXISTS held; CREATE TABLE held (id int);"
        " INSERT INTO held VALUES (1), (2), (3)"
    )
    running = Lab(pg, tmp_path)
    yield running
    running.close()


def _ran(pg: PostgresServer, offset: int, needle: str) -> bool:
    return any(needle in text for _, text in statements(pg.log_path, offset))


def test_psql_waits_on_a_hold_and_runs_once_another_identity_approves(
    lab: Lab, pg: PostgresServer
) -> None:
    offset = size(pg.log_path)
    psql = subprocess.Popen(
        [
            "psql",
            lab.witness.url(),
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "DELETE FROM held WHERE id = 1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    (hold,) = lab.pending()
    assert hold["identity"]["email"] == "agent@example.test"
    assert hold["rule"] == "hold-deletes" and "DELETE FROM held" in hold["text"]
    time.sleep(0.5)
    assert psql.poll() is None, "psql must still be waiting"
    assert not _ran(pg, offset, "DELETE FROM held"), "nothing reaches the backend while held"

    # The sender may not decide its own hold, nor may someone outside the approvers.
    mine = lab.cli(None, "approve", hold["id"])
    assert mine.returncode != 0 and "may not decide its own hold" in mine.stderr
    eve = lab.cli("bin", "approve", hold["id"])
    assert eve.returncode != 0 and "may not decide holds" in eve.stderr
    assert "eve@example.test" in eve.stderr

    bob = lab.cli("nobody", "approve", hold["id"], "--reason", "ticket 42")
    assert bob.returncode == 0, bob.stderr
    assert "approved" in bob.stdout
    out, err = psql.communicate(timeout=30)
    assert psql.returncode == 0, err
    assert "DELETE 1" in out
    assert f"held for approval {hold['id']}" in err  # the NOTICE, at once
    assert _ran(pg, offset, "DELETE FROM held WHERE id = 1")
    assert lab.steps(hold["id"]) == ["requested", "notified", "approved"]
    approved = next(e for e in events(lab.trail) if e.get("step") == "approved")
    assert approved["by"]["email"] == "bob@example.test" and approved["reason"] == "ticket 42"
    command = [e for e in events(lab.trail) if e["type"] == "command"][-1]
    assert command["decision"]["action"] == "hold"
    assert command["decision"]["approval"] == hold["id"]
    # The webhook got it, Slack-shaped.
    (posted,) = lab.received
    assert hold["id"] in posted["text"] and posted["witness"]["statement"] == hold["text"]
    assert posted["witness"]["identity"]["email"] == "agent@example.test"
    # sessions show puts the hold inline.
    shown = subprocess.run(
        [WITNESS, "sessions", "show", command["session"], "--trail", str(lab.trail)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "250"},
    ).stdout
    assert f"held for approval {hold['id']}: approved (approved by bob@example.test)" in shown
    detail = json.loads(
        subprocess.run(
            [WITNESS, "sessions", "show", command["session"], "--trail", str(lab.trail), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    steps = detail["commands"][-1]["approval"]
    assert [s["step"] for s in steps] == ["requested", "notified", "approved"]
    assert steps[-1]["waited_ms"] >= 500


def test_psycopg_gets_the_error_when_denied_and_the_session_goes_on(
    lab: Lab, pg: PostgresServer
) -> None:
    offset = size(pg.log_path)
    with psycopg.connect(lab.witness.url(), autocommit=True) as conn:
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                conn.execute("DELETE FROM held WHERE id = %s", (2,))
            except psycopg.Error as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        (hold,) = lab.pending()
        carol = lab.cli("daemon", "deny", hold["id"], "--reason", "not today")
        assert carol.returncode == 0, carol.stderr
        worker.join(30)
        error = outcome["error"]
        assert isinstance(error, psycopg.errors.InsufficientPrivilege)
        assert "denied by carol@example.test: not today" in str(error)
        assert conn.execute("SELECT count(*) FROM held").fetchone() == (3,)
    assert not _ran(pg, offset, "DELETE FROM held")
    assert lab.steps(hold["id"]) == ["requested", "notified", "denied"]


def test_asyncpg_waits_then_runs_and_a_window_lets_the_same_shape_through(
    lab: Lab, pg: PostgresServer
) -> None:
    async def agent() -> list[str]:
        conn = await asyncpg.connect(lab.witness.url())
        try:
            first = asyncio.ensure_future(conn.execute("DELETE FROM held WHERE id = $1", 3))
            holds = await asyncio.to_thread(lab.pending)
            bob = await asyncio.to_thread(
                lab.cli, "nobody", "approve", holds[0]["id"], "--window", "5"
            )
            assert bob.returncode == 0, bob.stderr
            done = [await asyncio.wait_for(first, 30)]
            # The same shape from the same identity, within the window: no new hold.
            done.append(
                await asyncio.wait_for(conn.execute("DELETE FROM held WHERE id = $1", 2), 10)
            )
            return done
        finally:
            await conn.close()

    assert asyncio.run(agent()) == ["DELETE 1", "DELETE 1"]
    decisions = [
        e["decision"] for e in events(lab.trail) if e["type"] == "command" and "DELETE" in e["text"]
    ]
    assert decisions[0]["action"] == "hold"
    assert decisions[1]["action"] == "allow" and "window" in decisions[1]["reason"]


def test_a_hold_expires_denied_and_the_client_cancel_withdraws(lab: Lab) -> None:
    lab.close()
    lab.timeout = 2.0
    lab.__init__(lab.pg, lab.trail.parent, timeout=2.0)  # type: ignore[misc]
    with psycopg.connect(lab.witness.url(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no decision within 2 s"):
            conn.execute("TRUNCATE held")
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
    expired = [e for e in events(lab.trail) if e.get("step") == "expired"]
    assert len(expired) == 1

    lab.close()
    lab.__init__(lab.pg, lab.trail.parent, timeout=60.0)  # type: ignore[misc]
    with psycopg.connect(lab.witness.url(), autocommit=True) as conn:
        threading.Timer(1.0, conn.cancel_safe).start()
        with pytest.raises(psycopg.errors.QueryCanceled, match="the client cancelled it"):
            conn.execute("TRUNCATE held")
        assert conn.execute("SELECT count(*) FROM held").fetchone() == (3,)
    withdrawn = [e for e in events(lab.trail) if e.get("step") == "withdrawn"]
    assert len(withdrawn) == 1 and withdrawn[0]["why"] == "the client cancelled it"


def test_a_restart_denies_what_was_held_and_forwards_nothing(lab: Lab, pg: PostgresServer) -> None:
    offset = size(pg.log_path)
    psql = subprocess.Popen(
        ["psql", lab.witness.url(), "-X", "-c", "DELETE FROM held"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    (hold,) = lab.pending()
    lab.witness.kill()
    psql.communicate(timeout=30)
    assert psql.returncode != 0
    lab.start()
    deadline = time.monotonic() + 10
    while "denied" not in lab.steps(hold["id"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lab.steps(hold["id"])[-1] == "denied"
    denied = [e for e in events(lab.trail) if e.get("step") == "denied"][-1]
    assert "restarted" in denied["why"]
    assert not _ran(pg, offset, "DELETE FROM held")
    assert lab.pending(count=0) == []


def test_idle_in_transaction_timeout_ends_a_session_held_inside_a_transaction(
    lab: Lab, pg: PostgresServer
) -> None:
    """The backend ends a session idle in a transaction past its timeout: a hold inside a
    transaction block lasts at most that long. The client gets the server's FATAL, the hold
    is withdrawn, and the statement never ran."""
    offset = size(pg.log_path)
    with psycopg.connect(lab.witness.url()) as conn:
        conn.execute("SET idle_in_transaction_session_timeout = '1s'")
        conn.execute("SELECT 1")  # a transaction block is open now
        with pytest.raises(
            psycopg.errors.IdleInTransactionSessionTimeout, match="idle-in-transaction timeout"
        ):
            conn.execute("DELETE FROM held")
    deadline = time.monotonic() + 10
    while not any(e.get("step") == "withdrawn" for e in events(lab.trail)):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    (withdrawn,) = [e for e in events(lab.trail) if e.get("step") == "withdrawn"]
    assert "the session ended" in withdrawn["why"]
    assert not _ran(pg, offset, "DELETE FROM held")


class RawSession:
    """A client that writes the wire itself: its five-statement pipeline goes in one write,
    so all five reach the recorder, and are held, together."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(pgwire.startup(user="postgres", database="postgres"))
        self.buf = b""
        self.until_ready()

    def until_ready(self) -> list[tuple[bytes, bytes]]:
        got: list[tuple[bytes, bytes]] = []
        while True:
            while len(self.buf) >= 5:
                kind, length = self.buf[:1], struct.unpack("!I", self.buf[1:5])[0]
                if len(self.buf) < 1 + length:
                    break
                body, self.buf = self.buf[5 : 1 + length], self.buf[1 + length :]
                got.append((kind, body))
                if kind == b"Z":
                    return got
            data = self.sock.recv(65536)
            assert data, "the recorder closed the connection"
            self.buf += data

    def pipeline(self, text: str, count: int) -> None:
        one = pgwire.parse("", text) + pgwire.bind("", "") + pgwire.execute()
        self.sock.sendall(one * count + pgwire.sync())


def test_fifty_holds_across_ten_sessions_leave_other_sessions_running(lab: Lab) -> None:
    """Ten sessions each pipeline five held DELETEs (fifty holds at once) while another
    session runs queries; then every held statement runs, once approved."""

    def queries(conn: psycopg.Connection[Any]) -> float:
        started = time.monotonic()
        for i in range(300):
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        return time.monotonic() - started

    other = psycopg.connect(lab.witness.url(), autocommit=True)
    before = queries(other)
    held = [RawSession(lab.witness.port) for _ in range(10)]
    for session in held:
        session.pipeline("DELETE FROM held WHERE id = 99", 5)
    holds = lab.pending(count=50)
    assert len(holds) == 50
    assert len({h["session"] for h in holds}) == 10
    # Meanwhile, others run as they would: every query of theirs is answered.
    during = queries(other)
    other.close()
    print(
        f"300 queries in another session: {before:.3f} s before, {during:.3f} s while 50"
        f" statements were held ({before / during:.2f} of the speed before)"
    )
    for hold in holds:
        assert lab.cli("nobody", "approve", hold["id"]).returncode == 0
    for session in held:
        tags = [body for kind, body in session.until_ready() if kind == b"C"]
        assert tags == [b"DELETE 0\0"] * 5
        session.sock.close()


def test_nothing_sent_after_a_held_statement_gets_past_it(lab: Lab, pg: PostgresServer) -> None:
    """The hostile agent's try: pipeline an allowed INSERT behind the held DELETE, hoping it
    runs while the DELETE waits. It waits with it; once the DELETE is denied, the server
    skips the rest of the pipeline to its Sync, as for any error."""
    offset = size(pg.log_path)
    agent = RawSession(lab.witness.port)
    sent = b"".join(
        pgwire.parse("", text) + pgwire.bind("", "") + pgwire.execute()
        for text in ("DELETE FROM held WHERE id = 1", "INSERT INTO held VALUES (42)")
    )
    agent.sock.sendall(sent + pgwire.sync())
    (hold,) = lab.pending()
    time.sleep(0.5)
    assert not _ran(pg, offset, "INSERT INTO held"), "the INSERT went past the hold"
    assert lab.cli("nobody", "deny", hold["id"]).returncode == 0
    answers = agent.until_ready()
    agent.sock.close()
    kinds = [kind for kind, _ in answers]
    assert b"E" in kinds and b"C" not in kinds  # the DELETE's error; the INSERT never ran
    assert pg.psql("SELECT count(*) FROM held WHERE id = 42").strip().endswith("0")
    assert not _ran(pg, offset, "DELETE FROM held")


def _until(proc: subprocess.Popen[str], step: str | None, wait: float) -> list[dict[str, Any]]:
    """What a watcher prints (one JSON object per line) until a line of ``step`` comes, or
    ``wait`` seconds pass."""
    assert proc.stdout is not None
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        got.append(json.loads(line))
        if got[-1]["step"] == step:
            break
    return got


def test_approvers_watch_holds_come_and_go(lab: Lab) -> None:
    """``list --watch`` shows an approver each hold as it is requested and as it ends; a
    watcher who is not an approver sees none of another identity's holds."""
    assert lab.pending(0) == []  # the control socket answers
    bob, eve = lab.watch("nobody"), lab.watch("bin")
    try:
        time.sleep(1.0)  # both are watching before the hold comes
        psql = subprocess.Popen(
            ["psql", lab.witness.url(), "-X", "-c", "DELETE FROM held WHERE id = 2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        seen = _until(bob, "requested", 20.0)
        assert seen and seen[-1]["step"] == "requested", (seen, bob.poll())
        hold = seen[-1]["hold"]
        assert "DELETE FROM held WHERE id = 2" in hold["text"]
        assert hold["identity"]["email"] == "agent@example.test"
        denied = lab.cli("daemon", "deny", hold["id"], "--reason", "not today")
        assert denied.returncode == 0, denied.stderr
        seen = _until(bob, "denied", 20.0)
        assert seen and seen[-1]["step"] == "denied", seen
        assert seen[-1]["hold"]["id"] == hold["id"]
        _, err = psql.communicate(timeout=30)
        assert "not today" in err
        assert _until(eve, None, 1.0) == []  # eve approves nothing: no one else's holds
        assert eve.poll() is None  # and she is still watching, not refused
    finally:
        for watcher in (bob, eve):
            watcher.terminate()
            watcher.wait(timeout=10)


def test_one_identity_cannot_bury_the_approvers(pg: PostgresServer, tmp_path: Path) -> None:
    """Past ``max_pending`` waiting statements of one identity, a statement a rule would
    hold is blocked at once, and says why; once one is decided, holds are taken again."""
    pg.psql("DROP TABLE IF EXISTS held; CREATE TABLE held (id int); INSERT INTO held VALUES (1)")
    lab = Lab(pg, tmp_path, max_pending=2)
    waiting: list[subprocess.Popen[str]] = []
    try:
        for i in range(2):
            waiting.append(
                subprocess.Popen(
                    ["psql", lab.witness.url(), "-X", "-c", f"DELETE FROM held WHERE id = {i}"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        holds = lab.pending(2)
        assert len(holds) == 2
        third = subprocess.run(
            ["psql", lab.witness.url(), "-X", "-c", "DELETE FROM held WHERE id = 3"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert third.returncode != 0
        assert "not held: 2 statements of this identity already wait" in third.stderr
        assert len(lab.pending(2)) == 2  # no new hold was made
        assert lab.cli("nobody", "deny", holds[0]["id"]).returncode == 0
        fourth = subprocess.Popen(
            ["psql", lab.witness.url(), "-X", "-c", "DELETE FROM held WHERE id = 4"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        waiting.append(fourth)
        assert any("id = 4" in h["text"] for h in lab.pending(2))
    finally:
        for proc in waiting:
            proc.kill()
            proc.wait(timeout=10)
        lab.close()
    blocked = [
        e for e in events(lab.trail)
        if e["type"] == "command" and "id = 3" in e["text"]
    ]  # fmt: skip
    assert blocked[0]["decision"]["action"] == "block"


def test_a_rule_or_trigger_cannot_run_a_held_kind_unseen(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """A DELETE is held; a rule or a trigger that would delete on a later INSERT, decided
    as an INSERT, is a way around it. Making one is unknown, and a hold rule holds what is
    unknown: it waits for a person, and runs only if one approves."""
    pg.psql(
        "DROP TABLE IF EXISTS held; CREATE TABLE held (id int); INSERT INTO held VALUES (1);"
        " DROP TABLE IF EXISTS held_log; CREATE TABLE held_log (x int);"
        " CREATE OR REPLACE FUNCTION held_purge() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN DELETE FROM held; RETURN NULL; END $$"
    )
    lab = Lab(pg, tmp_path, timeout=2.0)
    try:
        with psycopg.connect(lab.witness.url(), autocommit=True) as conn:
            for sql in (
                "CREATE RULE purge AS ON INSERT TO held_log DO ALSO DELETE FROM held",
                "CREATE TRIGGER purge AFTER INSERT ON held_log"
                " FOR EACH ROW EXECUTE FUNCTION held_purge()",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege) as stopped:
                    conn.execute(sql)
                assert "held for approval" in str(stopped.value)
                assert "expired" in str(stopped.value)
            conn.execute("INSERT INTO held_log VALUES (1)")
    finally:
        lab.close()
    assert pg.psql("SELECT count(*) FROM held").strip() == "1"
    asked = [e for e in events(lab.trail) if e.get("step") == "requested"]
    assert [("later statements" in e["reason"]) for e in asked] == [True, True]
