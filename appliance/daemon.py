"""The composition root: builds the trail, the recorder and the listeners, and runs them."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pwd
import signal
import socket
from collections.abc import Callable
from typing import cast

from appliance import native
from appliance.config import Settings
from appliance.enforce import owners
from appliance.enforce.divert import Routes
from appliance.proxy.recorder import Recorder
from appliance.proxy.server import OwnerLookup, QuickLookup, Relay
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


async def run(
    settings: Settings,
    owner_lookup: OwnerLookup = owners.lookup,
    quick_lookup: QuickLookup | None = owners.quick,
) -> None:
    """Serve until SIGTERM or SIGINT, then end every session and sign the trail."""
    loop = asyncio.get_running_loop()
    if settings.transparent:
        check_service_user(settings)
    trail = Trail.open(settings.trail)
    recorder = Recorder(trail, loop)
    relays: list[Relay] = []
    servers: list[asyncio.Server] = []
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
        log.info("trail %s (durability %s)", settings.trail.path, settings.trail.durability)
        report = log.info if native.STATUS.compiled else log.warning
        report("hot path: %s", native.STATUS)

        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        async def checkpoints() -> None:
            while True:
                await asyncio.sleep(settings.trail.checkpoint_seconds)
                recorder.checkpoint()

        ticker = asyncio.ensure_future(checkpoints())
        await stop.wait()
        ticker.cancel()
        log.info("shutting down")
    finally:
        for server in servers:
            server.close()
        for relay in relays:
            for session in list(relay.sessions):
                session.end("recorder shutting down")
        await asyncio.sleep(0)  # let the last group commit run
        trail.close()


def serve(settings: Settings) -> None:
    """Run the daemon in the foreground, on uvloop when it is installed."""
    try:
        import uvloop  # noqa: PLC0415  (optional speed-up)
    except ImportError:
        asyncio.run(run(settings))
    else:
        uvloop.run(run(settings))
