"""The off-host anchor: a PostgreSQL table of every bastion's checkpoints, which a bastion
may add to but never change, and which ``witness verify`` checks a trail against."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from appliance.config import AnchorSettings
from appliance.trail.checkpoint import Checkpoint

# The roles are cluster-wide, the schema per database. Every statement can be run again.
ROLES = """\
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'witness_bastion') THEN
        CREATE ROLE witness_bastion NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'witness_auditor') THEN
        CREATE ROLE witness_auditor NOLOGIN;
    END IF;
END
$$;
"""
SCHEMA = """\
-- The Witness anchor: every checkpoint of every bastion's trail. A bastion adds its own and
-- reads them back; it can change or remove none, and neither can root on the bastion.
-- Run this as a superuser, or the database's owner, in the anchor's database.
BEGIN;
CREATE SCHEMA IF NOT EXISTS witness;
CREATE TABLE IF NOT EXISTS witness.checkpoints (
    -- the trail's id, from its genesis event
    trail     text        NOT NULL CHECK (trail ~ '^[0-9a-f]{32}$'),
    -- the last event the checkpoint covers, and that event's chain hash (SHA-256)
    seq       bigint      NOT NULL CHECK (seq > 0),
    hash      text        NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    -- the signing key's fingerprint, and its Ed25519 signature (base64) over
    -- 'witness-checkpoint' NUL seq NUL hash
    key       text        NOT NULL,
    signature text        NOT NULL,
    -- when the bastion signed it (the bastion's clock), and when it arrived (the anchor's)
    made      timestamptz NOT NULL,
    received  timestamptz NOT NULL DEFAULT now(),
    -- the role that published it: the bastion, as it logged in
    bastion   name        NOT NULL DEFAULT session_user,
    PRIMARY KEY (trail, seq)
);
{ROLES}REVOKE ALL ON SCHEMA witness FROM PUBLIC;
REVOKE ALL ON witness.checkpoints FROM PUBLIC;
GRANT USAGE ON SCHEMA witness TO witness_bastion, witness_auditor;
-- A bastion names neither itself nor the time of arrival: the anchor fills both in.
GRANT INSERT (trail, seq, hash, key, signature, made) ON witness.checkpoints
    TO witness_bastion;
GRANT SELECT ON witness.checkpoints TO witness_bastion, witness_auditor;
ALTER TABLE witness.checkpoints ENABLE ROW LEVEL SECURITY;
-- session_user, not current_user: SET ROLE cannot make a bastion publish as another.
DROP POLICY IF EXISTS bastion_adds_its_own ON witness.checkpoints;
CREATE POLICY bastion_adds_its_own ON witness.checkpoints FOR INSERT TO witness_bastion
    WITH CHECK (bastion = session_user);
DROP POLICY IF EXISTS bastion_reads_its_own ON witness.checkpoints;
CREATE POLICY bastion_reads_its_own ON witness.checkpoints FOR SELECT TO witness_bastion
    USING (bastion = session_user);
DROP POLICY IF EXISTS auditor_reads_all ON witness.checkpoints;
CREATE POLICY auditor_reads_all ON witness.checkpoints FOR SELECT TO witness_auditor
    USING (true);
COMMIT;
""".replace("{ROLES}", ROLES)

_INSERT = (
    "INSERT INTO witness.checkpoints (trail, seq, hash, key, signature, made)"
    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (trail, seq) DO NOTHING"
)
_FETCH = (
    "SELECT seq, hash, key, signature, made, received, bastion FROM witness.checkpoints"
    " WHERE trail = %s ORDER BY seq"
)


class AnchorError(Exception):
    """The anchor cannot be reached or used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Anchored:
    """One checkpoint as the anchor holds it, with who published it and when."""

    checkpoint: Checkpoint
    bastion: str
    made: datetime
    received: datetime


def bastion_sql(role: str) -> str:
    """The statement that lets one bastion publish, as ``role``."""
    quoted = '"' + role.replace('"', '""') + '"'
    return (
        f"CREATE ROLE {quoted} LOGIN IN ROLE witness_bastion;\n"
        f"-- then give it a password (in psql: \\password {quoted}) and the bastion a passfile\n"
    )


def where(settings: AnchorSettings) -> str:
    """The anchor's connection string without its password, for messages and logs."""
    try:
        params = conninfo_to_dict(settings.dsn)
    except psycopg.ProgrammingError:
        return "the anchor"
    params.pop("password", None)
    return make_conninfo("", **params)


def connect(settings: AnchorSettings) -> psycopg.Connection[Any]:
    """A connection to the anchor; each statement on it is bounded by ``settings.timeout``."""
    extra: dict[str, Any] = {"connect_timeout": max(1, round(settings.timeout))}
    if settings.passfile is not None:
        extra["passfile"] = str(settings.passfile)
    try:
        conn = psycopg.connect(settings.dsn, autocommit=True, application_name="witness", **extra)
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false)",
            (str(int(settings.timeout * 1000)),),
        )
    except psycopg.Error as exc:
        raise AnchorError(f"anchor {where(settings)}: {_why(exc)}") from None
    return conn


def publish(
    conn: psycopg.Connection[Any],
    settings: AnchorSettings,
    trail: str,
    checkpoints: Sequence[tuple[int, Checkpoint]],
) -> None:
    """Add ``checkpoints`` ((made in microseconds, checkpoint), ...) of trail ``trail``.

    One transaction; a checkpoint the anchor holds already is left as it is, so that
    publishing again after a failure or a restart is harmless.
    """
    rows = [
        (trail, c.seq, c.hash, c.key, c.signature, datetime.fromtimestamp(made / 1e6, UTC))
        for made, c in checkpoints
    ]
    try:
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(_INSERT, rows)
    except psycopg.Error as exc:
        raise AnchorError(f"anchor {where(settings)}: cannot publish: {_why(exc)}") from None


def fetch(settings: AnchorSettings, trail: str) -> list[Anchored]:
    """Every checkpoint of trail ``trail`` the anchor holds (that this role may read)."""
    with connect(settings) as conn:
        try:
            rows = conn.execute(_FETCH, (trail,)).fetchall()
        except psycopg.Error as exc:
            raise AnchorError(f"anchor {where(settings)}: cannot read: {_why(exc)}") from None
    return [
        Anchored(Checkpoint(int(seq), hash, key, signature), str(bastion), made, received)
        for seq, hash, key, signature, made, received, bastion in rows
    ]


def _why(exc: psycopg.Error) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
