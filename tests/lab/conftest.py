"""Before the first lab test: take down the labs an earlier, killed test run left behind
(see tests/support/labsweep.py), as ``witness lab down`` would."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from labsweep import sweep


@pytest.fixture(scope="session", autouse=True)
def _no_abandoned_labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    sweep(tmp_path_factory.getbasetemp().parent)
    yield
