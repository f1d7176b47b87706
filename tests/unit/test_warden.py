"""The warden's pure parts: request validation, /proc parsing, and the caller check against a
fake /proc, so that every refusal is shown without root, cgroups or a socket."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from appliance.enforce import warden
from appliance.enforce.warden import Place, Release, WardenError

ROOT = "/witness-agents"
NAME = "run-0123456789abcdef"


def parse(obj: object) -> Place | Release:
    return warden.parse_request(json.dumps(obj).encode(), ROOT)


# --- requests -------------------------------------------------------------------------------


def test_a_place_request_is_parsed() -> None:
    assert parse({"op": "place", "pid": 1234, "uid": 1001, "start": 987654}) == Place(
        1234, 1001, 987654
    )


def test_root_may_be_placed() -> None:
    assert parse({"op": "place", "pid": 2, "uid": 0, "start": 0}) == Place(2, 0, 0)


def test_a_release_request_gives_the_name_only() -> None:
    assert parse({"op": "release", "cgroup": f"{ROOT}/{NAME}"}) == Release(NAME)


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        ({"op": "place", "pid": 1, "uid": 0, "start": 1}, "pid must be an integer from 2"),
        ({"op": "place", "pid": 0, "uid": 0, "start": 1}, "pid must be"),
        ({"op": "place", "pid": -5, "uid": 0, "start": 1}, "pid must be"),
        ({"op": "place", "pid": "12", "uid": 0, "start": 1}, "pid must be"),
        ({"op": "place", "pid": True, "uid": 0, "start": 1}, "pid must be"),
        ({"op": "place", "pid": 12.0, "uid": 0, "start": 1}, "pid must be"),
        ({"op": "place", "pid": 1 << 40, "uid": 0, "start": 1}, "pid must be"),
        ({"op": "place", "pid": 12, "uid": -1, "start": 1}, "uid must be"),
        ({"op": "place", "pid": 12, "uid": 0xFFFFFFFF, "start": 1}, "uid must be"),
        ({"op": "place", "pid": 12, "uid": 0}, "start must be"),
        ({"op": "place", "pid": 12, "uid": 0, "start": 1, "cgroup": "/x"}, "unknown key(s) cgroup"),
        ({"op": "release"}, "cgroup must be a string"),
        ({"op": "release", "cgroup": ["x"]}, "cgroup must be a string"),
        ({"op": "kill", "cgroup": "x"}, 'unknown request: op "kill"'),
        ({"pid": 12}, "unknown request: op null"),
        ({"op": ["place"]}, "unknown request"),
        ([1, 2], "expected a JSON object"),
        ("place", "expected a JSON object"),
    ],
)
def test_bad_requests_are_refused_saying_why(request_: object, why: str) -> None:
    with pytest.raises(WardenError, match=re.escape(why)):
        parse(request_)


@pytest.mark.parametrize(
    "cgroup",
    [
        "../x",
        f"{ROOT}/../x",
        f"{ROOT}/{NAME}/..",
        f"{ROOT}/../{NAME}",
        f"{ROOT}/run-zz",
        f"{ROOT}/run-0123456789ABCDEF",  # the warden makes lowercase names only
        f"{ROOT}/run-0123456789abcde",
        f"{ROOT}/run-0123456789abcdef0",
        f"/other/{NAME}",
        f"{ROOT}x/{NAME}",
        NAME,
        f"{ROOT}/{NAME}/run-fedcba9876543210",  # nested
        f"{ROOT}/agent1",  # the lab's cgroups are not the warden's
        f"{ROOT}/",
        ROOT,
        "/",
        f"{ROOT}/{NAME}\n",
        f"{ROOT}//{NAME}",
    ],
)
def test_release_takes_only_a_run_child_of_the_agent_root(cgroup: str) -> None:
    with pytest.raises(WardenError, match="not a cgroup the warden makes"):
        parse({"op": "release", "cgroup": cgroup})


def test_the_agent_root_may_be_nested_for_tests() -> None:
    assert warden.run_name(f"/a/b/{NAME}", "/a/b") == NAME
    with pytest.raises(WardenError):
        warden.run_name(f"/a/{NAME}", "/a/b")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"{not json", "not a JSON line"),
        (b"\xff\xfe", "not a JSON line"),
        (b"", "not a JSON line"),
        (b"x" * (warden.MAX_LINE + 1), "longer than 4096 bytes"),
    ],
)
def test_malformed_lines_are_refused(line: bytes, why: str) -> None:
    with pytest.raises(WardenError, match=why):
        warden.parse_request(line, ROOT)


# --- /proc parsing --------------------------------------------------------------------------


def stat_line(pid: int, comm: str, start: int) -> bytes:
    # fields 3..21, then 22 (starttime), then a few more, as the kernel writes them
    fields = [
        "S",
        *[str(n) for n in range(4, 22)],
        str(start),
        "4096",
        "100",
        "18446744073709551615",
    ]
    return f"{pid} ({comm}) {' '.join(fields)}\n".encode()


@pytest.mark.parametrize("comm", ["sleep", "a) (b", "x)", "two words", ") 1 2 3 (", "((("])
def test_the_start_time_is_counted_from_the_last_parenthesis(comm: str) -> None:
    assert warden.parse_start_time(stat_line(42, comm, 123456789)) == 123456789


def test_the_start_time_of_a_real_process() -> None:
    mine = warden.start_time(os.getpid())
    assert mine > 0
    assert warden.start_time(os.getpid()) == mine
    assert warden.parse_start_time(Path("/proc/self/stat").read_bytes()) == mine


@pytest.mark.parametrize("text", [b"", b"42 (sleep S 1 2", b"42 sleep S " + b"1 " * 30])
def test_a_bad_stat_line_is_an_error(text: bytes) -> None:
    with pytest.raises(ValueError, match="not a /proc/PID/stat line"):
        warden.parse_start_time(text)


def test_a_missing_process_has_no_start_time(tmp_path: Path) -> None:
    with pytest.raises(ProcessLookupError):
        warden.start_time(4242, tmp_path)


def test_status_gives_the_real_uid_and_the_tgid() -> None:
    text = "Name:\tsleep\nTgid:\t77\nPid:\t77\nUid:\t1001\t0\t0\t0\nGid:\t1001\t1001\t1001\t1001\n"
    assert warden.parse_status(text) == (1001, 77)
    with pytest.raises(ValueError, match="status"):
        warden.parse_status("Name:\tsleep\n")


# --- the caller check, against a fake /proc -------------------------------------------------


def fake_process(proc: Path, pid: int, *, uid: int, start: int, tgid: int | None = None) -> None:
    where = proc / str(pid)
    where.mkdir(parents=True, exist_ok=True)
    where.joinpath("stat").write_bytes(stat_line(pid, "witness run", start))
    where.joinpath("status").write_text(
        f"Name:\twitness\nTgid:\t{tgid or pid}\nPid:\t{pid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
    )


def test_the_caller_passes_when_uid_and_start_time_match(tmp_path: Path) -> None:
    fake_process(tmp_path, 123, uid=1001, start=5000)
    warden.check_caller(123, 1001, 5000, tmp_path)


def test_a_changed_start_time_is_refused(tmp_path: Path) -> None:
    fake_process(tmp_path, 123, uid=1001, start=5001)  # the pid was reused
    with pytest.raises(WardenError, match="process 123 is not the caller: its start time changed"):
        warden.check_caller(123, 1001, 5000, tmp_path)


def test_another_uid_is_refused(tmp_path: Path) -> None:
    fake_process(tmp_path, 123, uid=1002, start=5000)
    with pytest.raises(WardenError, match="runs as uid 1002, not 1001"):
        warden.check_caller(123, 1001, 5000, tmp_path)


def test_a_thread_is_refused(tmp_path: Path) -> None:
    fake_process(tmp_path, 124, uid=1001, start=5000, tgid=123)
    with pytest.raises(WardenError, match="124 is a thread of process 123"):
        warden.check_caller(124, 1001, 5000, tmp_path)


def test_a_gone_process_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WardenError, match="process 123 is gone"):
        warden.check_caller(123, 1001, 5000, tmp_path)


# --- the server's answers, without a socket or cgroups ---------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> warden.Warden:
    """A warden over a fake cgroup2 mount (plain directories) and a fake /proc."""
    mount = tmp_path / "cgroup2"
    (mount / "witness-agents").mkdir(parents=True)
    return warden.Warden(tmp_path / "warden.sock", 4242, 4242, mount=mount, proc=tmp_path / "proc")


def test_every_refusal_is_an_answer(server: warden.Warden) -> None:
    for line in (b"{", b"[]", b'{"op": "nope"}', b"x" * 5000):
        answer = server.answer(line)
        assert answer["ok"] is False
        assert isinstance(answer["error"], str) and answer["error"]


def test_place_without_an_agent_root_says_run_witness_up(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup2"
    mount.mkdir()
    server = warden.Warden(tmp_path / "w.sock", 1, 1, mount=mount, proc=tmp_path / "proc")
    answer = server.answer(b'{"op": "place", "pid": 123, "uid": 1001, "start": 5000}')
    assert answer == {
        "ok": False,
        "error": f"no agent cgroup root at {mount / 'witness-agents'}: run witness up",
    }


def test_place_checks_the_caller_before_making_anything(server: warden.Warden) -> None:
    fake_process(server.proc, 123, uid=1001, start=5001)
    answer = server.answer(b'{"op": "place", "pid": 123, "uid": 1001, "start": 5000}')
    assert answer == {"ok": False, "error": "process 123 is not the caller: its start time changed"}
    assert list(server.root.iterdir()) == []


def test_release_of_a_cgroup_already_gone_says_removed(server: warden.Warden) -> None:
    answer = server.answer(json.dumps({"op": "release", "cgroup": f"{ROOT}/{NAME}"}).encode())
    assert answer == {"ok": True, "removed": True, "pids": []}


def test_the_agent_root_must_be_below_the_mount(tmp_path: Path) -> None:
    with pytest.raises(WardenError, match="is not below"):
        warden.Warden(tmp_path / "s", 1, 1, mount=tmp_path / "m", root=tmp_path / "elsewhere")
    with pytest.raises(WardenError, match="is not below"):
        warden.Warden(tmp_path / "s", 1, 1, mount=tmp_path / "m", root=tmp_path / "m")


def test_the_sweep_touches_only_empty_run_cgroups(
    server: warden.Warden, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Plain directories stand for cgroups; what cgroup.events would say is given here.
    populated = {"run-" + "a" * 16: False, "run-" + "b" * 16: True, "agent1": False}
    populated |= {"run-xyz": False, "run-" + "c" * 15: False, "run-" + "d" * 16 + "-x": False}
    for name in populated:
        (server.root / name).mkdir()
    (server.root / ("run-" + "e" * 16)).write_text("a file, not a cgroup")
    monkeypatch.setattr(warden, "_populated", lambda path: populated[path.name])
    assert server.sweep() == [f"{ROOT}/run-{'a' * 16}"]
    left = sorted(p.name for p in server.root.iterdir())
    assert left == sorted([*(n for n in populated if n != "run-" + "a" * 16), "run-" + "e" * 16])


def test_an_unreadable_cgroup_counts_as_populated(tmp_path: Path) -> None:
    assert warden._populated(tmp_path / "missing") is True
    tmp_path.joinpath("cgroup.events").write_text("populated 0\nfrozen 0\n")
    assert warden._populated(tmp_path) is False
    tmp_path.joinpath("cgroup.events").write_text("populated 1\nfrozen 0\n")
    assert warden._populated(tmp_path) is True


# --- the client's errors --------------------------------------------------------------------


def test_the_client_says_the_warden_is_not_running(tmp_path: Path) -> None:
    missing = tmp_path / "warden.sock"
    with pytest.raises(
        WardenError,
        match=r"the warden is not running \(no socket at .*start `witness warden` as root",
    ):
        warden.place(missing, 123, 1001, 5000)


def test_the_client_says_when_nothing_listens(tmp_path: Path) -> None:
    path = tmp_path / "warden.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # bound, never listening: a stale socket file
    with pytest.raises(WardenError, match="the warden is not running"):
        warden.release(path, f"{ROOT}/{NAME}")


def one_answer(path: Path, reply: bytes) -> threading.Thread:
    """A fake warden that answers one connection with ``reply``."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_the_client_reads_a_placement(tmp_path: Path) -> None:
    path = tmp_path / "w.sock"
    thread = one_answer(
        path, b'{"ok": true, "cgroup": "/witness-agents/' + NAME.encode() + b'", "cgroup_id": 77}\n'
    )
    assert warden.place(path, 123, 1001, 5000) == warden.Placement(f"{ROOT}/{NAME}", 77)
    thread.join(5)


def test_the_client_raises_the_wardens_refusal(tmp_path: Path) -> None:
    path = tmp_path / "w.sock"
    thread = one_answer(path, b'{"ok": false, "error": "process 123 is gone"}\n')
    with pytest.raises(WardenError, match=r"^process 123 is gone$"):
        warden.place(path, 123, 1001, 5000)
    thread.join(5)


def test_the_client_refuses_a_garbled_answer(tmp_path: Path) -> None:
    path = tmp_path / "w.sock"
    thread = one_answer(path, b"hello\n")
    with pytest.raises(WardenError, match="not JSON"):
        warden.release(path, f"{ROOT}/{NAME}")
    thread.join(5)


def test_the_client_gives_up_on_a_silent_warden(tmp_path: Path) -> None:
    path = tmp_path / "w.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(1)
        with pytest.raises(WardenError, match=r"did not answer within 0\.3 s"):
            warden.place(path, 123, 1001, 5000, timeout=0.3)


# --- what witness run does once placed: confine itself, unprivileged --------------------------

RESTRICT = r"""
import errno, os, socket
from appliance.enforce import confine
confine.restrict()
try:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    packet = "ok"
except OSError as exc:
    packet = errno.errorcode[exc.errno]
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines())
print(os.getuid(), status["NoNewPrivs"], status["Seccomp"], packet)
"""


def test_an_unprivileged_process_confines_itself() -> None:
    # As root, drop to nobody first: restrict() must need no privilege at all.
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    argv = [*(drop if os.geteuid() == 0 else []), sys.executable, "-c", RESTRICT]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")
    assert done.returncode == 0, done.stderr
    uid, no_new_privs, mode, packet = done.stdout.split()
    assert int(uid) != 0
    assert (no_new_privs, mode, packet) == ("1", "2", "EPERM")
