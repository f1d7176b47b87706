"""CEF lines of a real trail, read back by a CEF reader written here from the format's rules:
hostile statement texts cannot end a field, start one, or break the line."""

from __future__ import annotations

import re

import pytest
from exporting import HOST, HOSTILE, messages

from appliance import __version__
from appliance.config import TrailSettings
from appliance.export import cef
from appliance.export.record import Meta, Record
from appliance.export.select import Selection

_KEY = re.compile(r"(?:^| )([A-Za-z0-9]+)=")


def unescape(value: str, header: bool = False) -> str:
    out, chars = [], iter(value)
    for c in chars:
        if c == "\\":
            nxt = next(chars)
            out.append(nxt if header else {"n": "\n", "r": "\r"}.get(nxt, nxt))
        else:
            out.append(c)
    return "".join(out)


def read(line: str) -> tuple[list[str], dict[str, str]]:
    """A CEF line as a reader takes it: seven header fields split at unescaped pipes, then
    key=value pairs split before each unescaped ``key=``."""
    fields, current, escaped = [], "", False
    rest = line
    for i, c in enumerate(line):
        if escaped:
            current += "\\" + c
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == "|":
            fields.append(unescape(current, header=True))
            current = ""
            if len(fields) == 7:
                rest = line[i + 1 :]
                break
        else:
            current += c
    assert len(fields) == 7, line
    keys = [m for m in _KEY.finditer(rest) if not _escaped(rest, m.start(1) + len(m[1]))]
    extension = {}
    for m, following in zip(keys, [*keys[1:], None], strict=True):
        end = len(rest) if following is None else following.start()
        extension[m[1]] = unescape(rest[m.end() : end])
    return fields, extension


def _escaped(text: str, at: int) -> bool:
    """Whether the character at ``at`` follows an odd number of backslashes."""
    count = 0
    while at - count - 1 >= 0 and text[at - count - 1] == "\\":
        count += 1
    return count % 2 == 1


@pytest.fixture
def lines(fleet: TrailSettings) -> list[str]:
    return [m.decode() for m in messages(fleet.path, "cef")]


def test_one_line_each(lines: list[str]) -> None:
    for line in lines:
        assert "\n" not in line and "\r" not in line
        assert line.isprintable(), line


def test_hostile_texts_come_back_whole(lines: list[str]) -> None:
    queries = [read(line)[1]["cs1"] for line in lines if "|command|" in line]
    # Control characters other than newlines come back as their Python escapes.
    expected = [t.replace("\x1b", "\\x1b") for t in HOSTILE]
    assert queries[1:4] == expected
    for line in lines:
        header, extension = read(line)
        assert header[:4] == ["CEF:0", "Witness", "Witness", __version__]
        assert extension["dvchost"] == HOST


def test_what_each_event_says(lines: list[str]) -> None:
    signatures = [read(line)[0][4] for line in lines]
    assert signatures.count("command") == 7
    assert signatures.count("result") == 5
    assert set(signatures) == {
        "binding",
        "session-start",
        "command",
        "result",
        "session-end",
        "error",
    }
    blocked = next(read(line)[1] for line in lines if "no-wipe" in line and "|command|" in line)
    assert blocked["act"] == "block"
    assert (blocked["cs4Label"], blocked["cs4"]) == ("rule", "no-wipe")
    assert blocked["suser"] == "sub-bob"
    assert (blocked["src"], blocked["spt"], blocked["dst"], blocked["dpt"]) == (
        "10.0.9.2",
        "41002",
        "10.0.0.6",
        "5433",
    )
    assert (blocked["duser"], blocked["cs2"], blocked["destinationServiceName"]) == (
        "app",
        "shop",
        "billing",
    )
    assert read(next(line for line in lines if "|command|" in line))[0][6] == "3"
    assert read(next(line for line in lines if "no-wipe" in line))[0][6] == "7"


def test_escaping_rules() -> None:
    assert cef.header_field("a|b\\c\nd") == "a\\|b\\\\c\\\\nd"
    assert cef.extension_value("k=v\\ x\r\ny|z") == "k\\=v\\\\ x\\r\\ny|z"
    assert cef.extension_value("\x1b[2J\t") == "\\\\x1b[2J\\\\t"


def test_a_long_statement_is_cut_at_cefs_length() -> None:
    text = "select '" + "x" * 5000 + "'"
    record = Record(9, 0, "command", "s", "", "", "", {"n": 1, "text": text}, {})
    line = cef.line(record, Meta("t", HOST))
    assert line is not None
    query = read(line)[1]["cs1"]
    assert len(query) == cef.LONGEST
    assert query.endswith("x…")


def test_a_selection_applies(fleet: TrailSettings) -> None:
    bob = messages(fleet.path, "cef", Selection(backends=("billing",)))
    assert bob
    assert all(b"destinationServiceName=billing" in line for line in bob)
