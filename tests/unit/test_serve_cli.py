"""``witness serve`` refuses a broken configuration with exit status 2 and names the key."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from appliance.cli import main


def test_invalid_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "witness.toml"
    path.write_text('[[backend]]\nname = "a"\naddress = "127.0.0.1"\nport = 0\n')
    result = CliRunner().invoke(main, ["--config", str(path), "serve"])
    assert result.exit_code == 2
    assert "backend[0].port" in result.output


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "nope.toml"), "serve"])
    assert result.exit_code == 2
    assert "no such configuration file" in result.output


def test_quick_start_options_go_together() -> None:
    result = CliRunner().invoke(main, ["serve", "--listen", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "go together" in result.output


def test_quick_start_bad_backend_url(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "serve",
            "--listen",
            "127.0.0.1:1",
            "--backend",
            "redis://x",
            "--trail",
            str(tmp_path / "t"),
        ],
    )
    assert result.exit_code == 2
    assert "--backend" in result.output
