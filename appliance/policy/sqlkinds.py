"""Names for PostgreSQL's statement nodes: the kind a guardrail matches, and its category.

A kind is what the statement does, named the way an operator would write it in a rule:
``delete``, ``create_table``, ``alter_role``, ``copy_program``. A category groups kinds so
that a rule can speak of all writes, or all DDL, at once. :func:`kind_of` never fails: a
node it has no name for is kind ``other``, which a rule can still match.

The categories:

=========== =================================================================================
read        select (without a data-modifying part), values, copy_to, show, explain (without
            ANALYZE, or of a read), declare_cursor, fetch
write       insert, update, delete, merge, truncate, copy_from, select_into, create_table_as,
            refresh_materialized_view; and any read whose nested statements write (a SELECT
            with a DELETE in a CTE, EXPLAIN ANALYZE DELETE)
ddl         every create_/alter_/drop_ kind not listed elsewhere, comment, security_label,
            import_foreign_schema, drop_owned
privilege   grant, revoke, grant_role, revoke_role, set_role, set_session_authorization,
            create_role, alter_role, drop_role, alter_default_privileges, reassign_owned
transaction begin, commit, rollback, savepoint, release_savepoint, rollback_to_savepoint,
            prepare_transaction, commit_prepared, rollback_prepared, set_constraints
session     set, reset, discard, prepare, execute, deallocate, listen, notify, unlisten,
            move, close
admin       alter_system, vacuum, analyze, checkpoint, load, reindex, cluster, lock,
            copy_program
code        do, call
other       other (a node this module does not name)
=========== =================================================================================

SHOW is a read (it tells the client a setting, it changes nothing).
"""

from __future__ import annotations

from typing import Any

Fields = dict[str, Any]

# ObjectType values whose words do not read well once lower-cased.
_OBJECT_NAMES = {
    "FDW": "foreign_data_wrapper",
    "FOREIGN_SERVER": "server",
    "MATVIEW": "materialized_view",
    "OPCLASS": "operator_class",
    "OPFAMILY": "operator_family",
    "AMOP": "operator_family",
    "AMPROC": "operator_family",
    "STATISTIC_EXT": "statistics",
    "TSCONFIGURATION": "text_search_configuration",
    "TSDICTIONARY": "text_search_dictionary",
    "TSPARSER": "text_search_parser",
    "TSTEMPLATE": "text_search_template",
    "LARGEOBJECT": "large_object",
    "DEFACL": "default_privileges",
    "TABCONSTRAINT": "table",
    "DOMCONSTRAINT": "domain",
    "ATTRIBUTE": "type",
    "PUBLICATION_REL": "publication",
    "PUBLICATION_NAMESPACE": "publication",
    "PARAMETER_ACL": "parameter",
}

# Nodes whose kind does not depend on their fields.
_FIXED = {
    "InsertStmt": "insert",
    "UpdateStmt": "update",
    "DeleteStmt": "delete",
    "MergeStmt": "merge",
    "TruncateStmt": "truncate",
    "DoStmt": "do",
    "CallStmt": "call",
    "AlterSystemStmt": "alter_system",
    "LockStmt": "lock",
    "VariableShowStmt": "show",
    "DiscardStmt": "discard",
    "PrepareStmt": "prepare",
    "ExecuteStmt": "execute",
    "DeallocateStmt": "deallocate",
    "ExplainStmt": "explain",
    "CheckPointStmt": "checkpoint",
    "ListenStmt": "listen",
    "NotifyStmt": "notify",
    "UnlistenStmt": "unlisten",
    "LoadStmt": "load",
    "ReindexStmt": "reindex",
    "ClusterStmt": "cluster",
    "RefreshMatViewStmt": "refresh_materialized_view",
    "DeclareCursorStmt": "declare_cursor",
    "ClosePortalStmt": "close",
    "ConstraintsSetStmt": "set_constraints",
    "CommentStmt": "comment",
    "SecLabelStmt": "security_label",
    "CreateStmt": "create_table",
    "CreateForeignTableStmt": "create_foreign_table",
    "CreateSeqStmt": "create_sequence",
    "AlterSeqStmt": "alter_sequence",
    "IndexStmt": "create_index",
    "ViewStmt": "create_view",
    "CreateSchemaStmt": "create_schema",
    "CreatedbStmt": "create_database",
    "DropdbStmt": "drop_database",
    "AlterDatabaseStmt": "alter_database",
    "AlterDatabaseSetStmt": "alter_database",
    "AlterDatabaseRefreshCollStmt": "alter_database",
    "CreateRoleStmt": "create_role",
    "AlterRoleStmt": "alter_role",
    "AlterRoleSetStmt": "alter_role",
    "DropRoleStmt": "drop_role",
    "CreateExtensionStmt": "create_extension",
    "AlterExtensionStmt": "alter_extension",
    "AlterExtensionContentsStmt": "alter_extension",
    "CreateTrigStmt": "create_trigger",
    "CreateEventTrigStmt": "create_event_trigger",
    "AlterEventTrigStmt": "alter_event_trigger",
    "RuleStmt": "create_rule",
    "CreatePolicyStmt": "create_policy",
    "AlterPolicyStmt": "alter_policy",
    "CreateDomainStmt": "create_domain",
    "AlterDomainStmt": "alter_domain",
    "CreateEnumStmt": "create_type",
    "CreateRangeStmt": "create_type",
    "CompositeTypeStmt": "create_type",
    "AlterEnumStmt": "alter_type",
    "AlterTypeStmt": "alter_type",
    "AlterCollationStmt": "alter_collation",
    "CreateCastStmt": "create_cast",
    "CreateConversionStmt": "create_conversion",
    "CreateAmStmt": "create_access_method",
    "CreateOpClassStmt": "create_operator_class",
    "CreateOpFamilyStmt": "create_operator_family",
    "AlterOpFamilyStmt": "alter_operator_family",
    "AlterOperatorStmt": "alter_operator",
    "CreatePLangStmt": "create_language",
    "CreateFdwStmt": "create_foreign_data_wrapper",
    "AlterFdwStmt": "alter_foreign_data_wrapper",
    "CreateForeignServerStmt": "create_server",
    "AlterForeignServerStmt": "alter_server",
    "CreateUserMappingStmt": "create_user_mapping",
    "AlterUserMappingStmt": "alter_user_mapping",
    "DropUserMappingStmt": "drop_user_mapping",
    "ImportForeignSchemaStmt": "import_foreign_schema",
    "CreateTableSpaceStmt": "create_tablespace",
    "DropTableSpaceStmt": "drop_tablespace",
    "AlterTableSpaceOptionsStmt": "alter_tablespace",
    "CreatePublicationStmt": "create_publication",
    "AlterPublicationStmt": "alter_publication",
    "CreateSubscriptionStmt": "create_subscription",
    "AlterSubscriptionStmt": "alter_subscription",
    "DropSubscriptionStmt": "drop_subscription",
    "CreateStatsStmt": "create_statistics",
    "AlterStatsStmt": "alter_statistics",
    "CreateTransformStmt": "create_transform",
    "AlterTSDictionaryStmt": "alter_text_search_dictionary",
    "AlterTSConfigurationStmt": "alter_text_search_configuration",
    "AlterDefaultPrivilegesStmt": "alter_default_privileges",
    "DropOwnedStmt": "drop_owned",
    "ReassignOwnedStmt": "reassign_owned",
}

# The nodes kind_of names by their fields.
_BY_FIELDS = [
    "SelectStmt",
    "CopyStmt",
    "GrantStmt",
    "GrantRoleStmt",
    "VariableSetStmt",
    "TransactionStmt",
    "VacuumStmt",
    "FetchStmt",
    "CreateTableAsStmt",
    "CreateFunctionStmt",
    "DefineStmt",
    "DropStmt",
    "AlterTableStmt",
    "AlterTableMoveAllStmt",
    "AlterFunctionStmt",
    "RenameStmt",
    "AlterObjectSchemaStmt",
    "AlterOwnerStmt",
    "AlterObjectDependsStmt",
]

# Every statement node that has a kind: the walk treats these as statements when nested.
STATEMENTS = frozenset(_FIXED).union(_BY_FIELDS)

_TRANSACTIONS = {
    "TRANS_STMT_BEGIN": "begin",
    "TRANS_STMT_START": "begin",
    "TRANS_STMT_COMMIT": "commit",
    "TRANS_STMT_ROLLBACK": "rollback",
    "TRANS_STMT_SAVEPOINT": "savepoint",
    "TRANS_STMT_RELEASE": "release_savepoint",
    "TRANS_STMT_ROLLBACK_TO": "rollback_to_savepoint",
    "TRANS_STMT_PREPARE": "prepare_transaction",
    "TRANS_STMT_COMMIT_PREPARED": "commit_prepared",
    "TRANS_STMT_ROLLBACK_PREPARED": "rollback_prepared",
}

_NAMED_CATEGORIES = {
    "read": "select values copy_to show explain declare_cursor fetch",
    "write": "insert update delete merge truncate copy_from select_into create_table_as "
    "refresh_materialized_view",
    "ddl": "comment security_label import_foreign_schema drop_owned",
    "privilege": "grant revoke grant_role revoke_role set_role set_session_authorization "
    "create_role alter_role drop_role alter_default_privileges reassign_owned",
    "transaction": "begin commit rollback savepoint release_savepoint rollback_to_savepoint "
    "prepare_transaction commit_prepared rollback_prepared set_constraints",
    "session": "set reset discard prepare execute deallocate listen notify unlisten move close",
    "admin": "alter_system vacuum analyze checkpoint load reindex cluster lock copy_program",
    "code": "do call",
}
CATEGORIES: dict[str, str] = {
    kind: category for category, kinds in _NAMED_CATEGORIES.items() for kind in kinds.split()
}


# The kinds kind_of gives by looking at fields, beyond the create_/alter_/drop_ ones.
_BY_FIELD_KINDS = (
    "select values select_into copy_program copy_from copy_to grant revoke grant_role "
    "revoke_role set_role set_session_authorization reset set transaction vacuum analyze "
    "move fetch create_materialized_view create_table_as create_procedure create_function "
    "other"
)


def named_kinds() -> frozenset[str]:
    """Every kind kind_of can give, but the create_/alter_/drop_ ones built from an object
    type (those are as many as PostgreSQL's ObjectType values)."""
    return frozenset(
        {*_FIXED.values(), *_TRANSACTIONS.values(), *CATEGORIES, *_BY_FIELD_KINDS.split()}
    )


def object_name(object_type: object) -> str:
    """``OBJECT_MATVIEW`` -> ``materialized_view``; anything unexpected -> ``object``."""
    if not isinstance(object_type, str) or not object_type.startswith("OBJECT_"):
        return "object"
    word = object_type[len("OBJECT_") :]
    return _OBJECT_NAMES.get(word, word.lower())


def kind_of(node: str, fields: Fields) -> str:
    """The kind of one statement node (its name and its fields, as the parser gave them)."""
    fixed = _FIXED.get(node)
    if fixed is not None:
        return fixed
    if node == "SelectStmt":
        if fields.get("intoClause"):
            return "select_into"
        return "values" if fields.get("valuesLists") else "select"
    if node == "CopyStmt":
        if fields.get("is_program"):
            return "copy_program"
        return "copy_from" if fields.get("is_from") else "copy_to"
    if node == "GrantStmt":
        return "grant" if fields.get("is_grant") else "revoke"
    if node == "GrantRoleStmt":
        return "grant_role" if fields.get("is_grant") else "revoke_role"
    if node == "VariableSetStmt":
        name = fields.get("name")
        if name == "role":
            return "set_role"
        if name == "session_authorization":
            return "set_session_authorization"
        return "reset" if fields.get("kind") in ("VAR_RESET", "VAR_RESET_ALL") else "set"
    if node == "TransactionStmt":
        return _TRANSACTIONS.get(str(fields.get("kind")), "transaction")
    if node == "VacuumStmt":
        return "vacuum" if fields.get("is_vacuumcmd") else "analyze"
    if node == "FetchStmt":
        return "move" if fields.get("ismove") else "fetch"
    if node == "CreateTableAsStmt":
        if fields.get("objtype") == "OBJECT_MATVIEW":
            return "create_materialized_view"
        return "create_table_as"
    if node == "CreateFunctionStmt":
        return "create_procedure" if fields.get("is_procedure") else "create_function"
    if node == "DefineStmt":
        return "create_" + object_name(fields.get("kind"))
    if node == "DropStmt":
        return "drop_" + object_name(fields.get("removeType"))
    if node in ("AlterTableStmt", "AlterTableMoveAllStmt"):
        return "alter_" + object_name(fields.get("objtype"))
    if node == "AlterFunctionStmt":
        return "alter_" + object_name(fields.get("objtype"))
    if node == "RenameStmt":
        renamed = fields.get("renameType")
        if renamed in ("OBJECT_COLUMN", "OBJECT_TABCONSTRAINT"):
            renamed = fields.get("relationType")
        return "alter_" + object_name(renamed)
    if node in ("AlterObjectSchemaStmt", "AlterOwnerStmt", "AlterObjectDependsStmt"):
        return "alter_" + object_name(fields.get("objectType"))
    return "other"


def category_of(kind: str) -> str:
    """The category of a kind; every create_/alter_/drop_ kind not named above is DDL."""
    category = CATEGORIES.get(kind)
    if category is not None:
        return category
    if kind.startswith(("create_", "alter_", "drop_")):
        return "ddl"
    return "other"
