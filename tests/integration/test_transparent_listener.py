"""``witness serve`` with an [enforce] table: the transparent listener on 127.0.0.1 and ::1.

Without the nftables redirect (tests/lab/test_transparent.py has it) nothing reaching the
listener was diverted, so every connection must be refused with a native error and recorded,
and none may reach PostgreSQL.
"""

from __future__ import annotations

import getpass
import os
import pwd
import signal
import socket
import subprocess
from pathlib import Path

from witnessproc import WITNESS, events, run, wait_port

from appliance.lab.net import free_port
from appliance.lab.postgres import PostgresServer

CLIENTS = "select count(*) from pg_stat_activity where backend_type = 'client backend'"


def _config(tmp_path: Path, pg: PostgresServer, port: int, user: str) -> Path:
    path = tmp_path / "witness.toml"
    path.write_text(
        f'[[backend]]\nname = "lab"\naddress = "127.0.0.1"\nport = {pg.port}\n'
        'protect = ["127.0.0.0/8", "::1/128"]\n\n'
        '[trail]\npath = "trail.db"\n\n'
        f'[enforce]\nservice_user = "{user}"\nredirect_port = {port}\n\n'
        '[identity]\nunbound = "allow"\n'
    )
    return path


def test_a_connection_that_was_not_diverted_is_refused_natively(
    pg: PostgresServer, tmp_path: Path
) -> None:
    port = free_port()
    config = _config(tmp_path, pg, port, getpass.getuser())
    with (tmp_path / "witness.log").open("ab") as log:
        proc = subprocess.Popen(
            [WITNESS, "--config", str(config), "serve"], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_port(port, proc)
        before = pg.psql(CLIENTS)
        for host in ("127.0.0.1", "::1"):
            done = run(
                "psql", "-X", "-At", "-c", "select 'leaked'",
                f"host={host} port={port} user=postgres dbname=postgres",
            )  # fmt: skip
            assert done.returncode == 2, done.stdout
            assert "FATAL:  witness: connection refused" in done.stderr
            assert "did not come through the witness redirect" in done.stderr
            assert "leaked" not in done.stdout
        # Only pg.psql's own session was ever there: nothing reached PostgreSQL.
        after = pg.psql(CLIENTS)
        assert after == before
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    log_text = (tmp_path / "witness.log").read_text()
    assert "recording diverted connections on 127.0.0.1 and ::1" in log_text
    trail = events(tmp_path / "trail.db")
    refused = [e for e in trail if e["type"] == "session_start"]
    assert {e["listener"].rsplit(":", 1)[0] for e in refused} == {"127.0.0.1", "::1"}
    assert all(e["backend"] is None and e["diverted"] for e in refused)
    assert not [e for e in trail if e["type"] == "command" and "refused" not in e]
    ends = [e for e in trail if e["type"] == "session_end"]
    assert len(ends) == 2
    assert all("did not come through the witness redirect" in e["reason"] for e in ends)
    # wait_port's bare connect sent no startup: recorded as an error of its own.
    assert any(
        e["type"] == "error" and e["where"] == "divert" and "did not come through" in e["message"]
        for e in trail
    )


def test_the_recorder_refuses_to_start_as_another_user_than_the_service_user(
    pg: PostgresServer, tmp_path: Path
) -> None:
    other = "daemon" if os.geteuid() == 0 else "root"
    uid = pwd.getpwnam(other).pw_uid
    config = _config(tmp_path, pg, free_port(), other)
    done = run(WITNESS, "--config", str(config), "serve", timeout=30)
    assert done.returncode == 1
    assert f"enforce.service_user is {other} (uid {uid})" in done.stderr
    assert f"run witness serve as {other}" in done.stderr
    assert not (tmp_path / "trail.db").exists()


def test_a_redirect_port_in_use_stops_the_start_with_its_reason(
    pg: PostgresServer, tmp_path: Path
) -> None:
    blocker = socket.create_server(("127.0.0.1", 0))
    try:
        port = blocker.getsockname()[1]
        config = _config(tmp_path, pg, port, getpass.getuser())
        done = run(WITNESS, "--config", str(config), "serve", timeout=30)
    finally:
        blocker.close()
    assert done.returncode == 1
    assert f"cannot listen for diverted connections on 127.0.0.1 port {port}" in done.stderr
