"""Exports of a real trail into memory: the messages a format makes, in order."""

from __future__ import annotations

from pathlib import Path

from appliance.export import formats
from appliance.export.record import Record
from appliance.export.run import export
from appliance.export.select import Selection

HOST = "bastion-1"
# Texts an agent may send to break a CEF line or a syslog message.
HOSTILE = [
    "select 'a|b' as \"x=y\", E'back\\\\slash' -- | = \\",
    "select 1;\nselect 2;\r\nselect '\x1b[2J' -- CEF:0|fake|header|",
    "insert into t values ('=|\\=\\|')",
]


class Collect:
    """A sink that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.messages: list[bytes] = []

    def write(self, record: Record, messages: list[bytes]) -> None:
        self.records.append(record)
        self.messages += messages


def messages(trail: Path, name: str, selection: Selection | None = None) -> list[bytes]:
    sink = Collect()
    export(trail, selection or Selection(), formats.get(name), sink, host=HOST)
    return sink.messages
