"""Connection limits with a real PostgreSQL: one user cannot take every backend slot."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import psycopg
import pytest
from witnessproc import Witness, sessions

from appliance.lab.postgres import PostgresServer


def test_a_user_over_its_limit_gets_53300_and_the_refusal_is_recorded(
    pg: PostgresServer, tmp_path: Path
) -> None:
    witness = Witness(pg.port, tmp_path / "trail.db", backend_options="max_connections_per_uid = 3")
    try:
        held = [psycopg.connect(witness.url(application_name=f"held-{i}")) for i in range(3)]
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(witness.url(application_name="one-too-many"))
        assert "has 3 connections open to backend default" in str(refused.value)
        assert "max_connections_per_uid 3" in str(refused.value)
        # On the wire: a FATAL ErrorResponse with SQLSTATE 53300 (too_many_connections).
        params = b"user\0postgres\0database\0postgres\0application_name\0raw\0\0"
        with socket.create_connection(("127.0.0.1", witness.port), timeout=10) as raw:
            raw.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
            answer = b""
            while chunk := raw.recv(4096):
                answer += chunk
        assert answer[:1] == b"E" and b"SFATAL\0" in answer and b"C53300\0" in answer
        for conn in held:
            assert conn.execute("select 1").fetchone() == (1,)
        held.pop().close()
        with psycopg.connect(witness.url(application_name="after")) as conn:
            assert conn.execute("select 2").fetchone() == (2,)
        for conn in held:
            conn.close()
    finally:
        witness.stop()
    found = sessions(witness.trail)
    by_app = {s["start"]["application_name"]: s for s in found.values()}
    refusal = by_app["one-too-many"]["start"]
    assert refusal["refused"]["code"] == "53300", refusal
    assert refusal["owner"]["uid"] is not None
    assert "refused" not in by_app["after"]["start"]
