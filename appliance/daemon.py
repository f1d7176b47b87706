"""The composition root: builds the trail, the recorder and the listeners, and runs them."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import cast

from appliance import native
from appliance.config import Settings
from appliance.enforce import owners
from appliance.proxy.recorder import Recorder
from appliance.proxy.server import OwnerLookup, Relay
from appliance.trail.store import Trail

log = logging.getLogger("witness")


class StartError(Exception):
    """The daemon could not start: the message says which resource and why."""


async def run(settings: Settings, owner_lookup: OwnerLookup = owners.lookup) -> None:
    """Serve until SIGTERM or SIGINT, then end every session and sign the trail."""
    loop = asyncio.get_running_loop()
    trail = Trail.open(settings.trail)
    recorder = Recorder(trail, loop)
    relays: list[Relay] = []
    servers: list[asyncio.Server] = []
    try:
        for listener in settings.listeners:
            backend = settings.backends[listener.backend]
            relay = Relay(
                recorder, backend, settings.capture, settings.max_message_bytes, owner_lookup
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
