"""How much of a token Witness will read, and how much of what a caller sent it will repeat."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MAX_TOKEN = 16 * 1024
"""Characters a token may have. Real ones are one to a few KiB; the cap is checked before any
decoding, so that a huge token costs nothing but its refusal."""
