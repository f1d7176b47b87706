"""The export formats by name: what each makes of one record, and how its output begins."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from appliance.export import cef, jsonl, ocsf, pcap
from appliance.export.record import Meta, Record


@dataclass(frozen=True, slots=True)
class Format:
    """``render`` turns a record into the messages it exports (none for an event the format
    does not carry). A text format's messages are lines (written with a newline, or one
    syslog message each); a binary one's are written as they are, after ``header``."""

    name: str
    text: bool
    render: Callable[[Record, Meta], list[bytes]]
    header: bytes = b""
    syslog: bool = False
    """Whether its messages can be sent to a syslog server."""


def _jsonl(record: Record, meta: Meta) -> list[bytes]:
    return [jsonl.line(record)]


FORMATS: dict[str, Format] = {
    "jsonl": Format("jsonl", True, _jsonl),
    "ocsf": Format("ocsf", True, ocsf.lines),
    "cef": Format("cef", True, cef.lines, syslog=True),
    "pcap": Format("pcap", False, pcap.records, header=pcap.HEADER),
}


def get(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(
            f"unknown export format {name!r} (expected one of {', '.join(FORMATS)})"
        ) from None
