"""Secrets found in SQL commands by PostgreSQL's grammar, and removed from the record."""

from __future__ import annotations

import itertools

import pgparse
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.policy import redact as redact_module
from appliance.policy import sqllex
from appliance.policy.redact import REDACTED, Redactor, parse_functions


@pytest.fixture
def redactor() -> Redactor:
    return Redactor()


def kinds(text: str) -> list[str]:
    return [next(iter(s["stmt"])) for s in pgparse.parse(text)]


# Literal forms: each spells ``value`` as a SQL literal PostgreSQL reads back as ``value``.


def standard(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def escaped(value: str) -> str:
    out = []
    for ch in value:
        if ch in "\\'":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) > 0xFFFF:
            out.append(f"\\U{ord(ch):08x}")
        elif ord(ch) > 0x7E:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "E'" + "".join(out) + "'"


def unicode_escaped(value: str, escape: str = "\\") -> str:
    out = []
    for ch in value:
        if ch == escape:
            out.append(escape * 2)
        elif ch == "'":
            out.append("''")
        elif ord(ch) > 0xFFFF:
            out.append(f"{escape}+{ord(ch):06x}")
        elif ord(ch) > 0x7E or ch.isalpha():
            out.append(f"{escape}{ord(ch):04x}")
        else:
            out.append(ch)
    clause = "" if escape == "\\" else f" UESCAPE '{escape}'"
    return "U&'" + "".join(out) + "'" + clause


def dollar(value: str) -> str:
    n = 0
    while True:
        tag = f"$t{n}$"
        if (value + tag).find(tag) == len(value):
            return tag + value + tag
        n += 1


def continued(value: str) -> str:
    half = len(value) // 2
    return standard(value[:half]) + " \n  " + standard(value[half:])


def commented(value: str) -> str:
    """Continued over a comment (PostgreSQL 15 reads it so, libpg_query 17 refuses it), in
    E mode: the continuation keeps the escapes of the literal it continues."""
    half = len(value) // 2
    return escaped(value[:half]) + " -- the rest\n  " + escaped(value[half:])[1:]


FORMS = [standard, escaped, unicode_escaped, dollar, continued, commented]

TEMPLATES = [
    "ALTER ROLE bob PASSWORD {}",
    "alter user bob with encrypted password {} valid until 'infinity'",
    "CREATE ROLE bob LOGIN /* a /* nested */ comment */ PASSWORD\n{} CREATEDB",
    "create user mapping for bob server s options (user 'bob', password {})",
    "ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET password {})",
    "create server s foreign data wrapper w options (host 'h', password {})",
    "select pgp_sym_encrypt('data', {})",
    "select public.pgp_pub_decrypt(m, {}::bytea)",
    "CREATE SUBSCRIPTION s CONNECTION {} PUBLICATION p",
    "select dblink_connect({})",
]

PASSWORDS = st.lists(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
    | st.sampled_from(["'", "\\", "$", "\n", "$$", "''", "\\'", "--", "/*", "*/", "é", "😀"]),
    min_size=1,
    max_size=16,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    password=PASSWORDS,
    form=st.sampled_from(FORMS),
    template=st.sampled_from(TEMPLATES),
)
def test_a_password_in_any_literal_form_is_replaced_whole(
    password: str, form: object, template: str
) -> None:
    assert callable(form)
    literal = form(password)
    text = template.format(literal)
    result = Redactor().command(text)
    assert result is not None
    assert literal not in result.text
    assert password in result.secrets
    assert not result.params
    try:
        original = kinds(text)
    except pgparse.PGQueryError:
        # Read by the lexer alone: the literal and what follows it in the statement go.
        assert form is commented
        assert result.text.startswith(template.split("{}", maxsplit=1)[0] + REDACTED)
        return
    assert result.text == template.format(REDACTED)
    assert kinds(result.text) == original


@pytest.mark.parametrize("template", TEMPLATES)
def test_a_password_as_a_bind_parameter_is_reported_by_number(
    redactor: Redactor, template: str
) -> None:
    text = template.format("$2")
    result = redactor.command(text)
    assert result is not None
    assert result.params == {2}
    try:
        pgparse.parse(text)
    except pgparse.PGQueryError:
        return  # read by the lexer alone: what follows may go too
    assert result.text == text
    assert not result.changed


def test_a_forms_encoder_is_what_the_parser_reads() -> None:
    """The property test's literals mean what they should: PostgreSQL's parser agrees."""
    value = "a'b\\c$d\né😀"
    for form in FORMS[:-1]:
        tree = pgparse.parse(f"select {form(value)}")
        constant = tree[0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]
        assert constant["A_Const"]["sval"]["sval"] == value, form


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("AlTeR uSeR bob WiTh PaSsWoRd 'hunter22'", "hunter22"),
        ("alter role bob -- a comment\n password /* another */ 'hunter22'", "hunter22"),
        ("alter role bob encrypted\npassword\t'hunter22'", "hunter22"),
        # What psql's \password sends: a verifier, hashed by the client.
        (
            "ALTER USER bob PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy'",
            "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy",
        ),
        ("alter role bob password 'md5" + "0123456789abcdef" * 2 + "'", "md5" + "0123456789ab"),
        ("create group g password 'hunter22'", "hunter22"),
        ("alter role bob password U&'!0068unter22' uescape '!' valid until 'infinity'", "hunter22"),
        ("alter role bob password E'hunter\\x32\\0622'", "hunter22"),
        ("alter role bob password $pw$hunter22$pw$", "hunter22"),
        ("create user mapping for bob server s options (\"password\" 'hunter22')", "hunter22"),
        (
            "create user mapping for bob server s options (passfile 'x', passwd 'hunter22')",
            "hunter",
        ),
        ("alter server s options (add password 'hunter22', drop user)", "hunter22"),
        ("alter subscription s connection 'host=h password=hunter22'", "host=h"),
        ("select \"pgp_sym_decrypt\"(m, 'hunter22')", "hunter22"),
        ("select U&\"pgp\\005fsym_decrypt\"(m, 'hunter22')", "hunter22"),
        ("select PG_CATALOG.PGP_SYM_DECRYPT(m, 'hunter22' || 'x')", "hunter22"),
        ("select pgp_sym_decrypt(m, text 'hunter22')", "hunter22"),
        ("select crypt('hunter22', gen_salt('bf'))", "hunter22"),
        ("select dblink('host=h password=hunter22', 'select 1')", "password=hunter22"),
        ("select pgp_sym_encrypt(psw => 'hunter22', data => 'x')", "hunter22"),
        ("select pgp_pub_decrypt(m, 'key-material', 'hunter22')", "hunter22"),
    ],
)
def test_hostile_spellings(redactor: Redactor, text: str, secret: str) -> None:
    result = redactor.command(text)
    assert result is not None
    assert secret not in result.text
    assert REDACTED in result.text
    assert result.changed


def test_only_the_secret_arguments_go(redactor: Redactor) -> None:
    result = redactor.command("select pgp_sym_encrypt('plain data', 'key', 'cipher-algo=aes256')")
    assert result is not None
    assert result.text == f"select pgp_sym_encrypt('plain data', {REDACTED}, 'cipher-algo=aes256')"
    assert result.secrets[0] == "key"


def test_a_column_or_expression_argument_is_left_alone(redactor: Redactor) -> None:
    assert redactor.command("select pgp_sym_decrypt(m, k.secret_key) from k") is None


@pytest.mark.parametrize(
    "text",
    [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213",
        "UPDATE pgbench_accounts SET abalance = abalance + -2 WHERE aid = 3",
        "alter role bob password null",
        "alter server s options (drop password)",
        "select passenger from trips",  # the prefilter lets it through; the grammar decides
        "select encrypt_me from t",
    ],
)
def test_nothing_to_redact(redactor: Redactor, text: str) -> None:
    assert redactor.command(text) is None


def test_a_text_without_a_possible_secret_is_not_parsed(
    redactor: Redactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed = []
    real = pgparse.parse

    def recording(text: str) -> object:
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(redact_module.pgparse, "parse", recording)
    assert redactor.command("SELECT abalance FROM pgbench_accounts WHERE aid = 48213") is None
    assert parsed == []
    for text in (
        'select "PGP_SYM_ENCRYPT"(1)',
        'select u&"\\0070gp"()',
        "ALTER ROLE x PASSWORD 'y'",
    ):
        redactor.command(text)
        assert parsed[-1] == text


def test_each_text_is_parsed_once(redactor: Redactor, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = pgparse.parse

    def counting(text: str) -> object:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(redact_module.pgparse, "parse", counting)
    first = redactor.command("alter role bob password 'x1'")
    assert first == redactor.command("alter role bob password 'x1'")
    assert len(calls) == 1


@pytest.mark.parametrize(
    "text",
    [
        "ALTER ROLE bob PASSWORD hunter22",  # unquoted: a syntax error
        "ALTER ROLE bob PASSWORD 'hunter22' 'again'",
        "ALTER ROLE bob PASSWORD 'hunter22",  # cut off in the literal
        "ALTER ROLE bob PASSWORD E'hunter22\\'; select 1",  # cut off, the quote escaped
        "alter role bob unencrypted password 'hunter22'",  # the grammar refuses it
        "alter role bob password 'x' 'y'; alter role carol password 'hunter22'",
        "create user mapping for bob server s options (password 'hunter22' user 'x')",
        "create subscription s connection 'password=hunter22' publication",
        "select pgp_sym_encrypt('x', 'hunter22') frm t",
        "select pgp_sym_encrypt('x', 'hunter22'",
    ],
)
def test_a_text_that_does_not_parse_does_not_leak(redactor: Redactor, text: str) -> None:
    with pytest.raises(pgparse.PGQueryError):
        pgparse.parse(text)
    result = redactor.command(text)
    assert result is not None
    assert "hunter22" not in result.text
    assert any("hunter22" in s for s in result.secrets)


def test_an_unparsed_statement_keeps_what_precedes_and_follows(redactor: Redactor) -> None:
    result = redactor.command("select 1; ALTER ROLE bob PASSWORD hunter22 VALID UNTIL x; select 2")
    assert result is not None
    assert result.text == f"select 1; ALTER ROLE bob PASSWORD {REDACTED}; select 2"


def test_an_unparsed_parameter_is_reported(redactor: Redactor) -> None:
    result = redactor.command("ALTER ROLE bob PASSWORD $1 'junk'; select pgp_sym_encrypt($2, $3")
    assert result is not None
    assert result.params == {1, 3}


def test_several_statements_each_redacted(redactor: Redactor) -> None:
    text = (
        "select 'é'; alter role \"ÿ\" password 'one1'; select 1;\n"
        "create user mapping for bob server s options (password 'two2'); "
        "select pgp_sym_decrypt(m, 'three3'), pgp_sym_decrypt(m, $4)"
    )
    result = redactor.command(text)
    assert result is not None
    assert result.text == (
        f"select 'é'; alter role \"ÿ\" password {REDACTED}; select 1;\n"
        f"create user mapping for bob server s options (password {REDACTED}); "
        f"select pgp_sym_decrypt(m, {REDACTED}), pgp_sym_decrypt(m, $4)"
    )
    assert result.params == {4}
    assert {"one1", "two2", "three3"} <= set(result.secrets)


def test_bodies_of_do_blocks_and_functions(redactor: Redactor) -> None:
    result = redactor.command(
        "DO $$ BEGIN PERFORM pgp_sym_encrypt('x', 'key1'); "
        "EXECUTE 'select 1'; ALTER ROLE bob PASSWORD 'pw22'; END $$"
    )
    assert result is not None
    assert result.text == (
        f"DO $$ BEGIN PERFORM pgp_sym_encrypt('x', {REDACTED}); "
        f"EXECUTE 'select 1'; ALTER ROLE bob PASSWORD {REDACTED}; END $$"
    )
    quoted = redactor.command("do 'begin perform pgp_sym_encrypt(''x'', ''key1''); end'")
    assert quoted is not None
    assert quoted.text == f"do {REDACTED}"
    function = redactor.command(
        "create function f(k text) returns bytea language sql "
        "as $f$ select pgp_sym_encrypt('x', k) || pgp_sym_encrypt('y', 'key1') $f$"
    )
    assert function is not None
    assert "key1" not in function.text
    assert not function.params  # the body's $n are the function's, not the command's


def test_configured_functions_add_to_the_defaults() -> None:
    redactor = Redactor({"vault.unseal": (2,), "Login": (1, 3)})
    result = redactor.command(
        "select vault.unseal('a', 'b'), other.unseal('c', 'd'), unseal('e', 'f'), "
        "login('g', 'h', 'i'), pgp_sym_decrypt(m, 'j')"
    )
    assert result is not None
    assert result.text == (
        f"select vault.unseal('a', {REDACTED}), other.unseal('c', 'd'), "
        f"unseal('e', {REDACTED}), login({REDACTED}, 'h', {REDACTED}), "
        f"pgp_sym_decrypt(m, {REDACTED})"
    )
    assert Redactor({"login": (1,)}).command('select "LOGIN"($7)') is not None


def test_parse_functions() -> None:
    assert parse_functions({"Vault.Unseal": 2, "login": [3, 1, 3]}, "policy.redact_functions") == {
        "vault.unseal": (2,),
        "login": (1, 3),
    }
    for bad in ([1], {"f": 0}, {"f": []}, {"f": True}, {"f": "1"}, {"a.b.c": 1}, {"": 1}):
        with pytest.raises(ValueError, match=r"policy\.redact_functions"):
            parse_functions(bad, "policy.redact_functions")


def test_scrub_removes_each_secret_as_the_server_prints_it(redactor: Redactor) -> None:
    result = redactor.command("ALTER ROLE bob PASSWORD 'it''s secret' 'more'")
    assert result is not None
    message = redactor.scrub(
        "syntax error at or near \"'more'\"; the password it's secret was refused", result.secrets
    )
    assert "secret" not in message
    assert "more" not in message
    assert message.startswith("syntax error at or near")


def test_scrub_short_secrets_only_inside_quotes(redactor: Redactor) -> None:
    message = redactor.scrub('syntax error at or near "a" at a later place', ["a", "'a'"])
    assert message == 'syntax error at or near "[redacted]" at a later place'
    assert redactor.scrub("nothing here", []) == "nothing here"
    assert redactor.scrub("nothing here", [""]) == "nothing here"


def test_scrub_overlapping_occurrences(redactor: Redactor) -> None:
    assert redactor.scrub("x abcabcab y", ["abcab"]) == "x [redacted] y"
    assert redactor.scrub("a secretsecret b", ["secret", "cretse"]) == "a [redacted] b"


def test_the_lexer_reads_literal_boundaries() -> None:
    text = "E'a\\'b' U&'x' UESCAPE '!' 'c'\n'd' $q$e$$q$ \"f\"\"g\" /* /* */ */ $1 -- z"
    seen = [(t.kind, t.value, text[t.start : t.end]) for t in sqllex.tokens(text)]
    assert seen == [
        (sqllex.STRING, "a'b", "E'a\\'b'"),
        (sqllex.STRING, "x", "U&'x' UESCAPE '!'"),
        (sqllex.STRING, "cd", "'c'\n'd'"),
        (sqllex.STRING, "e$", "$q$e$$q$"),
        (sqllex.QIDENT, 'f"g', '"f""g"'),
        (sqllex.PARAM, "1", "$1"),
    ]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_the_lexer_and_redactor_take_any_text(text: str) -> None:
    spans = list(sqllex.tokens(text))
    assert all(a.end <= b.start for a, b in itertools.pairwise(spans))
    assert all(a.start < a.end for a in spans)
    # The reading itself, not its fail-closed net, which would hide a defect that raises.
    Redactor()._read(f"{text} password {text}")
