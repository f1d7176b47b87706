"""The writer: files and modes, commits, resuming, retrying after a failure, checkpoints."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fulldisk import fail_inserts
from trailkit import Clock, fill

from appliance.config import TrailSettings
from appliance.trail import chain, checkpoint, keys, store
from appliance.trail.store import Trail, TrailError, TrailFull, TrailWriteError
from appliance.trail.verify import verify


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def rows(path: Path) -> list[tuple[int, str, str | None, dict[str, object]]]:
    """The events after the genesis and its checkpoint (events 1 and 2 of every trail)."""
    with sqlite3.connect(path) as conn:
        found = conn.execute("SELECT seq, type, session, payload FROM events WHERE seq > 2")
        return [(seq, type_, session, json.loads(text)) for seq, type_, session, text in found]


def check(settings: TrailSettings) -> None:
    report = verify(settings.path, keys.load_public(settings.public_key), settings.checkpoint_file)
    assert report.ok, report


def test_open_creates_private_files_and_the_key(settings: TrailSettings, clock: Clock) -> None:
    trail = Trail.open(settings, clock=clock)
    trail.append("error", None, {"where": "test", "message": "x"})
    trail.commit()
    for suffix in ("", "-wal", "-shm"):
        assert mode(settings.path.with_name("trail.db" + suffix)) == 0o600
    assert mode(settings.signing_key) == 0o600
    assert mode(settings.signing_key.parent) == 0o700
    assert mode(settings.public_key) == 0o644
    assert settings.public_key.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert settings.signing_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    trail.close()


@pytest.mark.parametrize(("durability", "level"), [("process", 0), ("power", 2)])
def test_durability_sets_synchronous(tmp_path: Path, durability: str, level: int) -> None:
    settings = TrailSettings(tmp_path / "t.db", tmp_path / "t.key", durability=durability)
    trail = Trail.open(settings)
    assert trail._conn is not None
    assert trail._conn.execute("PRAGMA synchronous").fetchone() == (level,)
    assert trail._conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    trail.close()


def test_append_buffers_and_commit_writes_one_chain(settings: TrailSettings, clock: Clock) -> None:
    trail = Trail.open(settings, clock=clock)
    payload = {"n": 1, "kind": "query", "text": "SELECT 1"}
    assert trail.append("command", "s1", payload) is payload
    payload["refused"] = "trail write failed"  # amended after append, before commit
    clock.tick(5)
    trail.append("result", "s1", {"n": 1, "status": "aborted"})
    assert trail.pending == 2
    trail.commit()
    assert trail.pending == 0
    found = rows(settings.path)
    assert [r[0] for r in found] == [3, 4]
    assert found[0][3]["refused"] == "trail write failed"
    with sqlite3.connect(settings.path) as conn:
        (ts1,), (ts2,) = conn.execute("SELECT ts FROM events WHERE seq > 2").fetchall()
        first_prev = conn.execute("SELECT prev_hash FROM events WHERE seq = 1").fetchone()[0]
        after_genesis = conn.execute("SELECT prev_hash FROM events WHERE seq = 3").fetchone()[0]
        (genesis_checkpoint,) = conn.execute("SELECT hash FROM events WHERE seq = 2").fetchone()
    assert ts1 == 1_700_000_000_000_000  # taken at append, not at commit
    assert ts2 == ts1 + 5_000_000
    assert first_prev == chain.GENESIS
    assert after_genesis == genesis_checkpoint
    trail.close()
    check(settings)


def test_bad_type_or_session_is_refused_at_append(settings: TrailSettings) -> None:
    trail = Trail.open(settings)
    for type_, session in (("com\nmand", "s"), ("command", ""), ("command", "a\nb"), ("", None)):
        with pytest.raises(ValueError, match="bad event"):
            trail.append(type_, session, {})
    trail.close()


def test_unserializable_payload_does_not_block_the_trail(settings: TrailSettings) -> None:
    trail = Trail.open(settings)
    trail.append("command", "s", {"params": [b"\x01"], "text": "\udcff"})
    trail.append("command", "s", {"text": "fine"})
    trail.commit()
    trail.close()
    assert [r[3] for r in rows(settings.path)][:2] == [
        {"params": ["\\x01"], "text": "\udcff"},
        {"text": "fine"},
    ]
    check(settings)


def test_reopen_resumes_the_chain(settings: TrailSettings, clock: Clock) -> None:
    trail = Trail.open(settings, clock=clock)
    fill(trail, clock, sessions=1)
    head = trail.head
    trail.close()
    trail = Trail.open(settings, clock=clock)
    # close added a checkpoint; the start, an event saying so and a checkpoint over it
    assert trail.head[0] == head[0] + 3
    trail.append("error", None, {"where": "test", "message": "after restart"})
    trail.close()
    found = rows(settings.path)
    assert [r[0] for r in found] == list(range(3, len(found) + 3))
    opened = [r[3] for r in found if r[1] == "trail"]
    assert opened == [
        {
            "action": "open",
            "trail": trail.id,
            "key": keys.fingerprint(keys.load_public(settings.public_key)),
            "format": "2",
            "checkpoint_events": 5,
            "checkpoint_seconds": 3600,
            "durability": "process",
            "after": head[0] + 1,
            "unsigned": 0,
        }
    ]
    check(settings)


def test_close_is_idempotent_and_commit_after_close_fails(settings: TrailSettings) -> None:
    trail = Trail.open(settings)
    trail.append("error", None, {"message": "x"})
    trail.close()
    trail.close()
    with pytest.raises(TrailWriteError, match="closed"):
        trail.commit()


def test_kill_9_loses_no_committed_event(settings: TrailSettings) -> None:
    script = f"""
import os, signal
from pathlib import Path
from appliance.config import TrailSettings
from appliance.trail.store import Trail
t = Trail.open(TrailSettings(Path({str(settings.path)!r}), Path({str(settings.signing_key)!r}),
               checkpoint_events=5, checkpoint_seconds=3600))
for n in range(1, 13):
    t.append("command", "s", {{"n": n, "text": "SELECT 1"}})
    t.commit()
t.append("command", "s", {{"n": 13, "text": "never committed"}})
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[3])
    assert done.returncode == -9
    assert settings.path.with_name("trail.db-wal").exists()  # never checkpointed into the db
    commands = [r for r in rows(settings.path) if r[1] == "command"]
    assert [c[3]["n"] for c in commands] == list(range(1, 13))
    report = verify(settings.path, keys.load_public(settings.public_key), settings.checkpoint_file)
    assert report.ok
    assert report.checkpoints == 3
    assert report.uncovered == 2
    trail = Trail.open(settings)
    assert trail.head[0] == 18  # the two unsigned commands, then the start and its checkpoint
    trail.close()
    check(settings)
    assert [r[3].get("unsigned") for r in rows(settings.path) if r[1] == "trail"] == [2]


# --- failure and retry -------------------------------------------------------------------


@pytest.fixture
def locked(settings: TrailSettings, monkeypatch: pytest.MonkeyPatch) -> sqlite3.Connection:
    """A second connection that will hold the write lock, as a foreign writer would."""
    monkeypatch.setattr(store, "BUSY_TIMEOUT_MS", 20)
    settings.path.parent.mkdir(parents=True, exist_ok=True)
    return sqlite3.connect(settings.path, isolation_level=None)


def test_failed_commit_keeps_the_backlog_and_a_later_commit_retries_it(
    settings: TrailSettings, clock: Clock, locked: sqlite3.Connection
) -> None:
    trail = Trail.open(settings, clock=clock)
    trail.append("command", "s", {"n": 1, "text": "SELECT 1"})
    trail.commit()
    head = trail.head
    locked.execute("BEGIN EXCLUSIVE")
    trail.append("command", "s", {"n": 2, "text": "SELECT 2"})
    trail.append("result", "s", {"n": 2, "status": "ok"})
    with pytest.raises(TrailWriteError, match="database is locked"):
        trail.commit()
    assert trail.pending == 2
    assert trail.head == head  # the in-memory chain did not move
    trail.append("command", "s", {"n": 3, "text": "SELECT 3"})
    with pytest.raises(TrailWriteError):
        trail.commit()
    locked.execute("ROLLBACK")
    trail.commit()
    assert trail.pending == 0
    assert [(r[0], r[3].get("n")) for r in rows(settings.path)] == [(3, 1), (4, 2), (5, 2), (6, 3)]
    trail.close()
    check(settings)


def test_backlog_is_bounded_and_the_loss_is_recorded(
    settings: TrailSettings, clock: Clock, locked: sqlite3.Connection
) -> None:
    trail = Trail.open(settings, clock=clock)
    trail.max_backlog = 3
    locked.execute("BEGIN EXCLUSIVE")
    for n in range(1, 4):
        clock.tick(1)
        trail.append("command", "s", {"n": n})
    for n in range(4, 6):
        clock.tick(1)
        trail.append("result", "s", {"n": n})
        trail.append("session_end", "s", {"n": n})
    assert trail.pending == 3
    with pytest.raises(TrailWriteError):
        trail.commit()
    locked.execute("ROLLBACK")
    trail.commit()
    found = rows(settings.path)
    assert [r[3].get("n") for r in found[:3]] == [1, 2, 3]  # the oldest are kept
    notice = found[3]
    assert notice[1] == "error"
    assert notice[3]["where"] == "trail"
    assert notice[3]["dropped"] == 4
    assert notice[3]["types"] == {"result": 2, "session_end": 2}
    assert notice[3]["first_ts"] == 1_700_000_004_000_000
    assert "4 later events were not recorded" in str(notice[3]["message"])
    trail.close()
    check(settings)


def test_a_command_is_never_dropped_from_a_full_backlog(
    settings: TrailSettings, locked: sqlite3.Connection
) -> None:
    trail = Trail.open(settings)
    trail.max_backlog = 2
    locked.execute("BEGIN EXCLUSIVE")
    trail.append("command", "s", {"n": 1})
    trail.append("result", "s", {"n": 1})
    payload = {"n": 2, "text": "DROP TABLE orders"}
    with pytest.raises(TrailFull, match="backlog of 2 events is full") as info:
        trail.append("command", "s", payload)
    assert isinstance(info.value, TrailWriteError)  # the relay's refusal path handles it
    assert trail.pending == 2
    locked.execute("ROLLBACK")
    trail.close()
    assert "DROP TABLE" not in str(rows(settings.path))


def test_commit_failure_from_the_store_is_a_trail_write_error(
    settings: TrailSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    trail = Trail.open(settings)
    real = fail_inserts(trail)
    trail.append("command", "s", {"n": 1})
    with pytest.raises(TrailWriteError, match="disk is full"):
        trail.commit()
    assert not real.in_transaction
    monkeypatch.setattr(trail, "_conn", real)
    trail.commit()
    trail.close()
    assert rows(settings.path)[0][3] == {"n": 1}


# --- checkpoints -------------------------------------------------------------------------


def checkpoints(path: Path) -> list[tuple[int, dict[str, object]]]:
    return [(r[0], r[3]) for r in rows(path) if r[1] == "checkpoint"]


def test_checkpoint_after_checkpoint_events(settings: TrailSettings, clock: Clock) -> None:
    trail = Trail.open(settings, clock=clock)  # checkpoint_events=5
    for n in range(1, 5):
        trail.append("command", "s", {"n": n})
        trail.commit()
    assert checkpoints(settings.path) == []
    trail.append("command", "s", {"n": 5})
    trail.commit()
    [(seq, payload)] = checkpoints(settings.path)
    assert seq == 8
    assert payload["seq"] == 7
    public = keys.load_public(settings.public_key)
    with sqlite3.connect(settings.path) as conn:
        (covered,) = conn.execute("SELECT hash FROM events WHERE seq = 7").fetchone()
        (itself,) = conn.execute("SELECT hash FROM events WHERE seq = 8").fetchone()
    assert payload["hash"] == covered
    assert payload["key"] == keys.fingerprint(public)
    assert keys.signature_ok(public, 7, covered, str(payload["signature"]))
    # The file signs the checkpoint event itself, with a message of its own.
    published = checkpoint.read_file(settings.checkpoint_file)
    assert (published.seq, published.hash, published.key) == (8, itself, payload["key"])
    assert published.valid(public)
    assert not keys.signature_ok(public, 8, itself, published.signature)
    assert mode(settings.checkpoint_file) == 0o644
    trail.close()


def test_checkpoint_after_checkpoint_seconds(tmp_path: Path, clock: Clock) -> None:
    settings = TrailSettings(tmp_path / "t.db", tmp_path / "t.key", checkpoint_seconds=10)
    trail = Trail.open(settings, clock=clock)
    trail.append("command", "s", {"n": 1})
    trail.commit()
    clock.tick(9)
    trail.commit()
    assert checkpoints(settings.path) == []
    clock.tick(2)
    trail.commit()  # nothing pending, but an event is uncovered and the time is up
    assert [p["seq"] for _, p in checkpoints(settings.path)] == [3]
    clock.tick(60)
    trail.commit()  # nothing uncovered: no new checkpoint
    assert len(checkpoints(settings.path)) == 1
    trail.close()


def test_forced_checkpoint_only_when_something_is_uncovered(
    settings: TrailSettings, clock: Clock
) -> None:
    trail = Trail.open(settings, clock=clock)
    trail.checkpoint()
    assert rows(settings.path) == []
    trail.append("command", "s", {"n": 1})
    trail.checkpoint()  # the pending event is written and signed in one commit
    assert [(r[0], r[1]) for r in rows(settings.path)] == [(3, "command"), (4, "checkpoint")]
    trail.checkpoint()
    assert len(rows(settings.path)) == 2
    trail.close()
    assert len(rows(settings.path)) == 2


def test_checkpoint_file_write_failure_is_recorded_not_raised(
    settings: TrailSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    trail = Trail.open(settings)

    def refuse(*_: object, **__: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store, "write_file", refuse)
    trail.append("command", "s", {"n": 1})
    trail.checkpoint()
    assert trail.pending == 1
    monkeypatch.undo()
    trail.close()
    errors = [r for r in rows(settings.path) if r[1] == "error"]
    assert "Permission denied" in str(errors[0][3]["message"])


# --- refusing to open --------------------------------------------------------------------


def test_not_a_trail_is_refused_and_left_untouched(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    for path in (junk, other):
        before = path.read_bytes()
        with pytest.raises(TrailError, match="not a Witness trail"):
            Trail.open(TrailSettings.beside(path))
        assert path.read_bytes() == before
        assert not path.with_name(path.name + "-wal").exists()


def test_an_empty_file_becomes_a_trail(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    path.touch()
    trail = Trail.open(TrailSettings.beside(path))
    trail.append("error", None, {"message": "x"})
    trail.close()
    assert len(rows(path)) == 2  # after the genesis and its checkpoint


def test_another_key_is_refused(settings: TrailSettings, tmp_path: Path) -> None:
    Trail.open(settings).close()
    other = TrailSettings(settings.path, tmp_path / "other.key")
    keys.create(other.signing_key)
    with pytest.raises(TrailError, match="is not the key"):
        Trail.open(other)
    settings.signing_key.unlink()
    with pytest.raises(TrailError, match="no such signing key"):
        Trail.open(settings)
    assert not settings.signing_key.exists()  # no new key was made for the old trail


def test_a_trail_missing_its_published_checkpoint_is_refused(
    settings: TrailSettings, clock: Clock
) -> None:
    trail = Trail.open(settings, clock=clock)
    fill(trail, clock, sessions=1)
    trail.close()
    published = checkpoint.read_file(settings.checkpoint_file)
    with sqlite3.connect(settings.path) as conn:
        conn.execute("DROP TRIGGER events_no_delete")
        conn.execute("DELETE FROM events WHERE seq >= ?", (published.seq,))
    before = settings.checkpoint_file.read_bytes()
    with pytest.raises(TrailError, match="events were cut"):
        Trail.open(settings)
    assert settings.checkpoint_file.read_bytes() == before
    settings.path.unlink()  # a missing trail with a checkpoint left behind: also refused
    with pytest.raises(TrailError, match="events were cut"):
        Trail.open(settings)


def test_triggers_refuse_update_and_delete(settings: TrailSettings) -> None:
    trail = Trail.open(settings)
    trail.append("command", "s", {"n": 1})
    trail.close()
    with sqlite3.connect(settings.path) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE events SET payload = '{}'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM events")


def test_trail_files_keep_private_modes_under_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        settings = TrailSettings(tmp_path / "d" / "t.db", tmp_path / "k" / "t.key")
        trail = Trail.open(settings)
        trail.append("command", "s", {"n": 1})
        trail.commit()
        assert mode(settings.path) == 0o600
        assert mode(settings.path.with_name("t.db-wal")) == 0o600
        assert mode(settings.path.parent) == 0o700
        trail.close()
    finally:
        os.umask(old)


def test_the_checkpoint_file_is_overwritten_in_place_unless_power_durability(
    tmp_path: Path,
) -> None:
    key = keys.create(tmp_path / "k")
    fingerprint = keys.fingerprint(key.public_key())
    path = tmp_path / "trail.db.key.checkpoint"
    first = checkpoint.Head.sign(key, fingerprint, 7, "a" * 64)
    checkpoint.write_file(path, first, sync=False)
    inode = path.stat().st_ino
    second = checkpoint.Head.sign(key, fingerprint, 9, "b" * 64)
    checkpoint.write_file(path, second, sync=False)
    assert path.stat().st_ino == inode  # no rename: the same file, rewritten
    assert path.stat().st_size == checkpoint.RECORD
    assert checkpoint.read_file(path) == second
    checkpoint.write_file(path, first, sync=True)
    assert path.stat().st_ino != inode  # power: a new file, fsynced, renamed over
    assert checkpoint.read_file(path) == first


def test_a_read_that_crossed_a_write_reads_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = keys.create(tmp_path / "k")
    head = checkpoint.Head.sign(key, keys.fingerprint(key.public_key()), 3, "c" * 64)
    path = tmp_path / "checkpoint"
    checkpoint.write_file(path, head, sync=False)
    whole = path.read_bytes()
    torn = whole[:40] + b"x" * 20 + whole[60:]
    reads = iter([torn, whole, whole])
    monkeypatch.setattr(Path, "read_bytes", lambda self: next(reads))
    assert checkpoint.read_file(path) == head
