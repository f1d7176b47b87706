"""Fixtures that start real servers: a lab PostgreSQL and the witness recorder in front of it."""

from __future__ import annotations

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
