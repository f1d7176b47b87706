"""The built-in PostgreSQL functions a statement may call without its effect becoming unknown.

A function call is where SQL stops saying what it does: a user-defined function may write
anywhere, and some built-ins act outside the statement (sleep, signal another backend, read
a server file, change a setting, take an advisory lock, advance a sequence). The guardrails
therefore treat a call of any function not listed here (nor in the policy's ``functions``)
as a statement whose effect cannot be known. This list holds only functions that compute a
value from their arguments and the database's visible state: aggregates, arithmetic, text,
dates and times, JSON, arrays, ranges, type conversions, and read-only catalog helpers.

A name matches when it is unqualified or qualified with ``pg_catalog``. An unqualified name
is only a built-in as long as nothing earlier on the search_path shadows it: a hostile agent
could create ``public.lower`` and ``SET search_path = public, pg_catalog``. The policy closes
that door rather than tracking the search_path: any ``SET search_path`` (or ``RESET`` of it)
and any call of ``set_config`` makes its statement one whose effect cannot be known, so a
session that tries to move the search_path is blocked unless a rule explicitly allows it.
(Creating the shadowing function is DDL, which rules can block too.)
"""

from __future__ import annotations

_AGGREGATES = """
array_agg avg bit_and bit_or bit_xor bool_and bool_or count every json_agg json_object_agg
jsonb_agg jsonb_object_agg max min range_agg range_intersect_agg string_agg sum xmlagg
corr covar_pop covar_samp regr_avgx regr_avgy regr_count regr_intercept regr_r2 regr_slope
regr_sxx regr_sxy regr_syy stddev stddev_pop stddev_samp variance var_pop var_samp mode
percentile_cont percentile_disc rank dense_rank percent_rank cume_dist grouping
any_value json_agg_strict jsonb_agg_strict json_object_agg_strict jsonb_object_agg_strict
json_object_agg_unique jsonb_object_agg_unique
"""

_WINDOW = "row_number ntile lag lead first_value last_value nth_value"

_MATH = """
abs cbrt ceil ceiling degrees div exp factorial floor gcd lcm ln log log10 min_scale mod pi
power radians round scale sign sqrt trim_scale trunc width_bucket acos acosd asin asind atan
atand atan2 atan2d cos cosd cot cotd sin sind tan tand sinh cosh tanh asinh acosh atanh erf
erfc greatest least numeric_inc
"""

# random() and friends read a generator, but change nothing another statement could see.
_RANDOM = "random random_normal gen_random_uuid uuidv4 setseed"

_STRING = """
ascii bit_length btrim char_length character_length chr concat concat_ws convert
convert_from convert_to decode encode format initcap left length lower lpad ltrim md5
normalize octet_length overlay parse_ident position quote_ident quote_literal quote_nullable
regexp_count regexp_instr regexp_like regexp_match regexp_matches regexp_replace
regexp_split_to_array regexp_split_to_table regexp_substr repeat replace reverse right rpad
rtrim split_part starts_with string_to_array string_to_table strpos substr substring
to_ascii to_hex to_bin to_oct translate trim unistr upper casefold sha224 sha256 sha384
sha512 crc32 crc32c get_bit get_byte set_bit set_byte bit_count unicode_assigned
unicode_version
"""

_TIME = """
age clock_timestamp current_date current_time current_timestamp date_add date_bin
date_part date_subtract date_trunc extract isfinite justify_days justify_hours
justify_interval localtime localtimestamp make_date make_interval make_time
make_timestamp make_timestamptz now statement_timestamp timeofday transaction_timestamp
to_timestamp to_date to_char to_number timezone overlaps
"""

_JSON = """
array_to_json json_array_elements json_array_elements_text json_array_length json_build_array
json_build_object json_each json_each_text json_extract_path json_extract_path_text
json_object json_object_keys json_populate_record json_populate_recordset json_scalar
json_serialize json_strip_nulls json_to_record json_to_recordset json_typeof jsonb_array_elements
jsonb_array_elements_text jsonb_array_length jsonb_build_array jsonb_build_object jsonb_each
jsonb_each_text jsonb_extract_path jsonb_extract_path_text jsonb_insert jsonb_object
jsonb_object_keys jsonb_path_exists jsonb_path_match jsonb_path_query jsonb_path_query_array
jsonb_path_query_first jsonb_populate_record jsonb_populate_recordset jsonb_pretty jsonb_set
jsonb_set_lax jsonb_strip_nulls jsonb_to_record jsonb_to_recordset jsonb_typeof row_to_json
to_json to_jsonb json_exists json_query json_value
"""

_ARRAY = """
array_append array_cat array_dims array_fill array_length array_lower array_ndims
array_position array_positions array_prepend array_remove array_replace array_sample
array_shuffle array_to_string array_upper array_reverse array_sort cardinality trim_array
unnest generate_series generate_subscripts
"""

_RANGE = """
lower_inc upper_inc lower_inf upper_inf isempty range_merge multirange int4range int8range
numrange tsrange tstzrange daterange
"""

_CONDITIONAL = "coalesce nullif num_nonnulls num_nulls"

_TYPES = """
cast text bool int2 int4 int8 float4 float8 numeric date time timestamp timestamptz interval
uuid bytea varchar bpchar inet cidr host hostmask masklen netmask network family broadcast
abbrev set_masklen inet_same_family inet_merge macaddr8_set7bit to_regclass to_regtype
to_regproc to_regprocedure to_regnamespace to_regrole to_regoper to_regoperator
to_regcollation to_regtypemod format_type pg_typeof pg_column_size pg_column_compression
"""

_TEXT_SEARCH = """
to_tsvector to_tsquery plainto_tsquery phraseto_tsquery websearch_to_tsquery ts_rank
ts_rank_cd ts_headline setweight strip tsvector_to_array array_to_tsvector numnode querytree
ts_rewrite length
"""

# Session facts and catalog readers: they read, and reveal nothing the catalog does not.
_SESSION = """
current_user current_role session_user user current_schema current_schemas current_database
current_catalog current_setting version inet_client_addr inet_client_port inet_server_addr
inet_server_port pg_backend_pid pg_postmaster_start_time pg_conf_load_time
pg_current_xact_id_if_assigned pg_is_in_recovery has_table_privilege has_schema_privilege
has_column_privilege has_database_privilege has_function_privilege has_sequence_privilege
has_any_column_privilege pg_has_role pg_table_is_visible pg_type_is_visible
pg_function_is_visible obj_description col_description shobj_description pg_get_viewdef
pg_get_indexdef pg_get_constraintdef pg_get_functiondef pg_get_function_arguments
pg_get_function_result pg_get_function_identity_arguments pg_get_expr pg_get_triggerdef
pg_get_ruledef pg_get_serial_sequence pg_get_userbyid pg_get_keywords pg_relation_size
pg_total_relation_size pg_table_size pg_indexes_size pg_database_size pg_size_pretty
pg_size_bytes pg_relation_filenode pg_encoding_to_char pg_char_to_encoding
pg_client_encoding pg_jit_available pg_trigger_depth pg_get_partkeydef
pg_index_column_has_property pg_index_has_property pg_indexam_has_property
pg_input_is_valid pg_input_error_info row_security_active pg_my_temp_schema
pg_is_other_temp_schema pg_listening_channels
"""

_NAMES = (
    _AGGREGATES,
    _WINDOW,
    _MATH,
    _RANDOM,
    _STRING,
    _TIME,
    _JSON,
    _ARRAY,
    _RANGE,
    _CONDITIONAL,
    _TYPES,
    _TEXT_SEARCH,
    _SESSION,
)

BUILTIN: frozenset[str] = frozenset(name for group in _NAMES for name in group.split())
"""Side-effect-free built-ins, by their unqualified lower-case name."""

# Never to be listed above, whatever a future edit adds: they act outside the statement.
# The test suite checks the two sets do not meet.
_NEVER = """
    pg_sleep pg_sleep_for pg_sleep_until pg_terminate_backend pg_cancel_backend set_config
    pg_read_file pg_read_binary_file pg_ls_dir pg_stat_file pg_ls_logdir pg_ls_waldir
    pg_ls_tmpdir pg_ls_archive_statusdir lo_import lo_export lo_unlink lo_create lo_open
    lo_put lo_from_bytea lo_truncate lowrite dblink dblink_exec dblink_connect
    dblink_send_query nextval setval currval lastval pg_advisory_lock
    pg_advisory_xact_lock pg_advisory_lock_shared pg_try_advisory_lock
    pg_advisory_unlock pg_advisory_unlock_all pg_reload_conf pg_rotate_logfile
    pg_switch_wal pg_notify txid_current pg_current_xact_id pg_create_restore_point
    pg_start_backup pg_backup_start pg_stop_backup pg_backup_stop pg_promote
    pg_create_logical_replication_slot pg_create_physical_replication_slot
    pg_drop_replication_slot pg_logical_emit_message pg_file_write pg_file_unlink
    pg_file_rename query_to_xml query_to_xmlschema table_to_xml cursor_to_xml
    pg_stat_reset pg_stat_reset_shared pg_import_system_collations
    pg_log_backend_memory_contexts
    """
NEVER: frozenset[str] = frozenset(_NEVER.split())


def builtin(name: str) -> bool:
    """Whether ``name`` (lower-case, as the analysis gives it) is an allowed built-in:
    unqualified, or qualified with pg_catalog."""
    schema, dot, bare = name.rpartition(".")
    if dot and schema != "pg_catalog":
        return False
    return bare in BUILTIN
