"""The [identity] table of a test configuration, rendered from an IssuerSettings."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.config import IssuerSettings


def _toml(value: object) -> str:
    return json.dumps(value)  # strings and lists of strings are written alike in TOML


def identity_table(
    issuer: IssuerSettings,
    control_socket: Path,
    *,
    warden_socket: Path | None = None,
    unbound: str = "refuse",
) -> str:
    params = ", ".join(f"{k} = {_toml(v)}" for k, v in issuer.login_params)
    lines = [
        "[identity]",
        f"unbound = {_toml(unbound)}",
        f"control_socket = {_toml(str(control_socket))}",
        *([f"warden_socket = {_toml(str(warden_socket))}"] if warden_socket else []),
        "",
        "[[identity.issuer]]",
        f"name = {_toml(issuer.name)}",
        f"issuer = {_toml(issuer.issuer)}",
        f"audience = {_toml(list(issuer.audience))}",
        f"algorithms = {_toml(list(issuer.algorithms))}",
        f"client_id = {_toml(issuer.client_id)}",
        f"login_params = {{ {params} }}",
        f"leeway_seconds = {issuer.leeway}",
        f"timeout_seconds = {issuer.timeout}",
    ]
    return "\n".join(lines) + "\n"
