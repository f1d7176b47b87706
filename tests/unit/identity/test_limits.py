"""What a message may quote of a caller's value: all of a short one, the start of a long one."""

from __future__ import annotations

import json

from appliance.identity.limits import MAX_SHOWN, shown


def test_a_value_that_fits_is_quoted_whole() -> None:
    assert shown("k9") == "'k9'"
    assert shown("A" * MAX_SHOWN) == repr("A" * MAX_SHOWN)
    assert shown(None) == "None"
    assert shown(["urn:other"], json.dumps) == '["urn:other"]'


def test_a_longer_value_is_cut_and_says_how_long_it_was() -> None:
    assert (
        shown("A" * (MAX_SHOWN + 1)) == repr("A" * MAX_SHOWN) + f"... ({MAX_SHOWN + 1} characters)"
    )
    assert shown("B" * 1_000_000, str, 10) == "BBBBBBBBBB... (1000000 characters)"
    rendered = json.dumps(["C" * 200])
    assert (
        shown(["C" * 200], json.dumps) == f"{rendered[:MAX_SHOWN]}... ({len(rendered)} characters)"
    )
