"""``witness check`` and ``witness keygen``: what the Ansible role runs before a file is used."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main

SERVICE = pwd.getpwuid(os.getuid()).pw_name


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "witness.toml"
    path.write_text(
        '[[backend]]\nname = "pg"\naddress = "10.9.0.5"\nport = 5432\n\n'
        f'[trail]\npath = "{tmp_path / "state" / "trail.db"}"\n\n'
        f'[enforce]\nservice_user = "{SERVICE}"\n{extra}'
    )
    return path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_check_accepts_a_good_file_and_says_what_it_holds(tmp_path: Path) -> None:
    code, out = _run("--config", str(_config(tmp_path)), "check")
    assert code == 0, out
    assert "is good" in out and "1 (pg)" in out and f"service user {SERVICE}" in out
    assert "signed every 1 s or 1000 events" in out
    assert "anchor:    none: checkpoints stay on this host only" in out


def test_check_names_the_anchor_and_never_its_password(tmp_path: Path) -> None:
    path = _config(tmp_path)
    anchored = path.read_text().replace(
        "\n\n[enforce]",
        '\n[trail.anchor]\ndsn = "host=anchor.example.test user=b1 password=s3cret"\n\n[enforce]',
    )
    path.write_text(anchored)
    code, out = _run("--config", str(path), "check")
    assert code == 0, out
    assert "anchor:    user=b1 host=anchor.example.test (bastion b1)" in out
    assert "s3cret" not in out


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("redirect_port = 0\n", "enforce.redirect_port"),
        ("bogus = 1\n", "enforce.bogus"),
    ],
)
def test_check_refuses_a_broken_file_naming_the_key(tmp_path: Path, extra: str, named: str) -> None:
    code, out = _run("--config", str(_config(tmp_path, extra)), "check")
    assert code == 2
    assert named in out


def test_check_refuses_a_service_user_this_host_lacks(tmp_path: Path) -> None:
    path = _config(tmp_path)
    path.write_text(path.read_text().replace(SERVICE, "no-such-witness-user"))
    code, out = _run("--config", str(path), "check")
    assert code == 2 and "no user named 'no-such-witness-user'" in out


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="nft -c needs root")
def test_check_saves_the_table_once_and_only_rewrites_it_when_it_changes(tmp_path: Path) -> None:
    config, table = _config(tmp_path), tmp_path / "witness.nft.json"
    code, out = _run("--config", str(config), "check", "--save-table", str(table))
    assert code == 0 and f"table saved to {table}" in out, out
    saved = json.loads(table.read_text())
    assert {"add": {"table": {"family": "inet", "name": "witness"}}} in saved["nftables"]
    assert "10.9.0.5" in table.read_text()
    assert stat.S_IMODE(table.stat().st_mode) == 0o644
    code, out = _run("--config", str(config), "check", "--save-table", str(table))
    assert code == 0 and "is current" in out, out
    config.write_text(config.read_text().replace("10.9.0.5", "10.9.0.6"))
    code, out = _run("--config", str(config), "check", "--save-table", str(table))
    assert code == 0 and "table saved" in out and "10.9.0.6" in table.read_text()


def test_keygen_creates_a_key_once_and_never_replaces_it(tmp_path: Path) -> None:
    config = _config(tmp_path)
    code, out = _run("--config", str(config), "keygen")
    assert code == 0 and "created" in out, out
    key = tmp_path / "state" / "trail.db.key"
    first = key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert (tmp_path / "state" / "trail.db.key.pub").read_text().startswith("-----BEGIN PUBLIC")
    code, again = _run("--config", str(config), "keygen")
    assert code == 0 and "exists" in again
    assert key.read_bytes() == first
    assert out.split("fingerprint ")[1][:16] == again.split("fingerprint ")[1][:16]


def test_keygen_refuses_a_public_key_of_another_key(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert _run("--config", str(config), "keygen")[0] == 0
    other = tmp_path / "other"
    other.mkdir()
    assert _run("--config", str(_config(other)), "keygen")[0] == 0
    shutil.copy(other / "state" / "trail.db.key.pub", tmp_path / "state" / "trail.db.key.pub")
    code, out = _run("--config", str(config), "keygen")
    assert code == 1 and "does not belong to the signing key" in out


def test_keygen_makes_the_masking_key_when_masks_are_configured(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    code, out = _run("--config", str(_config(plain)), "keygen")
    assert code == 0 and "masking key" not in out
    assert not (plain / "state" / "trail.db.key.mask").exists()
    masks = '\n[policy]\ndefault = "allow"\n[[policy.masks]]\nname = "pii"\ndetectors = ["email"]\n'
    config = _config(tmp_path, masks)
    code, out = _run("--config", str(config), "keygen")
    assert code == 0 and "masking key" in out and "created" in out.splitlines()[-1], out
    mask = tmp_path / "state" / "trail.db.key.mask"
    first = mask.read_bytes()
    assert len(first) == 32 and stat.S_IMODE(mask.stat().st_mode) == 0o600
    code, again = _run("--config", str(config), "keygen")
    assert code == 0 and "exists" in again.splitlines()[-1]
    assert mask.read_bytes() == first
