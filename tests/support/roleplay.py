"""Running the Ansible role in the tests: the play and its recap, and the variables that
point it at a namespace lab's backend and identity provider."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from appliance.lab.idp import IdP
from appliance.lab.netns import Lab

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "ansible" / "site.yml"
PLAYBOOK = shutil.which("ansible-playbook")


def lab_variables(lab: Lab, idp: IdP) -> dict[str, Any]:
    """The lab's PostgreSQL as the one protected backend, its identity provider as the one
    issuer, unbound connections refused."""
    issuer = idp.settings()
    topo = lab.topology
    port = topo.service("postgres").port
    return {
        "witness_backends": [
            {
                "name": "lab",
                "address": str(topo.backend_ipv4),
                "port": port,
                "protect": list(topo.networks),
                "protect_ports": [port],
            }
        ],
        "witness_issuers": [
            {
                "name": issuer.name,
                "issuer": issuer.issuer,
                "audience": list(issuer.audience),
                "algorithms": list(issuer.algorithms),
                "client_id": issuer.client_id,
                "login_params": dict(issuer.login_params),
                "leeway_seconds": issuer.leeway,
                "timeout_seconds": issuer.timeout,
            }
        ],
        "witness_static_bindings": [],
        "witness_unbound": "refuse",
    }


def play(
    root: Path,
    host: str,
    *options: str,
    prefix: tuple[str, ...] = (),
    succeed: bool = True,
    timeout: float = 540,
) -> tuple[dict[str, int], str]:
    """Run site.yml once with ``root``'s inventory.yml and vars.json (``prefix``: what runs
    the playbook, such as ``ip netns exec NS``); the PLAY RECAP's counts for ``host``, and
    the whole output. With ``succeed`` (the default), fail unless it did."""
    assert PLAYBOOK is not None
    env = {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        # Ansible's and pip's own files stay under the test's root.
        "ANSIBLE_HOME": str(root / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(root / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(root / "ansible-remote"),
        "PIP_CACHE_DIR": str(root / "pip-cache"),
    }
    argv = [
        *prefix, PLAYBOOK, "-i", str(root / "inventory.yml"), "-e", f"@{root / 'vars.json'}",
        *options, str(SITE),
    ]  # fmt: skip
    done = subprocess.run(
        argv, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    recap_line = re.compile(
        rf"^{re.escape(host)}\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
        re.MULTILINE,
    )
    found = recap_line.search(done.stdout)
    assert found is not None, f"no PLAY RECAP for {host}:\n{output[-6000:]}"
    ok, changed, unreachable, failed = map(int, found.groups())
    recap = {"ok": ok, "changed": changed, "unreachable": unreachable, "failed": failed}
    if succeed:
        assert done.returncode == 0 and failed == 0 and unreachable == 0, output[-6000:]
    return recap, output
