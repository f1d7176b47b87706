"""Playbooks: messages in, events out, checked with every chunking of the same bytes."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pgwire as pg

from appliance.model import Command, Prepared, Result
from appliance.protocols.postgres.connection import PostgresConnection
from appliance.protocols.postgres.events import (
    BackendKey,
    CommandFinished,
    CommandStarted,
    Event,
    Ready,
    Startup,
)

CLIENT = ">"  # client to server
SERVER = "<"  # server to client
CLOSE = "x"  # the session ends: close()

Step = tuple[str, Sequence[bytes], Sequence[Event]]
Chunker = Callable[[Sequence[bytes]], Iterator[bytes]]


def whole(messages: Sequence[bytes]) -> Iterator[bytes]:
    yield b"".join(messages)


def bytewise(messages: Sequence[bytes]) -> Iterator[bytes]:
    for byte in b"".join(messages):
        yield bytes([byte])


def trailing(k: int) -> Chunker:
    """Each chunk ends ``k`` bytes into the next message (never completing it)."""

    def chunks(messages: Sequence[bytes]) -> Iterator[bytes]:
        data = b"".join(messages)
        start = end = 0
        for current, following in itertools.pairwise(messages):
            end += len(current)
            cut = end + min(k, len(following) - 1)
            yield data[start:cut]
            start = cut
        yield data[start:]

    return chunks


CHUNKINGS: dict[str, Chunker] = {
    "whole": whole,
    "one byte at a time": bytewise,
    **{f"with {k} trailing bytes": trailing(k) for k in (1, 4, 5, 7)},
}


def run(conn: PostgresConnection, steps: Sequence[Step], chunker: Chunker) -> list[list[Event]]:
    out = []
    for side, messages, _ in steps:
        if side == CLOSE:
            out.append(conn.close())
            continue
        receive = conn.receive_client if side == CLIENT else conn.receive_server
        events: list[Event] = []
        for chunk in chunker(messages):
            events += receive(chunk)
        out.append(events)
    return out


def play(*steps: Step, **options: Any) -> list[Event]:
    """Check every step's events, fed whole, byte by byte, and split inside messages.

    Returns all events, in order, for further checks.
    """
    expected = [list(events) for _, _, events in steps]
    for name, chunker in CHUNKINGS.items():
        conn = PostgresConnection(clock=lambda: 0.0, **options)
        got = run(conn, steps, chunker)
        for i, (want, have) in enumerate(zip(expected, got, strict=True)):
            assert have == want, f"step {i} ({steps[i][0]}) fed {name}"
    return [event for events in expected for event in events]


def client(*messages: bytes) -> Callable[..., Step]:
    """``client(msg, ...)(event, ...)``: a step, read as "these bytes give these events"."""
    return lambda *events: (CLIENT, messages, events)


def server(*messages: bytes) -> Callable[..., Step]:
    return lambda *events: (SERVER, messages, events)


def closed(*events: Event) -> Step:
    return (CLOSE, (), events)


def started(n: int, kind: str, text: str, *params: str | None, **names: str | None) -> Event:
    return CommandStarted(n, Command(kind, text, tuple(params), **names))


def unknown(n: int, prepared: Prepared, *params: str | None, **names: str | None) -> Event:
    """An Execute whose statement or portal is not known: the record says what is."""
    text = prepared.describe()
    return CommandStarted(n, Command("execute", text, tuple(params), prepared=(prepared,), **names))


def finished(n: int, status: str = "ok", **fields: Any) -> Event:
    return CommandFinished(n, Result(status, **fields))


READY = Ready("I")
LOGIN: tuple[Step, ...] = (
    client(pg.startup(user="alice", database="shop"))(
        Startup((3, 0), {"user": "alice", "database": "shop"})
    ),
    server(*pg.WELCOME)(BackendKey(4242, 99), READY),
)
