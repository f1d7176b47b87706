"""The system tests: Witness on a Debian 12 host booted with systemd as PID 1 (see
tests/support/container.py). Before the first, the labs an earlier, killed run left behind
are taken down, with whatever container ran in them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from container import Container, available, root
from labsweep import sweep

from appliance.lab.netns import Lab


@pytest.fixture(scope="session", autouse=True)
def _no_abandoned_labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    sweep(tmp_path_factory.getbasetemp().parent)
    yield


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A namespace lab: the container boots in its bastion namespace."""
    built = Lab(f"s{uuid.uuid4().hex[:10]}", tmp_path_factory.mktemp("lab-state"))
    try:
        built.up()
        yield built
    finally:
        built.down()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = available()
    if why is not None:
        pytest.skip(why)
    return root(tmp_path_factory.mktemp("debootstrap") / "debootstrap.log")


@pytest.fixture(scope="module")
def host(lab: Lab, image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """The Debian host, booted; powered off afterwards."""
    booted = Container(lab, image, tmp_path_factory.mktemp("container") / "console.log")
    try:
        booted.boot()
        yield booted
    finally:
        booted.stop()
