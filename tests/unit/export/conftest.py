"""A real trail for the export tests, written through the recorder's store: two identities on
two backends, a refused connection, a trail-wide error and a binding, signed every 4 events."""

from __future__ import annotations

from pathlib import Path

import pytest
from exporting import HOSTILE
from trailwriter import T0, writer

from appliance.config import TrailSettings

ISSUER = "https://idp.example.com"
ORDERS = {"name": "orders", "address": "10.0.0.5", "port": 5432, "protocol": "postgresql"}
BILLING = {"name": "billing", "address": "10.0.0.6", "port": 5433, "protocol": "postgresql"}
ALICE = {
    "issuer": ISSUER,
    "subject": "sub-alice",
    "email": "Alice@Example.com",
    "name": "Alice Adams",
    "groups": ["dba", "agents"],
    "binding": {"kind": "cgroup", "target": "/witness-agents/run-1", "expires": T0 + 3600},
}
BOB = {
    "issuer": ISSUER,
    "subject": "sub-bob",
    "email": None,
    "name": None,
    "groups": [],
    "binding": {"kind": "uid", "target": "1001", "expires": None},
}


def start(who: dict[str, object] | None, uid: int, backend: dict[str, object]) -> dict[str, object]:
    return {
        "client": f"10.0.9.{uid - 1000}:{40000 + uid}",
        "listener": "127.0.0.1:6432",
        "backend": backend,
        "destination": f"{backend['address']}:{backend['port']}",
        "diverted": True,
        "owner": {
            "uid": uid,
            "pid": 4000 + uid,
            "exe": "/usr/bin/psql",
            "cgroup": "/witness-agents/run-1",
            "cgroup_id": 77,
            "comm": "psql",
            "source": "ebpf",
            "detail": None,
        },
        "identity": who,
        "db_user": "app",
        "database": "shop",
        "application_name": "psql",
    }


def decision(action: str, rule: str | None, reason: str) -> dict[str, object]:
    return {"action": action, "rule": rule, "reason": reason}


@pytest.fixture
def fleet(tmp_path: Path) -> TrailSettings:
    settings, t, at = writer(tmp_path, checkpoint_events=4, checkpoint_seconds=3600)
    at(0, "binding", None, {"action": "bind", "kind": "cgroup", "identity": ALICE})
    alice, bob = "a1-alice", "b1-bob"
    at(1, "session_start", alice, start(ALICE, 1001, ORDERS))
    at(2, "session_start", bob, start(BOB, 1002, BILLING))
    texts = ["select * from orders", *HOSTILE]
    for n, text in enumerate(texts, 1):
        at(
            2 + n,
            "command",
            alice,
            {
                "n": n,
                "kind": "query",
                "text": text,
                "decision": decision("allow", None, "the default"),
            },
        )
        at(
            2.5 + n,
            "result",
            alice,
            {
                "n": n,
                "status": "ok",
                "tags": ["SELECT 1"],
                "rows": 1,
                "bytes": 40,
                "duration_ms": 0.4,
            },
        )
    at(
        10,
        "command",
        bob,
        {
            "n": 1,
            "kind": "query",
            "text": "delete from invoices",
            "decision": decision("block", "no-wipe", "DELETE needs a WHERE"),
        },
    )
    at(
        10.5,
        "result",
        bob,
        {
            "n": 1,
            "status": "blocked",
            "rows": 0,
            "bytes": 90,
            "duration_ms": 0.1,
            "error": {
                "severity": "ERROR",
                "code": "42501",
                "message": "witness: blocked by rule 'no-wipe'",
            },
        },
    )
    at(
        11,
        "command",
        bob,
        {
            "n": 2,
            "kind": "execute",
            "text": "select $1::int",
            "params": ["7"],
            "statement": "",
            "portal": "",
        },
    )
    at(
        11.5,
        "command",
        bob,
        {"n": 3, "kind": "query", "text": "alter role app password '[redacted]'", "redacted": True},
    )
    at(
        12,
        "session_end",
        bob,
        {
            "reason": "client closed",
            "bytes_in": 300,
            "bytes_out": 500,
            "commands": 3,
            "backend_pid": 778,
        },
    )
    at(
        13,
        "error",
        None,
        {
            "where": "divert",
            "message": "connection refused: not diverted",
            "client": "10.0.9.9:5555",
            "backend": "orders",
        },
    )
    refused = start(None, 1003, ORDERS)
    refused["refused"] = {"code": "28000", "message": "no identity is bound to uid 1003"}
    at(14, "session_start", "c1-refused", refused)
    at(14.5, "session_end", "c1-refused", {"reason": "refused", "commands": 0})
    at(
        20,
        "session_end",
        alice,
        {
            "reason": "client closed",
            "bytes_in": 900,
            "bytes_out": 700,
            "commands": len(texts),
            "backend_pid": 777,
        },
    )
    t.close()
    return settings
