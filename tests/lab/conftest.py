"""Before the first lab test: take down the labs an earlier, killed test run left behind
(see tests/support/labsweep.py), as ``witness lab down`` would."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from labsweep import abandoned_labs


@pytest.fixture(scope="session", autouse=True)
def _no_abandoned_labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if os.geteuid() == 0:
        for lab in abandoned_labs(tmp_path_factory.getbasetemp().parent):
            print(f"taking down {lab.topology.name}, left by an earlier run ({lab.state_path})")
            lab.down()
    yield
