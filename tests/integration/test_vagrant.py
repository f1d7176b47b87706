"""The Vagrant lab (vagrant/): the Vagrantfile validates, and what it sets up hangs together.

No machine is started: CI has no VirtualBox or libvirt. ``vagrant validate --ignore-provider``
loads the Vagrantfile and checks every machine's configuration (settings, networks, synced
folders, provisioners, including that each shell script exists) without a provider. Vagrant
writes its state to a temporary VAGRANT_HOME and VAGRANT_DOTFILE_PATH, so nothing lands in
``~/.vagrant.d`` or ``vagrant/.vagrant``, and it never asks the network for updates.

What validate does not check is checked here: that no machine is on a public network or
forwards a port, that the provisioning scripts are sound shell, that the variables given to
the Ansible role make a configuration ``appliance.config`` accepts, and that the identity
provider's configuration for the lab gives agents tokens Witness accepts.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from appliance import config
from appliance.identity.oidc import Validator
from appliance.lab import idp as idp_support
from appliance.lab.net import free_port

ROOT = Path(__file__).resolve().parents[2]
VAGRANT_DIR = ROOT / "vagrant"
VAGRANTFILE = VAGRANT_DIR / "Vagrantfile"
IDP_CONFIG = VAGRANT_DIR / "idp" / "config.json"
PROVISION = VAGRANT_DIR / "provision"

needs_vagrant = pytest.mark.skipif(
    shutil.which("vagrant") is None,
    reason="vagrant is not installed (Debian package: vagrant)",
)


def _validate(directory: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp / "home"),
        "VAGRANT_HOME": str(tmp / "vagrant.d"),
        "VAGRANT_DOTFILE_PATH": str(tmp / "dotfile"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "VAGRANT_NO_PLUGINS": "1",
        "VAGRANT_DEFAULT_PROVIDER": "virtualbox",
    }
    return subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _lab_copy(tmp: Path) -> Path:
    """A copy of vagrant/ to break on purpose."""
    copy = tmp / "vagrant"
    shutil.copytree(VAGRANT_DIR, copy, ignore=shutil.ignore_patterns(".vagrant"))
    return copy


def _ruby_constants() -> dict[str, Any]:
    """WITNESS_VARS and LAB as the Vagrantfile computes them, read with Ruby (which vagrant
    runs on) and Vagrant.configure stubbed out, so no machine is defined."""
    script = (
        "module Vagrant; def self.configure(_version); end; end\n"
        "load ARGV[0]\n"
        'puts JSON.generate({"vars" => WITNESS_VARS, "lab" => LAB, "range" => BACKEND_RANGE})\n'
    )
    done = subprocess.run(
        ["ruby", "-rjson", "-e", script, str(VAGRANTFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _settings(variables: dict[str, Any]) -> config.Settings:
    """The role's variables as the configuration file they stand for, through config.parse."""
    identity: dict[str, Any] = {
        "issuer": variables["witness_issuers"],
        "binding": variables["witness_static_bindings"],
        "unbound": variables["witness_unbound"],
        "control_socket": variables["witness_control_socket"],
        "warden_socket": variables["witness_warden_socket"],
    }
    return config.parse(
        {
            "backend": variables["witness_backends"],
            "enforce": {
                "service_user": variables["witness_user"],
                "redirect_port": variables["witness_redirect_port"],
            },
            "identity": identity,
        }
    )


# --- vagrant validate ------------------------------------------------------------------------


@needs_vagrant
def test_vagrantfile_validates_and_leaves_nothing_behind(tmp_path: Path) -> None:
    done = _validate(VAGRANT_DIR, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Vagrantfile validated successfully." in done.stdout
    for machine in ("bastion", "idp", "postgres", "mariadb", "redis"):
        assert f"==> {machine}:" in done.stdout
    assert not (VAGRANT_DIR / ".vagrant").exists()


def _unknown_setting(lab: Path) -> None:
    vagrantfile = lab / "Vagrantfile"
    text = vagrantfile.read_text()
    vagrantfile.write_text(
        text.replace(
            "config.vm.box_check_update = false",
            "config.vm.box_check_update = false\n  config.vm.no_such_setting = 1",
        )
    )


def _missing_script(lab: Path) -> None:
    (lab / "provision" / "redis.sh").unlink()


def _no_playbook(lab: Path) -> None:
    vagrantfile = lab / "Vagrantfile"
    text = vagrantfile.read_text()
    vagrantfile.write_text(text.replace('ansible.playbook = "ansible/site.yml"', ""))


def _address_outside_network(lab: Path) -> None:
    vagrantfile = lab / "Vagrantfile"
    text = vagrantfile.read_text()
    vagrantfile.write_text(text.replace('"192.168.56.23"', '"192.168.57.23"'))


def _issuer_elsewhere(lab: Path) -> None:
    path = lab / "idp" / "config.json"
    data = json.loads(path.read_text())
    data["issuer"] = "http://192.168.56.99:9000"
    path.write_text(json.dumps(data))


@needs_vagrant
@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_unknown_setting, "shouldn't exist: no_such_setting"),
        (_missing_script, "does not exist on the host system"),
        (_no_playbook, "`playbook` file path must be set"),
        (_address_outside_network, "is outside 192.168.56.0/24"),
        (_issuer_elsewhere, "idp/config.json: expected host"),
    ],
    ids=["unknown-setting", "missing-script", "no-playbook", "outside-network", "issuer"],
)
def test_validate_fails_on_a_broken_lab(
    tmp_path: Path, breakage: Callable[[Path], None], message: str
) -> None:
    lab = _lab_copy(tmp_path)
    breakage(lab)
    done = _validate(lab, tmp_path)
    assert done.returncode != 0, done.stdout
    assert message in done.stdout + done.stderr


# --- what validate does not look at ----------------------------------------------------------


def _code(text: str) -> str:
    """The Vagrantfile without its comments."""
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_machines_are_on_the_private_network_only() -> None:
    code = _code(VAGRANTFILE.read_text())
    assert "public_network" not in code
    assert "forwarded_port" not in code
    assert code.count('"private_network"') == 1  # in lab_machine, which every machine uses
    assert 'libvirt__forward_mode: "none"' in code
    defined = re.findall(r'lab_machine\(config, "([a-z]+)"\)', code)
    assert sorted(defined) == ["bastion", "idp", "mariadb", "postgres", "redis"]
    assert "config.vm.define" not in code.replace("  config.vm.define name do", "")


def _scripts_referenced() -> set[str]:
    return set(re.findall(r'path: "provision/([^"]+)"', _code(VAGRANTFILE.read_text())))


def test_every_provision_script_is_used_and_sound() -> None:
    referenced = _scripts_referenced()
    present = {path.name for path in PROVISION.glob("*.sh")}
    assert referenced == present
    for name in sorted(present):
        script = PROVISION / name
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), name
        assert "\nset -euo pipefail\n" in text, name
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{name}: {done.stderr}"
    if shutil.which("shellcheck"):
        done = subprocess.run(
            ["shellcheck", *sorted(str(PROVISION / name) for name in present)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout


@pytest.mark.skipif(shutil.which("ruby") is None, reason="no ruby (vagrant brings it)")
def test_role_variables_make_a_valid_configuration() -> None:
    constants = _ruby_constants()
    variables = constants["vars"]
    lab = {name: ipaddress.ip_address(ip) for name, ip in constants["lab"].items()}
    settings = _settings(variables)

    assert variables["witness_source_dir"] == "/vagrant"
    assert variables["witness_manage_service"] is True
    assert variables["witness_unbound"] == "refuse"
    assert settings.transparent
    assert settings.enforce.service_user == variables["witness_user"]

    # PostgreSQL is recorded; the range it protects holds every backend, so an agent cannot
    # reach MariaDB or Redis around the recorder either; the bastion and the IdP stay outside.
    postgres = settings.backends["postgres"]
    assert postgres.address == str(lab["postgres"])
    assert postgres.protocol == "postgresql"
    assert postgres.protected_ports == (5432,)
    networks = postgres.protected_networks
    for name in ("postgres", "mariadb", "redis"):
        assert any(lab[name] in net for net in networks), name
    for name in ("bastion", "idp"):
        assert not any(lab[name] in net for net in networks), name
    assert set(settings.backends) == {"postgres"}  # config.PROTOCOLS: postgresql only

    (issuer,) = settings.identity.issuers
    idp = json.loads(IDP_CONFIG.read_text())
    assert issuer.issuer == idp["issuer"] == f"http://{lab['idp']}:{idp['port']}"
    assert urllib.parse.urlsplit(issuer.issuer).hostname == idp["host"]
    assert set(issuer.audience) <= set(idp["resources"])
    assert issuer.client_id in {client["client_id"] for client in idp["clients"]}


def test_idp_config_holds_no_keys_and_names_the_agents() -> None:
    idp = json.loads(IDP_CONFIG.read_text())
    assert "jwks" not in idp  # the provider makes its key at start
    assert '"d":' not in IDP_CONFIG.read_text()
    clients = {client["client_id"]: client for client in idp["clients"]}
    device = clients.pop("witness-cli")
    assert device["token_endpoint_auth_method"] == "none"
    assert "urn:ietf:params:oauth:grant-type:device_code" in device["grant_types"]
    assert set(clients) == {"agent1", "agent2"}
    for client in clients.values():
        assert client["grant_types"] == ["client_credentials"]
        assert "agents" in client["witness_groups"]
    assert set(idp["accounts"]) == {"alice", "bob"}


# --- the lab's identity provider, run here -----------------------------------------------------


@contextmanager
def _provider(config_file: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        ["node", str(idp_support.PROVIDER), str(config_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=idp_support.IDP_DIR,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready "), proc.stderr.read() if proc.stderr else line
        yield line.split()[1]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        # Without jwks in its configuration the provider says its key is ephemeral.
        assert "ephemeral RS256 key" in err


@pytest.mark.skipif(idp_support.missing() is not None, reason=str(idp_support.missing()))
@pytest.mark.skipif(shutil.which("ruby") is None, reason="no ruby (vagrant brings it)")
def test_lab_idp_gives_agents_tokens_witness_accepts(tmp_path: Path) -> None:
    """The VM's provider configuration, moved to loopback: an agent's client-credentials
    token validates against the issuer the role is given, and its groups pass the policy."""
    port = free_port()
    data = json.loads(IDP_CONFIG.read_text())
    local = f"http://127.0.0.1:{port}"
    data.update(host="127.0.0.1", port=port, issuer=local)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(data))
    settings = _settings(_ruby_constants()["vars"])
    (issuer,) = settings.identity.issuers
    agent = next(client for client in data["clients"] if client["client_id"] == "agent1")

    with _provider(config_file) as announced:
        assert announced == local
        form = urllib.parse.urlencode(
            {"grant_type": "client_credentials", "resource": issuer.audience[0]}
        ).encode()
        basic = base64.b64encode(f"agent1:{agent['client_secret']}".encode()).decode()
        request = urllib.request.Request(
            local + "/token", data=form, headers={"Authorization": f"Basic {basic}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            token = json.load(response)["access_token"]
        checked = Validator([replace(issuer, issuer=local, leeway=0.0)]).validate(token)

    identity = checked.identity
    assert identity.subject == "agent1"
    assert identity.email == agent["witness_email"]
    assert checked.algorithm == "RS256"
    postgres = settings.backends["postgres"]
    assert set(identity.groups) & set(postgres.allow_groups)


@pytest.mark.skipif(
    not (ROOT / "ansible" / "site.yml").exists(), reason="ansible/site.yml is not written yet"
)
def test_the_playbook_the_bastion_runs_exists() -> None:
    code = _code(VAGRANTFILE.read_text())
    assert 'ansible.provisioning_path = "/vagrant"' in code
    assert 'ansible.playbook = "ansible/site.yml"' in code
    assert '"bastions" => ["bastion"]' in code
