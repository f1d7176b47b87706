"""Secrets never reach the trail: role passwords in the simple and the extended protocol, a
pre-hashed verifier as psql's \\password sends it, a key passed to pgcrypto as a bind
parameter, and what the server echoes of them in its errors. The referee is the trail's
own files, byte by byte."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from witnessproc import Witness, events, run

from appliance.lab.postgres import PostgresServer


def trail_bytes(trail: Path) -> bytes:
    """Every byte Witness wrote for the trail: the database, its WAL, the checkpoint."""
    return b"".join(p.read_bytes() for p in trail.parent.iterdir() if p.is_file())


@pytest.fixture
def role(pg: PostgresServer) -> Iterator[str]:
    name = f"r_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f"drop role if exists {name}")


def psql(port: int, sql: str) -> str:
    done = run("psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d",
               "postgres", "-c", sql)  # fmt: skip
    return done.stderr


def test_passwords_in_every_form_stay_off_the_trail(
    pg: PostgresServer, witness: Witness, role: str
) -> None:
    secrets = {
        "quoted": "Quoted-Secret-81",
        "dollar": "Dollar-Secret-82",
        "escape": "Escape-Secret-83",
        "verifier": "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$Stored-Key-84:Server-Key-84",
        "unquoted": "Unquoted_Secret_85",
    }
    assert psql(witness.port, f"CREATE ROLE {role} LOGIN PASSWORD '{secrets['quoted']}'") == ""
    assert psql(witness.port, f"alter user {role} password $x${secrets['dollar']}$x$") == ""
    assert psql(witness.port, f"ALTER ROLE {role} WITH ENCRYPTED PASSWORD "
                f"E'{secrets['escape']}'") == ""  # fmt: skip
    assert psql(witness.port, f"ALTER ROLE {role} PASSWORD '{secrets['verifier']}'") == ""
    # Unquoted: the server refuses it, and its error echoes the token.
    refused = psql(witness.port, f"ALTER ROLE {role} PASSWORD {secrets['unquoted']}")
    assert secrets["unquoted"] in refused
    # No pgcrypto here: the call fails, and the key is a secret all the same.
    with psycopg.connect(witness.url(), autocommit=True) as conn, pytest.raises(psycopg.Error):
        conn.execute("select pgp_sym_encrypt('data', %s)", ["Bound-Key-Secret-86"])
    witness.stop()
    written = trail_bytes(witness.trail)
    for secret in [*secrets.values(), "Bound-Key-Secret-86"]:
        assert secret.encode() not in written, secret
    found = events(witness.trail)
    redacted = [e for e in found if e["type"] == "command" and e.get("redacted")]
    assert len(redacted) == 6
    bound = next(e for e in redacted if "pgp_sym_encrypt" in e["text"])
    assert bound["params"] == ["[redacted]"]
    errors = [e for e in found if e["type"] == "result" and e.get("error")]
    assert any("[redacted]" in e["error"]["message"] for e in errors)
