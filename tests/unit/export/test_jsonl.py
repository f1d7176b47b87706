"""JSONL exports of a real trail, checked with the trail's own walk: whole, edited, cut,
reordered and filtered."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from exporting import messages

from appliance.config import TrailSettings
from appliance.export import jsonl
from appliance.export.select import Selection
from appliance.trail import chain, keys
from appliance.trail.verify import ExportReport, verify_export
from appliance.trail.walk import Fault


def check(lines: list[bytes], settings: TrailSettings, *, partial: bool = False) -> ExportReport:
    rows = (jsonl.row(line, number) for number, line in enumerate(lines, 1))
    return verify_export(rows, keys.load_public(settings.public_key), partial=partial)


def edit(line: bytes, **changes: object) -> bytes:
    data = json.loads(line)
    data.update(changes)
    return json.dumps(data).encode()


def rehash(line: bytes, prev: str | None = None) -> bytes:
    """The line with its hash made anew over its (edited) fields, as a forger would."""
    data = json.loads(line)
    if prev is not None:
        data["prev_hash"] = prev
    data["hash"] = chain.event_hash(
        data["prev_hash"], data["seq"], data["ts"], data["type"], data["session"], data["payload"]
    )
    return json.dumps(data).encode()


def test_every_event_with_the_fields_its_hash_covers(fleet: TrailSettings) -> None:
    lines = messages(fleet.path, "jsonl")
    db = sqlite3.connect(fleet.path)
    rows = db.execute("SELECT seq, ts, type, session, payload, prev_hash, hash FROM events")
    stored = rows.fetchall()
    db.close()
    assert [jsonl.row(line, 1) for line in lines] == stored
    first = json.loads(lines[0])
    assert first["time"] == "2023-11-14T22:13:20.000000+00:00"
    assert json.loads(first["payload"])["action"] == "create"


def test_a_whole_export_verifies_as_the_trail_does(fleet: TrailSettings) -> None:
    lines = messages(fleet.path, "jsonl")
    report = check(lines, fleet)
    checkpoints = sum(json.loads(line)["type"] == "checkpoint" for line in lines)
    assert report.ok, report.reason
    assert report.complete
    assert (report.events, report.checkpoints) == (len(lines), checkpoints)
    assert report.vouched == len(lines) - checkpoints
    assert report.unvouched == 0


def test_an_edited_line_is_caught(fleet: TrailSettings) -> None:
    lines = messages(fleet.path, "jsonl")
    i = next(i for i, line in enumerate(lines) if b"delete from invoices" in line)
    payload = json.loads(lines[i])["payload"].replace("delete from invoices", "select 1")
    lines[i] = edit(lines[i], payload=payload)
    report = check(lines, fleet)
    assert not report.ok
    assert report.first_bad_seq == json.loads(lines[i])["seq"]
    assert "does not match its hash" in str(report.reason)


def test_an_edit_rehashed_breaks_the_next_link(fleet: TrailSettings) -> None:
    lines = messages(fleet.path, "jsonl")
    i = next(i for i, line in enumerate(lines) if b"delete from invoices" in line)
    lines[i] = rehash(edit(lines[i], payload=json.loads(lines[i])["payload"].upper()))
    report = check(lines, fleet)
    assert not report.ok
    assert "does not follow" in str(report.reason)


def test_a_chain_rewritten_from_an_edit_on_fails_its_signatures(fleet: TrailSettings) -> None:
    lines = messages(fleet.path, "jsonl")
    i = next(i for i, line in enumerate(lines) if b"delete from invoices" in line)
    lines[i] = rehash(edit(lines[i], payload=json.loads(lines[i])["payload"].upper()))
    for j in range(i + 1, len(lines)):
        lines[j] = rehash(lines[j], prev=json.loads(lines[j - 1])["hash"])
    report = check(lines, fleet)
    assert not report.ok
    assert "signed a different event" in str(report.reason)


def test_a_removed_line_leaves_a_gap_whose_events_are_not_vouched_for(
    fleet: TrailSettings,
) -> None:
    lines = messages(fleet.path, "jsonl")
    i = next(i for i, line in enumerate(lines) if b"delete from invoices" in line)
    del lines[i]
    report = check(lines, fleet)
    assert not report.ok
    assert "not vouched for" in str(report.reason)
    partial = check(lines, fleet, partial=True)
    assert partial.ok
    assert (partial.gaps, partial.complete) == (1, False)
    assert partial.unvouched > 0


def test_reordered_lines_are_caught(fleet: TrailSettings) -> None:
    lines = messages(fleet.path, "jsonl")
    lines[5], lines[6] = lines[6], lines[5]
    report = check(lines, fleet, partial=True)
    assert not report.ok
    assert "out of sequence" in str(report.reason)


def test_another_key_vouches_for_nothing(fleet: TrailSettings, tmp_path: Path) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    rows = (jsonl.row(line, n) for n, line in enumerate(messages(fleet.path, "jsonl"), 1))
    report = verify_export(rows, other)
    assert not report.ok
    assert "names key" in str(report.reason) or "signed by key" in str(report.reason)


def test_a_line_that_is_not_an_event(fleet: TrailSettings) -> None:
    lines = messages(fleet.path, "jsonl")
    lines.insert(3, b'{"seq": 4}')
    report = check(lines, fleet)
    assert not report.ok
    assert report.reason == (
        "line 4 is not an exported event (JSON with seq, ts, type, session, payload,"
        " prev_hash, hash)"
    )
    with pytest.raises(Fault):
        jsonl.row(b"not json", 1)


def test_a_time_range_is_one_unbroken_run(fleet: TrailSettings) -> None:
    since, until = 1_700_000_003_000_000, 1_700_000_011_000_000
    lines = messages(fleet.path, "jsonl", Selection(since=since, until=until))
    times = [json.loads(line)["ts"] for line in lines]
    assert min(times) >= since
    assert max(times) <= until
    report = check(lines, fleet, partial=True)
    assert report.ok, report.reason
    assert report.gaps == 0
    assert report.first is not None and report.first > 1


def test_a_filtered_export_says_what_it_cannot_vouch_for(fleet: TrailSettings) -> None:
    lines = messages(fleet.path, "jsonl", Selection(identities=("alice@example.com",)))
    kinds = {json.loads(line)["type"] for line in lines}
    sessions = {json.loads(line)["session"] for line in lines} - {None}
    assert sessions == {"a1-alice"}
    assert {"binding", "command", "checkpoint"} <= kinds
    assert not check(lines, fleet).ok
    report = check(lines, fleet, partial=True)
    assert report.ok, report.reason
    assert report.gaps > 0
    assert report.unvouched > 0
    # Only an event right before a checkpoint is vouched for once its neighbours are gone.
    assert report.vouched < report.events - report.checkpoints
