"""COPY TO rows read back into their fields, as PostgreSQL writes them, whatever the values
hold: delimiters, backslashes, newlines, non-ASCII text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from appliance.policy.maskguard import CopyOut
from appliance.protocols.postgres import copyrows

values = st.text(alphabet=st.sampled_from('ab\\\t|\n\r,"é'), max_size=8)


def copy_out(delimiter: str = "\t", csv: bool = False) -> CopyOut:
    return CopyOut(
        "t", None, (), csv=csv, binary=False, delimiter=delimiter,
        null="" if csv else "\\N", header=False, quote='"', escape='"',
    )  # fmt: skip


@given(st.lists(values, min_size=1, max_size=6), st.sampled_from(["\t", "|", ","]))
def test_text_rows_read_back_into_their_fields(fields: list[str], delimiter: str) -> None:
    line = delimiter.join(copyrows._text_escape(v, delimiter) for v in fields).encode()
    raw = copyrows._text_fields(line, delimiter.encode())
    assert [copyrows._text_value(r.decode()) for r in raw] == fields


@given(st.lists(values, min_size=2, max_size=6), st.data())
def test_only_the_masked_field_changes(fields: list[str], data: st.DataObject) -> None:
    hidden = data.draw(st.integers(0, len(fields) - 1))
    line = "\t".join(copyrows._text_escape(v, "\t") for v in fields).encode() + b"\n"
    flags = [i == hidden for i in range(len(fields))]
    out = copyrows.mask_row(line, copy_out(), flags, lambda i, v: "#", "utf-8")
    expected = [("#" if i == hidden else v) for i, v in enumerate(fields)]
    assert out == "\t".join(copyrows._text_escape(v, "\t") for v in expected).encode() + b"\n"
