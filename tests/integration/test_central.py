"""The central store, with real PostgreSQL on both sides: recorders ship every event of
their trails while pgbench runs through them, one recorder is killed mid-shipping and
restarted, the store is stopped and started under load; every event arrives exactly once,
`witness verify --central` checks each chain with its bastion's key, and an event changed
in the store is caught. The bastions' roles may only add events."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from centralstore import Central
from witnessproc import WITNESS, Witness, run

from appliance.config import TrailSettings
from appliance.lab.postgres import PostgresServer
from appliance.trail import central, db, segments, shipper


@pytest.fixture
def store() -> Iterator[Central]:
    central = Central()
    yield central
    central.server.remove()


def recorder(
    pg: PostgresServer, store: Central, directory: Path, bastion: str, trail_options: str = ""
) -> Witness:
    directory.mkdir(exist_ok=True)
    return Witness(
        pg.port,
        directory / "trail.db",
        tables=f'[trail.central]\ndsn = "{store.url(bastion)}"\nretry_max_seconds = 1\n',
        trail_options=trail_options,
    )


def load(witness: Witness, seconds: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["pgbench", "-n", "-S", "-c", "2", "-T", str(seconds), witness.url()],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def local_events(trail: Path) -> int:
    with db.reading(trail) as conn:
        return db.last_seq(conn)


def shipped(store: Central, bastion: str) -> tuple[int, int, int]:
    """(rows, distinct seqs, max seq) the store holds of ``bastion``."""
    ((rows, seqs, last),) = store.admin(
        "SELECT count(*), count(DISTINCT seq), coalesce(max(seq), 0) FROM witness.events"
        " WHERE bastion = %s", bastion,
    )  # fmt: skip
    return int(rows), int(seqs), int(last)


def wait_shipped(store: Central, bastion: str, trail: Path, wait: float = 60.0) -> None:
    deadline = time.monotonic() + wait
    while shipped(store, bastion)[2] < local_events(trail):
        assert time.monotonic() < deadline, (shipped(store, bastion), local_events(trail))
        time.sleep(0.2)


def verify(store: Central, keys: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(
        WITNESS, "verify", "--central", store.url("auditor"), "--keys", str(keys), "--json", *args
    )


def test_two_bastions_ship_every_event_exactly_once_through_kills_and_outages(
    pg: PostgresServer, store: Central, bench: None, tmp_path: Path
) -> None:
    one = recorder(pg, store, tmp_path / "b1", "b1")
    two = recorder(pg, store, tmp_path / "b2", "b2")
    try:
        first, second = load(one, 6), load(two, 12)
        time.sleep(2)
        one.kill()  # mid-shipping: its state file is behind what the store holds
        first.wait(timeout=30)
        one = recorder(pg, store, tmp_path / "b1", "b1")
        first = load(one, 4)
        time.sleep(1)
        store.server.stop()  # the store goes away under load: recording goes on
        time.sleep(2)
        behind = shipper.lag(TrailSettings.beside(two.trail))  # what witness status shows
        assert behind.unpublished > 0 and behind.error and "central store" in behind.error
        store.server.restart()
        first.wait(timeout=60)
        second.wait(timeout=60)
        for witness, bastion in ((one, "b1"), (two, "b2")):
            wait_shipped(store, bastion, witness.trail)
    finally:
        one.stop()
        two.stop()
    for witness, bastion in ((one, "b1"), (two, "b2")):
        wait_shipped(store, bastion, witness.trail)  # what was signed at shutdown, too
        rows, seqs, last = shipped(store, bastion)
        assert rows == seqs == last == local_events(witness.trail), bastion

    keys = tmp_path / "keys"
    keys.mkdir()
    for bastion in ("b1", "b2"):
        shutil.copy(tmp_path / bastion / "trail.db.key.pub", keys / f"{bastion}.pub")
    done = verify(store, keys)
    assert done.returncode == 0, done.stdout + done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["bastion"], r["ok"]) for r in reports] == [("b1", True), ("b2", True)]
    assert all(r["checkpoints"] > 1 and r["events"] > 100 for r in reports)
    # On the bastion: its own trail compared with what it shipped.
    mine = run(
        WITNESS, "verify", "--central", store.url("auditor"), "--bastion", "b1",
        "--trail", str(one.trail),
    )  # fmt: skip
    assert mine.returncode == 0 and "agrees with" in mine.stdout, mine.stdout + mine.stderr
    # The bastion's trail rewritten after shipping (its triggers dropped, an event's hash
    # replaced): what it shipped says otherwise, and verify names the event.
    with sqlite3.connect(one.trail) as local:
        local.execute("DROP TRIGGER events_no_update")
        local.execute("UPDATE events SET hash = ? WHERE seq = 3", ("0" * 64,))
    rewritten = run(
        WITNESS, "verify", "--central", store.url("auditor"), "--bastion", "b1",
        "--trail", str(one.trail),
    )  # fmt: skip
    assert rewritten.returncode == 1
    assert "FAULT at event 3" in rewritten.stdout and "differ at event 3" in rewritten.stdout

    # A change in the store is caught, and where.
    store.admin(
        "UPDATE witness.events SET payload = payload || ' '"
        " WHERE bastion = 'b2' AND seq = (SELECT min(seq) FROM witness.events"
        " WHERE bastion = 'b2' AND type = 'command')"
    )
    changed = verify(store, keys, "--bastion", "b2")
    assert changed.returncode == 1
    (report,) = [json.loads(line) for line in changed.stdout.splitlines()]
    assert not report["ok"] and "was changed" in report["reason"], report


def test_a_bastion_may_only_add_its_own_events(
    pg: PostgresServer, store: Central, tmp_path: Path
) -> None:
    witness = recorder(pg, store, tmp_path / "b1", "b1")
    try:
        run("psql", "-X", "-c", "select 1", witness.url())
        wait_shipped(store, "b1", witness.trail)
    finally:
        witness.stop()
    with psycopg.connect(store.url("b1"), autocommit=True) as conn:
        for sql in (
            "UPDATE witness.events SET payload = '{}'",
            "DELETE FROM witness.events",
            "SELECT count(*) FROM witness.events",
            "TRUNCATE witness.events",
            "INSERT INTO witness.events (bastion, trail, seq, ts, type, payload, prev_hash, hash)"
            " VALUES ('b2', repeat('a', 32), 1, 0, 'x', '{}', '', '')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
    # A bastion that ships under another's trail id is kept apart, under its own name.
    ((trail,),) = store.admin("SELECT DISTINCT trail FROM witness.events WHERE bastion = 'b1'")
    with psycopg.connect(store.url("b2"), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO witness.events (trail, seq, ts, type, payload, prev_hash, hash)"
            " VALUES (%s, 1, %s, 'trail', '{}', '', '')",
            (trail, int(time.time() * 1e6)),
        )
    keys = tmp_path / "keys"
    keys.mkdir()
    for bastion in ("b1", "b2"):
        shutil.copy(tmp_path / "b1" / "trail.db.key.pub", keys / f"{bastion}.pub")
    done = verify(store, keys)
    reports = {r["bastion"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert reports["b1"]["ok"] and not reports["b2"]["ok"]
    assert done.returncode == 1


def test_retention_drops_whole_days_and_the_chain_is_checked_from_the_cut(
    pg: PostgresServer, store: Central, tmp_path: Path
) -> None:
    """Retention drops a day's partition and records where each chain stood; events shipped
    after are checked from there. An anchor in the same database vouches for checkpoints."""
    printed = run(WITNESS, "anchor", "schema")
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-", store.url("postgres")],
        input=printed.stdout, check=True, capture_output=True, text=True,
    )  # fmt: skip
    directory = tmp_path / "b1"
    directory.mkdir()
    anchored = f'[trail.anchor]\ndsn = "{store.url("b1")}"\nretry_max_seconds = 1\n'

    def start() -> Witness:
        return Witness(
            pg.port, directory / "trail.db",
            tables=f'[trail.central]\ndsn = "{store.url("b1")}"\nretry_max_seconds = 1\n'
            + anchored,
        )  # fmt: skip

    witness = start()
    try:
        for n in range(5):
            run("psql", "-X", "-c", f"select {n}", witness.url())
        wait_shipped(store, "b1", witness.trail)
    finally:
        witness.stop()
    wait_shipped(store, "b1", witness.trail)
    before = local_events(witness.trail)
    today = datetime.now(UTC).date()
    with psycopg.connect(store.url("postgres"), autocommit=True) as owner:
        dropped = central.maintain(owner, today=today + timedelta(days=2), ahead=0, behind=0,
                                   retain=1)  # fmt: skip
        assert f"events_{today:%Y%m%d}" in dropped.dropped
        central.maintain(owner, today=today)  # today's partition again, for what comes next
    ((seq, events, by),) = store.admin(
        "SELECT last_seq, events, dropped_by FROM witness.retention WHERE bastion = 'b1'"
    )
    assert (seq, events, by) == (before, before, "postgres")
    witness = start()
    try:
        run("psql", "-X", "-c", "select 'after the cut'", witness.url())
    finally:
        witness.stop()
    wait_shipped(store, "b1", witness.trail)
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(directory / "trail.db.key.pub", keys / "b1.pub")
    done = verify(store, keys)
    assert done.returncode == 0, done.stdout + done.stderr
    (report,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert report["cut"] == before and report["events"] == local_events(witness.trail)
    assert report["anchored"] > 0


def test_operators_ask_the_store_across_bastions(
    pg: PostgresServer, store: Central, tmp_path: Path
) -> None:
    """sessions list, show, search and policy test, asked of the store: the same answers as
    of a trail, each marked with its bastion."""
    pg.psql("DROP TABLE IF EXISTS billing; CREATE TABLE billing (id int)")
    for bastion in ("b1", "b2"):
        witness = recorder(pg, store, tmp_path / bastion, bastion)
        try:
            run("psql", "-X", "-c", f"insert into billing values ({len(bastion)})", witness.url())
            run("psql", "-X", "-c", f"select '{bastion} was here'", witness.url())
        finally:
            witness.stop()
        wait_shipped(store, bastion, witness.trail)
    dsn = store.url("auditor")

    listed = run(WITNESS, "sessions", "list", "--central", dsn, "--json")
    assert listed.returncode == 0, listed.stderr
    sessions = json.loads(listed.stdout)
    assert sorted(s["bastion"] for s in sessions) == ["b1", "b1", "b2", "b2"]
    assert all(s["commands"] == 1 for s in sessions)
    only = json.loads(run(WITNESS, "sessions", "list", "--central", dsn, "--bastion", "b2",
                          "--json").stdout)  # fmt: skip
    assert {s["bastion"] for s in only} == {"b2"} and len(only) == 2

    found = run(WITNESS, "search", "BILLING", "--central", dsn, "--json")
    matches = json.loads(found.stdout)
    assert sorted(m["bastion"] for m in matches) == ["b1", "b2"]
    assert all(m["text"].startswith("insert into billing") and m["status"] == "ok"
               for m in matches)  # fmt: skip

    first = matches[0]
    shown = run(WITNESS, "sessions", "show", first["session"], "--central", dsn, "--json")
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["session"]["bastion"] == first["bastion"]
    assert [c["text"] for c in detail["commands"]] == [first["text"]]
    text = run(WITNESS, "sessions", "show", first["session"][:8], "--central", dsn)
    assert text.returncode == 0 and first["session"] in text.stdout, text.stderr

    policy = tmp_path / "policy.toml"
    policy.write_text(
        'default = "allow"\n\n[[rules]]\nname = "no-billing-writes"\naction = "block"\n'
        'kinds = ["insert"]\ntables = ["billing"]\n'
    )
    tested = run(WITNESS, "policy", "test", str(policy), "--central", dsn, "--json")
    assert tested.returncode == 0, tested.stderr
    report = json.loads(tested.stdout)
    assert report["commands"] == 4
    blocked = next(t for t in report["decisions"] if t["rule"] == "no-billing-writes")
    assert blocked["commands"] == 2
    assert {e["session"].split("/")[0] for e in blocked["examples"]} == {"b1", "b2"}

    missing = run(WITNESS, "sessions", "list", "--central", store.url("nobody"))
    assert missing.returncode == 1 and "central store" in missing.stderr


def retired(trail: Path) -> int:
    """The last event the newest retirement took off the bastion (0: none)."""
    with db.reading(trail) as conn:
        row = conn.execute(
            "SELECT json_extract(e.payload, '$.last') FROM events e, main.meta m"
            " WHERE m.key = 'retired' AND e.seq = CAST(m.value AS INTEGER)"
        ).fetchone()
    return 0 if row is None else int(row[0])


def retirements(trail: Path) -> list[dict[str, Any]]:
    """The retirements recorded in what the bastion still holds."""
    with db.reading(trail) as conn:
        rows = conn.execute(
            "SELECT payload FROM events WHERE type = 'trail'"
            " AND json_extract(payload, '$.action') = 'retire' ORDER BY seq"
        ).fetchall()
    return [json.loads(text) for (text,) in rows]


def local_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def local_verify(trail: Path) -> dict[str, Any]:
    done = run(WITNESS, "verify", "--trail", str(trail), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_sealed_segments_are_deleted_once_the_store_holds_and_verified_them(
    pg: PostgresServer, store: Central, bench: None, tmp_path: Path
) -> None:
    witness = recorder(pg, store, tmp_path / "b1", "b1", "segment_mb = 1")
    try:
        load(witness, 10).wait(timeout=60)
        wait_shipped(store, "b1", witness.trail)
        total = local_events(witness.trail)
        deadline = time.monotonic() + 30
        while retired(witness.trail) < total // 2:
            assert time.monotonic() < deadline, segments.sealed(witness.trail)
            time.sleep(0.2)
    finally:
        witness.stop()
    through = retired(witness.trail)
    left = segments.sealed(witness.trail)
    # Nothing retired is left on the disk, and what is left begins where it ends.
    assert all(s.first > through for s in left)
    assert all(r["held_by"] == "central" for r in retirements(witness.trail))
    total = local_events(witness.trail)
    report = local_verify(witness.trail)
    assert report["retired"] == through and report["events"] == total
    with db.reading(witness.trail) as conn:
        (first,) = conn.execute("SELECT min(seq) FROM events").fetchone()
    assert first == through + 1
    # The store holds every event once, retired or not, and its chains verify.
    assert shipped(store, "b1") == (total, total, total)
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(witness.trail.parent / "trail.db.key.pub", keys / "b1.pub")
    checked = verify(store, keys)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The bastion's trail agrees with the store from where it begins now.
    mine = run(
        WITNESS, "verify", "--central", store.url("auditor"), "--bastion", "b1",
        "--trail", str(witness.trail),
    )  # fmt: skip
    assert mine.returncode == 0, mine.stdout + mine.stderr
    assert f"agrees with {witness.trail} from event {through + 1} to" in mine.stdout
    # What stays on the disk is a few segments, not the trail.
    assert local_bytes(witness.trail.parent) < (len(left) + 2) * (1 << 20) + (16 << 20)
    # witness status says so.
    config = witness.trail.with_suffix(".toml")
    with_user = tmp_path / "status.toml"
    with_user.write_text(config.read_text() + '\n[enforce]\nservice_user = "nobody"\n')
    status = run(WITNESS, "--config", str(with_user), "status")
    assert status.returncode in (0, 1), status.stderr
    assert f"holds:            events {through + 1} to {total}; events 1 to {through} retired" in (
        status.stdout
    )
    assert f"sealed segments:  {len(left)}," in status.stdout and "retired by central" in (
        status.stdout
    )


def test_a_segment_the_store_does_not_hold_as_the_bastion_does_is_kept(
    pg: PostgresServer, store: Central, bench: None, tmp_path: Path
) -> None:
    # Sealed and shipped, but kept (retire = "never"), then altered in the store.
    witness = recorder(pg, store, tmp_path / "b1", "b1", 'segment_mb = 1\nretire = "never"')
    try:
        load(witness, 6).wait(timeout=60)
        wait_shipped(store, "b1", witness.trail)
    finally:
        witness.stop()
    oldest = segments.sealed(witness.trail)[0]
    seq = oldest.first + 10
    (original,) = store.admin(
        "SELECT payload FROM witness.events WHERE bastion = 'b1' AND seq = %s", seq
    )[0]
    store.admin(
        "UPDATE witness.events SET payload = %s WHERE bastion = 'b1' AND seq = %s",
        original + " ", seq,
    )  # fmt: skip
    witness = recorder(pg, store, tmp_path / "b1", "b1", "segment_mb = 1")
    try:
        deadline = time.monotonic() + 20
        while not (error := shipper.lag(TrailSettings.beside(witness.trail)).error):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert "does not hold sealed segment" in error and "do not match" in error
        time.sleep(1.5)
        assert oldest.path.exists() and not retirements(witness.trail)
        with db.reading(witness.trail) as conn:
            recorded = conn.execute(
                "SELECT payload FROM events WHERE type = 'error'"
                " AND json_extract(payload, '$.where') = 'retire'"
            ).fetchall()
        assert len(recorded) == 1 and oldest.path.name in recorded[0][0]
        # Put right in the store, it is verified and retired.
        store.admin(
            "UPDATE witness.events SET payload = %s WHERE bastion = 'b1' AND seq = %s",
            original, seq,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while oldest.path.exists():
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        witness.stop()
    assert retirements(witness.trail)[0]["last"] == oldest.last
    assert local_verify(witness.trail)["retired"] >= oldest.last


def test_no_segment_is_retired_before_an_export_has_carried_it(
    pg: PostgresServer, store: Central, bench: None, tmp_path: Path
) -> None:
    out = tmp_path / "siem.jsonl"
    out.mkdir()  # the export cannot write there: its destination is down
    directory = tmp_path / "b1"
    directory.mkdir()
    witness = Witness(
        pg.port,
        directory / "trail.db",
        tables=f'[trail.central]\ndsn = "{store.url("b1")}"\nretry_max_seconds = 1\n\n'
        f'[[export]]\nname = "siem"\nformat = "jsonl"\nfile = "{out}"\n',
        trail_options="segment_mb = 1",
    )
    try:
        load(witness, 6).wait(timeout=60)
        wait_shipped(store, "b1", witness.trail)
        time.sleep(2)  # the store has verified what it holds: only the export holds it back
        sealed = segments.sealed(witness.trail)
        assert sealed and sealed[0].first == 1 and retired(witness.trail) == 0
        out.rmdir()  # the destination is back: the export catches up, then they go
        deadline = time.monotonic() + 30
        while retired(witness.trail) < sealed[-1].last:
            assert time.monotonic() < deadline, segments.sealed(witness.trail)
            time.sleep(0.2)
    finally:
        witness.stop()
    with out.open("rb") as file:
        sent = [json.loads(line)["seq"] for line in file]
    assert sent[: sealed[-1].last] == list(range(1, sealed[-1].last + 1))
