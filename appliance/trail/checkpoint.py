"""Signed checkpoints: the event payload, and the signed head kept outside the trail."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.trail import chain, files, keys
from appliance.trail.db import TrailError


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signature over (seq, hash): every event up to ``seq`` is as it was when signed."""

    seq: int
    hash: str
    key: str
    signature: str

    @staticmethod
    def message(seq: int, hash: str) -> bytes:
        return chain.checkpoint_message(seq, hash)

    @classmethod
    def sign(cls, key: Ed25519PrivateKey, fingerprint: str, seq: int, hash: str) -> Self:
        return cls(seq, hash, fingerprint, keys.sign(key, seq, hash, cls.message))

    def valid(self, public: Ed25519PublicKey) -> bool:
        """Whether the signature verifies under ``public`` (the fingerprint is not checked)."""
        return keys.signature_ok(public, self.seq, self.hash, self.signature, self.message)

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "key": self.key, "signature": self.signature}

    @classmethod
    def from_json(cls, text: str | bytes) -> Self | None:
        """The checkpoint in a JSON text, or None if it is not one."""
        try:
            return cls.from_dict(json.loads(text))
        except ValueError:
            return None

    @classmethod
    def from_dict(cls, data: Any) -> Self | None:
        """The checkpoint in ``data``, or None if any field is missing or of the wrong type."""
        if not isinstance(data, dict):
            return None
        seq, hash, key, signature = (data.get(k) for k in ("seq", "hash", "key", "signature"))
        if isinstance(seq, bool) or not isinstance(seq, int):
            return None
        if not (isinstance(hash, str) and isinstance(key, str) and isinstance(signature, str)):
            return None
        return cls(seq, hash, key, signature)


@dataclass(frozen=True, slots=True)
class Head(Checkpoint):
    """The trail's last event as a checkpoint commit left it: ``seq`` is the checkpoint event
    itself. It is kept in the checkpoint file, never in the trail, and signs a message of its
    own, so it cannot be made from the trail's checkpoints: a trail cut back to an earlier
    checkpoint cannot be given a checkpoint file that matches without the key."""

    @staticmethod
    def message(seq: int, hash: str) -> bytes:
        return chain.head_message(seq, hash)


RECORD = 1024
"""Bytes the checkpoint file always holds: its JSON, padded with spaces."""


def write_file(path: Path, head: Head, *, sync: bool) -> None:
    """Put ``head`` in the checkpoint file (mode 0644).

    With ``sync`` (power durability) a new file is written, fsynced and renamed over the old
    one. Otherwise the file is overwritten in place with one write of RECORD bytes: a killed
    recorder cannot tear a write it was in, and a rename over an existing file costs ext4 a
    flush of the new file's blocks, which at one checkpoint per 1,000 events took more than
    a microsecond from every command.
    """
    data = json.dumps(head.as_dict(), sort_keys=True).encode() + b"\n"
    if sync or len(data) > RECORD:
        files.write_atomic(path, data, 0o644, sync=sync)
    else:
        files.overwrite(path, data.ljust(RECORD), 0o644)


def read_file(path: Path) -> Head:
    """The head in the checkpoint file; a read that crossed the recorder's write, which would
    find two halves that do not verify together, is told from a real one by reading again."""
    found = None
    last = b""
    for _ in range(5):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise TrailError(f"{path}: no such checkpoint file") from None
        except OSError as exc:
            raise TrailError(f"{path}: cannot read the checkpoint file: {exc.strerror}") from None
        found = Head.from_json(raw)
        if raw == last:
            break
        last = raw
    if found is None:
        raise TrailError(f"{path}: not a Witness checkpoint file")
    return found
