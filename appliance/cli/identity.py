"""``witness login``, ``run``, ``whoami`` and ``logout``: the caller's identity binding.

These run as the person or agent user, not as root, and talk to the recorder over its
control socket (see :mod:`appliance.proxy.control`), which learns who is calling from the
kernel. The socket is ``--socket``, else ``$WITNESS_SOCKET``, else the configured one, else
``/run/witness/control.sock``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click

from appliance import config
from appliance.cli.common import fail, json_option
from appliance.config import ConfigError, IdentitySettings
from appliance.enforce import confine
from appliance.identity.limits import MAX_TOKEN

socket_option = click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="WITNESS_SOCKET",
    default=None,
    help="The recorder's control socket [default: the configured one, or "
    "/run/witness/control.sock].",
)
token_option = click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    default=None,
    help="Read a token (a JWT from your issuer) from this file, or - for standard input.",
)


def _socket_path(ctx: click.Context, given: Path | None) -> Path:
    if given is not None:
        return given
    path = ctx.find_root().obj or config.DEFAULT_CONFIG
    try:
        return config.load(path).identity.control_socket
    except ConfigError:
        return IdentitySettings().control_socket


def _read_token(path: Path) -> str:
    # Read no more than a token and some whitespace could need: a file that never ends
    # (/dev/zero, a pipe left open) must not be read forever.
    most = 2 * MAX_TOKEN
    try:
        if str(path) == "-":
            text = sys.stdin.read(most + 1)
        else:
            with path.open(encoding="utf-8") as file:
                text = file.read(most + 1)
    except OSError as exc:
        fail(f"{path}: cannot read the token: {exc.strerror}", 2)
    except UnicodeDecodeError:
        fail(f"{path}: not a token (not UTF-8 text)", 2)
    token = text.strip()
    if len(text) > most or len(token) > MAX_TOKEN:
        fail(f"{path}: more than the {MAX_TOKEN} characters a token may have", 2)
    if not token:
        fail(f"{path}: no token in it", 2)
    return token


class _Channel:
    """One request to the control socket, and the answers that come back."""

    def __init__(self, path: Path, request: dict[str, Any]) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(str(path))
        except FileNotFoundError:
            fail(f"the recorder is not running here (no control socket at {path})")
        except PermissionError:
            fail(f"{path}: permission denied")
        except OSError as exc:
            fail(f"cannot reach the recorder at {path}: {exc.strerror or exc}")
        # The recorder refuses some requests before it has read them (too long, too many open
        # from this uid) and hangs up: its answer is waiting all the same.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(json.dumps(request).encode() + b"\n")
        self.file = self.sock.makefile("rb")

    def answer(self) -> dict[str, Any]:
        try:
            line = self.file.readline()
        except ConnectionResetError:  # the hang-up above, with nothing said first
            line = b""
        if not line:
            fail("the recorder closed the control connection without an answer")
        message: dict[str, Any] = json.loads(line)
        if not message.get("ok"):
            fail(str(message.get("error", "refused")))
        return message

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _ask(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    channel = _Channel(path, request)
    try:
        return channel.answer()
    finally:
        channel.close()


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "no expiry"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


def _label(identity: dict[str, Any]) -> str:
    return str(identity.get("email") or identity["subject"])


def _place(binding: dict[str, Any]) -> str:
    """What a binding is bound to: ``cgroup /witness-agents/run-...``, ``uid 1001``, or
    ``uid 1001 (static)``."""
    if binding["kind"] == "cgroup":
        return f"cgroup {binding['target']}"
    return f"uid {binding['target']}" + (" (static)" if binding["kind"] == "static" else "")


def describe(binding: dict[str, Any]) -> str:
    """Two or three lines for people: who, how bound, until when."""
    ident = binding["identity"]
    who = _label(ident)
    if ident.get("name"):
        who += f" ({ident['name']})"
    lines = [f"identity: {who}", f"  issuer {ident['issuer']}, subject {ident['subject']}"]
    if ident.get("groups"):
        lines.append(f"  groups {', '.join(ident['groups'])}")
    state = "EXPIRED" if binding.get("expired") else "until"
    lines.append(f"bound to {_place(binding)}, {state} {_when(binding.get('expires'))}")
    return "\n".join(lines)


@click.command()
@token_option
@click.option("--issuer", default=None, help="The issuer to sign in with, when several can.")
@socket_option
@json_option
@click.pass_context
def login(
    ctx: click.Context,
    token_file: Path | None,
    issuer: str | None,
    socket_path: Path | None,
    as_json: bool,
) -> None:
    """Bind your Unix user to your OIDC identity.

    Without --token-file it signs you in with the device flow: open the URL it prints,
    enter the code, and approve; it waits until you have. With --token-file it binds a
    machine token (client credentials, or a workload identity) instead.
    """
    path = _socket_path(ctx, socket_path)
    if token_file is not None:
        answer = _ask(path, {"op": "login", "token": _read_token(token_file)})
    else:
        channel = _Channel(path, {"op": "login", "issuer": issuer})
        try:
            pending = channel.answer()["pending"]
            complete = pending.get("verification_uri_complete")
            click.echo(
                f"To sign in with {pending['issuer']}, open {pending['verification_uri']}\n"
                f"and enter the code {pending['user_code']}"
                + (f"\n(or open {complete})" if complete else "")
                + f"\nWaiting until {_when(pending['expires_at'])} ...",
                err=as_json,
            )
            answer = channel.answer()
        finally:
            channel.close()
    if as_json:
        click.echo(json.dumps(answer["binding"], indent=2))
    else:
        click.echo(describe(answer["binding"]))


@click.command()
@socket_option
@json_option
@click.pass_context
def whoami(ctx: click.Context, socket_path: Path | None, as_json: bool) -> None:
    """Show the identity the recorder binds to you (exit 1 when there is none)."""
    answer = _ask(_socket_path(ctx, socket_path), {"op": "whoami"})
    binding, caller = answer["binding"], answer["caller"]
    if as_json:
        click.echo(json.dumps({"caller": caller, "binding": binding}, indent=2))
    elif binding is not None:
        click.echo(describe(binding))
    else:
        where = f", cgroup {caller['cgroup']}" if caller.get("cgroup") else ""
        click.echo(
            f"no identity is bound to you (uid {caller['uid']}{where}): "
            "run `witness login`, or start the agent with `witness run`"
        )
    if binding is None or binding.get("expired"):
        sys.exit(1)


@click.command()
@socket_option
@click.pass_context
def logout(ctx: click.Context, socket_path: Path | None) -> None:
    """Remove the binding `witness whoami` shows; new connections are then refused."""
    answer = _ask(_socket_path(ctx, socket_path), {"op": "logout"})
    removed = answer["removed"]
    click.echo(f"removed: {_label(removed['identity'])} from {_place(removed)}")


@click.command(context_settings={"ignore_unknown_options": True})
@token_option
@socket_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run(
    ctx: click.Context, token_file: Path | None, socket_path: Path | None, command: tuple[str, ...]
) -> None:
    """Run COMMAND as an agent under an identity: witness run [--token-file F] -- COMMAND...

    The recorder's warden puts this process into a new agent cgroup, the identity (the
    token's, or else the one `witness login` bound) is bound to that cgroup, and COMMAND
    runs in it, under the agent seccomp filter. Everything it spawns stays in the cgroup
    and so keeps the identity, whoever else logs in or out meanwhile.
    """
    request: dict[str, Any] = {"op": "run", "token": None}
    if token_file is not None:
        request["token"] = _read_token(token_file)
    binding = _ask(_socket_path(ctx, socket_path), request)["binding"]
    ident = binding["identity"]
    click.echo(
        f"witness: running as {_label(ident)} in {binding['target']} "
        f"until {_when(binding.get('expires'))}",
        err=True,
    )
    try:
        confine.restrict()
    except OSError as exc:
        fail(f"cannot confine the agent: {exc}")
    try:
        os.execvp(command[0], list(command))  # noqa: S606 - the agent's own command
    except OSError as exc:
        fail(f"{command[0]}: {exc.strerror or exc}", 127)


def register(group: click.Group) -> None:
    for command in (login, run, whoami, logout):
        group.add_command(command)
