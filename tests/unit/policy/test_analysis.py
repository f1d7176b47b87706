"""The statement analysis: what a SQL text does, read by PostgreSQL's grammar."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.policy import analysis
from appliance.policy.analysis import Analysis, Statement, analyse
from appliance.policy.sqlkinds import CATEGORIES, STATEMENTS, category_of, kind_of


def one(text: str) -> Statement:
    result = analyse(text)
    assert result.error is None, result.error
    assert len(result.statements) == 1, result.statements
    return result.statements[0]


E: frozenset[str] = frozenset()


def s(*names: str) -> frozenset[str]:
    return frozenset(names)


# (text, kind, category, reads, writes, functions)
KINDS = [
    ("SELECT a FROM t WHERE b > 1", "select", "read", s("t"), E, E),
    ("VALUES (1), (2)", "values", "read", E, E, E),
    ("INSERT INTO s.t (a) VALUES (now())", "insert", "write", E, s("s.t"), s("now")),
    ("UPDATE t SET a = 1 FROM u WHERE t.id = u.id", "update", "write", s("u"), s("t"), E),
    ("DELETE FROM t USING u WHERE t.id = u.id", "delete", "write", s("u"), s("t"), E),
    (
        "MERGE INTO t USING src ON t.id = src.id WHEN MATCHED THEN DELETE",
        "merge",
        "write",
        s("src"),
        s("t"),
        E,
    ),
    ("TRUNCATE a, s.b", "truncate", "write", E, s("a", "s.b"), E),
    ("COPY t FROM STDIN", "copy_from", "write", E, s("t"), E),
    ("COPY t TO STDOUT", "copy_to", "read", s("t"), E, E),
    ("COPY (SELECT * FROM t) TO STDOUT", "copy_to", "read", s("t"), E, E),
    ("COPY t FROM PROGRAM 'curl x'", "copy_program", "admin", E, s("t"), E),
    ("COPY t TO PROGRAM 'nc h 1'", "copy_program", "admin", s("t"), E, E),
    ("DO $$ BEGIN PERFORM 1; END $$", "do", "code", E, E, E),
    ("CALL s.p(f(1))", "call", "code", E, E, s("s.p", "f")),
    ("GRANT SELECT ON t TO bob", "grant", "privilege", E, s("t"), E),
    ("REVOKE ALL ON SCHEMA s FROM bob", "revoke", "privilege", E, E, E),
    ("GRANT admin TO bob", "grant_role", "privilege", E, E, E),
    ("REVOKE admin FROM bob", "revoke_role", "privilege", E, E, E),
    ("SET ROLE admin", "set_role", "privilege", E, E, E),
    ("RESET ROLE", "set_role", "privilege", E, E, E),
    ("SET SESSION AUTHORIZATION bob", "set_session_authorization", "privilege", E, E, E),
    ("RESET SESSION AUTHORIZATION", "set_session_authorization", "privilege", E, E, E),
    ("ALTER SYSTEM SET work_mem = '1GB'", "alter_system", "admin", E, E, E),
    ("LOCK t IN ACCESS EXCLUSIVE MODE", "lock", "admin", E, s("t"), E),
    ("LOCK t IN ACCESS SHARE MODE", "lock", "admin", s("t"), E, E),
    ("SET search_path = s", "set", "session", E, E, E),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "set", "session", E, E, E),
    ("RESET ALL", "reset", "session", E, E, E),
    ("SHOW work_mem", "show", "read", E, E, E),
    ("DISCARD ALL", "discard", "session", E, E, E),
    ("PREPARE p AS SELECT * FROM t", "prepare", "session", s("t"), E, E),
    ("DEALLOCATE p", "deallocate", "session", E, E, E),
    ("EXPLAIN SELECT * FROM t", "explain", "read", s("t"), E, E),
    ("BEGIN", "begin", "transaction", E, E, E),
    ("START TRANSACTION READ ONLY", "begin", "transaction", E, E, E),
    ("COMMIT", "commit", "transaction", E, E, E),
    ("ROLLBACK", "rollback", "transaction", E, E, E),
    ("SAVEPOINT a", "savepoint", "transaction", E, E, E),
    ("RELEASE SAVEPOINT a", "release_savepoint", "transaction", E, E, E),
    ("ROLLBACK TO SAVEPOINT a", "rollback_to_savepoint", "transaction", E, E, E),
    ("PREPARE TRANSACTION 'g'", "prepare_transaction", "transaction", E, E, E),
    ("COMMIT PREPARED 'g'", "commit_prepared", "transaction", E, E, E),
    ("ROLLBACK PREPARED 'g'", "rollback_prepared", "transaction", E, E, E),
    ("SET CONSTRAINTS ALL DEFERRED", "set_constraints", "transaction", E, E, E),
    ("VACUUM FULL t", "vacuum", "admin", E, s("t"), E),
    ("ANALYZE s.t", "analyze", "admin", E, s("s.t"), E),
    ("CHECKPOINT", "checkpoint", "admin", E, E, E),
    ("LISTEN ch", "listen", "session", E, E, E),
    ("NOTIFY ch, 'x'", "notify", "session", E, E, E),
    ("UNLISTEN *", "unlisten", "session", E, E, E),
    ("LOAD 'auto_explain'", "load", "admin", E, E, E),
    ("REINDEX TABLE t", "reindex", "admin", E, s("t"), E),
    ("CLUSTER t USING t_pkey", "cluster", "admin", E, s("t"), E),
    ("REFRESH MATERIALIZED VIEW mv", "refresh_materialized_view", "write", E, s("mv"), E),
    ("SELECT * INTO t2 FROM t", "select_into", "write", s("t"), s("t2"), E),
    ("CREATE TABLE t2 AS SELECT * FROM t", "create_table_as", "write", s("t"), s("t2"), E),
    ("CREATE MATERIALIZED VIEW mv AS SELECT 1", "create_materialized_view", "ddl", E, s("mv"), E),
    ("DECLARE c CURSOR FOR SELECT * FROM t", "declare_cursor", "read", s("t"), E, E),
    ("FETCH 10 FROM c", "fetch", "read", E, E, E),
    ("MOVE c", "move", "session", E, E, E),
    ("CLOSE c", "close", "session", E, E, E),
    # DDL: one kind per statement and object type; the object is written.
    (
        "CREATE TABLE t (a int DEFAULT nextval('q') REFERENCES u, LIKE v)",
        "create_table",
        "ddl",
        s("u", "v"),
        s("t"),
        s("nextval"),
    ),
    ("CREATE UNLOGGED TABLE s.t (a int)", "create_table", "ddl", E, s("s.t"), E),
    ("ALTER TABLE t ADD COLUMN b int", "alter_table", "ddl", E, s("t"), E),
    ("ALTER TABLE t RENAME TO u", "alter_table", "ddl", E, s("t"), E),
    ("ALTER TABLE t RENAME COLUMN a TO b", "alter_table", "ddl", E, s("t"), E),
    ("ALTER TABLE t OWNER TO bob", "alter_table", "ddl", E, s("t"), E),
    ("ALTER TABLE t SET SCHEMA s", "alter_table", "ddl", E, s("t"), E),
    ("ALTER VIEW v RENAME TO w", "alter_view", "ddl", E, s("v"), E),
    ("ALTER INDEX i RENAME TO j", "alter_index", "ddl", E, s("i"), E),
    ("DROP TABLE a, s.b CASCADE", "drop_table", "ddl", E, s("a", "s.b"), E),
    ("DROP TABLE c.s.t", "drop_table", "ddl", E, s("s.t"), E),
    ("DROP INDEX i", "drop_index", "ddl", E, s("i"), E),
    ("DROP VIEW v", "drop_view", "ddl", E, s("v"), E),
    ("DROP MATERIALIZED VIEW mv", "drop_materialized_view", "ddl", E, s("mv"), E),
    ("DROP SEQUENCE q", "drop_sequence", "ddl", E, s("q"), E),
    ("DROP FUNCTION f(int)", "drop_function", "ddl", E, E, E),
    ("DROP PROCEDURE p()", "drop_procedure", "ddl", E, E, E),
    ("DROP SCHEMA s CASCADE", "drop_schema", "ddl", E, E, E),
    ("DROP TRIGGER tr ON s.t", "drop_trigger", "ddl", E, s("s.t"), E),
    ("DROP POLICY p ON t", "drop_policy", "ddl", E, s("t"), E),
    ("DROP EXTENSION e", "drop_extension", "ddl", E, E, E),
    ("DROP DATABASE d", "drop_database", "ddl", E, E, E),
    ("DROP TYPE ty", "drop_type", "ddl", E, E, E),
    ("CREATE INDEX i ON t (lower(a))", "create_index", "ddl", E, s("t"), s("lower")),
    ("CREATE VIEW v AS SELECT * FROM t", "create_view", "ddl", s("t"), s("v"), E),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "create_function",
        "ddl",
        E,
        E,
        E,
    ),
    ("CREATE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'", "create_procedure", "ddl", E, E, E),
    ("ALTER FUNCTION f() OWNER TO bob", "alter_function", "ddl", E, E, E),
    ("ALTER FUNCTION f() SECURITY DEFINER", "alter_function", "ddl", E, E, E),
    ("CREATE SCHEMA s", "create_schema", "ddl", E, E, E),
    ("ALTER SCHEMA s RENAME TO r", "alter_schema", "ddl", E, E, E),
    ("CREATE ROLE r LOGIN", "create_role", "privilege", E, E, E),
    ("CREATE USER u", "create_role", "privilege", E, E, E),
    ("ALTER ROLE r SUPERUSER", "alter_role", "privilege", E, E, E),
    ("ALTER ROLE r SET work_mem = '1MB'", "alter_role", "privilege", E, E, E),
    ("DROP ROLE r", "drop_role", "privilege", E, E, E),
    ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO r", "alter_default_privileges",
     "privilege", E, E, E),
    ("REASSIGN OWNED BY a TO b", "reassign_owned", "privilege", E, E, E),
    ("DROP OWNED BY a", "drop_owned", "ddl", E, E, E),
    ("CREATE EXTENSION dblink", "create_extension", "ddl", E, E, E),
    ("ALTER EXTENSION e UPDATE", "alter_extension", "ddl", E, E, E),
    ("COMMENT ON TABLE s.t IS 'x'", "comment", "ddl", E, s("s.t"), E),
    ("COMMENT ON COLUMN s.t.c IS 'x'", "comment", "ddl", E, s("s.t"), E),
    ("SECURITY LABEL ON TABLE t IS 'x'", "security_label", "ddl", E, s("t"), E),
    ("CREATE SEQUENCE q", "create_sequence", "ddl", E, s("q"), E),
    ("ALTER SEQUENCE q RESTART", "alter_sequence", "ddl", E, s("q"), E),
    (
        "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
        "create_trigger",
        "ddl",
        E,
        s("t"),
        E,
    ),
    ("CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING", "create_rule", "ddl", E, s("t"), E),
    ("CREATE POLICY p ON t USING (owner = current_user)", "create_policy", "ddl", E, s("t"), E),
    ("CREATE DOMAIN d AS int CHECK (VALUE > 0)", "create_domain", "ddl", E, E, E),
    ("CREATE TYPE ty AS ENUM ('a')", "create_type", "ddl", E, E, E),
    ("CREATE TYPE ty AS (a int)", "create_type", "ddl", E, s("ty"), E),  # a row type
    ("ALTER TYPE ty ADD VALUE 'b'", "alter_type", "ddl", E, E, E),
    ("CREATE AGGREGATE ag (int) (sfunc = int4pl, stype = int)", "create_aggregate", "ddl", E, E,
     E),
    ("CREATE OPERATOR === (function = f, leftarg = int, rightarg = int)", "create_operator",
     "ddl", E, E, E),
    ("CREATE DATABASE d", "create_database", "ddl", E, E, E),
    ("ALTER DATABASE d SET work_mem = '1MB'", "alter_database", "ddl", E, E, E),
    ("CREATE TABLESPACE ts LOCATION '/x'", "create_tablespace", "ddl", E, E, E),
    ("CREATE SERVER srv FOREIGN DATA WRAPPER w", "create_server", "ddl", E, E, E),
    ("CREATE USER MAPPING FOR bob SERVER srv", "create_user_mapping", "ddl", E, E, E),
    ("CREATE FOREIGN TABLE ft (a int REFERENCES r) SERVER srv", "create_foreign_table", "ddl",
     s("r"), s("ft"), E),
    ("IMPORT FOREIGN SCHEMA x FROM SERVER srv INTO s", "import_foreign_schema", "ddl", E, E, E),
    ("CREATE PUBLICATION pub FOR TABLE t", "create_publication", "ddl", s("t"), E, E),
    ("CREATE SUBSCRIPTION sub CONNECTION 'x' PUBLICATION pub", "create_subscription", "ddl", E,
     E, E),
    ("CREATE EVENT TRIGGER et ON ddl_command_start EXECUTE FUNCTION f()",
     "create_event_trigger", "ddl", E, E, E),
    ("CREATE STATISTICS st ON a, b FROM t", "create_statistics", "ddl", E, s("t"), E),
    ("CREATE LANGUAGE plx HANDLER h", "create_language", "ddl", E, E, E),
    ("CREATE CAST (int AS text) WITH INOUT", "create_cast", "ddl", E, E, E),
    ("CREATE COLLATION c (locale = 'C')", "create_collation", "ddl", E, E, E),
    ("CREATE TEXT SEARCH DICTIONARY d (template = simple)",
     "create_text_search_dictionary", "ddl", E, E, E),
]  # fmt: skip


Case = tuple[str, str, str, frozenset[str], frozenset[str], frozenset[str]]


@pytest.mark.parametrize("case", KINDS, ids=[case[0][:50] for case in KINDS])
def test_kind_category_tables_functions(case: Case) -> None:
    text, kind, category, reads, writes, functions = case
    statement = one(text)
    assert (statement.kind, statement.category) == (kind, category)
    assert statement.reads == reads
    assert statement.writes == writes
    assert statement.functions == functions


def test_every_named_kind_has_a_category_and_a_case() -> None:
    tested = {case[1] for case in KINDS}
    untested = set(CATEGORIES) - tested - {"execute", "prepare"}
    assert not untested
    for kind in tested:
        assert category_of(kind) != "other", kind


def test_ddl_kinds_not_named_are_ddl_and_unknown_words_are_other() -> None:
    assert category_of("create_whatever") == "ddl"
    assert category_of("other") == "other"


def test_execute_and_do_are_unknown() -> None:
    execute = one("EXECUTE fetch_rows(1, 2)")
    assert (execute.kind, execute.category) == ("execute", "session")
    assert execute.unknown == "runs prepared statement fetch_rows"
    assert one("DO $$ BEGIN DELETE FROM t; END $$").unknown == "a DO block runs procedural code"
    # The body of a DO block is a string: its DELETE is not visible, hence unknown.
    assert one("DO $$ BEGIN DELETE FROM t; END $$").writes == E
    assert one("CREATE TABLE t2 AS EXECUTE p").unknown == "runs prepared statement p"
    assert one("EXPLAIN ANALYZE EXECUTE p").unknown == "runs prepared statement p"


def test_rules_and_triggers_are_ddl_whose_effects_are_not_known() -> None:
    """What a rule or a trigger will do runs later, on other statements that are decided
    as themselves: making one is unknown, blocked unless a rule allows it by name."""
    trigger = one("CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()")
    assert trigger.unknown is not None and "trigger" in trigger.unknown
    rule = one("CREATE RULE r AS ON DELETE TO t DO INSTEAD DELETE FROM audit")
    assert rule.unknown is not None and "rule" in rule.unknown
    assert (rule.kind, rule.category) == ("create_rule", "ddl")
    # The rule's action runs later, on someone else's DELETE: named, not written now.
    assert rule.writes == s("t")
    assert rule.reads == s("audit")
    assert rule.inner == E
    assert not rule.no_where


def test_function_body_is_not_run_by_create_function() -> None:
    created = one("CREATE FUNCTION f() RETURNS void BEGIN ATOMIC DELETE FROM t; END")
    assert created.kind == "create_function"
    assert created.inner == E
    assert created.writes == E
    assert created.reads == s("t")
    assert not created.no_where


# --- statements that hide inside others ------------------------------------------------------


def test_delete_in_a_cte_of_a_select() -> None:
    st_ = one("WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone")
    assert st_.kind == "select"
    assert st_.category == "write"
    assert st_.inner == s("delete")
    assert st_.writes == s("t")
    assert st_.reads == E  # gone is the CTE, not a table
    assert st_.no_where


def test_insert_in_a_nested_cte_of_a_subquery() -> None:
    text = "SELECT * FROM (WITH x AS (INSERT INTO log VALUES (1) RETURNING 1) SELECT * FROM x) y"
    st_ = one(text)
    assert st_.inner == s("insert")
    assert st_.writes == s("log")
    assert st_.category == "write"


def test_explain_analyze_runs_its_statement() -> None:
    st_ = one("EXPLAIN ANALYZE DELETE FROM t WHERE id = 1")
    assert (st_.kind, st_.category, st_.inner, st_.writes) == (
        "explain",
        "write",
        s("delete"),
        s("t"),
    )
    for spelling in ("EXPLAIN (ANALYZE) ", "EXPLAIN (ANALYSE TRUE) ", "explain (analyze 'on') "):
        assert one(spelling + "UPDATE t SET a = 1").inner == s("update")
    # An ANALYZE option switched off does not run it; an unclear value counts as on.
    for off in ("EXPLAIN (ANALYZE false) ", "EXPLAIN (ANALYZE 0) ", "EXPLAIN (ANALYZE off) "):
        plain = one(off + "DELETE FROM t")
        assert (plain.category, plain.inner, plain.writes) == ("read", E, E)
        assert plain.reads == s("t")
        assert not plain.no_where
    assert one("EXPLAIN (ANALYZE false, ANALYZE) DELETE FROM t").inner == s("delete")


def test_explain_without_analyze_only_plans() -> None:
    st_ = one("EXPLAIN DELETE FROM t")
    assert (st_.category, st_.inner, st_.writes, st_.reads) == ("read", E, E, s("t"))


def test_create_table_as_and_select_into_from_a_table() -> None:
    ctas = one("CREATE TABLE copy AS SELECT * FROM secrets")
    assert (ctas.kind, ctas.category) == ("create_table_as", "write")
    assert (ctas.reads, ctas.writes) == (s("secrets"), s("copy"))
    into = one("SELECT * INTO TEMP copy FROM secrets")
    assert (into.kind, into.category) == ("select_into", "write")
    assert (into.reads, into.writes) == (s("secrets"), s("copy"))
    nested = one("CREATE TABLE c AS WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d")
    assert nested.inner == s("delete")
    analysed = one("EXPLAIN ANALYZE CREATE TABLE c AS SELECT 1")
    assert (analysed.inner, analysed.category) == (s("create_table_as"), "write")


def test_copy_query_to_and_prepare_carry_their_statements() -> None:
    copy = one("COPY (DELETE FROM t RETURNING *) TO STDOUT")
    assert (copy.kind, copy.category, copy.inner, copy.writes) == (
        "copy_to",
        "write",
        s("delete"),
        s("t"),
    )
    prepared = one("PREPARE p (int) AS UPDATE t SET a = $1")
    assert (prepared.kind, prepared.inner, prepared.writes, prepared.no_where) == (
        "prepare",
        s("update"),
        s("t"),
        True,
    )


def test_insert_select_from_another_table() -> None:
    st_ = one("INSERT INTO public.dst SELECT * FROM private.src WHERE EXISTS (SELECT 1 FROM x)")
    assert (st_.reads, st_.writes) == (s("private.src", "x"), s("public.dst"))


def test_tables_everywhere_in_the_tree() -> None:
    text = """
        WITH c AS (SELECT * FROM a)
        SELECT (SELECT max(v) FROM b), f(x)
        FROM c JOIN d ON d.id = c.id LEFT JOIN LATERAL g(d.id) ON true
        WHERE EXISTS (SELECT 1 FROM e WHERE e.id = d.id) AND d.id IN (SELECT id FROM s.h)
        UNION ALL SELECT 1, 2 FROM ONLY i TABLESAMPLE system (1)
    """
    st_ = one(text)
    assert st_.reads == s("a", "b", "d", "e", "s.h", "i")
    assert st_.functions == s("max", "f", "g")
    returning = one("UPDATE t SET a = 1 WHERE id = 2 RETURNING (SELECT x FROM secret LIMIT 1)")
    assert returning.reads == s("secret")


def test_cte_names_hide_tables_only_where_they_are_visible() -> None:
    # The outer "secret" is the table; the inner one is the CTE.
    st_ = one("SELECT * FROM secret, (WITH secret AS (SELECT 1) SELECT * FROM secret) x")
    assert st_.reads == s("secret")
    # A CTE refers only to the CTEs before it, unless the WITH is RECURSIVE.
    assert one("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a").reads == s("b")
    assert one("WITH RECURSIVE a AS (SELECT * FROM a) SELECT * FROM a").reads == E
    # A schema-qualified name is never a CTE.
    assert one("WITH t AS (SELECT 1) SELECT * FROM public.t").reads == s("public.t")
    # The target of a DML statement is always a table, whatever CTE shares its name.
    assert one("WITH t AS (SELECT 1) DELETE FROM t WHERE a = 1").writes == s("t")


# --- WHERE --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "DELETE FROM t",
        "UPDATE t SET a = 1",
        "DELETE FROM t WHERE true",
        "DELETE FROM t WHERE 1=1",
        "DELETE FROM t WHERE 'a' = 'a'",
        "UPDATE t SET a = 1 WHERE NOT false OR 2 > 1",
        "DELETE FROM t WHERE $1",
        "DELETE FROM t WHERE EXISTS (SELECT 1)",
        "DELETE FROM t WHERE now() > '2000-01-01'",
        "WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d",
        "delete/**/from t where/* a = 1 */ true",
    ],
)
def test_no_where(text: str) -> None:
    assert one(text).no_where


@pytest.mark.parametrize(
    "text",
    [
        "DELETE FROM t WHERE id = 1",
        "UPDATE t SET a = 1 WHERE t.id IN (SELECT id FROM u)",
        "DELETE FROM t WHERE CURRENT OF c",
        "INSERT INTO t VALUES (1)",
        "TRUNCATE t",
        "SELECT * FROM t",
    ],
)
def test_where_present(text: str) -> None:
    assert not one(text).no_where


# --- hostile texts ------------------------------------------------------------------------


def test_comments_and_dollar_quotes_hide_nothing_and_fake_nothing() -> None:
    assert one("/* SELECT */ DELETE -- SELECT\n FROM t WHERE a = 1").kind == "delete"
    assert one("SELECT $$; DELETE FROM t; $$").kind == "select"
    assert one("SELECT $x$ $$ ; DROP TABLE t; $$ $x$").kind == "select"
    assert one("SELECT '; DROP TABLE t; --'").kind == "select"
    assert one("/* nested /* comment */ DROP TABLE t; */ SELECT 1").kind == "select"
    assert one("SELECT 1 -- ; DROP TABLE t").kind == "select"


def test_mixed_case_and_quoted_identifiers() -> None:
    st_ = one('dElEtE fRoM "Secret"."Table" WHERE "Id" = 1')
    assert (st_.kind, st_.writes) == ("delete", s("Secret.Table"))
    assert one("DELETE FROM Secret.TABLE_A WHERE x = 1").writes == s("secret.table_a")
    # U&"d\0061ta" is the identifier "data".
    assert one('SELECT * FROM U&"d\\0061t\\+000061"').reads == s("data")
    assert one('SELECT * FROM "a.b"').reads == s("a.b")  # one quoted name, not a schema


def test_semicolons_in_strings_and_several_statements() -> None:
    single = analyse("SELECT ';' AS a, $$;$$, E'\\;'")
    assert (len(single.statements), single.multiple) == (1, False)
    several = analyse("SELECT 1; DELETE FROM t; DROP TABLE u")
    assert several.multiple
    assert [x.kind for x in several.statements] == ["select", "delete", "drop_table"]
    assert analyse(";;SELECT 1;;").multiple is False


def test_parse_errors_carry_the_position() -> None:
    result = analyse("SELECT 1; DELETE FRM t")
    assert result.statements == ()
    assert result.error is not None
    assert "syntax error" in result.error
    assert "position 18" in result.error


@pytest.mark.parametrize("text", ["", "   ", "-- just a comment", "/* c */", ";", "\n;\n"])
def test_empty_texts(text: str) -> None:
    assert analyse(text) == Analysis(())


def test_nul_byte_is_refused_not_truncated() -> None:
    # The parser would stop at the NUL and see only a SELECT.
    result = analyse("SELECT 1\0; DROP TABLE t")
    assert result.statements == ()
    assert result.error is not None
    assert "NUL" in result.error


def test_lone_surrogate_is_an_error() -> None:
    result = analyse("SELECT '\ud800'")
    assert result.statements == ()
    assert result.error is not None
    assert "surrogate" in result.error


def test_backslash_quote_is_unknown_since_a_session_may_read_it_otherwise() -> None:
    # With standard_conforming_strings off, the server sees a DELETE here.
    st_ = one("SELECT '\\' , '; DELETE FROM t; --'")
    assert st_.kind == "select"
    assert st_.unknown is not None
    assert "standard_conforming_strings" in st_.unknown
    assert one("SELECT 'a\\b', E'\\n'").unknown is None


def test_deeply_nested_parentheses_give_an_answer() -> None:
    for depth in (100, 1000, 10_000, 100_000):
        result = analyse("SELECT " + "(" * depth + "1" + ")" * depth)
        assert isinstance(result, Analysis)
        assert result.error is not None or result.statements[0].kind == "select"
    assert analyse("SELECT " + "(" * 10_000 + "1" + ")" * 10_000).error is not None


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1" + "+1" * 200_000,  # left-associative: as deep as the text is long
        "SELECT 1" + " UNION SELECT 1" * 50_000,
        "SELECT x" + "::int" * 100_000,
        "SELECT " + "f(" * 20_000 + ")" * 20_000,
        "SELECT " + "-" * 100_000 + "1",
        "SELECT " + "ARRAY[" * 20_000 + "]" * 20_000,
    ],
)
def test_deep_trees_do_not_crash_the_process(text: str) -> None:
    # Without its own stack, the parser overflows the C stack here and kills the process.
    result = analyse(text)
    assert isinstance(result, Analysis)
    assert result.error is not None or len(result.statements) == 1


def test_a_megabyte_text() -> None:
    values = ",".join(f"({i}, 'row {i}')" for i in range(60_000))
    text = f"INSERT INTO big (a, b) VALUES {values}"
    assert len(text) > 1_000_000
    st_ = one(text)
    assert (st_.kind, st_.writes) == ("insert", s("big"))
    assert analyse(text) is analyse(text)


def test_a_text_too_long_for_any_stack_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(analysis, "STACK_MAX", analysis.STACK_BASE + 1000 * 256)
    result = analysis._analyse("SELECT " + "1," * 1000 + "1")
    assert result.error is not None
    assert "too long" in result.error


def test_parsed_once_and_cached() -> None:
    text = "SELECT * FROM cache_probe WHERE a = 42"
    first = analyse(text)
    assert analyse(text) is first
    assert analyse(text + " ") is not first


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gives_an_analysis(text: str) -> None:
    result = analyse(text)
    assert isinstance(result, Analysis)
    assert (result.error is None) or result.statements == ()


SQL_WORDS = st.sampled_from(
    [
        "SELECT",
        "DELETE",
        "FROM",
        "WHERE",
        "(",
        ")",
        ";",
        ",",
        "'",
        "$$",
        "--",
        "/*",
        "*/",
        "\\",
        '"',
        "t",
        "1",
        "true",
        "WITH",
        "AS",
        "INSERT",
        "INTO",
        "VALUES",
        "UPDATE",
        "SET",
        "EXPLAIN",
        "ANALYZE",
        "COPY",
        "PROGRAM",
        "TO",
        "STDOUT",
        "CREATE",
        "TABLE",
        "DROP",
        "U&",
        "E'",
        "::",
        "+",
        "*",
        "=",
        "RETURNING",
        "JOIN",
        "ON",
        "UNION",
        "DO",
        "CALL",
        "f",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(SQL_WORDS, max_size=40).map(" ".join))
def test_any_sql_like_text_gives_an_analysis(text: str) -> None:
    result = analyse(text)
    assert isinstance(result, Analysis)
    for statement in result.statements:
        assert statement.category == category_of(statement.kind) or statement.category == "write"


PGBENCH = [
    "UPDATE pgbench_accounts SET abalance = abalance + 1234 WHERE aid = 5678;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 5678;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + 1234 WHERE tid = 12;",
    "UPDATE pgbench_branches SET bbalance = bbalance + 1234 WHERE bid = 1;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
    "VALUES (12, 1, 5678, 1234, CURRENT_TIMESTAMP);",
]


def test_speed_on_a_cache_miss() -> None:
    rounds = 200
    started = time.perf_counter()
    for i in range(rounds):
        for text in PGBENCH:
            assert analyse(f"{text} -- {i}").error is None
    per_text = (time.perf_counter() - started) / (rounds * len(PGBENCH))
    print(f"analyse on a cache miss: {per_text * 1e6:.1f} µs per pgbench statement")
    assert per_text < 500e-6


def test_every_statement_node_of_the_grammar_has_a_kind() -> None:
    # libpg_query 17's statement nodes; those only PL/pgSQL or ALTER TABLE produce excepted.
    nodes = set(
        [
            "AlterCollationStmt",
            "AlterDatabaseRefreshCollStmt",
            "AlterDatabaseSetStmt",
            "AlterDatabaseStmt",
            "AlterDefaultPrivilegesStmt",
            "AlterDomainStmt",
            "AlterEnumStmt",
            "AlterEventTrigStmt",
            "AlterExtensionContentsStmt",
            "AlterExtensionStmt",
            "AlterFdwStmt",
            "AlterForeignServerStmt",
            "AlterFunctionStmt",
            "AlterObjectDependsStmt",
            "AlterObjectSchemaStmt",
            "AlterOpFamilyStmt",
            "AlterOperatorStmt",
            "AlterOwnerStmt",
            "AlterPolicyStmt",
            "AlterPublicationStmt",
            "AlterRoleSetStmt",
            "AlterRoleStmt",
            "AlterSeqStmt",
            "AlterStatsStmt",
            "AlterSubscriptionStmt",
            "AlterSystemStmt",
            "AlterTSConfigurationStmt",
            "AlterTSDictionaryStmt",
            "AlterTableMoveAllStmt",
            "AlterTableSpaceOptionsStmt",
            "AlterTableStmt",
            "AlterTypeStmt",
            "AlterUserMappingStmt",
            "CallStmt",
            "CheckPointStmt",
            "ClosePortalStmt",
            "ClusterStmt",
            "CommentStmt",
            "CompositeTypeStmt",
            "ConstraintsSetStmt",
            "CopyStmt",
            "CreateAmStmt",
            "CreateCastStmt",
            "CreateConversionStmt",
            "CreateDomainStmt",
            "CreateEnumStmt",
            "CreateEventTrigStmt",
            "CreateExtensionStmt",
            "CreateFdwStmt",
            "CreateForeignServerStmt",
            "CreateForeignTableStmt",
            "CreateFunctionStmt",
            "CreateOpClassStmt",
            "CreateOpFamilyStmt",
            "CreatePLangStmt",
            "CreatePolicyStmt",
            "CreatePublicationStmt",
            "CreateRangeStmt",
            "CreateRoleStmt",
            "CreateSchemaStmt",
            "CreateSeqStmt",
            "CreateStatsStmt",
            "CreateStmt",
            "CreateSubscriptionStmt",
            "CreateTableAsStmt",
            "CreateTableSpaceStmt",
            "CreateTransformStmt",
            "CreateTrigStmt",
            "CreateUserMappingStmt",
            "CreatedbStmt",
            "DeallocateStmt",
            "DeclareCursorStmt",
            "DefineStmt",
            "DeleteStmt",
            "DiscardStmt",
            "DoStmt",
            "DropOwnedStmt",
            "DropRoleStmt",
            "DropStmt",
            "DropSubscriptionStmt",
            "DropTableSpaceStmt",
            "DropUserMappingStmt",
            "DropdbStmt",
            "ExecuteStmt",
            "ExplainStmt",
            "FetchStmt",
            "GrantRoleStmt",
            "GrantStmt",
            "ImportForeignSchemaStmt",
            "IndexStmt",
            "InsertStmt",
            "ListenStmt",
            "LoadStmt",
            "LockStmt",
            "MergeStmt",
            "NotifyStmt",
            "PrepareStmt",
            "ReassignOwnedStmt",
            "RefreshMatViewStmt",
            "ReindexStmt",
            "RenameStmt",
            "RuleStmt",
            "SecLabelStmt",
            "SelectStmt",
            "TransactionStmt",
            "TruncateStmt",
            "UnlistenStmt",
            "UpdateStmt",
            "VacuumStmt",
            "VariableSetStmt",
            "VariableShowStmt",
            "ViewStmt",
        ]
    )
    assert nodes == STATEMENTS
    for node in nodes:
        assert kind_of(node, {}) != "other", node
    assert kind_of("PLAssignStmt", {}) == "other"
