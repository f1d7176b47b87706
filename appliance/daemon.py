"""The composition root: builds the trail, the recorder and the listeners, and runs them."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pwd
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from appliance import native
from appliance.config import Settings, TrailSettings
from appliance.enforce import bpf, cgroups, owners
from appliance.enforce.divert import Routes
from appliance.export.forward import Forwarder
from appliance.identity.bindings import CGROUP, Binding, BindingError, Bindings
from appliance.identity.oidc import Validator
from appliance.policy.access import Access
from appliance.policy.approvals import Approvals
from appliance.policy.guardrails import Policy
from appliance.policy.limits import Limits
from appliance.protocols.handler import EXPIRED
from appliance.proxy.control import Control
from appliance.proxy.holds import Desk
from appliance.proxy.masks import Masking
from appliance.proxy.notify import Webhook
from appliance.proxy.recorder import Recorder
from appliance.proxy.server import OwnerLookup, QuickLookup, Relay
from appliance.trail import db, maskkey, query
from appliance.trail.anchor import where
from appliance.trail.db import TrailError
from appliance.trail.publisher import Publisher
from appliance.trail.retire import Gate
from appliance.trail.shipper import Shipper
from appliance.trail.store import Trail

log = logging.getLogger("witness")


class StartError(Exception):
    """The daemon could not start: the message says which resource and why."""


LOOPBACKS = (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6))
_BACKLOG = 1024


def check_service_user(settings: Settings, euid: int | None = None) -> None:
    """With [enforce], the recorder must be the service user: nftables exempts only that uid,
    so as anyone else its own connections to the backends would be diverted back to it."""
    user = settings.enforce.service_user
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise StartError(f"enforce.service_user: no user named {user!r} on this host") from None
    euid = os.geteuid() if euid is None else euid
    if euid != uid:
        raise StartError(
            f"the recorder runs as uid {euid}, but enforce.service_user is {user} (uid {uid}): "
            "only that user's connections to protected backends bypass the redirect, so run "
            f"witness serve as {user}"
        )


def _cgroup_exists(mount: Path | None, binding: Binding) -> bool:
    """Whether a bound agent cgroup is still there (True when that cannot be told)."""
    return mount is None or (mount / binding.target.lstrip("/")).is_dir()


def open_bindings(settings: Settings) -> Bindings:
    identity = settings.identity
    state = identity.state or settings.trail.path.parent / "bindings.json"
    try:
        mount = cgroups.cgroup2_mount()
        return Bindings(identity.bindings, state, cgroup_exists=lambda b: _cgroup_exists(mount, b))
    except BindingError as exc:
        raise StartError(str(exc)) from None


class Expiry:
    """Once a second: say in the trail when a binding expires, end the live sessions of
    backends that ask for it, and drop the bindings of agent cgroups that are gone.

    An expired binding is kept (until a new login replaces it, or its cgroup goes), so that
    a new connection is told that its identity expired rather than that it has none.
    """

    def __init__(self, bindings: Bindings, recorder: Recorder, relays: list[Relay]) -> None:
        self.bindings = bindings
        self.recorder = recorder
        self.relays = relays
        self.announced: set[tuple[str, str, float]] = set()

    def _end_expired_sessions(self, now: float) -> None:
        for relay in self.relays:
            for session in list(relay.sessions):
                bound, backend = session.binding, session.backend
                if bound is None or backend is None or not bound.expired(now):
                    continue
                if session.holds and relay.desk is not None:
                    relay.desk.deny_session(session, f"the identity {bound.describe()} expired")
                if backend.end_at_expiry:
                    session.terminate(
                        EXPIRED,
                        f"the identity {bound.describe()} expired; "
                        f"backend {backend.name} ends its sessions at expiry",
                    )

    def _record(self, action: str, binding: Binding, reason: str) -> None:
        self.recorder.record("binding", None, binding.event(action, None, reason=reason))

    def sweep(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        expired = self.bindings.expired(now)
        for binding in expired:
            key = (binding.kind, binding.target, binding.bound_at)
            if key not in self.announced:
                self.announced.add(key)
                self._record("expire", binding, "the token expired")
                log.info("binding expired: %s", binding.describe())
        if expired:  # only then can a live session have outlived its identity
            self._end_expired_sessions(now)
        mount = cgroups.cgroup2_mount()
        for binding in self.bindings.live():
            if binding.kind == CGROUP and not _cgroup_exists(mount, binding):
                self.bindings.unbind(binding)
                self.announced.discard((binding.kind, binding.target, binding.bound_at))
                self._record("unbind", binding, "the agent's cgroup is gone")


def _redirect_socket(address: str, family: socket.AddressFamily, port: int) -> socket.socket:
    """A listening socket for diverted connections; IPv6 only on ::1, so the two never mix."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _masking(settings: Settings) -> Masking | None:
    """The policy's masks, with their token key (made beside the signing key if absent)."""
    policy = settings.policy
    if policy is None or not policy.masks:
        return None
    try:
        key, made = maskkey.load_or_create(settings.trail.mask_key)
    except TrailError as exc:
        raise StartError(str(exc)) from None
    if made:
        log.info("masking: token key %s created", settings.trail.mask_key)
    log.info("masking: %d mask%s", len(policy.masks), "" if len(policy.masks) == 1 else "s")
    return Masking(policy.masks, key)


def _log_sealing(trail: TrailSettings) -> None:
    if not trail.segment_bytes:
        log.warning("segment_mb = 0: the trail is never sealed, and grows without bound")
        return
    mib = trail.segment_bytes >> 20
    if trail.retire is None:
        log.warning(
            "trail sealed every %d MiB; sealed segments are kept (retire = never): the trail"
            " grows without bound",
            mib,
        )
    else:
        log.info(
            "trail sealed every %d MiB; a sealed segment is deleted once %s holds and verified it",
            mib,
            "the central store" if trail.retire == "central" else trail.retire,
        )


async def run(
    settings: Settings,
    owner_lookup: OwnerLookup = owners.lookup,
    quick_lookup: QuickLookup | None = owners.quick,
) -> None:
    """Serve until SIGTERM or SIGINT, then end every session and sign the trail."""
    loop = asyncio.get_running_loop()
    if settings.transparent:
        check_service_user(settings)
    bindings = open_bindings(settings)
    access = Access(bindings, settings.identity.unbound)
    limits = Limits()
    trail = Trail.open(settings.trail)
    recorder = Recorder(trail, loop)
    # What carries the trail's events off the host, each in a thread of its own, woken at
    # every checkpoint: the anchor's publisher, the central store's shipper, the exports.
    couriers: list[tuple[Any, asyncio.Future[None]]] = []
    # Sealed segments are retired once the copy named by [trail] retire verified them and
    # every courier carried them off; what goes wrong is recorded in the trail.
    gate = Gate(trail) if settings.trail.retire is not None else None

    def refused(why: str) -> None:
        log.warning("%s", why)
        loop.call_soon_threadsafe(
            recorder.record, "error", None, {"where": "retire", "message": why}
        )

    if settings.trail.anchor is not None:
        publisher = Publisher(settings.trail, settings.trail.anchor, trail.id)
        if gate is not None:
            publisher.on_progress = gate.expect("anchor", publisher.state.published)
        couriers.append((publisher, asyncio.ensure_future(publisher.run())))
    if settings.trail.central is not None:
        shipper = Shipper(settings.trail, settings.trail.central, trail.id)
        if gate is not None and settings.trail.retire == "central":
            shipper.on_verified = gate.expect("central", shipper.state.verified)
            shipper.on_refused = refused
        elif gate is not None:
            shipper.on_progress = gate.expect("central", shipper.state.published)
        couriers.append((shipper, asyncio.ensure_future(shipper.run())))
    host = socket.gethostname()
    for export in settings.exports:
        forwarder = Forwarder(settings.trail, export, trail.id, host)
        forwarder.on_refused = refused
        if gate is not None and forwarder.retires:
            forwarder.on_verified = gate.expect(export.name, forwarder.state.verified)
        elif gate is not None:
            forwarder.on_progress = gate.expect(export.name, forwarder.state.seq)
        couriers.append((forwarder, asyncio.ensure_future(forwarder.run())))
    if couriers:
        woken = tuple(courier.wake for courier, _ in couriers)

        def wake_couriers() -> None:
            for wake in woken:
                wake()

        trail.on_checkpoint = wake_couriers
    decide = None
    if settings.policy is None:
        log.info("policy: none ([policy] absent): commands are recorded, none is decided")
    else:
        decide = Policy(settings.policy).decide
        log.info("policy: %s", settings.policy.summary())
    desk = None
    if settings.approvals is not None:
        approving = settings.approvals
        webhook = None
        if approving.webhook is not None:
            webhook = Webhook(
                approving.webhook, approving.webhook_attempts, approving.webhook_timeout_seconds
            )
        desk = Desk(Approvals(approving), recorder, webhook)
        with db.reading(settings.trail.path) as conn:
            left = query.pending_holds(conn)
        if left:
            log.warning("%d statement(s) were held when the recorder stopped: denied", len(left))
            desk.deny_left_over(left)
        log.info(
            "approvals: %d of %s, within %g s",
            approving.required,
            ", ".join(approving.groups),
            approving.timeout_seconds,
        )
    masking = _masking(settings)
    relays: list[Relay] = []
    servers: list[asyncio.Server] = []
    control: Control | None = None
    try:
        for listener in settings.listeners:
            backend = settings.backends[listener.backend]
            relay = Relay(
                recorder,
                backend,
                settings.capture,
                settings.max_message_bytes,
                owner_lookup,
                quick_lookup=quick_lookup,
                access=access,
                limits=limits,
                decide=decide,
                desk=desk,
                masking=masking,
            )
            try:
                server = await loop.create_server(
                    cast(Callable[[], asyncio.Protocol], relay.session),
                    listener.address,
                    listener.port,
                    reuse_address=True,
                )
            except OSError as exc:
                raise StartError(
                    f"cannot listen on {listener.address}:{listener.port}: {exc.strerror or exc}"
                ) from None
            relays.append(relay)
            servers.append(server)
            log.info(
                "recording %s:%d -> %s (%s:%d)",
                listener.address,
                listener.port,
                backend.name,
                backend.address,
                backend.port,
            )
        if settings.transparent:
            relay = Relay(
                recorder,
                None,
                settings.capture,
                settings.max_message_bytes,
                owner_lookup,
                routes=Routes(list(settings.backends.values())),
                quick_lookup=quick_lookup,
                access=access,
                limits=limits,
                decide=decide,
                desk=desk,
                masking=masking,
            )
            relays.append(relay)
            port = settings.enforce.redirect_port
            for address, family in LOOPBACKS:
                try:
                    sock = _redirect_socket(address, family, port)
                except OSError as exc:
                    if family == socket.AF_INET6 and exc.errno in (
                        errno.EADDRNOTAVAIL,
                        errno.EAFNOSUPPORT,
                    ):
                        # No IPv6 here: nothing can be diverted to ::1, and a redirect to it
                        # finds the port closed, which is refused, never let through.
                        log.warning("no IPv6 loopback (%s): diverted IPv6 is refused", exc)
                        continue
                    raise StartError(
                        f"cannot listen for diverted connections on {address} port {port}: "
                        f"{exc.strerror or exc}"
                    ) from None
                servers.append(
                    await loop.create_server(
                        cast(Callable[[], asyncio.Protocol], relay.session), sock=sock
                    )
                )
            log.info(
                "recording diverted connections on 127.0.0.1 and ::1 port %d -> %s",
                port,
                ", ".join(
                    f"{b.name} ({', '.join(str(n) for n in b.protected_networks)} "
                    f"port {', '.join(str(p) for p in b.protected_ports)})"
                    for b in settings.backends.values()
                ),
            )
        if settings.identity.issuers or desk is not None:
            control = Control(
                settings.identity, bindings, recorder, Validator(settings.identity.issuers), desk
            )
            try:
                await control.start()
            except OSError as exc:
                raise StartError(
                    f"cannot open the control socket {settings.identity.control_socket}: "
                    f"{exc.strerror or exc}"
                ) from None
            log.info("control socket %s", settings.identity.control_socket)
        log.info(
            "identity: %d issuer(s), %d static binding(s), %d live binding(s); unbound "
            "connections are %s",
            len(settings.identity.issuers),
            len(settings.identity.bindings),
            len(bindings.live()),
            "refused" if settings.identity.unbound == "refuse" else "allowed, with no identity",
        )
        log.info(
            "trail %s (id %s, durability %s), signed every %g s or %d events",
            settings.trail.path,
            trail.id,
            settings.trail.durability,
            settings.trail.checkpoint_seconds,
            settings.trail.checkpoint_events,
        )
        if settings.trail.central is not None:
            log.info("events shipped to the central store %s", where(settings.trail.central))
        _log_sealing(settings.trail)
        if settings.trail.anchor is not None:
            log.info("checkpoints published to the anchor %s", where(settings.trail.anchor))
        else:
            log.warning("no [trail.anchor]: checkpoints are kept on this host only")
        for export in settings.exports:
            log.info("export %s: %s to %s", export.name, export.format, export.destination)
        report = log.info if native.STATUS.compiled else log.warning
        report("hot path: %s", native.STATUS)
        if not owners.PIDS_ARE_OURS:
            log.warning("owners: %s; they are attributed through sock_diag", bpf.FOREIGN_PIDS)

        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        expiry = Expiry(bindings, recorder, relays)

        async def expiries() -> None:
            while True:
                await asyncio.sleep(1.0)
                try:
                    expiry.sweep()
                except Exception:  # the next second tries again; never stop sweeping
                    log.exception("the expiry sweep failed")

        ticker = asyncio.ensure_future(recorder.sign_every(settings.trail.checkpoint_seconds))
        sweeper = asyncio.ensure_future(expiries())
        await stop.wait()
        ticker.cancel()
        sweeper.cancel()
        log.info("shutting down")
    finally:
        if control is not None:
            control.close()
        if desk is not None:
            desk.shutdown()
        for server in servers:
            server.close()
        for relay in relays:
            for session in list(relay.sessions):
                session.end("recorder shutting down")
        try:
            await recorder.close()
        finally:
            for courier, running in couriers:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
                await courier.finish()  # what was written at close, if the far end answers


def serve(settings: Settings) -> None:
    """Run the daemon in the foreground, on uvloop when it is installed."""
    try:
        import uvloop  # noqa: PLC0415  (optional speed-up)
    except ImportError:
        asyncio.run(run(settings))
    else:
        uvloop.run(run(settings))
