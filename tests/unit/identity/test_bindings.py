"""Bindings: which identity a connection's owner has, kept across recorder restarts."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from appliance.config import StaticBinding
from appliance.identity.bindings import Binding, BindingError, Bindings, Caller
from appliance.model import Identity, Owner

ALICE = Identity("https://idp.test", "alice-sub", "alice@example.test", "Alice", ("dba",))
BOB = Identity("https://idp.test", "bob-sub", "bob@example.test", None, ("agents",))
ME = pwd.getpwuid(os.getuid()).pw_name
CALLER = Caller(pid=100, uid=1001, gid=1001, cgroup="/user.slice")


def test_a_cgroup_binding_wins_over_the_login_of_the_same_uid() -> None:
    bindings = Bindings(clock=lambda: 1000.0)
    bindings.bind_uid(1001, BOB, 2000.0, CALLER)
    bindings.bind_cgroup("/witness-agents/run-ab", 77, ALICE, 2000.0, CALLER)
    in_cgroup = Owner(uid=1001, cgroup="/witness-agents/run-ab", cgroup_id=77)
    found = bindings.resolve(in_cgroup)
    assert found is not None and found.identity == ALICE and found.kind == "cgroup"
    outside = bindings.resolve(Owner(uid=1001, cgroup="/user.slice", cgroup_id=5))
    assert outside is not None and outside.identity == BOB and outside.kind == "uid"
    assert bindings.resolve(Owner(uid=1002, cgroup="/user.slice")) is None
    assert bindings.resolve(Owner()) is None  # a remote client: no uid, no cgroup


def test_a_cgroup_is_found_by_id_after_its_process_left_and_by_path_below_it() -> None:
    bindings = Bindings(clock=lambda: 1000.0)
    bindings.bind_cgroup("/witness-agents/run-ab", 77, ALICE, None, CALLER)
    gone = bindings.resolve(Owner(uid=1001, cgroup=None, cgroup_id=77))
    assert gone is not None and gone.identity == ALICE
    below = bindings.resolve(Owner(uid=1001, cgroup="/witness-agents/run-ab/x", cgroup_id=78))
    assert below is not None and below.identity == ALICE
    # A sibling whose name merely starts the same is not below it.
    assert bindings.resolve(Owner(uid=1009, cgroup="/witness-agents/run-abc")) is None


def test_static_bindings_come_last_and_cannot_be_logged_out() -> None:
    static = StaticBinding(ME, "https://idp.test", "svc-ci", groups=("ci",))
    bindings = Bindings([static], clock=lambda: 1000.0)
    found = bindings.resolve(Owner(uid=os.getuid()))
    assert found is not None and found.kind == "static" and found.identity.subject == "svc-ci"
    assert found.expires is None and not found.expired(10**12)
    with pytest.raises(BindingError, match="by the configuration"):
        bindings.unbind(found)
    login, _ = bindings.bind_uid(os.getuid(), ALICE, 2000.0, CALLER)
    assert bindings.resolve(Owner(uid=os.getuid())) is login
    bindings.unbind(login)
    assert bindings.resolve(Owner(uid=os.getuid())) == found


def test_a_static_binding_for_an_unknown_user_is_a_clear_error() -> None:
    with pytest.raises(BindingError, match="no Unix user named 'no-such-user-x'"):
        Bindings([StaticBinding("no-such-user-x", "https://idp.test", "s")])


def test_an_expired_binding_still_resolves_so_the_refusal_can_say_so() -> None:
    now = [1000.0]
    bindings = Bindings(clock=lambda: now[0])
    bindings.bind_uid(1001, ALICE, 1500.0, CALLER)
    assert bindings.expired() == []
    now[0] = 1500.0
    found = bindings.resolve(Owner(uid=1001))
    assert found is not None and found.expired(now[0])
    assert [b.identity for b in bindings.expired()] == [ALICE]


def test_the_record_carries_the_identity_and_how_it_was_bound() -> None:
    binding = Binding(ALICE, "cgroup", "/witness-agents/run-ab", 2000.0, cgroup_id=7)
    assert binding.record == {
        "issuer": "https://idp.test",
        "subject": "alice-sub",
        "email": "alice@example.test",
        "name": "Alice",
        "groups": ["dba"],
        "binding": {"kind": "cgroup", "target": "/witness-agents/run-ab", "expires": 2000.0},
    }


def test_bindings_survive_a_restart_without_the_expired_and_the_vanished(tmp_path: Path) -> None:
    state = tmp_path / "bindings.json"
    now = [1000.0]
    first = Bindings(state=state, clock=lambda: now[0])
    first.bind_uid(1001, ALICE, 5000.0, CALLER)
    first.bind_uid(1002, BOB, 1200.0, CALLER)
    first.bind_cgroup("/witness-agents/run-live", 70, ALICE, 5000.0, CALLER)
    first.bind_cgroup("/witness-agents/run-gone", 71, BOB, 5000.0, CALLER)
    assert state.stat().st_mode & 0o777 == 0o600
    now[0] = 1300.0
    second = Bindings(
        state=state, clock=lambda: now[0], cgroup_exists=lambda b: b.target.endswith("live")
    )
    kept = {(b.kind, b.target) for b in second.live()}
    assert kept == {("uid", "1001"), ("cgroup", "/witness-agents/run-live")}
    assert second.resolve(Owner(uid=5, cgroup_id=70)) is not None
    assert second.resolve(Owner(uid=5, cgroup_id=71)) is None


def test_a_damaged_state_file_stops_the_start_with_advice(tmp_path: Path) -> None:
    state = tmp_path / "bindings.json"
    state.write_text(json.dumps({"bindings": [{"kind": "uid"}]}))
    with pytest.raises(BindingError, match="move it aside"):
        Bindings(state=state)


def test_restore_puts_back_a_replaced_login(tmp_path: Path) -> None:
    bindings = Bindings(state=tmp_path / "b.json", clock=lambda: 1000.0)
    old, _ = bindings.bind_uid(1001, ALICE, 5000.0, CALLER)
    new, replaced = bindings.bind_uid(1001, BOB, 5000.0, CALLER)
    assert replaced is old
    bindings.unbind(new)
    bindings.restore(old)
    assert bindings.resolve(Owner(uid=1001)) is old


def test_a_state_file_that_cannot_be_written_keeps_the_binding_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "gone" / "bindings.json"  # its directory does not exist
    bindings = Bindings(state=state, clock=lambda: 1000.0)
    binding, _ = bindings.bind_uid(1001, ALICE, 5000.0, CALLER)
    assert bindings.resolve(Owner(uid=1001)) is binding
    assert "cannot keep the bindings across a restart" in caplog.text
