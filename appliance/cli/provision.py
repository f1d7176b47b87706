"""``witness check`` and ``witness keygen``: what provisioning (the Ansible role) asks of Witness.

``check`` loads a configuration the way the recorder would and says whether it is good (exit
0) or what is wrong with it (exit 2, naming the key), so a new file is checked before it
replaces the one in use. With ``--save-table`` it also writes the ``inet witness`` table the
file renders, in nft's JSON, for loading at boot (``nft -j -f FILE``) before anything else
runs: a host that reboots is closed until the recorder is up. The file is rewritten only when
its content changes, and the output says which.

``keygen`` creates the trail's Ed25519 signing key where the configuration puts it, if there
is none yet, and the public half beside it; with masks configured, also the key of masking's
tokens beside it. It never replaces a key: a trail is verified against the key that signed
it, and a token is a join key only while its key stays.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance.cli.common import fail, settings
from appliance.config import ConfigError
from appliance.enforce import nft
from appliance.trail import files, keys, maskkey
from appliance.trail.anchor import where
from appliance.trail.db import TrailError


@click.command()
@click.option(
    "--save-table",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the nftables table this configuration renders to FILE, as nft JSON "
    "(checked with nft -c first), for loading at boot; rewritten only when it changes.",
)
@click.pass_context
def check(ctx: click.Context, save_table: Path | None) -> None:
    """Check the configuration; exit 2 with the reason when it is not good."""
    resolved = settings(ctx)
    path = ctx.find_root().obj
    plan = None
    if resolved.transparent or save_table:
        try:
            plan = nft.plan(resolved)
        except ConfigError as exc:
            fail(str(exc), 2)
    names = ", ".join(resolved.backends)
    click.echo(f"witness: configuration {path or 'at the default path'} is good")
    click.echo(f"  backends:  {len(resolved.backends)} ({names})")
    trail = resolved.trail
    click.echo(
        f"  trail:     {trail.path} (key {trail.signing_key}), signed every"
        f" {trail.checkpoint_seconds:g} s or {trail.checkpoint_events} events"
    )
    if trail.anchor is None:
        click.echo("  anchor:    none: checkpoints stay on this host only")
    else:
        click.echo(f"  anchor:    {where(trail.anchor)} (bastion {trail.anchor.bastion or '?'})")
    issuers = ", ".join(i.name for i in resolved.identity.issuers) or "none"
    click.echo(f"  identity:  issuers {issuers}; unbound connections: {resolved.identity.unbound}")
    if plan is None:
        return
    click.echo(
        f"  enforce:   service user {resolved.enforce.service_user} (uid {plan.service_uid}), "
        f"redirect port {plan.redirect_port}"
    )
    if save_table is None:
        return
    ruleset = nft.up_ruleset(plan)
    try:
        nft.check(ruleset)
    except nft.NftError as exc:
        fail(str(exc), 2)
    text = (json.dumps(ruleset, indent=1, sort_keys=True) + "\n").encode()
    try:
        if save_table.exists() and save_table.read_bytes() == text:
            click.echo(f"witness: table in {save_table} is current")
            return
        files.write_atomic(save_table, text, 0o644, sync=True)
    except OSError as exc:
        fail(f"{save_table}: cannot write the table: {exc.strerror}")
    click.echo(f"witness: table saved to {save_table}")


@click.command()
@click.pass_context
def keygen(ctx: click.Context) -> None:
    """Create the trail's signing key if there is none; print where it is and its fingerprint.
    With masks configured, the masking tokens' key too."""
    found = settings(ctx)
    trail = found.trail
    masks = found.policy is not None and bool(found.policy.masks)
    try:
        if trail.signing_key.exists():
            key = keys.load_private(trail.signing_key)
            made = "exists"
        else:
            key = keys.create(trail.signing_key)
            made = "created"
        keys.ensure_public(trail.public_key, key)
        mask_made = maskkey.load_or_create(trail.mask_key)[1] if masks else None
    except TrailError as exc:
        fail(str(exc))
    fingerprint = keys.fingerprint(key.public_key())
    click.echo(f"witness: signing key {trail.signing_key} {made} (fingerprint {fingerprint})")
    click.echo(f"witness: public key {trail.public_key}, for verifiers")
    if mask_made is not None:
        state = "created" if mask_made else "exists"
        click.echo(f"witness: masking key {trail.mask_key} {state} (the tokens' HMAC key)")


def register(group: click.Group) -> None:
    group.add_command(check)
    group.add_command(keygen)
