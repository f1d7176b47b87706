"""The canonical form and the hash chain, as pure functions."""

from __future__ import annotations

import hashlib
import json
import math

from hypothesis import given
from hypothesis import strategies as st

from appliance.trail import chain

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def test_payload_text_is_sorted_compact_and_keeps_unicode() -> None:
    payload = {"text": "SELECT 'é'", "n": 1, "a": [1, None]}
    assert chain.payload_text(payload) == '{"a":[1,null],"n":1,"text":"SELECT \'é\'"}'


@given(st.dictionaries(st.text(), json_values, max_size=5))
def test_payload_text_is_json_dumps_canonical(payload: dict[str, object]) -> None:
    text = chain.payload_text(payload)
    try:
        expected = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        expected.encode()
    except UnicodeEncodeError:
        # Lone surrogates cannot be stored as UTF-8: they are kept as \u escapes instead.
        assert json.loads(text) == payload
        return
    assert text == expected


def test_unencodable_payloads_are_salvaged_not_refused() -> None:
    payload = {"params": [b"\x00\xff", float("nan")], "text": "bad \udcff", 3: "int key"}
    text = chain.payload_text(payload)
    text.encode()  # storable as UTF-8
    salvaged = json.loads(text)
    assert salvaged["params"] == ["\\x00ff", "nan"]
    assert salvaged["text"] == "bad \udcff"
    assert salvaged["3"] == "int key"
    assert not any(isinstance(v, float) and math.isnan(v) for v in salvaged["params"])


def test_canonical_bytes_and_hash() -> None:
    text = chain.payload_text({"n": 1})
    raw = chain.canonical(7, 1_700_000_000_000_000, "command", "s1", text)
    assert raw == b'7\n1700000000000000\ncommand\ns1\n{"n":1}'
    digest = chain.event_hash(chain.GENESIS, 7, 1_700_000_000_000_000, "command", "s1", text)
    assert digest == hashlib.sha256(chain.GENESIS.encode() + raw).hexdigest()


def test_a_missing_session_is_an_empty_line() -> None:
    assert chain.canonical(1, 2, "checkpoint", None, "{}") == b"1\n2\ncheckpoint\n\n{}"


def test_every_field_changes_the_hash() -> None:
    base = (chain.GENESIS, 1, 10, "command", "s", '{"n":1}')
    variants = [
        ("1" * 64, 1, 10, "command", "s", '{"n":1}'),
        (chain.GENESIS, 2, 10, "command", "s", '{"n":1}'),
        (chain.GENESIS, 1, 11, "command", "s", '{"n":1}'),
        (chain.GENESIS, 1, 10, "result", "s", '{"n":1}'),
        (chain.GENESIS, 1, 10, "command", "t", '{"n":1}'),
        (chain.GENESIS, 1, 10, "command", None, '{"n":1}'),
        (chain.GENESIS, 1, 10, "command", "s", '{"n":2}'),
    ]
    hashes = {chain.event_hash(*v) for v in [base, *variants]}
    assert len(hashes) == len(variants) + 1


def test_fields_that_would_make_the_header_ambiguous_are_invalid() -> None:
    assert chain.valid_field("command")
    assert chain.valid_field("3f2a-b")
    for bad in ("", "a\nb", "a\x00", "\udcff", None, 3):
        assert not chain.valid_field(bad)


def test_checkpoint_message_is_domain_separated() -> None:
    assert chain.checkpoint_message(12, "ab") == b"witness-checkpoint\x0012\x00ab"
    assert chain.checkpoint_message(1, "2ab") != chain.checkpoint_message(12, "ab")
