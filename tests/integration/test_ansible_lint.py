"""The Ansible role and site playbook pass ``ansible-lint`` with the production profile, and
``ansible-playbook --syntax-check``; and the lint run can fail (a copy with a bad task does).

Run the way an operator would, from the repository's root:
``ansible-lint --offline --profile production ansible/``. The tools' caches go to a temporary
directory, not the user's home.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
LINT = shutil.which("ansible-lint")
PLAYBOOK = shutil.which("ansible-playbook")

needs_lint = pytest.mark.skipif(LINT is None, reason="ansible-lint is not installed (ansible-lint)")
needs_playbook = pytest.mark.skipif(
    PLAYBOOK is None, reason="ansible-playbook is not installed (ansible)"
)


def env(scratch: Path) -> dict[str, str]:
    return {
        **os.environ,
        "NO_COLOR": "1",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOME": str(scratch / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(scratch / "ansible-local"),
        "XDG_CACHE_HOME": str(scratch / "cache"),
    }


def lint(tree: Path, cwd: Path, scratch: Path) -> subprocess.CompletedProcess[str]:
    assert LINT is not None
    return subprocess.run(
        [LINT, "--offline", "--profile", "production", "--nocolor", str(tree)],
        cwd=cwd,
        env=env(scratch),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@needs_lint
def test_the_role_and_playbook_pass_ansible_lint_production(tmp_path: Path) -> None:
    done = lint(Path("ansible"), REPO, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Passed with production profile" in done.stdout + done.stderr


@needs_playbook
def test_the_site_playbook_passes_the_syntax_check(tmp_path: Path) -> None:
    assert PLAYBOOK is not None
    done = subprocess.run(
        [
            PLAYBOOK, "--syntax-check", "ansible/site.yml",
            "-i", "ansible/inventory/example.yml",
        ],
        cwd=REPO,
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@needs_lint
def test_lint_fails_on_a_bad_task(tmp_path: Path) -> None:
    """The same lint over a copy with one task that breaks the rules: it must fail, naming
    them, so the test above can fail too."""
    copy = tmp_path / "project" / "ansible"
    shutil.copytree(ANSIBLE, copy, ignore=shutil.ignore_patterns("keys"))
    with (copy / "roles" / "witness" / "tasks" / "main.yml").open("a") as tasks:
        tasks.write("\n- shell: echo $HOME\n")  # no name, no FQCN, no changed_when
    done = lint(Path("ansible"), copy.parent, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "fqcn" in output and "name[missing]" in output, output
