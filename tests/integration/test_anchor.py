"""The anchor on a real PostgreSQL: the schema as ``witness anchor schema`` prints it, a
bastion role that may only add, the recorder publishing every checkpoint off its write path
through a restart of either side, and ``witness verify`` catching a rewrite made with the
real signing key."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from witnessproc import WITNESS, run, wait_port

from appliance.config import AnchorSettings, TrailSettings
from appliance.lab.net import free_port
from appliance.lab.postgres import PostgresServer
from appliance.trail import chain, db, keys, publisher
from appliance.trail.checkpoint import Checkpoint, Head, write_file
from appliance.trail.publisher import Publisher
from appliance.trail.store import Trail

PASSWORD = "anchor-lab-password"


class Anchor:
    """A PostgreSQL holding the anchor in database ``anchor``: the superuser comes in by
    trust, every other role with a password (SCRAM), as a real anchor's bastions would."""

    def __init__(self) -> None:
        self.server = PostgresServer({"password_encryption": "scram-sha-256"})
        self.server.start()
        (self.server.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        self.server.psql("SELECT pg_reload_conf()")
        self.server.psql("CREATE DATABASE anchor")
        self.apply_schema()

    def apply_schema(self, *bastions: str) -> subprocess.CompletedProcess[str]:
        printed = run(WITNESS, "anchor", "schema", *(f"--bastion={b}" for b in bastions))
        assert printed.returncode == 0, printed.stderr
        applied = subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-", self.url("postgres")],
            input=printed.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
        assert applied.returncode == 0, applied.stderr
        return applied

    def url(self, user: str) -> str:
        return f"host=127.0.0.1 port={self.server.port} dbname=anchor user={user}"

    def role(self, name: str, group: str = "witness_bastion") -> str:
        self.admin(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{PASSWORD}' IN ROLE {group}")
        return name

    def connect(self, user: str) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.url(user), password=PASSWORD, autocommit=True)

    def admin(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            cursor = conn.execute(sql, params or None)
            return cursor.fetchall() if cursor.description else []

    def settings(self, role: str, directory: Path) -> AnchorSettings:
        """The bastion's side: a DSN without the password, and a passfile (0600) with it."""
        passfile = directory / f"{role}.pgpass"
        passfile.write_text(f"127.0.0.1:{self.server.port}:anchor:{role}:{PASSWORD}\n")
        passfile.chmod(0o600)
        return AnchorSettings(self.url(role), passfile=passfile, bastion=role, timeout=2)

    def held(self, trail: str) -> list[int]:
        rows = self.admin(
            "SELECT seq FROM witness.checkpoints WHERE trail = %s ORDER BY seq", trail
        )
        return [seq for (seq,) in rows]


@pytest.fixture(scope="module")
def anchor() -> Iterator[Anchor]:
    found = Anchor()
    yield found
    found.server.remove()


def test_the_schema_applies_twice_and_a_bastion_may_only_add_its_own(
    anchor: Anchor,
) -> None:
    anchor.apply_schema("b-rights")  # again: nothing fails, nothing changes
    anchor.admin(f"ALTER ROLE \"b-rights\" PASSWORD '{PASSWORD}'")
    other = anchor.role("b-other")
    auditor = anchor.role("auditor-1", group="witness_auditor")
    row = ("a" * 32, 7, "b" * 64, "0123456789abcdef", "c2ln", "2024-01-01T00:00:00Z")
    insert = "INSERT INTO witness.checkpoints (trail, seq, hash, key, signature, made)"
    with anchor.connect("b-rights") as bastion:
        bastion.execute(f"{insert} VALUES (%s, %s, %s, %s, %s, %s)", row)
        # Publishing again is harmless, and cannot change what is there.
        again = (*row[:2], "d" * 64, *row[3:])
        bastion.execute(
            f"{insert} VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (trail, seq) DO NOTHING", again
        )
        for sql in (
            "UPDATE witness.checkpoints SET hash = 'x'",
            "DELETE FROM witness.checkpoints",
            "TRUNCATE witness.checkpoints",
            f"{insert[:-1]}, bastion) VALUES ('{'e' * 32}', 1, '{'b' * 64}', 'k', 's', now(),"
            " 'b-other')",
            f"{insert[:-1]}, received) VALUES ('{'e' * 32}', 1, '{'b' * 64}', 'k', 's', now(),"
            " now() - interval '1 day')",
            "ALTER TABLE witness.checkpoints DISABLE ROW LEVEL SECURITY",
            "DROP POLICY bastion_adds_its_own ON witness.checkpoints",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                bastion.execute(sql)
        # SET ROLE to the group does not let it publish as anyone but itself.
        bastion.execute("SET ROLE witness_bastion")
        bastion.execute(f"{insert} VALUES (%s, 8, %s, %s, %s, %s)", (row[0], *row[2:]))
        bastion.execute("RESET ROLE")
        held = bastion.execute("SELECT seq, hash, bastion FROM witness.checkpoints").fetchall()
    assert held == [(7, "b" * 64, "b-rights"), (8, "b" * 64, "b-rights")]
    with anchor.connect(other) as bastion:  # another bastion sees none of them
        assert bastion.execute("SELECT count(*) FROM witness.checkpoints").fetchone() == (0,)
    with anchor.connect(auditor) as reader:
        assert reader.execute("SELECT count(*) FROM witness.checkpoints").fetchone() == (2,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(f"{insert} VALUES (%s, 9, %s, %s, %s, %s)", (row[0], *row[2:]))


def _config(tmp_path: Path, backend_port: int, port: int, settings: AnchorSettings) -> Path:
    config = tmp_path / "witness.toml"
    config.write_text(
        f'[[backend]]\nname = "lab"\naddress = "127.0.0.1"\nport = {backend_port}\n\n'
        f'[[listener]]\nlisten = "127.0.0.1:{port}"\nbackend = "lab"\n\n'
        f'[trail]\npath = "trail.db"\n\n[trail.anchor]\ndsn = "{settings.dsn}"\n'
        f'passfile = "{settings.passfile}"\ntimeout_seconds = 2\nretry_max_seconds = 2\n\n'
        '[identity]\nunbound = "allow"\n'
    )
    return config


class Recorder:
    def __init__(self, config: Path, port: int) -> None:
        self.port = port
        with (config.parent / "witness.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [WITNESS, "--config", str(config), "serve"], stdout=log, stderr=subprocess.STDOUT
            )
        wait_port(port, self.proc)

    def query(self, sql: str) -> None:
        url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(url, connect_timeout=10) as conn:
            conn.execute(sql)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def checkpoints(trail: Path) -> list[int]:
    """The seqs the trail's checkpoints cover, as the anchor keys them."""
    conn = sqlite3.connect(f"file:{trail}?mode=ro", uri=True)
    try:
        found = conn.execute("SELECT payload FROM events WHERE type = 'checkpoint'").fetchall()
    finally:
        conn.close()
    return sorted(json.loads(payload)["seq"] for (payload,) in found)


def until(condition: Any, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.1)


def test_the_recorder_publishes_through_a_restart_of_either_side(
    pg: PostgresServer, tmp_path: Path
) -> None:
    own = Anchor()  # this test stops and starts its anchor
    recorder: Recorder | None = None
    try:
        settings = own.settings(own.role("bastion-1"), tmp_path)
        port = free_port()
        config = _config(tmp_path, pg.port, port, settings)
        trail = tmp_path / "trail.db"
        recorder = Recorder(config, port)
        recorder.query("select 'while the anchor is up'")
        trail_id = _trail_id(trail)
        until(lambda: set(checkpoints(trail)) <= set(own.held(trail_id)) and own.held(trail_id))

        own.server.stop()  # the anchor goes away: recording and relaying go on
        started = time.monotonic()
        for n in range(3):
            recorder.query(f"select 'anchor down {n}'")
        assert time.monotonic() - started < 5
        until(lambda: _state(trail).get("error") is not None)
        assert "anchor host=127.0.0.1" in _state(trail)["error"]
        assert "anchor-lab-password" not in _state(trail)["error"]
        before = _state(trail)["error"]
        status = _status(tmp_path, config)
        after = _state(trail)["error"]
        assert status["unpublished"] >= 1 and status["seconds_behind"] >= 0
        # The publisher retries meanwhile: the first error (the anchor's shutdown) may give
        # way to the next (connection refused) between two reads.
        assert status["error"] in (before, after)
        assert recorder.stop() == 0  # its last checkpoint waits for the next start

        own.server.restart()
        recorder = Recorder(config, port)
        until(lambda: _state(trail).get("error") is None)
        until(lambda: set(checkpoints(trail)) <= set(own.held(trail_id)))
        assert recorder.stop() == 0
        until(lambda: set(checkpoints(trail)) <= set(own.held(trail_id)))
        assert _status(tmp_path, config)["unpublished"] == 0

        # verify takes the anchor from the configuration, and checks every checkpoint in it
        verify = run(WITNESS, "--config", str(config), "verify", "--json")
        report = json.loads(verify.stdout)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert report["anchored"] == len(checkpoints(trail)) and report["unanchored"] == 0
        text = run(WITNESS, "--config", str(config), "verify").stdout
        assert f"the anchor holds {report['anchored']} of its checkpoints" in text
    finally:
        if recorder is not None:
            recorder.stop()  # also when an assertion failed: no recorder outlives its test
        own.server.remove()


def _trail_id(trail: Path) -> str:
    with db.reading(trail) as conn:
        found = db.trail_id(conn)
    assert found is not None
    return found


def _state(trail: Path) -> dict[str, Any]:
    path = trail.with_name(trail.name + ".anchor")
    return json.loads(path.read_text()) if path.exists() else {}


def _status(tmp_path: Path, config: Path) -> dict[str, Any]:
    """witness status's view of the anchor (its table part needs an [enforce] user)."""
    with_user = tmp_path / "status.toml"
    with_user.write_text(config.read_text() + '\n[enforce]\nservice_user = "nobody"\n')
    status = run(WITNESS, "--config", str(with_user), "status", "--json")
    assert status.returncode in (0, 1), status.stderr
    found: dict[str, Any] = json.loads(status.stdout)["anchor"]
    return found


# --- verify against the anchor: what root with the signing key can no longer hide ----------


def rewrite_with_the_key(settings: TrailSettings, keep: int | None = None, edit: str = "") -> None:
    """What root with the signing key can do on the bastion: change an event (``edit`` in
    its text), or keep only the first ``keep`` events, then rechain, re-sign every checkpoint
    and the checkpoint file. The trail verifies again, on its own."""
    key = keys.load_private(settings.signing_key)
    fingerprint = keys.fingerprint(key.public_key())
    conn = sqlite3.connect(settings.path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS events_no_update")
    conn.execute("DROP TRIGGER IF EXISTS events_no_delete")
    rows = conn.execute("SELECT seq, ts, type, session, payload FROM events ORDER BY seq")
    events = rows.fetchall()[:keep]
    conn.execute("DELETE FROM events")
    hashes: dict[int, str] = {0: chain.GENESIS}
    head = None
    for seq, ts, type_, session, original in events:
        text = original
        if type_ == "command" and edit:
            text = original.replace("SELECT", edit)
        if type_ == "checkpoint":
            covered = json.loads(original)["seq"]
            signed = Checkpoint.sign(key, fingerprint, covered, hashes[covered])
            text = chain.payload_text(signed.as_dict())
        hashes[seq] = chain.event_hash(hashes[seq - 1], seq, ts, type_, session, text)
        conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, ts, type_, session, text, hashes[seq - 1], hashes[seq]),
        )
        if type_ == "checkpoint":
            head = Head.sign(key, fingerprint, seq, hashes[seq])
    conn.close()
    assert head is not None
    write_file(settings.checkpoint_file, head, sync=False)


def closed_trail(
    anchor: Anchor, tmp_path: Path, commands: int, every: int
) -> tuple[TrailSettings, AnchorSettings, str]:
    """A closed trail of ``commands`` commands, signed every ``every`` events, that a bastion
    role of its own publishes; and its id."""
    where = anchor.settings(anchor.role(f"b-{tmp_path.name[-20:].lower()}"), tmp_path)
    settings = TrailSettings.beside(tmp_path / "trail.db", checkpoint_events=every, anchor=where)
    trail = Trail.open(settings)
    for n in range(commands):
        trail.append("command", "s", {"n": n, "text": f"SELECT {n}"})
        trail.commit()
    trail.close()
    return settings, where, trail.id


@pytest.fixture
def published(anchor: Anchor, tmp_path: Path) -> tuple[TrailSettings, AnchorSettings]:
    """A closed trail of 40 commands, signed every 5 events, every checkpoint published."""
    settings, where, trail = closed_trail(anchor, tmp_path, 40, 5)
    assert Publisher(settings, where, trail).publish() == len(checkpoints(settings.path))
    return settings, where


def verify(settings: TrailSettings, where: AnchorSettings | None, *extra: str) -> Any:
    """witness verify --json, against ``where`` (its password from its passfile)."""
    anchor = ["--anchor", where.dsn] if where is not None else []
    env = {"PGPASSFILE": str(where.passfile)} if where is not None else {}
    done = run(WITNESS, "verify", "--trail", str(settings.path), "--json", *anchor, *extra, env=env)
    return done.returncode, json.loads(done.stdout) if done.stdout else done.stderr


def test_verify_checks_every_anchored_checkpoint(
    published: tuple[TrailSettings, AnchorSettings],
) -> None:
    settings, where = published
    code, report = verify(settings, where)
    assert (code, report["anchored"], report["unanchored"]) == (0, report["checkpoints"], 0)


def test_a_rewrite_with_the_real_key_passes_alone_and_fails_against_the_anchor(
    published: tuple[TrailSettings, AnchorSettings],
) -> None:
    settings, where = published
    rewrite_with_the_key(settings, edit="DROP TABLE orders; SELECT")
    assert verify(settings, None)[0] == 0  # on the bastion alone, nothing shows
    code, report = verify(settings, where)
    assert (code, report["first_bad_seq"]) == (1, 7)  # the first checkpoint after the edit
    assert "differs from the one the anchor vouches for" in report["reason"]


def test_a_tail_cut_with_the_real_key_fails_against_the_anchor(
    published: tuple[TrailSettings, AnchorSettings],
) -> None:
    settings, where = published
    rewrite_with_the_key(settings, keep=20)  # back to the checkpoint at event 20
    assert verify(settings, None)[0] == 0
    code, report = verify(settings, where)
    assert (code, report["events"]) == (1, 20)
    assert "but the anchor vouches for event" in report["reason"]
    assert "the tail was cut" in report["reason"]


def test_a_trail_signed_again_with_another_key_fails_against_the_anchor(
    published: tuple[TrailSettings, AnchorSettings],
) -> None:
    settings, where = published
    old = keys.fingerprint(keys.load_private(settings.signing_key).public_key())
    settings.signing_key.unlink()
    settings.public_key.unlink()
    new = keys.create(settings.signing_key)
    keys.ensure_public(settings.public_key, new)
    conn = sqlite3.connect(settings.path, isolation_level=None)
    new_fp = keys.fingerprint(new.public_key())
    conn.execute("UPDATE meta SET value = ? WHERE key = 'key'", (new_fp,))
    conn.execute("DROP TRIGGER events_no_update")
    genesis = json.loads(conn.execute("SELECT payload FROM events WHERE seq = 1").fetchone()[0])
    conn.execute(
        "UPDATE events SET payload = ? WHERE seq = 1",
        (chain.payload_text({**genesis, "key": new_fp}),),
    )
    conn.execute(
        "UPDATE events SET payload = replace(payload, ?, ?) WHERE type = 'trail'", (old, new_fp)
    )
    conn.close()
    rewrite_with_the_key(settings)
    assert verify(settings, None)[0] == 0
    code, report = verify(settings, where)
    assert code == 1
    assert f"signed by key {old}, not {new_fp}" in report["reason"]


def test_verify_says_when_the_anchor_cannot_be_reached_or_lets_another_bastion_in(
    anchor: Anchor, published: tuple[TrailSettings, AnchorSettings], tmp_path: Path
) -> None:
    settings, _ = published
    port = free_port()
    code, error = verify(settings, AnchorSettings(f"host=127.0.0.1 port={port} dbname=anchor"))
    assert code == 1
    assert error.startswith("witness: anchor ") and f"port={port}: connection failed" in error
    assert "Connection refused" in error
    # Another bastion that learnt the trail's id publishes a checkpoint for it: only an
    # auditor sees both, and verify says so.
    trail_id = _trail_id(settings.path)
    intruder = anchor.role(f"x-{tmp_path.name[-20:].lower()}")
    with anchor.connect(intruder) as conn:
        conn.execute(
            "INSERT INTO witness.checkpoints (trail, seq, hash, key, signature, made)"
            " VALUES (%s, 999, %s, 'k', 's', now())",
            (trail_id, "f" * 64),
        )
    auditor = anchor.role(f"a-{tmp_path.name[-20:].lower()}", group="witness_auditor")
    code, error = verify(settings, anchor.settings(auditor, tmp_path))
    assert code == 1
    assert "published by" in error and intruder in error
    assert "another bastion published for this trail" in error


def test_a_long_backlog_is_published_in_rounds_and_resumed_from_the_state_file(
    anchor: Anchor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, where, trail = closed_trail(anchor, tmp_path, 10, 2)
    monkeypatch.setattr(publisher, "BATCH", 4)
    total = len(checkpoints(settings.path))
    assert Publisher(settings, where, trail).publish() == 4
    # Another process (a restarted recorder) takes up where the state file says.
    rounds = []
    again = Publisher(settings, where, trail)
    while len(rounds) < 10 and (count := again.publish()):
        rounds.append(count)
    assert rounds == [4] * ((total - 4) // 4) + ([(total - 4) % 4] if (total - 4) % 4 else [])
    assert anchor.held(trail) == checkpoints(settings.path)
