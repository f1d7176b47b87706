"""How much of a token Witness will read, and how much of what a caller sent it will repeat."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MAX_TOKEN = 16 * 1024
"""Characters a token may have. Real ones are one to a few KiB; the cap is checked before any
decoding, so that a huge token costs nothing but its refusal."""

MAX_SHOWN = 80
"""Characters of a value from a token or a request that a message quotes at most."""


def shown(value: object, render: Callable[[Any], str] = repr, limit: int = MAX_SHOWN) -> str:
    """``render(value)`` for a message, cut to ``limit`` characters and then saying how long
    it was. What a caller sends comes back in refusals and logs; a megabyte kid must not."""
    if isinstance(value, str):
        if len(value) <= limit:
            return render(value)
        # Cut before rendering, so that a huge string is never copied whole into its repr.
        return f"{render(value[:limit])}... ({len(value)} characters)"
    text = render(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
