"""[[masks]] in the policy: validated at load, errors naming the mask and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.policy.masking import applies, token
from appliance.policy.maskrules import MaskRule
from appliance.policy.rules import PolicyError, parse


def masks(*entries: dict[str, object]) -> tuple[MaskRule, ...]:
    return parse({"masks": list(entries)}, Path("/")).masks


def test_a_mask_as_written() -> None:
    (rule,) = masks(
        {"name": "ssn", "tables": ["HR.people"], "columns": ["ssn"], "except_groups": ["dba"],
         "method": "partial", "keep": 2, "scope": ["wire"]}
    )  # fmt: skip
    assert rule.tables == ("hr.people",)
    assert (rule.method, rule.keep, rule.scope) == ("partial", 2, ("wire",))
    assert rule.wire and not rule.trail


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"tables": ["t"]}, "policy.masks[0]: name: every mask needs a name"),
        ({"name": "a"}, 'policy.masks[0] ("a"): a mask needs tables, columns or types'),
        ({"name": "a", "columns": ["x"], "method": "hash"}, "method: expected one of redact"),
        ({"name": "a", "columns": ["t.x"]}, "columns[0]: a column glob names no table"),
        ({"name": "a", "columns": ["x"], "scope": ["disk"]}, "scope: expected a list of trail"),
        ({"name": "a", "columns": ["x"], "keep": 3}, "keep: only a partial mask keeps"),
        (
            {"name": "a", "columns": ["x"], "colums": ["x"]},
            'policy.masks[0] ("a"): colums: unknown',
        ),
    ],
)
def test_errors_name_the_mask_and_the_key(entry: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError) as error:
        masks(entry)
    assert message in str(error.value)


def test_names_are_unique() -> None:
    with pytest.raises(PolicyError, match=r"masks\[1\] \(\"a\"\): name: already"):
        masks({"name": "a", "columns": ["x"]}, {"name": "a", "columns": ["y"]})


def test_exemptions_win_and_no_identity_meets_no_exemption() -> None:
    rule = MaskRule("a", columns=("x",), except_groups=("dba",))
    assert applies(rule, {"subject": "s", "groups": ["agents"]}, "db", None)
    assert not applies(rule, {"subject": "s", "groups": ["dba"]}, "db", None)
    assert applies(rule, None, "db", None)
    only = MaskRule("a", columns=("x",), groups=("agents",))
    assert not applies(only, None, "db", None)


def test_tokens_are_keyed_and_stable() -> None:
    assert token(b"k" * 32, b"v") == token(b"k" * 32, b"v") != token(b"j" * 32, b"v")
    import hashlib

    assert hashlib.sha256(b"v").hexdigest()[:16] not in token(b"k" * 32, b"v")
