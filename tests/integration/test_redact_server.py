"""Redaction against a real PostgreSQL 15: the corpus is SQL the server accepts, and the
secrets the server echoes in its errors are scrubbed from every field."""

from __future__ import annotations

from collections.abc import Iterator

import pgparse
import psycopg
import pytest

from appliance.lab.postgres import PostgresServer
from appliance.policy.redact import REDACTED, Redactor

SECRET = "Hunter2'$\\x\u00e9"


def unicode_body(value: str, escape: str) -> str:
    return "".join(
        escape * 2 if ch == escape else "''" if ch == "'" else f"{escape}{ord(ch):04x}"
        for ch in value
    )


def literals(value: str) -> dict[str, str]:
    """``value`` spelled in each literal form."""
    quoted = value.replace("'", "''")
    e_body = value.replace("\\", "\\\\").replace("'", "\\'").replace("\u00e9", "\\303\\251")
    half = len(value) // 2
    first, rest = (part.replace("'", "''") for part in (value[:half], value[half:]))
    backslash = unicode_body(value, "\\")
    return {
        "standard": f"'{quoted}'",
        "escape": f"e'{e_body}'",
        "unicode": f"U&'{backslash}'",
        "uescape": f"u&'{unicode_body(value, '!')}' uescape '!'",
        "dollar": f"$pw${value}$pw$",
        "continued": f"'{first}' -- the rest\n '{rest}'",
    }


STATEMENTS = [
    "CREATE ROLE bob LOGIN PASSWORD {}",
    "alter user bob with encrypted password {} valid until 'infinity'",
    "ALTER ROLE bob PASSWORD {}",
    "create user mapping for bob server far options (user 'bob', password {})",
    "alter user mapping for bob server far options (set password {})",
    "alter server far options (add password {})",
    "select pgp_sym_encrypt('data', {}) is not null",
    "create subscription sub connection {} publication p with (connect = false)",
]


@pytest.fixture
def db(pg: PostgresServer) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(pg.url()) as conn:
        yield conn


def run_rolled_back(
    conn: psycopg.Connection[tuple[object, ...]], setup: list[str], text: str
) -> None:
    try:
        with conn.transaction(force_rollback=True):
            for statement in setup:
                conn.execute(statement)
            conn.execute(text)
    finally:
        conn.rollback()


SETUP = [
    "create extension if not exists pgcrypto",
    "create foreign data wrapper any_option",  # no validator: it takes any option
    "create server far foreign data wrapper any_option",
    "create role bob",
    "create user mapping for bob server far options (user 'bob', password 'old')",
]


@pytest.mark.parametrize("template", STATEMENTS)
@pytest.mark.parametrize("form", list(literals(SECRET)))
def test_the_server_accepts_the_corpus_and_its_redaction(
    db: psycopg.Connection[tuple[object, ...]], template: str, form: str
) -> None:
    value = SECRET if "subscription" not in template else f"host=nowhere password={SECRET}"
    text = template.format(literals(value)[form])
    setup = [s for s in SETUP if not (template.startswith("create user mapping") and "old" in s)]
    if template.startswith("CREATE ROLE"):
        setup = [s for s in setup if "role" not in s and "mapping" not in s]
    # The server reads the literal as the value: the corpus spells what it should.
    assert db.execute(f"select {literals(value)[form]} = %s", (value,)).fetchone() == (True,)
    db.rollback()
    run_rolled_back(db, setup, text)  # the original is real SQL
    result = Redactor().command(text)
    assert result is not None
    assert SECRET not in result.text and value not in result.text
    assert REDACTED in result.text
    assert value in result.secrets
    original = kinds(text)
    if original == [""]:
        return  # read by the lexer alone: the rest of the statement went too
    assert kinds(result.text) == original
    if "subscription" not in template:  # '[redacted]' is no connection string
        run_rolled_back(db, setup, result.text)  # and so is the recorded one


def kinds(text: str) -> list[str]:
    """The statement kinds, or [""] where libpg_query 17 refuses what PostgreSQL 15 takes
    (a literal continued over a comment)."""
    try:
        return [next(iter(s["stmt"])) for s in pgparse.parse(text)]
    except pgparse.PGQueryError:
        return [""]


def collect(error: psycopg.Error) -> dict[str, str]:
    diag = error.diag
    fields = {
        "message": diag.message_primary,
        "detail": diag.message_detail,
        "hint": diag.message_hint,
        "context": diag.context,
        "internal_query": diag.internal_query,
        "str": str(error),
    }
    return {name: value for name, value in fields.items() if value}


FAILING = [
    ("ALTER ROLE bob PASSWORD hunter22", "hunter22"),
    ("ALTER ROLE bob PASSWORD 'right' 'hunter22'", "hunter22"),
    ("ALTER ROLE bob PASSWORD 'hunter22", "hunter22"),
    ("ALTER ROLE bob PASSWORD $$hunter22", "hunter22"),
    ("ALTER ROLE bob PASSWORD E'hunter22\\", "hunter22"),
    ("ALTER ROLE bob PASSWORD U&'hunter22\\zz'", "hunter22"),
    ("ALTER ROLE bob UNENCRYPTED PASSWORD 'hunter22' 'x'", "hunter22"),
    ("ALTER ROLE bob PASSWORD 'x' 'q'", "q"),
    ("create user mapping for bob server far options (password 'p' 'hunter22')", "hunter22"),
    ("select pgp_sym_encrypt('data', 'x' 'hunter22')", "hunter22"),
]


@pytest.mark.parametrize(("text", "secret"), FAILING)
def test_scrub_removes_what_the_server_echoes(
    db: psycopg.Connection[tuple[object, ...]], text: str, secret: str
) -> None:
    redactor = Redactor()
    with pytest.raises(psycopg.Error) as caught:
        run_rolled_back(db, SETUP, text)
    fields = collect(caught.value)
    assert any(secret in value for value in fields.values()), fields  # the server echoed it
    result = redactor.command(text)
    assert result is not None
    assert secret not in result.text
    for name, value in fields.items():
        scrubbed = redactor.scrub(value, result.secrets)
        assert secret not in _outside_marker(scrubbed), (name, scrubbed)
        if name == "message":
            # Still readable: the server's own words stay.
            words = [w for w in value.split() if secret not in w]
            assert all(w in scrubbed for w in words), (value, scrubbed)


def _outside_marker(text: str) -> str:
    return text.replace("[redacted]", "")


def test_a_password_as_a_bind_parameter(db: psycopg.Connection[tuple[object, ...]]) -> None:
    """The server refuses ``PASSWORD $1``, but the parameter's value was sent all the same."""
    text = "ALTER ROLE bob PASSWORD $1"
    with (
        pytest.raises(psycopg.errors.SyntaxError) as caught,
        db.transaction(force_rollback=True),
    ):
        db.execute("create role bob")
        psycopg.RawCursor(db).execute(text, ("hunter22",))
    assert "hunter22" not in str(caught.value)
    result = Redactor().command(text)
    assert result is not None
    assert result.params == {1}
