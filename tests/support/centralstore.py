"""A real central store for the tests: a PostgreSQL of its own, its schema made by
``witness central schema`` (bastion roles b1 and b2, and an auditor), its partitions by
``witness central maintain``."""

from __future__ import annotations

import subprocess
from typing import Any

import psycopg
from witnessproc import WITNESS, run

from appliance.lab.postgres import PostgresServer


class Central:
    """A PostgreSQL holding the central store in database ``central``."""

    def __init__(self) -> None:
        self.server = PostgresServer()
        self.server.start()
        self.server.psql("CREATE DATABASE central")
        printed = run(WITNESS, "central", "schema", "--bastion=b1", "--bastion=b2")
        assert printed.returncode == 0, printed.stderr
        applied = subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-", self.url("postgres")],
            input=printed.stdout, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert applied.returncode == 0, applied.stderr
        self.admin("CREATE ROLE auditor LOGIN IN ROLE witness_auditor")
        made = run(WITNESS, "central", "maintain", "--dsn", self.url("postgres"))
        assert made.returncode == 0 and "partition(s) made" in made.stdout, made.stderr

    def url(self, user: str) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.server.port}/central"

    def admin(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            cursor = conn.execute(sql, params or None)
            return cursor.fetchall() if cursor.description else []
