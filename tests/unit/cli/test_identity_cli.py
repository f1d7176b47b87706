"""The identity commands' own inputs: a token file read within bounds, and a recorder that
answers before it has read the whole request."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.cli.identity import _ask
from appliance.identity.limits import MAX_TOKEN

NO_RECORDER = "/nonexistent/control.sock"


def login(token_file: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, ["login", "--token-file", token_file, "--socket", NO_RECORDER], input=stdin
    )
    return result.exit_code, result.output


def test_a_token_file_longer_than_a_token_is_refused_before_it_is_sent(tmp_path: Path) -> None:
    huge = tmp_path / "huge.jwt"
    huge.write_text("A" * 1_000_000)
    code, output = login(str(huge))
    assert (code, output) == (
        2,
        f"witness: {huge}: more than the {MAX_TOKEN} characters a token may have\n",
    )
    # The same from standard input, and from a file that never ends.
    assert login("-", stdin="A" * (MAX_TOKEN + 1))[0] == 2
    assert login("/dev/zero")[0] == 2


def test_a_token_of_the_largest_size_is_sent(tmp_path: Path) -> None:
    token = tmp_path / "token.jwt"
    token.write_text("\n  " + "A" * MAX_TOKEN + "\n\n")
    code, output = login(str(token))
    assert (code, output) == (
        1,
        f"witness: the recorder is not running here (no control socket at {NO_RECORDER})\n",
    )


def test_a_token_file_that_is_not_text_is_a_clear_error(tmp_path: Path) -> None:
    binary = tmp_path / "token.bin"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert login(str(binary)) == (2, f"witness: {binary}: not a token (not UTF-8 text)\n")


@pytest.fixture
def hasty_recorder(tmp_path: Path) -> Iterator[Path]:
    """A control socket that answers and hangs up without reading the request, as the
    recorder does for a request over its limit or a uid with too many open."""
    path = tmp_path / "control.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        conn.sendall(b'{"ok": false, "error": "refused before reading"}\n')
        conn.close()

    thread = threading.Thread(target=answer)
    thread.start()
    yield path
    thread.join(10)
    listener.close()


def test_an_answer_sent_before_the_request_was_read_is_still_shown(
    hasty_recorder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _ask(hasty_recorder, {"op": "login", "token": "A" * 1_000_000})
    assert exited.value.code == 1
    assert capsys.readouterr().err == "witness: refused before reading\n"
