"""The words a rule's ``kinds`` may name: every kind the analysis can give a statement, and
the categories, each standing for all of its kinds.

One vocabulary, the analysis's own (:mod:`appliance.policy.sqlkinds`): a misspelt kind is
an error when the policy is loaded, never a rule that silently matches nothing, and a kind
named here is one the analysis really gives.
"""

from __future__ import annotations

from appliance.policy import sqlkinds

# The objects a create_/alter_/drop_ kind can name, as sqlkinds.object_name spells
# PostgreSQL's ObjectType values.
_OBJECTS = """
access_method aggregate cast collation column conversion database default
default_privileges domain event_trigger extension foreign_data_wrapper server foreign_table
function index language large_object materialized_view operator operator_class
operator_family parameter policy procedure publication role routine rule schema sequence
subscription statistics table tablespace transform trigger text_search_configuration
text_search_dictionary text_search_parser text_search_template type user_mapping view
"""
OBJECTS: tuple[str, ...] = tuple(_OBJECTS.split())

KINDS: frozenset[str] = frozenset(
    {
        *sqlkinds.named_kinds(),
        *(f"{verb}_{thing}" for verb in ("create", "alter", "drop") for thing in OBJECTS),
    }
)
CATEGORIES: frozenset[str] = frozenset({*sqlkinds.CATEGORIES.values(), "ddl", "other"})
WORDS: frozenset[str] = KINDS | CATEGORIES
"""What a rule's ``kinds`` may name: a kind, or a category standing for all of its kinds."""


def category(kind: str) -> str:
    """The category of ``kind``, as the analysis gives it."""
    return sqlkinds.category_of(kind)
