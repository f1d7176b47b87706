"""The control socket: who is asking comes from the kernel, bad requests get a sentence, and a
binding the trail cannot record is not kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from fulldisk import fail_inserts

from appliance.config import IdentitySettings, IssuerSettings, TrailSettings
from appliance.identity.bindings import Bindings
from appliance.identity.oidc import TokenError, Validated
from appliance.model import Identity, Owner
from appliance.proxy.control import MAX_OPEN, MAX_REQUEST, Control
from appliance.proxy.recorder import Recorder
from appliance.trail.store import Trail

ALICE = Identity("https://idp.test", "alice-sub", "alice@example.test", "Alice", ("dba",))


class StubValidator:
    """Stands in for token validation, which these tests are not about."""

    def validate(self, token: str) -> Validated:
        now = time.time()
        if token == "stale":  # past its exp, but within the issuer's leeway
            return Validated(ALICE, now - 5, now - 600, None, None, "k1", "RS256", "test")
        if token != "good":
            raise TokenError("token rejected: signature does not verify")
        return Validated(ALICE, now + 600, now, None, None, "k1", "RS256", "test")


async def ask(path: Path, raw: bytes) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(raw)
    await writer.drain()
    lines = []
    # A recorder that refuses before reading the whole request closes with some of it unread:
    # the caller then sees a reset, after the answer.
    with contextlib.suppress(ConnectionResetError):
        while line := await reader.readline():
            lines.append(json.loads(line))
    writer.close()
    return lines


def scenario(tmp_path: Path, body: Any) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        trail = Trail.open(TrailSettings.beside(tmp_path / "trail.db"))
        settings = IdentitySettings(
            issuers=(IssuerSettings("test", "https://idp.test", ("urn:witness",)),),
            control_socket=tmp_path / "control.sock",
            warden_socket=tmp_path / "warden.sock",  # never the host's warden
        )
        bindings = Bindings(clock=time.time)
        control = Control(settings, bindings, Recorder(trail, loop), StubValidator())  # type: ignore[arg-type]
        await control.start()
        try:
            assert (tmp_path / "control.sock").stat().st_mode & 0o777 == 0o666
            await body(settings.control_socket, bindings, trail)
        finally:
            control.close()
            trail.close()
        assert not (tmp_path / "control.sock").exists()

    asyncio.run(run())


def test_bad_requests_get_a_sentence_and_the_socket_keeps_serving(tmp_path: Path) -> None:
    async def body(path: Path, bindings: Bindings, trail: Trail) -> None:
        for raw, expected in [
            (b"{not json\n", "not a JSON object"),
            (b"[1, 2]\n", "not a JSON object"),
            (b'{"op": "format-disk"}\n', "unknown request 'format-disk'"),
            (b'{"op": "login", "token": ""}\n', "non-empty string"),
            (b'{"op": "login", "token": "forged"}\n', "signature does not verify"),
            (b'{"op": "logout"}\n', "no binding to remove"),
        ]:
            (answer,) = await ask(path, raw)
            assert answer["ok"] is False and expected in answer["error"], (raw, answer)
        (answer,) = await ask(path, b'{"op": "whoami"}\n')
        assert answer["ok"] is True and answer["binding"] is None
        assert answer["caller"]["uid"] == os.getuid() and answer["caller"]["pid"] == os.getpid()

    scenario(tmp_path, body)


def test_a_login_binds_the_callers_uid_after_its_record_is_committed(tmp_path: Path) -> None:
    async def body(path: Path, bindings: Bindings, trail: Trail) -> None:
        (answer,) = await ask(path, b'{"op": "login", "token": "good"}\n')
        assert answer["ok"] is True, answer
        assert answer["binding"]["kind"] == "uid"
        assert answer["binding"]["target"] == str(os.getuid())
        found = bindings.resolve(Owner(uid=os.getuid()))
        assert found is not None and found.identity == ALICE
        assert trail.pending == 0  # committed before the answer went out

    scenario(tmp_path, body)


def test_a_login_the_trail_cannot_record_binds_nothing(tmp_path: Path) -> None:
    async def body(path: Path, bindings: Bindings, trail: Trail) -> None:
        real = fail_inserts(trail)
        (answer,) = await ask(path, b'{"op": "login", "token": "good"}\n')
        assert answer["ok"] is False
        assert "audit trail cannot be written" in answer["error"]
        assert bindings.resolve(Owner(uid=os.getuid())) is None
        trail._conn = real  # the disk recovers: the attempt is written, marked refused
        trail.commit()
        (payload,) = [
            json.loads(p)
            for (p,) in real.execute("select payload from events where type='binding'")
        ]
        assert payload["action"] == "bind" and "database or disk is full" in payload["refused"]

    scenario(tmp_path, body)


def test_a_token_past_its_expiry_binds_nothing_even_within_the_leeway(tmp_path: Path) -> None:
    # The validator tolerates leeway_seconds of clock difference, but a binding lives until
    # exp: a token that passes only by the leeway would make a binding expired from birth.
    async def body(path: Path, bindings: Bindings, trail: Trail) -> None:
        for op in ("login", "run"):
            (answer,) = await ask(path, json.dumps({"op": op, "token": "stale"}).encode() + b"\n")
            assert answer["ok"] is False
            assert answer["error"] == "the token has already expired", (op, answer)
        assert bindings.live() == []

    scenario(tmp_path, body)


def test_what_a_request_says_is_quoted_only_in_part(tmp_path: Path) -> None:
    long = "x" * 60_000  # within the request limit, far beyond a sentence

    async def body(path: Path, bindings: Bindings, trail: Trail) -> None:
        for request, expected in [
            ({"op": long}, "unknown request 'xxxx"),
            ({"op": "login", "issuer": long}, "no issuer named 'xxxx"),
        ]:
            (answer,) = await ask(path, json.dumps(request).encode() + b"\n")
            assert answer["ok"] is False
            assert answer["error"].startswith(expected), answer["error"][:200]
            assert "(60000 characters)" in answer["error"]
            assert len(answer["error"]) < 300, answer["error"][:200]

    scenario(tmp_path, body)


def test_an_internal_error_is_quoted_only_in_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fail(*args: Any) -> dict[str, Any]:
        raise ValueError("y" * 100_000)

    monkeypatch.setattr(Control, "_handle", fail)

    async def body(path: Path, bindings: Bindings, trail: Trail) -> None:
        (answer,) = await ask(path, b'{"op": "whoami"}\n')
        assert answer["ok"] is False
        assert answer["error"].startswith("internal error: ValueError('yyyy")
        assert len(answer["error"]) < 300, answer["error"][:200]

    scenario(tmp_path, body)


def blocking_ask(path: Path, raw: bytes) -> list[dict[str, Any]]:
    """Send ``raw`` as a plain client would and read every answer line. The recorder may close
    the connection before it has read all of ``raw``: the answer it sent first still counts."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    return [json.loads(line) for line in received.splitlines()]


def trickle(path: Path, start: bytes, every: float | None) -> tuple[dict[str, Any], float]:
    """Send ``start``, then a space every ``every`` seconds (never, if None) and never a
    newline, until the recorder answers; the answer and how long it took."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(start)
        started = time.monotonic()
        sock.settimeout(every or 30)
        received = b""
        while b"\n" not in received and time.monotonic() - started < 30:
            try:
                received += sock.recv(4096)
            except TimeoutError:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(b" ")
        return json.loads(received), time.monotonic() - started


def test_a_request_line_over_the_limit_is_refused_and_the_socket_keeps_serving(
    tmp_path: Path,
) -> None:
    async def body(path: Path, bindings: Bindings, trail: Trail) -> None:
        for size in (MAX_REQUEST + 1, 10 * 1024 * 1024):
            padding = b"x" * (size - len(b'{"op": ""}'))
            raw = b'{"op": "' + padding + b'"}\n'
            answers = await asyncio.to_thread(blocking_ask, path, raw)
            assert answers == [
                {
                    "ok": False,
                    "error": f"the request is longer than {MAX_REQUEST} bytes: one JSON object "
                    "on one line, a token of at most 16384 characters in it",
                }
            ], size
        # The longest line allowed is read and answered.
        padding = b"x" * (MAX_REQUEST - len(b'{"op": ""}'))
        (answer,) = await ask(path, b'{"op": "' + padding + b'"}\n')
        assert answer["error"].startswith("unknown request 'xxx")
        (answer,) = await ask(path, b'{"op": "whoami"}\n')
        assert answer["ok"] is True

    scenario(tmp_path, body)


def test_the_request_limit_is_max_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("appliance.proxy.control.MAX_REQUEST", 1024)

    async def body(path: Path, bindings: Bindings, trail: Trail) -> None:
        (answer,) = await asyncio.to_thread(
            blocking_ask, path, b'{"op": "login", "token": "' + b"t" * 2000 + b'"}\n'
        )
        assert answer["error"].startswith("the request is longer than 1024 bytes")

    scenario(tmp_path, body)


def test_a_client_that_never_ends_its_line_is_refused_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("appliance.proxy.control.REQUEST_WAIT", 0.5)

    async def body(path: Path, bindings: Bindings, trail: Trail) -> None:
        # Silent, then trickling a byte at a time: each read is quick, the line never ends.
        for every in (None, 0.05):
            answer, waited = await asyncio.to_thread(trickle, path, b'{"op": ', every)
            assert answer == {
                "ok": False,
                "error": "no request line within 0.5 s (one JSON object, ending in a newline)",
            }
            assert waited < 2, waited

    scenario(tmp_path, body)


def test_a_client_that_hangs_up_mid_line_is_told_so(tmp_path: Path) -> None:
    async def body(path: Path, bindings: Bindings, trail: Trail) -> None:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b'{"op": "who')
        writer.write_eof()
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert json.loads(line)["error"] == (
            "the request ended before its newline (one JSON object, ending in a newline)"
        )

    scenario(tmp_path, body)


def test_one_user_cannot_hold_every_connection(tmp_path: Path) -> None:
    async def body(path: Path, bindings: Bindings, trail: Trail) -> None:
        # Connections that say nothing hold their place until REQUEST_WAIT.
        held = [await asyncio.open_unix_connection(str(path)) for _ in range(MAX_OPEN)]
        await asyncio.sleep(0.1)  # let the recorder accept them all
        started = time.monotonic()
        (answer,) = await ask(path, b'{"op": "whoami"}\n')
        assert time.monotonic() - started < 2
        assert answer == {
            "ok": False,
            "error": f"uid {os.getuid()} has {MAX_OPEN} control requests open already: "
            "let one finish first",
        }
        for _, writer in held:
            writer.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until the recorder has seen them go
            (answer,) = await ask(path, b'{"op": "whoami"}\n')
            if answer["ok"]:
                break
            await asyncio.sleep(0.05)
        assert answer["ok"] is True, answer

    scenario(tmp_path, body)
