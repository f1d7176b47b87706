"""The real recorder behind the nftables redirect: an agent's unchanged psql is diverted,
relayed to where it was going, and recorded with its owner; what cannot be relayed is refused.

One lab (its own suffix) with ``witness up`` in the bastion, and ``witness serve`` running there
as the lab's own service user (``wlab-<suffix>-witness``), the exempt one. The agent is
``nobody``, running the real psql against the backend's real addresses. ``witness up`` diverts
ports 5432 and 5433; the recorder's own configuration protects 5432 only, so that a diverted
connection it has no backend for can be shown refused. The tests run in file order: the last
one kills the recorder.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from labagents import ended_session_with, sessions_with
from labmarks import lab_marks
from witnessproc import events

from appliance.lab.enforced import WITNESS, EnforcedLab
from appliance.lab.postgres import postgres_bindir

pytestmark = lab_marks("network namespaces, nftables", "nft", "setpriv", timeout=120)

AGENT = "nobody"
PSQL = postgres_bindir() / "psql"
REFUSED = "Connection refused"


@pytest.fixture(scope="module")
def enforced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnforcedLab]:
    lab = EnforcedLab(
        f"t{uuid.uuid4().hex[:10]}",
        tmp_path_factory.mktemp("lab-state"),
        up_ports=(5432, 5433),
        serve_ports=(5432,),
    )
    try:
        lab.start()
        yield lab
    finally:
        lab.close()


def psql(lab: EnforcedLab, host: str, sql: str, port: int = 5432) -> tuple[int, str, str, int]:
    """Run psql as the agent in the bastion: (exit status, stdout, stderr, psql's pid).

    ``ip netns exec`` and ``setpriv`` exec, so the pid started is psql's own.
    """
    argv = lab.as_user(
        AGENT,
        [
            str(PSQL), "-X", "-At", "-c", sql,
            f"host={host} port={port} user=postgres dbname=postgres connect_timeout=5",
        ],
    )  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )
    out, err = proc.communicate(timeout=20)
    return proc.returncode, out.strip(), err.strip(), proc.pid


def assert_agent_owns(start: dict[str, Any], pid: int) -> None:
    owner = start["owner"]
    assert owner["uid"] == pwd.getpwnam(AGENT).pw_uid
    assert owner["pid"] == pid
    assert owner["exe"] == os.path.realpath(PSQL)
    assert owner["source"] == "sock_diag"


def probe() -> str:
    return f"probe-{uuid.uuid4().hex[:12]}"


def test_psql_to_the_backend_is_diverted_relayed_and_recorded_with_its_owner(
    enforced: EnforcedLab,
) -> None:
    tag = probe()
    address = str(enforced.topology.backend_ipv4)
    code, out, err, pid = psql(enforced, address, f"select '{tag}', inet_server_addr()")
    assert code == 0, err
    assert out == f"{tag}|{address}"
    session = ended_session_with(enforced.trail, tag)
    start = session["start"]
    assert start["diverted"] is True
    assert start["destination"] == f"{address}:5432"
    assert start["listener"] == f"127.0.0.1:{enforced.redirect_port}"
    assert start["backend"]["name"] == "lab"
    assert start["db_user"] == "postgres"
    assert_agent_owns(start, pid)
    # The operator's view says the same.
    shown = subprocess.run(
        [WITNESS, "sessions", "show", start["session"], "--json", "--trail", str(enforced.trail)],
        capture_output=True,
        text=True,
        check=True,
    )
    detail = json.loads(shown.stdout)
    assert detail["session"]["owner"]["pid"] == pid
    assert detail["session"]["destination"] == f"{address}:5432"
    assert any(tag in c["text"] for c in detail["commands"])


def test_the_backends_second_address_is_diverted_and_relayed_to_that_address(
    enforced: EnforcedLab,
) -> None:
    tag = probe()
    other = str(enforced.topology.backend_ipv4_other)
    code, out, err, pid = psql(enforced, other, f"select '{tag}', inet_server_addr()")
    assert code == 0, err
    assert out == f"{tag}|{other}"  # PostgreSQL saw the connection arrive at .3, not .2
    start = ended_session_with(enforced.trail, tag)["start"]
    assert start["destination"] == f"{other}:5432"
    assert start["backend"]["address"] == str(enforced.topology.backend_ipv4)
    assert_agent_owns(start, pid)


def test_ipv6_is_diverted_to_the_recorders_ipv6_listener(enforced: EnforcedLab) -> None:
    tag = probe()
    address = str(enforced.topology.backend_ipv6)
    code, out, err, pid = psql(enforced, address, f"select '{tag}', inet_server_addr()")
    assert code == 0, err
    assert out == f"{tag}|{address}"
    start = ended_session_with(enforced.trail, tag)["start"]
    assert start["destination"] == f"{address}:5432"
    assert start["listener"] == f"::1:{enforced.redirect_port}"
    assert_agent_owns(start, pid)


def test_a_diverted_port_the_recorder_protects_no_backend_on_is_refused_natively(
    enforced: EnforcedLab,
) -> None:
    tag = probe()
    address = str(enforced.topology.backend_ipv4)
    code, out, err, pid = psql(enforced, address, f"select '{tag}'", port=5433)
    assert code == 2
    assert tag not in out
    assert "FATAL:  witness: connection refused" in err
    assert f"{address}:5433 is not a protected backend" in err
    deadline = time.monotonic() + 5
    while True:  # the refusal is committed within a few ms of the client being told
        refusals = [
            e
            for e in events(enforced.trail)
            if e["type"] == "session_start" and e["destination"] == f"{address}:5433"
        ]
        if refusals or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(refusals) == 1
    assert refusals[0]["backend"] is None
    assert_agent_owns(refusals[0], pid)
    assert not sessions_with(enforced.trail, tag)  # the command was never taken


def test_connecting_to_the_recorders_port_directly_is_refused_natively(
    enforced: EnforcedLab,
) -> None:
    tag = probe()
    code, out, err, _ = psql(enforced, "127.0.0.1", f"select '{tag}'", port=enforced.redirect_port)
    assert code == 2
    assert "FATAL:  witness: connection refused" in err
    assert "not diverted by the witness redirect" in err
    assert tag not in out


def test_another_port_of_the_backend_is_refused(enforced: EnforcedLab) -> None:
    started = time.monotonic()
    code, _, err, _ = psql(enforced, str(enforced.topology.backend_ipv4), "select 1", port=5434)
    assert code == 2
    assert REFUSED in err  # a reset, at once: not a timeout
    assert time.monotonic() - started < 4


def test_with_the_recorder_killed_psql_is_refused_and_goes_nowhere(
    enforced: EnforcedLab,
) -> None:
    address = str(enforced.topology.backend_ipv4)
    # The control: the same psql gets through while the recorder runs.
    assert psql(enforced, address, "select 1")[0] == 0
    enforced.kill_recorder()
    for host in (address, str(enforced.topology.backend_ipv4_other)):
        tag = probe()
        code, out, err, _ = psql(enforced, host, f"select '{tag}'")
        assert code == 2
        assert REFUSED in err, err  # the redirect's target is closed: refused, never direct
        assert tag not in out
    # Enforcement stays up until an explicit witness down.
    status = subprocess.run(
        [WITNESS, "--config", str(enforced.up_config), "status", "--netns", enforced.bastion],
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0, status.stdout
