"""The statement kinds and categories a rule may name, and the category of each kind.

The analysis names what a statement is (``Statement.kind``) and which group it belongs to
(``Statement.category``). Rules name the same words, and a misspelt one must be an error at
load, never a rule that silently matches nothing: hence one vocabulary, here. The category of
a kind nested inside another statement (``Statement.inner``) is looked up here too, so that
``kinds = ["write"]`` sees the DELETE a SELECT's WITH carries.
"""

from __future__ import annotations

_READ = "select explain show values table fetch copy_to"
_WRITE = "insert update delete merge truncate copy_from select_into"
_CODE = "do call copy_program execute load"
_TRANSACTION = """
begin start_transaction commit rollback savepoint release_savepoint rollback_to_savepoint
prepare_transaction commit_prepared rollback_prepared set_transaction abort end
"""
_SESSION = """
set reset set_role reset_role set_session_authorization reset_session_authorization
discard listen unlisten notify prepare deallocate declare close move set_constraints
"""
_PRIVILEGE = "grant revoke grant_role revoke_role alter_default_privileges"
_ADMIN = """
alter_system vacuum analyze cluster reindex checkpoint lock refresh_materialized_view
reassign_owned drop_owned import_foreign_schema security_label comment
"""

# The objects DDL statements act on, one kind per (verb, object): create_table, drop_index...
_OBJECTS = """
table index sequence view materialized_view function procedure routine aggregate schema
extension type domain trigger event_trigger role user group database tablespace policy
rule operator operator_class operator_family collation conversion foreign_table
foreign_data_wrapper server user_mapping publication subscription statistics language
cast transform access_method text_search_configuration text_search_dictionary
text_search_parser text_search_template large_object table_as
"""
OBJECTS: tuple[str, ...] = tuple(_OBJECTS.split())

_GROUPS = {
    "read": _READ,
    "write": _WRITE,
    "code": _CODE,
    "transaction": _TRANSACTION,
    "session": _SESSION,
    "privilege": _PRIVILEGE,
    "admin": _ADMIN,
}

CATEGORY: dict[str, str] = {
    kind: group for group, words in _GROUPS.items() for kind in words.split()
}
"""Each known kind's category."""
for _object in OBJECTS:
    for _verb in ("create", "alter", "drop"):
        CATEGORY[f"{_verb}_{_object}"] = "ddl"
CATEGORY["rename"] = "ddl"

CATEGORIES: frozenset[str] = frozenset({*_GROUPS, "ddl", "other"})
KINDS: frozenset[str] = frozenset(CATEGORY)
WORDS: frozenset[str] = KINDS | CATEGORIES
"""What a rule's ``kinds`` may name: a kind, or a category standing for all of its kinds."""


def category(kind: str) -> str:
    """The category of ``kind``; ``other`` for a kind this vocabulary does not know."""
    return CATEGORY.get(kind, "other")
