"""A stand-in for an asyncio transport: collects what the relay writes to it."""

from __future__ import annotations

from typing import Any

DEFAULT_ADDRESS = ("127.0.0.1", 40000)


class FakeTransport:
    """Collects what is written; ``extra`` answers ``get_extra_info`` (by default every name
    gets DEFAULT_ADDRESS, which is all a plain listener's session asks for)."""

    def __init__(self, extra: dict[str, Any] | None = None) -> None:
        self.extra = extra
        self.written: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str) -> Any:
        return DEFAULT_ADDRESS if self.extra is None else self.extra.get(name)

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def writelines(self, chunks: list[bytes]) -> None:
        self.written.extend(bytes(c) for c in chunks)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...
