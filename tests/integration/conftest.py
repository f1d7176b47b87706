"""Fixtures that start real servers: a lab PostgreSQL and the witness recorder in front of it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from witnessproc import Witness

from appliance.lab.postgres import PostgresServer


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """One PostgreSQL 15 for the whole run, logging every statement with its backend pid."""
    server = PostgresServer({"log_statement": "all", "log_line_prefix": "%m [%p] "})
    server.start()
    yield server
    server.remove()


@pytest.fixture
def witness(pg: PostgresServer, tmp_path: Path) -> Iterator[Witness]:
    recorder = Witness(pg.port, tmp_path / "trail.db")
    yield recorder
    recorder.stop()


@pytest.fixture
def bench(pg: PostgresServer) -> None:
    """pgbench's tables in the shared server's database ``postgres``."""
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", str(pg.port), "-U",
         "postgres", "postgres"],
        check=True, capture_output=True,
    )  # fmt: skip
