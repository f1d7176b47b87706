"""The decision point of a masked session: its refusals are worked out once per shape of
text where no literal can change them, and per text where one can."""

from __future__ import annotations

import pytest

from appliance.model import Command
from appliance.policy import maskguard
from appliance.policy.masking import Column, SessionMasks, Snapshot, Table
from appliance.policy.maskrules import MaskRule

SNAPSHOT = Snapshot(
    tables={
        16400: Table(
            "public",
            "people",
            "r",
            {1: Column("id", "int4", "int4"), 2: Column("ssn", "text", "text")},
        )
    }
)


@pytest.fixture
def masks() -> SessionMasks:
    rules = (MaskRule("ssn", tables=("people",), columns=("ssn",)),)
    return SessionMasks(rules, lambda: SNAPSHOT, b"k" * 32)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the guard reads from their parse tree."""
    seen: list[str] = []
    real = maskguard.refusal

    def counted(text: str, masked: maskguard.Masked, binary: bool = False) -> str | None:
        seen.append(text)
        return real(text, masked, binary)

    monkeypatch.setattr(maskguard, "refusal", counted)
    return seen


def test_texts_of_one_shape_are_read_once(masks: SessionMasks, parses: list[str]) -> None:
    for aid in range(50):
        query = Command("query", f"select id, ssn from people where id = {aid}")
        assert masks.refusal(query, ()) is None
    assert len(parses) == 1
    oracle = Command("query", "select id from people where ssn like '1%'")
    assert "ssn" in (masks.refusal(oracle, ()) or "")
    again = Command("query", "select id from people where ssn like '9%'")
    assert masks.refusal(again, ()) == masks.refusal(oracle, ())
    assert len(parses) == 2
    assert masks.refusal(again, (1,)) is not None  # binary or not is its own key
    assert len(parses) == 3


def test_a_copy_s_literals_count(masks: SessionMasks, parses: list[str]) -> None:
    """``FORMAT 'csv'`` and ``FORMAT 'binary'`` share a shape, not a refusal."""
    csv = Command("query", "copy people to stdout with (format 'csv')")
    binary = Command("query", "copy people to stdout with (format 'binary')")
    assert masks.refusal(csv, ()) is None
    assert "binary" in (masks.refusal(binary, ()) or "")
    assert masks.refusal(csv, ()) is None
    assert len(parses) == 3
