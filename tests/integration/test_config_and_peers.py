"""``witness serve --config`` with row capture, and a backend that breaks the protocol."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from pathlib import Path

import psycopg
from witnessproc import WITNESS, run, sessions, wait_port

from appliance.lab.net import free_port
from appliance.lab.postgres import PostgresServer


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [WITNESS, "--config", str(config), "serve"], stdout=out, stderr=subprocess.STDOUT
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def test_serve_from_a_config_file_captures_rows_within_the_cap(
    pg: PostgresServer, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "witness.toml"
    config.write_text(
        f'[[backend]]\nname = "lab"\naddress = "127.0.0.1"\nport = {pg.port}\n\n'
        f'[[listener]]\nlisten = "127.0.0.1:{port}"\nbackend = "lab"\n\n'
        '[trail]\npath = "trail.db"\n\n[capture]\nrows = 2\n\n'
        '[identity]\nunbound = "allow"\n'
    )
    proc = _serve(config, tmp_path / "witness.log")
    try:
        wait_port(port, proc)
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(url) as conn:
            rows = conn.execute("select g, 'row ' || g from generate_series(1, 5) g").fetchall()
        assert len(rows) == 5
    finally:
        _stop(proc)
    assert (tmp_path / "trail.db.key").stat().st_mode & 0o777 == 0o600
    entry = next(iter(sessions(tmp_path / "trail.db").values()))
    assert entry["start"]["backend"]["name"] == "lab"
    command = next(c for c in entry["commands"] if "generate_series" in c["text"])
    result = entry["results"][command["n"]]
    assert result["rows"] == 5
    assert result["captured"] == [["1", "row 1"], ["2", "row 2"]]
    assert result["truncated"] is True


def test_a_malformed_server_ends_only_its_session(tmp_path: Path) -> None:
    """A 'backend' that answers the startup with bytes no PostgreSQL would send."""
    listener = socket.create_server(("127.0.0.1", 0))
    bad_port = listener.getsockname()[1]

    def broken_backend() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"R\x00\x00\x00\x02")  # a length below 4 is impossible
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=broken_backend, daemon=True)
    thread.start()
    port = free_port()
    proc = subprocess.Popen(
        [
            WITNESS,
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--backend",
            f"postgresql://127.0.0.1:{bad_port}",
            "--trail",
            str(tmp_path / "t.db"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc)
        out = run(
            "psql", "-X", "-c", "select 1", f"postgresql://postgres@127.0.0.1:{port}/postgres"
        )
        assert out.returncode != 0
        assert "protocol error" in out.stderr
        assert proc.poll() is None  # the recorder carries on
    finally:
        _stop(proc)
        listener.close()
    entry = next(iter(sessions(tmp_path / "t.db").values()))
    assert "server protocol error" in entry["end"]["reason"]
    assert entry["errors"][0]["where"] == "server"
