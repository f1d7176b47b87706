"""CEF over syslog to a real rsyslogd: UDP and TCP, RFC 5424 and RFC 3164 framing, hostile
statement texts arriving whole, and a server that is not there."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from rsyslog import Rsyslog
from trailwriter import writer
from witnesscli import WITNESS, witness_env

from appliance.lab.net import free_port

HOSTILE = [
    "select 'a|b' as \"x=y\", E'back\\\\slash' -- | = \\",
    "select 1;\nselect 2;\r\nselect '\x1b[2J' -- CEF:0|fake|header|",
    "insert into t values ('=|\\=\\|') /* key=value act=allow */",
]


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    settings, t, at = writer(tmp_path / "trail")
    start = {
        "client": "127.0.0.1:40001",
        "backend": {"name": "orders", "address": "127.0.0.1", "port": 5432},
        "db_user": "app",
        "database": "shop",
        "identity": {"issuer": "https://idp", "subject": "sub-a", "email": "a@example.com"},
    }
    at(0, "session_start", "s1", start)
    for n, text in enumerate(HOSTILE, 1):
        at(n, "command", "s1", {"n": n, "kind": "query", "text": text})
    at(9, "session_end", "s1", {"reason": "client closed", "commands": len(HOSTILE)})
    t.close()
    return settings.path


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path / "rsyslog")
    yield server
    server.stop()


def export(trail: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [*WITNESS, "export", "--format", "cef", "--trail", str(trail), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=witness_env(), check=False)


def local_cef(trail: Path) -> list[str]:
    done = export(trail)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize(
    ("transport", "framing"),
    [("udp", "rfc5424"), ("tcp", "rfc5424"), ("udp", "rfc3164"), ("tcp", "rfc3164")],
)
def test_rsyslog_receives_every_line_whole(
    trail: Path, rsyslog: Rsyslog, transport: str, framing: str
) -> None:
    expected = local_cef(trail)
    assert len(expected) == 5  # start, three commands, end
    port = rsyslog.tcp if transport == "tcp" else rsyslog.udp
    done = export(
        trail, "--syslog", f"127.0.0.1:{port}", "--transport", transport, "--framing", framing
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"exported 5 messages (cef) to 127.0.0.1:{port}\n"
    received = rsyslog.lines(len(expected))
    assert len(received) == len(expected)
    for line, cef in zip(received, expected, strict=True):
        host, app, msgid, message = line.split("|", 3)
        assert (host, app) == (socket.gethostname(), "witness")
        assert message.strip() == cef
        if framing == "rfc5424":
            assert msgid in ("session_start", "command", "session_end")
    commands = [line for line in received if "|command|" in line]
    assert "cs1=select 'a|b' as \"x\\=y\", E'back\\\\\\\\slash' -- | \\= \\\\" in commands[0]
    assert "cs1=select 1;\\nselect 2;\\r\\nselect '\\\\x1b[2J'" in commands[1]
    assert "/* key\\=value act\\=allow */" in commands[2]


def test_an_unreachable_server_is_a_clear_error(trail: Path) -> None:
    port = free_port()
    done = export(trail, "--syslog", f"127.0.0.1:{port}", "--transport", "tcp")
    assert done.returncode == 1
    assert done.stderr == (
        f"witness: syslog 127.0.0.1:{port} (tcp): cannot connect: Connection refused\n"
    )
    bad = export(trail, "--syslog", "no-port-here")
    assert bad.returncode == 2
    assert bad.stderr == "witness: --syslog: expected HOST:PORT, got 'no-port-here'\n"
    unknown = export(trail, "--syslog", "no-such-host.invalid:514")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("witness: syslog no-such-host.invalid:514: cannot resolve")
