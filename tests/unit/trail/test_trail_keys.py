"""The checkpoint signing key: creation, modes, formats, signatures."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from appliance.trail import keys
from appliance.trail.db import TrailError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_writes_a_private_pkcs8_key_in_a_private_directory(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "witness" / "trail.key"
    key = keys.create(path)
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert mode(path.parent.parent) == 0o700
    assert keys.fingerprint(keys.load_private(path).public_key()) == keys.fingerprint(
        key.public_key()
    )


def test_create_never_replaces_an_existing_key(tmp_path: Path) -> None:
    path = tmp_path / "trail.key"
    first = keys.create(path)
    data = path.read_bytes()
    second = keys.create(path)
    assert path.read_bytes() == data
    assert keys.fingerprint(second.public_key()) == keys.fingerprint(first.public_key())
    assert [p.name for p in tmp_path.iterdir()] == ["trail.key"]  # no temporary left behind


def test_public_half_is_written_once_and_must_match(tmp_path: Path) -> None:
    key = keys.create(tmp_path / "a.key")
    pub = tmp_path / "a.key.pub"
    keys.ensure_public(pub, key)
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert mode(pub) == 0o644
    keys.ensure_public(pub, key)  # idempotent
    other = keys.create(tmp_path / "b.key")
    with pytest.raises(TrailError, match="does not belong"):
        keys.ensure_public(pub, other)


def test_fingerprint_is_16_hex_digits(tmp_path: Path) -> None:
    fp = keys.fingerprint(keys.create(tmp_path / "k").public_key())
    assert len(fp) == 16
    int(fp, 16)


def test_signatures_verify_only_for_what_was_signed(tmp_path: Path) -> None:
    key = keys.create(tmp_path / "k")
    public = key.public_key()
    signature = keys.sign(key, 5, "ab" * 32)
    assert keys.signature_ok(public, 5, "ab" * 32, signature)
    assert not keys.signature_ok(public, 6, "ab" * 32, signature)
    assert not keys.signature_ok(public, 5, "cd" * 32, signature)
    assert not keys.signature_ok(public, 5, "ab" * 32, "not base64!")
    assert not keys.signature_ok(keys.create(tmp_path / "k2").public_key(), 5, "ab" * 32, signature)


def test_unusable_key_files_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("hello")
    with pytest.raises(TrailError, match="not a usable signing key"):
        keys.load_private(bad)
    with pytest.raises(TrailError, match="not a usable public key"):
        keys.load_public(bad)
    with pytest.raises(TrailError, match="no such public key"):
        keys.load_public(tmp_path / "missing")
