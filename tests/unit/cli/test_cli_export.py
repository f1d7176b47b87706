"""witness export and witness verify --jsonl on a real trail: files, standard output, the
progress of a selection, and the errors a person can act on."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.testing import CliRunner, Result


def run(cli: click.Group, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_export_to_a_file_then_verify_it(cli: click.Group, path: Path, tmp_path: Path) -> None:
    out = tmp_path / "trail.jsonl"
    exported = run(cli, "export", "--format", "jsonl", "--trail", str(path), "--out", str(out))
    assert exported.exit_code == 0, exported.output
    lines = out.read_text().splitlines()
    assert exported.stderr == f"exported {len(lines)} records (jsonl) to {out}\n"
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert out.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    checked = run(cli, "verify", "--jsonl", str(out), "--trail", str(path))
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.startswith(f"{out}: ok, trail ")
    signed = sum(json.loads(line)["type"] == "checkpoint" for line in lines)
    assert checked.stdout.rstrip().endswith(
        f"events 1 to {len(lines)}: {len(lines)} verified ({signed} checkpoints), the whole"
        " chain from its genesis; all vouched for by a signed checkpoint"
    )


def test_standard_output_has_the_same_lines(cli: click.Group, path: Path, tmp_path: Path) -> None:
    out = tmp_path / "trail.jsonl"
    run(cli, "export", "--format", "jsonl", "--trail", str(path), "--out", str(out))
    printed = run(cli, "export", "--format", "jsonl", "--trail", str(path))
    assert printed.exit_code == 0
    assert printed.stdout == out.read_text()
    assert printed.stderr == ""


def test_an_edited_export_fails_verify(cli: click.Group, path: Path, tmp_path: Path) -> None:
    out = tmp_path / "trail.jsonl"
    run(cli, "export", "--format", "jsonl", "--trail", str(path), "--out", str(out))
    out.write_text(out.read_text().replace("DELETE FROM orders", "SELECT 1 FROM orders"))
    checked = run(cli, "verify", "--jsonl", str(out), "--trail", str(path), "--json")
    assert checked.exit_code == 1
    report = json.loads(checked.stdout)
    assert report["ok"] is False
    assert (
        report["reason"]
        == f"event {report['first_bad_seq']} does not match its hash: it was changed"
    )


def test_a_session_by_prefix_is_partial(cli: click.Group, path: Path, tmp_path: Path) -> None:
    out = tmp_path / "bob.jsonl"
    exported = run(
        cli,
        "export",
        "--format",
        "jsonl",
        "--session",
        "a1f",
        "--trail",
        str(path),
        "--out",
        str(out),
    )
    assert exported.exit_code == 0, exported.output
    sessions = {json.loads(line)["session"] for line in out.read_text().splitlines()}
    assert sessions - {None} == {"a1ffee-bob"}
    strict = run(cli, "verify", "--jsonl", str(out), "--trail", str(path))
    assert strict.exit_code == 1
    assert "--partial accepts that" in strict.stdout
    partial = run(cli, "verify", "--jsonl", str(out), "--trail", str(path), "--partial")
    assert partial.exit_code == 0, partial.output
    assert "not (from event" in partial.stdout


def test_errors_a_person_can_act_on(cli: click.Group, path: Path, tmp_path: Path) -> None:
    trail = ("--trail", str(path))
    unknown = run(cli, "export", "--format", "xml", *trail)
    assert unknown.exit_code == 2
    assert "Invalid value for '--format': 'xml' is not" in unknown.output
    since = run(cli, "export", "--format", "jsonl", "--since", "last tuesday", *trail)
    assert since.exit_code == 2
    assert "'last tuesday' is neither ISO 8601 nor an age like 10m, 2h, 1d" in since.output
    nowhere = tmp_path / "missing" / "out.jsonl"
    unwritable = run(cli, "export", "--format", "jsonl", "--out", str(nowhere), *trail)
    assert unwritable.exit_code == 1
    assert unwritable.stderr == f"witness: {nowhere}: cannot write: No such file or directory\n"
    both = run(cli, "export", "--format", "cef", "--out", "x", "--syslog", "h:1", *trail)
    assert (both.exit_code, both.stderr) == (2, "witness: --out and --syslog go separately\n")
    jsonl_syslog = run(cli, "export", "--format", "jsonl", "--syslog", "127.0.0.1:514", *trail)
    assert jsonl_syslog.exit_code == 2
    assert "--syslog sends CEF lines" in jsonl_syslog.stderr
    session = run(cli, "export", "--format", "jsonl", "--session", "zz", *trail)
    assert (session.exit_code, session.stderr) == (1, "witness: no session matches 'zz'\n")
    partial = run(cli, "verify", "--partial", *trail)
    assert (partial.exit_code, partial.stderr) == (2, "witness: --partial goes with --jsonl\n")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("hello\n")
    checked = run(cli, "verify", "--jsonl", str(garbage), *trail)
    assert checked.exit_code == 1
    assert checked.stdout == (
        f"{garbage}: FAULT: line 1 is not an exported event (JSON with seq, ts, type,"
        " session, payload, prev_hash, hash)\n"
    )
