"""The control socket: where ``witness login``, ``run``, ``whoami`` and ``logout`` reach the
recorder.

A UNIX stream socket, open to every local user (mode 0666): who is asking is not what the
request says but what the kernel says, ``SO_PEERCRED`` (pid, uid, gid), plus the caller's
cgroup and start time from ``/proc``. A caller can only ever bind itself: its own uid
(``login``) or a fresh cgroup holding its own process (``run``).

The protocol is one JSON object per line. A request gets one answer, except a device-flow
login, which gets a ``pending`` line (the URL and code to show the person) and then the
final answer. Every answer has ``ok``; a refusal has ``error``, a sentence for people.

Anyone may connect, so nothing a caller does is unbounded: a request line has at most
``MAX_REQUEST`` bytes and ``REQUEST_WAIT`` seconds to arrive, and one uid at most
``MAX_OPEN`` connections open. A request that breaks a limit is refused and its connection
closed; the others are served as before.

Every binding made or removed is recorded in the trail (a ``binding`` event) and committed
before the caller is told it worked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from appliance.config import IdentitySettings, IssuerSettings
from appliance.enforce import warden
from appliance.identity import login
from appliance.identity.bindings import Binding, BindingError, Bindings, Caller
from appliance.identity.limits import MAX_TOKEN, shown
from appliance.identity.oidc import ProviderError, TokenError, Validated, Validator
from appliance.policy.approvals import ApprovalError, Hold, same_person
from appliance.proxy.holds import Desk
from appliance.proxy.recorder import NotCommitted, Recorder

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
"""Bytes a request line may have: a token of the largest size fits, with room to spare."""
REQUEST_WAIT = 10.0
"""Seconds a client has to send its whole request line, however it trickles it."""
_WATCH_ALIVE = 5.0  # seconds between the lines that keep a quiet watch checked
MAX_OPEN = 8
"""Connections one uid may have open at once, so that no user can hold all of them."""


class Refused(Exception):
    """A request is refused; the message goes back to the caller."""


def peer(sock: socket.socket) -> Caller:
    """The kernel's word on who holds the other end, that process's cgroup, and its start
    time, read at once: should the caller exit and its pid be reused before the warden
    acts, the start time no longer matches and the warden refuses."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    try:
        start: int | None = warden.start_time(pid)
    except (OSError, ValueError):
        start = None
    return Caller(pid, uid, gid, cgroup_of(pid), start)


def cgroup_of(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


class Control:
    """Serves the control socket for one recorder."""

    def __init__(
        self,
        settings: IdentitySettings,
        bindings: Bindings,
        recorder: Recorder,
        validator: Validator,
        desk: Desk | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.desk = desk
        self.bindings = bindings
        self.recorder = recorder
        self.validator = validator
        self.clock = clock
        # Token checks and device flows wait on the network: their own threads, so that they
        # never hold up the relay's owner lookups in the default executor.
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="witness-identity")
        self.server: asyncio.AbstractServer | None = None
        self.open: Counter[int] = Counter()
        """Connections open now, by the caller's uid."""

    async def start(self) -> None:
        path = self.settings.control_socket
        if not path.parent.is_dir():
            raise OSError(f"{path.parent} does not exist (create it, owned by the service user)")
        if path.is_socket():
            path.unlink()  # left by a recorder that was killed
        # The reader's limit is the request limit: a longer line stops being read at once.
        self.server = await asyncio.start_unix_server(
            self._serve, path=str(path), limit=MAX_REQUEST
        )
        os.chmod(path, 0o666)  # noqa: S103  (anyone may ask; SO_PEERCRED says who they are)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        path = self.settings.control_socket
        if path.is_socket():
            path.unlink()

    # --- one connection ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid: int | None = None
        try:
            caller = peer(writer.get_extra_info("socket"))
            if self.open[caller.uid] >= MAX_OPEN:
                raise Refused(
                    f"uid {caller.uid} has {MAX_OPEN} control requests open already: "
                    "let one finish first"
                )
            uid = caller.uid
            self.open[uid] += 1
            request = await self._read(reader)
            answer = await self._handle(str(request.get("op")), request, caller, writer)
            self._send(writer, {"ok": True, **answer})
        except Refused as exc:
            self._send(writer, {"ok": False, "error": str(exc)})
        except Exception as exc:  # one bad request never stops the recorder
            log.exception("control request failed")
            self._send(writer, {"ok": False, "error": f"internal error: {shown(exc, repr, 200)}"})
        finally:
            if uid is not None:
                self.open[uid] -= 1
                if not self.open[uid]:
                    del self.open[uid]
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> dict[str, Any]:
        """The request line, read within REQUEST_WAIT and MAX_REQUEST bytes, as an object."""
        shape = "(one JSON object, ending in a newline)"
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), REQUEST_WAIT)
        except asyncio.LimitOverrunError:
            # Refused without reading the rest: closing the connection drops it unread.
            raise Refused(
                f"the request is longer than {MAX_REQUEST} bytes: one JSON object on one line, "
                f"a token of at most {MAX_TOKEN} characters in it"
            ) from None
        except asyncio.IncompleteReadError:
            raise Refused(f"the request ended before its newline {shape}") from None
        except TimeoutError:
            raise Refused(f"no request line within {REQUEST_WAIT:g} s {shape}") from None
        try:
            request = json.loads(line)
        except ValueError as exc:
            raise Refused(f"the request is not a JSON object: {exc}") from None
        if not isinstance(request, dict):
            raise Refused("the request is not a JSON object")
        return request

    @staticmethod
    def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        if not writer.is_closing():
            writer.write(json.dumps(message).encode() + b"\n")

    async def _handle(
        self, op: str, request: dict[str, Any], caller: Caller, writer: asyncio.StreamWriter
    ) -> dict[str, Any]:
        if op == "whoami":
            binding = self.bindings.for_caller(caller)
            return {"caller": caller.as_dict(), "binding": self._view(binding)}
        if op == "logout":
            return await self._logout(caller)
        if op == "login":
            token = request.get("token")
            if token is None:
                return await self._device_login(request, caller, writer)
            checked = await self._validate(token)
            return await self._bind_uid(caller, checked)
        if op == "run":
            return await self._run(request.get("token"), caller)
        if op == "approvals":
            return await self._approvals(request, caller, writer)
        raise Refused(
            f"unknown request {shown(op)} (expected whoami, login, run, logout or approvals)"
        )

    # --- approvals -----------------------------------------------------------------------

    def _identity(self, caller: Caller) -> dict[str, Any] | None:
        """The caller's own identity, as its binding says (None: unbound or expired)."""
        binding = self.bindings.for_caller(caller)
        if binding is None or binding.expired(self.clock()):
            return None
        return binding.record

    async def _approvals(
        self, request: dict[str, Any], caller: Caller, writer: asyncio.StreamWriter
    ) -> dict[str, Any]:
        desk = self.desk
        if desk is None:
            raise Refused("this recorder holds nothing for approval (no [approvals] table)")
        action = request.get("action")
        identity = self._identity(caller)
        if action in ("approve", "deny"):
            hold_id = request.get("id")
            reason = request.get("reason")
            window = request.get("window_minutes", 0)
            if not isinstance(hold_id, str):
                raise Refused("name the hold to decide: its approval id")
            if reason is not None and not isinstance(reason, str):
                raise Refused("the reason must be a string")
            if isinstance(window, bool) or not isinstance(window, int) or window < 0:
                raise Refused("the window must be a whole number of minutes")
            try:
                hold = await desk.vote(hold_id, identity, action == "approve", reason, window)
            except ApprovalError as exc:
                raise Refused(str(exc)) from None
            return {"hold": hold.as_dict()}
        # Reading: approvers and root see every hold; anyone else only their own.
        everything = caller.uid == 0 or desk.approvals.refusal(identity) is None

        def visible(hold: Hold) -> bool:
            return everything or same_person(identity, hold.identity)

        if action == "list":
            holds = (
                list(desk.approvals.holds.values())
                if request.get("all")
                else desk.approvals.pending()
            )
            return {"holds": [h.as_dict() for h in holds if visible(h)]}
        if action == "show":
            try:
                hold = desk.approvals.get(str(request.get("id")))
            except ApprovalError as exc:
                raise Refused(str(exc)) from None
            if not visible(hold):
                raise Refused(f"hold {hold.id} is not yours, and you are not an approver")
            return {"hold": hold.as_dict()}
        if action == "watch":
            await self._watch(desk, visible, writer)
            return {"watching": False}
        raise Refused(
            f"unknown approvals action {shown(action)} (expected list, show, approve, deny or"
            " watch)"
        )

    async def _watch(
        self, desk: Desk, visible: Callable[[Hold], bool], writer: asyncio.StreamWriter
    ) -> None:
        """Stream each hold's steps as they happen, one JSON line each, until the caller
        goes away; the pending holds first."""
        queue = desk.watch()
        try:
            for hold in desk.approvals.pending():
                if visible(hold):
                    self._send(writer, {"ok": True, "step": "pending", "hold": hold.as_dict()})
            await writer.drain()
            while not writer.is_closing():
                try:
                    news = await asyncio.wait_for(queue.get(), _WATCH_ALIVE)
                except TimeoutError:  # a line now and then finds a watcher that went away
                    self._send(writer, {"ok": True, "step": "alive"})
                    await writer.drain()
                    continue
                found = desk.approvals.holds.get(news["hold"]["id"])
                if found is None or visible(found):
                    self._send(writer, {"ok": True, **news})
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            desk.unwatch(queue)

    def _view(self, binding: Binding | None) -> dict[str, Any] | None:
        if binding is None:
            return None
        view = binding.as_dict()
        view["expired"] = binding.expired(self.clock())
        return view

    async def _validate(self, token: Any) -> Validated:
        if not isinstance(token, str) or not token:
            raise Refused("the token must be a non-empty string")
        loop = asyncio.get_running_loop()
        try:
            checked = await loop.run_in_executor(self.pool, self.validator.validate, token.strip())
        except (TokenError, ProviderError) as exc:
            raise Refused(str(exc)) from None
        # The validator tolerates the issuer's leeway on exp; a binding ends at exp itself, so
        # a token that passes only by the leeway would bind something expired from the start.
        if checked.expires <= self.clock():
            raise Refused("the token has already expired")
        return checked

    async def _commit(self, action: str, binding: Binding, caller: Caller, **extra: Any) -> None:
        """Record a binding change and wait for its commit: no unrecorded binding is used.

        If the commit fails, the change is undone by the caller, and the event, kept by the
        trail to retry, says that it was refused."""
        payload = self.recorder.record("binding", None, binding.event(action, caller, **extra))
        try:
            await self.recorder.committed()
        except NotCommitted as exc:
            payload["refused"] = f"the audit trail cannot be written: {exc}"
            raise Refused(payload["refused"]) from None

    async def _bind_uid(self, caller: Caller, checked: Validated) -> dict[str, Any]:
        binding, old = self.bindings.bind_uid(caller.uid, checked.identity, checked.expires, caller)
        try:
            await self._commit("bind", binding, caller, issuer=checked.issuer_name)
        except Refused:
            self.bindings.unbind(binding)
            if old is not None:
                self.bindings.restore(old)
            raise
        log.info("uid %d bound to %s until %s", caller.uid, binding.identity.label, checked.expires)
        return {"binding": self._view(binding)}

    async def _run(self, token: Any, caller: Caller) -> dict[str, Any]:
        expires: float | None
        if token is not None:
            checked = await self._validate(token)
            identity, expires = checked.identity, checked.expires
        else:
            current = self.bindings.for_caller(caller)
            if current is None:
                raise Refused(
                    "you have no identity to run under: run `witness login` first, "
                    "or pass --token-file"
                )
            if current.expired(self.clock()):
                raise Refused(
                    f"your identity {current.identity.label} has expired: run `witness login`"
                )
            identity, expires = current.identity, current.expires
        if caller.start is None:
            raise Refused(f"process {caller.pid} is gone")
        loop = asyncio.get_running_loop()
        try:
            placement = await loop.run_in_executor(
                self.pool,
                warden.place,
                self.settings.warden_socket,
                caller.pid,
                caller.uid,
                caller.start,
            )
        except (warden.WardenError, OSError) as exc:
            raise Refused(f"cannot give the agent a cgroup of its own: {exc}") from None
        binding = self.bindings.bind_cgroup(
            placement.cgroup, placement.cgroup_id, identity, expires, caller
        )
        try:
            await self._commit("bind", binding, caller)
        except Refused:
            self.bindings.unbind(binding)
            raise
        log.info("cgroup %s bound to %s", placement.cgroup, identity.label)
        return {"binding": self._view(binding)}

    async def _logout(self, caller: Caller) -> dict[str, Any]:
        binding = self.bindings.for_caller(caller)
        if binding is None:
            raise Refused("you have no binding to remove")
        try:
            self.bindings.unbind(binding)
        except BindingError as exc:
            raise Refused(str(exc)) from None
        await self._commit("unbind", binding, caller, reason="logout")
        return {"removed": self._view(binding)}

    async def _device_login(
        self, request: dict[str, Any], caller: Caller, writer: asyncio.StreamWriter
    ) -> dict[str, Any]:
        issuer = self._login_issuer(request.get("issuer"))
        loop = asyncio.get_running_loop()
        keys = self.validator.keys_for(issuer.name)
        try:
            grant = await loop.run_in_executor(self.pool, login.start, keys, issuer)
        except (login.LoginError, ProviderError) as exc:
            raise Refused(f"cannot start the sign-in with {issuer.name}: {exc}") from None
        self._send(
            writer,
            {
                "ok": True,
                "pending": {
                    "issuer": issuer.name,
                    "verification_uri": grant.verification_uri,
                    "verification_uri_complete": grant.verification_uri_complete,
                    "user_code": grant.user_code,
                    "expires_at": grant.expires_at,
                },
            },
        )
        await writer.drain()
        while True:
            await asyncio.sleep(grant.interval)
            if writer.is_closing():
                raise Refused("the caller went away")
            if self.clock() >= grant.expires_at:
                raise Refused("the code expired before the sign-in was approved")
            try:
                token = await loop.run_in_executor(self.pool, login.poll, keys, issuer, grant)
            except (login.LoginError, ProviderError) as exc:
                raise Refused(f"sign-in failed: {exc}") from None
            if token is not None:
                break
        return await self._bind_uid(caller, await self._validate(token))

    def _login_issuer(self, name: Any) -> IssuerSettings:
        usable = [i for i in self.settings.issuers if i.client_id]
        if name is not None:
            for issuer in usable:
                if issuer.name == name:
                    return issuer
            raise Refused(
                f"no issuer named {shown(name)} offers sign-in "
                f"(those that do: {', '.join(i.name for i in usable) or 'none'})"
            )
        if not usable:
            raise Refused(
                "no issuer is configured for sign-in (identity.issuer with a client_id); "
                "use --token-file with a machine token"
            )
        if len(usable) > 1:
            raise Refused(
                f"several issuers offer sign-in ({', '.join(i.name for i in usable)}): "
                "pick one with --issuer"
            )
        return usable[0]
