"""The launcher's seccomp filter, for real: installed in a child process (no root needed, the
filter goes in with no_new_privs), which then tries what an agent would.

Where the outcome could be mistaken for something else (EPERM for AF_PACKET because the
process lacks CAP_NET_RAW), a control run without the filter shows the difference.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from appliance.enforce import confine

PRELUDE = r"""
import ctypes, errno, mmap, os, socket, subprocess, sys
from appliance.enforce import confine
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def attempt(call):
    try:
        call()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
def raw(nr, *args):
    done = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    return "ok" if done >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
def packet():
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
if sys.argv[1] == "filtered":
    confine.install_filter()
"""


def run(code: str, *, filtered: bool = True) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + code, "filtered" if filtered else "plain"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_packet_sockets_are_denied() -> None:
    code = "print(attempt(packet), raw(confine.NR_SOCKETPAIR, 17, 3, 0, 0))"
    assert run(code).split() == ["EPERM", "EPERM"]


def test_packet_sockets_are_denied_whatever_the_high_bits_of_the_family() -> None:
    # The kernel reads the family as an int: AF_PACKET | 1 << 32 is AF_PACKET to it.
    assert run("print(raw(41, 17 | 1 << 32, 3, 0))") == "EPERM"


@pytest.mark.skipif(os.geteuid() != 0, reason="the control needs CAP_NET_RAW (root)")
def test_the_control_opens_a_packet_socket_without_the_filter() -> None:
    assert run("print(attempt(packet))", filtered=False) == "ok"


def test_other_sockets_still_work() -> None:
    code = """
def pair():
    for s in socket.socketpair():
        s.close()
def udp():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
def listen():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
print(attempt(lambda: socket.socket().close()), attempt(udp), attempt(listen), attempt(pair))
"""
    assert run(code) == "ok ok ok ok"


def test_io_uring_setup_is_denied() -> None:
    code = "params = ctypes.create_string_buffer(120)\nprint(raw(425, 1, ctypes.addressof(params)))"
    assert run(code) == "EPERM"


def test_x32_system_calls_are_denied() -> None:
    assert run("print(raw(0x40000000 + 39), raw(39))") == "EPERM ok"  # x32 getpid, getpid


# mov eax, 20 (i386 getpid); int 0x80; ret -- an i386 system call from a 64-bit process
I386_GETPID = r"""
code = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
address = ctypes.addressof(ctypes.c_char.from_buffer(page))
result = ctypes.CFUNCTYPE(ctypes.c_int)(address)()
print("pid" if result == os.getpid() else result)
"""


def test_i386_system_calls_are_denied() -> None:
    control = subprocess.run(
        [sys.executable, "-c", PRELUDE + I386_GETPID, "plain"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if control.returncode != 0 or control.stdout.strip() != "pid":
        pytest.skip(f"no i386 system calls here at all: {control.stdout}{control.stderr}")
    assert run(I386_GETPID) == "-1"  # -EPERM


def test_children_inherit_the_filter_and_cannot_drop_it() -> None:
    code = """
child = PRELUDE + "print(attempt(packet), confine.program() and 'x')"
out = subprocess.run([sys.executable, "-c", child, "plain"], capture_output=True, text=True)
print(out.stdout.strip(), out.returncode)
print(open("/proc/self/status").read().split("Seccomp:")[1].split()[0])
"""
    out = run(f"PRELUDE = {PRELUDE!r}\n{code}")
    assert out.splitlines() == ["EPERM x 0", "2"]  # 2: SECCOMP_MODE_FILTER


def test_the_program_is_what_the_rules_say() -> None:
    insns = confine.program()
    assert len(confine.encode(insns)) == 8 * len(insns)
    # every jump lands inside the program, and it ends by returning
    for i, (code, jt, jf, _) in enumerate(insns):
        if code & 0x07 == 0x05:  # BPF_JMP
            assert i + 1 + max(jt, jf) < len(insns)
    assert insns[-1] == (0x06, 0, 0, confine.SECCOMP_RET_ALLOW)


def test_capabilities_are_parsed_like_setpriv_names() -> None:
    assert confine.parse_caps("+net_admin,cap_net_raw") == [12, 13]
    assert confine.parse_caps("") == []
    with pytest.raises(confine.ConfineError):
        confine.parse_caps("net_everything")


def test_the_entry_point_refuses_an_unknown_user(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        confine.main(["--cgroup", "/nonexistent", "--user", "no-such-user-x", "--", "true"]) == 126
    )
    assert "no user" in capsys.readouterr().err
