"""The key of masking's tokens: 32 random bytes beside the signing key, made once, 0600."""

from __future__ import annotations

import secrets
from pathlib import Path

from appliance.trail import files
from appliance.trail.db import TrailError

SIZE = 32


def load_or_create(path: Path) -> tuple[bytes, bool]:
    """The key at ``path``, made first if there is none; and whether it was made now."""
    made = False
    if not path.exists():
        files.private_dir(path.parent)
        try:
            files.write_atomic(path, secrets.token_bytes(SIZE), 0o600, sync=True, replace=False)
            made = True
        except FileExistsError:
            pass  # another process made it first: that one is the key
        except OSError as exc:
            raise TrailError(f"{path}: cannot create the masking key: {exc.strerror}") from None
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise TrailError(f"{path}: cannot read the masking key: {exc.strerror}") from None
    if len(key) < SIZE:
        raise TrailError(f"{path}: the masking key is {len(key)} bytes long, expected {SIZE}")
    return key, made
