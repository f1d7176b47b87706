"""The splicer hands a stream on with whole spans replaced, holding back what is unfinished."""

from __future__ import annotations

import pytest

from appliance.protocols.splice import Splicer


def test_a_chunk_with_nothing_to_change_goes_as_it_came() -> None:
    splicer = Splicer()
    data = b"abcdef"
    assert splicer.take(data, 6, 0) is data
    assert splicer.sent == 6


def test_a_span_is_replaced_once_it_is_whole_and_the_rest_waits() -> None:
    splicer = Splicer()
    assert splicer.take(b"abcd", 4, 2) == b"ab"  # "cd" starts a message not yet whole
    splicer.replace(2, 6, b"XY")
    assert splicer.take(b"efgh", 8, 1) == b"XYg"
    assert splicer.take(b"i", 9, 0) == b"hi"
    assert splicer.edits == []


def test_a_span_that_is_not_whole_waits_with_everything_after_it() -> None:
    splicer = Splicer()
    splicer.replace(2, 8, b"Z")
    assert splicer.take(b"abcdef", 6, 0) == b"ab"
    assert splicer.take(b"ghij", 10, 0) == b"Zij"


def test_bytes_that_have_gone_cannot_be_replaced() -> None:
    splicer = Splicer()
    splicer.take(b"abcd", 4, 0)
    with pytest.raises(ValueError, match="gone"):
        splicer.replace(2, 6, b"X")
    splicer.replace(5, 6, b"X")
    with pytest.raises(ValueError, match="overlaps"):
        splicer.replace(4, 6, b"Y")


def test_what_went_some_other_way_is_skipped() -> None:
    splicer = Splicer()
    splicer.take(b"abcd", 4, 2)
    splicer.skip_to(10)
    assert splicer.tail == b"" and splicer.sent == 10
    assert splicer.take(b"kl", 12, 0) == b"kl"
