"""A small real trail for the CLI tests: three sessions written through Trail."""

from __future__ import annotations

from pathlib import Path

import click
import pgwire as pg
import pytest
from trailwriter import T0, writer

from appliance.cli import export, sessions, tail, trail
from appliance.protocols.postgres.connection import PostgresConnection
from appliance.protocols.postgres.events import CommandFinished, CommandStarted

MAIN = {"name": "main", "address": "127.0.0.1", "port": 5432, "protocol": "postgresql"}
OTHER = {"name": "other", "address": "127.0.0.2", "port": 5433, "protocol": "postgresql"}


def owner(uid: int, pid: int) -> dict[str, object]:
    return {
        "uid": uid,
        "pid": pid,
        "exe": "/usr/bin/psql",
        "cgroup": "/agents/a1",
        "comm": "psql",
        "source": "sock_diag",
        "detail": None,
    }


def start(who: str, uid: int, backend: dict[str, object]) -> dict[str, object]:
    return {
        "client": f"10.0.0.7:{40000 + uid}",
        "listener": "127.0.0.1:6432",
        "backend": backend,
        "owner": owner(uid, 4000 + uid),
        "db_user": who,
        "database": "shop",
        "application_name": "psql",
    }


@pytest.fixture
def cli() -> click.Group:
    group = click.Group("witness")
    sessions.register(group)
    tail.register(group)
    trail.register(group)
    export.register(group)
    return group


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Alice's finished session, Bob's, and Alice's still-open one, plus a stray error."""
    settings, t, at = writer(tmp_path)

    alice = "a1b2c3d4-alice"
    at(0, "session_start", alice, start("alice", 1000, MAIN))
    at(1, "command", alice, {"n": 1, "kind": "query", "text": "SELECT * FROM orders"})
    at(
        1.5,
        "result",
        alice,
        {"n": 1, "status": "ok", "tags": ["SELECT 3"], "rows": 3, "bytes": 120, "duration_ms": 0.5},
    )
    at(
        2,
        "command",
        alice,
        {
            "n": 2,
            "kind": "execute",
            "text": "INSERT INTO orders VALUES ($1, $2)",
            "params": ["7", None],
            "statement": "",
            "portal": "",
        },
    )
    at(
        2.25,
        "result",
        alice,
        {
            "n": 2,
            "status": "ok",
            "tags": ["INSERT 0 1"],
            "rows": 1,
            "bytes": 20,
            "duration_ms": 0.25,
        },
    )
    at(3, "command", alice, {"n": 3, "kind": "query", "text": "select * from nope"})
    at(
        3.5,
        "result",
        alice,
        {
            "n": 3,
            "status": "error",
            "tags": [],
            "rows": 0,
            "bytes": 90,
            "duration_ms": 0.1,
            "error": {
                "severity": "ERROR",
                "code": "42P01",
                "message": 'relation "nope" does not exist',
            },
        },
    )
    at(
        4,
        "command",
        alice,
        {
            "n": 4,
            "kind": "query",
            "text": "DELETE FROM orders",
            "refused": "trail write failed: disk full",
        },
    )
    at(
        10,
        "session_end",
        alice,
        {
            "reason": "client closed",
            "bytes_in": 500,
            "bytes_out": 900,
            "commands": 4,
            "backend_pid": 777,
        },
    )
    bob = "a1ffee-bob"
    at(60, "session_start", bob, start("bob", 1001, OTHER))
    at(61, "command", bob, {"n": 1, "kind": "query", "text": "select now() -- \x1b[2J"})
    at(
        61.5,
        "result",
        bob,
        {"n": 1, "status": "ok", "tags": ["SELECT 1"], "rows": 1, "bytes": 30, "duration_ms": 0.2},
    )
    at(
        65,
        "session_end",
        bob,
        {
            "reason": "server closed",
            "bytes_in": 50,
            "bytes_out": 60,
            "commands": 1,
            "backend_pid": 778,
        },
    )
    at(100, "error", None, {"where": "client", "message": "bad startup packet"})
    still = "b7-open"
    at(120, "session_start", still, start("alice", 1000, MAIN))
    at(121, "command", still, {"n": 1, "kind": "query", "text": "UPDATE Accounts SET x = 1"})
    t.close()
    return settings.path


ISSUER = "https://idp.example.com"
RUN = "/witness-agents/run-1a2b"


def identity(
    subject: str,
    email: str | None,
    groups: list[str],
    binding: dict[str, object],
    name: str | None = None,
) -> dict[str, object]:
    return {
        "issuer": ISSUER,
        "subject": subject,
        "email": email,
        "name": name,
        "groups": groups,
        "binding": binding,
    }


CAROL = identity(
    "sub-carol",
    "Carol@Example.com",
    ["dba", "analysts"],
    {"kind": "cgroup", "target": RUN, "expires": T0 + 3600},
    name="Carol Jones",
)
DAVE = identity("sub-dave", None, ["analysts"], {"kind": "uid", "target": "1003", "expires": None})


def bound(who: dict[str, object] | None, uid: int, backend: dict[str, object]) -> dict[str, object]:
    """A session_start as the recorder writes it now: with the identity and a cgroup id."""
    payload = start("app", uid, backend)
    payload["identity"] = who
    payload["owner"] = {**owner(uid, 4000 + uid), "cgroup": RUN, "cgroup_id": 9000 + uid}
    return payload


@pytest.fixture
def identity_path(tmp_path: Path) -> Path:
    """Carol's session (cgroup binding), Dave's (uid binding, expiring mid-session), a
    connection refused for want of an identity, and one written before identities existed."""
    settings, t, at = writer(tmp_path)

    by = {"uid": 0, "pid": 321, "cgroup": None}
    at(
        0,
        "binding",
        None,
        {
            "action": "bind",
            "kind": "cgroup",
            "target": RUN,
            "identity": CAROL,
            "expires": T0 + 3600,
            "by": by,
            "reason": None,
        },
    )
    carol = "c1-carol"
    at(1, "session_start", carol, bound(CAROL, 1002, MAIN))
    # Carol logged in again with fewer groups before her first command: the command carries
    # the identity it ran under.
    again = {**CAROL, "groups": ["dba"]}
    at(2, "command", carol, {"n": 1, "kind": "query", "text": "SELECT 1", "identity": again})
    at(2.5, "result", carol, {"n": 1, "status": "ok", "rows": 1, "bytes": 10, "duration_ms": 0.1})
    at(3, "command", carol, {"n": 2, "kind": "query", "text": "SELECT 2"})  # no identity key
    at(
        4,
        "session_end",
        carol,
        {
            "reason": "client closed",
            "bytes_in": 40,
            "bytes_out": 80,
            "commands": 2,
            "backend_pid": 901,
        },
    )
    dave = "d1-dave"
    at(10, "session_start", dave, bound(DAVE, 1003, OTHER))
    at(11, "command", dave, {"n": 1, "kind": "query", "text": "SELECT 3", "identity": DAVE})
    at(
        12,
        "binding",
        None,
        {
            "action": "expire",
            "kind": "uid",
            "target": "1003",
            "identity": DAVE,
            "expires": None,
            "by": by,
            "reason": "logout",
        },
    )
    at(
        13,
        "command",
        dave,
        {
            "n": 2,
            "kind": "query",
            "text": "SELECT 4",
            "identity": None,
            "refused": "identity binding expired",
        },
    )
    at(
        14,
        "session_end",
        dave,
        {
            "reason": "client closed",
            "bytes_in": 30,
            "bytes_out": 20,
            "commands": 2,
            "backend_pid": 902,
        },
    )
    refused = "e1-refused"
    payload = bound(None, 1004, MAIN)
    payload["refused"] = {"code": "28000", "message": "no identity bound to uid 1004"}
    at(20, "session_start", refused, payload)
    at(
        20.5,
        "session_end",
        refused,
        {"reason": "refused", "bytes_in": 8, "bytes_out": 90, "commands": 0, "backend_pid": None},
    )
    old = "f1-old"
    at(30, "session_start", old, start("app", 1005, MAIN))
    at(31, "command", old, {"n": 1, "kind": "query", "text": "SELECT 5"})
    at(
        32,
        "session_end",
        old,
        {
            "reason": "client closed",
            "bytes_in": 10,
            "bytes_out": 10,
            "commands": 1,
            "backend_pid": 903,
        },
    )
    t.close()
    return settings.path


SJIS_TEXT = "insert into t values ('ソ')"


@pytest.fixture
def truth_path(tmp_path: Path) -> Path:
    """A session recorded by the real parser: a statement a DO block may have redefined, a
    SQL EXECUTE, and a query sent before the backend reported its new client_encoding."""
    settings, t, at = writer(tmp_path)
    sid = "c0ffee-truth"
    at(0, "session_start", sid, start("alice", 1000, MAIN))
    conn = PostgresConnection(clock=lambda: 0.0)
    conn.receive_client(pg.startup(user="alice"))
    conn.receive_server(b"".join(pg.WELCOME))
    conversation = [
        ("client", pg.parse("s1", "select 1") + pg.sync()),
        ("server", pg.parse_complete() + pg.ready_for_query()),
        ("client", pg.query("do $$ begin execute 'select 1'; end $$")),
        ("server", pg.command_complete("DO") + pg.ready_for_query()),
        ("client", pg.bind("", "s1") + pg.execute() + pg.sync()),
        ("server", pg.bind_complete() + pg.command_complete("DELETE 2") + pg.ready_for_query()),
        ("client", pg.query("prepare wipe as delete from orders")),
        ("server", pg.command_complete("PREPARE") + pg.ready_for_query()),
        ("client", pg.query("execute wipe")),
        ("server", pg.command_complete("DELETE 3") + pg.ready_for_query()),
        (
            "client",
            pg.query("set client_encoding to 'SJIS'")
            + pg.message(b"Q", SJIS_TEXT.encode("cp932") + b"\0"),
        ),
        (
            "server",
            pg.command_complete("SET")
            + pg.parameter_status("client_encoding", "SJIS")
            + pg.ready_for_query()
            + pg.command_complete("INSERT 0 1")
            + pg.ready_for_query(),
        ),
    ]
    when = 1.0
    for side, data in conversation:
        receive = conn.receive_client if side == "client" else conn.receive_server
        for event in receive(data):
            when += 0.25
            if isinstance(event, CommandStarted):
                at(when, "command", sid, {**event.command.as_dict(), "n": event.n})
            elif isinstance(event, CommandFinished):
                at(when, "result", sid, {**event.result.as_dict(), "n": event.n})
    at(10, "session_end", sid, {"reason": "client closed", "commands": 6})
    t.close()
    return settings.path


@pytest.fixture
def damaged_path(tmp_path: Path) -> Path:
    """A command whose prepared entry has the wrong types (a trail damaged, or forged)."""
    settings, t, at = writer(tmp_path)
    at(0, "session_start", "d1", start("alice", 1000, MAIN))
    entry = {"name": 7, "text": ["x"], "defined": "one", "doubt": "changed", "changed_by": True}
    at(1, "command", "d1", {"n": 1, "kind": "query", "text": "execute x", "prepared": [entry]})
    t.close()
    return settings.path


LONG_BACKEND = {
    "name": "billing-primary-eu-west-1-postgresql-15",
    "address": "10.120.44.17",
    "port": 5432,
    "protocol": "postgresql",
}


@pytest.fixture
def crowd_path(tmp_path: Path) -> Path:
    """Sessions with the long names real fleets have: service identities with long emails,
    backends named by role, region and version, a refusal with its whole advice."""
    settings, t, at = writer(tmp_path)
    people = [
        identity(
            "7f3c9a2e-4b1d-4e8f-9a6c-2d5e8b1f0c3a",
            "svc-nightly-reconciliation-pipeline@data-platform.example-corporation.com",
            ["agents"],
            {"kind": "cgroup", "target": RUN, "expires": T0 + 3600},
        ),
        identity(
            "agent-ci-runner-with-a-very-long-machine-subject-name-0001",
            None,
            ["agents"],
            {"kind": "uid", "target": "1010", "expires": None},
        ),
    ]
    for i, who in enumerate(people):
        sid = f"{i:016x}"
        at(i * 10, "session_start", sid, bound(who, 1010 + i, LONG_BACKEND))
        at(i * 10 + 1, "command", sid, {"n": 1, "kind": "query", "text": "SELECT 1"})
        at(
            i * 10 + 2,
            "session_end",
            sid,
            {
                "reason": "client closed the connection after a protocol error from the backend",
                "commands": 1,
            },
        )
    refused = bound(None, 1020, LONG_BACKEND)
    refused["refused"] = {
        "code": "28000",
        "message": "no identity is bound to uid 1020 (comm psql); run witness login, or run"
        " the agent with witness run",
    }
    at(30, "session_start", "00000000000000ff", refused)
    at(30.5, "session_end", "00000000000000ff", {"reason": "refused", "commands": 0})
    t.close()
    return settings.path


def decision(action: str, rule: str | None, reason: str) -> dict[str, object]:
    return {"action": action, "rule": rule, "reason": reason}


@pytest.fixture
def decided_path(tmp_path: Path) -> Path:
    """Carol's session under a policy: an allowed command, one blocked by a rule, one held and
    approved; Dave's on the other backend, with a cancel request; two sessions interleaved."""
    settings, t, at = writer(tmp_path)
    carol, dave = "c2-carol", "d2-dave"
    at(0, "session_start", carol, bound(CAROL, 1002, MAIN))
    at(
        1,
        "command",
        carol,
        {
            "n": 1,
            "kind": "query",
            "text": "SELECT * FROM orders",
            "decision": decision("allow", None, "the default"),
        },
    )
    at(2, "session_start", dave, bound(DAVE, 1003, OTHER))
    at(
        3,
        "command",
        dave,
        {
            "n": 1,
            "kind": "query",
            "text": "SELECT pg_sleep(60)",
            "identity": DAVE,
            "decision": decision("allow", None, "default"),
        },
    )
    at(3.5, "result", carol, {"n": 1, "status": "ok", "rows": 2, "bytes": 80, "duration_ms": 1.5})
    at(
        4,
        "command",
        carol,
        {
            "n": 2,
            "kind": "query",
            "text": "DELETE FROM orders",
            "decision": decision("block", "no-wipe", "no DELETE without WHERE"),
        },
    )
    at(
        4.1,
        "result",
        carol,
        {
            "n": 2,
            "status": "error",
            "rows": 0,
            "bytes": 90,
            "duration_ms": 0,
            "error": {"code": "42501", "message": "blocked by rule 'no-wipe'"},
        },
    )
    at(5, "command", dave, {"n": 0, "kind": "cancel", "text": "cancel request", "identity": DAVE})
    at(
        5.5,
        "result",
        dave,
        {
            "n": 1,
            "status": "error",
            "rows": 0,
            "bytes": 70,
            "duration_ms": 2500,
            "error": {"code": "57014", "message": "canceling statement"},
        },
    )
    held = decision("hold", "ask-first", "changes to accounts")
    held["approval"] = "h-1"
    at(
        6,
        "command",
        carol,
        {"n": 3, "kind": "query", "text": "UPDATE accounts\n   SET x = 1", "decision": held},
    )
    at(8, "result", carol, {"n": 3, "status": "ok", "rows": 1, "bytes": 20, "duration_ms": 2000})
    at(9, "session_end", dave, {"reason": "client closed", "commands": 2})
    at(10, "session_end", carol, {"reason": "client closed", "commands": 3})
    t.close()
    return settings.path
