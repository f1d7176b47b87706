"""The Ed25519 key that signs checkpoints: creating, loading, signing, checking."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.trail import chain, files
from appliance.trail.db import TrailError


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of sha256 over the raw public key: enough to tell keys apart."""
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def create(path: Path) -> Ed25519PrivateKey:
    """A new key at ``path`` (PKCS8 PEM, mode 0600, parent made 0700); never overwrites."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    files.private_dir(path.parent)
    try:
        files.write_atomic(path, pem, 0o600, sync=True, replace=False)
    except FileExistsError:
        # Another process made one first: use that one, so only one key ever signs.
        return load_private(path)
    except OSError as exc:
        raise TrailError(f"{path}: cannot create the signing key: {exc.strerror}") from None
    return key


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TrailError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise TrailError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def load_private(path: Path) -> Ed25519PrivateKey:
    data = _read(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise TrailError(f"{path}: not a usable signing key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TrailError(f"{path}: the signing key must be Ed25519")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise TrailError(f"{path}: not a usable public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise TrailError(f"{path}: the public key must be Ed25519")
    return key


def ensure_public(path: Path, key: Ed25519PrivateKey) -> None:
    """Write the public half (mode 0644) if missing; refuse one that belongs to another key."""
    pem = public_pem(key.public_key())
    if path.exists():
        if _raw(load_public(path)) != _raw(key.public_key()):
            raise TrailError(f"{path}: this public key does not belong to the signing key")
        return
    try:
        files.write_atomic(path, pem, 0o644, sync=True)
    except OSError as exc:
        raise TrailError(f"{path}: cannot write the public key: {exc.strerror}") from None


Message = Callable[[int, str], bytes]


def sign(
    key: Ed25519PrivateKey, seq: int, hash: str, message: Message = chain.checkpoint_message
) -> str:
    """Base64 signature over the checkpoint message (or ``message``) for (seq, hash)."""
    return base64.b64encode(key.sign(message(seq, hash))).decode()


def signature_ok(
    public: Ed25519PublicKey,
    seq: int,
    hash: str,
    signature: str,
    message: Message = chain.checkpoint_message,
) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        public.verify(raw, message(seq, hash))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True
