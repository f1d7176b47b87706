"""The ``inet witness`` nftables table: rendered from the configuration as data, applied atomically.

The ruleset is built as nft's JSON schema (``nft -j``), not as text. Addresses, ports and
uids go in as JSON values, so nothing from the configuration is ever parsed as nft syntax:
there is no quoting to get wrong, and no name that nft would try to resolve through DNS.
The kernel lists a table back in the same schema, so ``witness status`` compares the live
table with what the configuration renders now, structure against structure.

The table has two chains on the output hook, which govern what processes on this host send,
and one on the forward hook:

- ``divert`` (nat, priority -100): TCP to a protected range and port, from any uid but the
  service user's, is redirected to the recorder's port on loopback (127.0.0.1 or ::1). The
  recorder reads the original destination with ``SO_ORIGINAL_DST``.
- ``guard`` (filter, priority 0): the service user's traffic passes; the
  redirected flow passes (nat has already rewritten its destination to loopback, and it is
  accepted by name in case a protected range covers loopback); everything else to a
  protected range that would leave the host is rejected: TCP with a reset, every other
  protocol with ICMP(v6) administratively prohibited. Packets to this host's own addresses
  are not rejected: they reach no backend, and among them are the resets and ICMP errors
  the reject sends back to the agent's socket (when a protected range holds the host's own
  address, rejecting those would turn a refusal into a timeout).

  Then, for users other than root (whose uid-0 sockets include the kernel's own, such as
  neighbour discovery): what they send to link-local addresses (``fe80::/10``,
  ``169.254.0.0/16``; ``enforce.guard_link_local``, on by default) is rejected, since a
  backend host's link-local address lies in no protected range and yet reaches it; and,
  with ``enforce.backend_interfaces``, everything they send out of those interfaces, so
  that a backend host's addresses nobody listed are covered too.
- ``forward`` (filter, priority 0): what the host would route to a protected range for
  someone else (a container on a bridge, a host using the bastion as its gateway) is
  rejected, whoever sent it.

The kernel runs nat chains from the nat core's own hook at the dstnat priority (-100), so
``guard`` always sees a redirected packet with its loopback destination; ``divert`` states
-100 to say so (tests/lab/test_nft_enforce.py shows the redirected flow getting through).

Packets the kernel sends without a socket (a TIME_WAIT ack, a reset) to a backend have no
uid; they fall through to the reject, which costs nothing but a connection that was over
anyway.

``up`` sends one ``nft -f`` input that adds, deletes and re-creates the table, after checking
it with ``nft -c``: one transaction, so the table is replaced whole or not at all, and
applying the same configuration twice leaves the same single table. ``down`` adds and deletes
the table in one transaction, so it removes exactly that table and is not an error when
there is none. Every call can run inside a network namespace (``netns``), which is how the
lab and the tests use it without touching the host's ruleset.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from appliance.config import ConfigError, Network, Settings

FAMILY = "inet"
TABLE = "witness"
DIVERT_PRIORITY = -100  # NF_IP_PRI_NAT_DST: before the filter chain sees the packet
GUARD_PRIORITY = 0  # NF_IP_PRI_FILTER
_TIMEOUT = 15.0

Json = dict[str, Any]


class NftError(Exception):
    """nft is missing, or refused a ruleset; the message carries what nft said."""


@dataclass(frozen=True, slots=True)
class Protected:
    """One backend's protected ranges and the ports on them that are diverted."""

    name: str
    networks: tuple[Network, ...]
    ports: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the table is rendered from, resolved (the service user is a uid here)."""

    service_uid: int
    redirect_port: int
    protected: tuple[Protected, ...]
    link_local: bool = True
    interfaces: tuple[str, ...] = ()

    def networks(self, version: int) -> tuple[Network, ...]:
        """Every protected range of one IP version, overlaps merged."""
        found = [n for p in self.protected for n in p.networks if n.version == version]
        return _collapse(found)


def plan(settings: Settings) -> Plan:
    """The plan for ``settings``; ConfigError if the service user does not exist here."""
    user = settings.enforce.service_user
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ConfigError(
            f"enforce.service_user: no user named {user!r} on this host "
            "(create it, or name the user the recorder runs as)"
        ) from None
    return Plan(
        service_uid=uid,
        redirect_port=settings.enforce.redirect_port,
        protected=tuple(
            Protected(
                b.name, _collapse(b.protected_networks), tuple(sorted(set(b.protected_ports)))
            )
            for b in settings.backends.values()
        ),
        link_local=settings.enforce.guard_link_local,
        interfaces=tuple(sorted(set(settings.enforce.backend_interfaces))),
    )


# --- rendering: pure, no nft needed ----------------------------------------------------------


def _collapse(networks: Iterable[Network]) -> tuple[Network, ...]:
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))


def _element(network: Network) -> Any:
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


def _values(items: list[Any]) -> Any:
    """One value as itself, several as an anonymous set: the form nft lists them back in."""
    return items[0] if len(items) == 1 else {"set": items}


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _skuid() -> Json:
    return {"meta": {"key": "skuid"}}


def _daddr(version: int) -> Json:
    return {"payload": {"protocol": "ip" if version == 4 else "ip6", "field": "daddr"}}


def _dport() -> Json:
    return {"payload": {"protocol": "tcp", "field": "dport"}}


def _rule(chain: str, *expr: Json) -> Json:
    return {"rule": {"family": FAMILY, "table": TABLE, "chain": chain, "expr": list(expr)}}


def _chain(name: str, kind: str, priority: int, hook: str = "output") -> Json:
    return {
        "chain": {
            "family": FAMILY,
            "table": TABLE,
            "name": name,
            "type": kind,
            "hook": hook,
            "prio": priority,
            "policy": "accept",
        }
    }


def table(p: Plan) -> list[Json]:
    """The table, its chains and its rules, in order, as nft's JSON objects."""
    accept: Json = {"accept": None}
    divert = []
    for backend in p.protected:
        ports = _values(list(backend.ports))
        for version in (4, 6):
            nets = [_element(n) for n in backend.networks if n.version == version]
            if nets:
                divert.append(
                    _rule(
                        "divert",
                        _match(_skuid(), p.service_uid, "!="),
                        _match(_daddr(version), _values(nets)),
                        _match(_dport(), ports),
                        {"redirect": {"port": p.redirect_port}},
                    )
                )
    guard = [_rule("guard", _match(_skuid(), p.service_uid), accept)]
    for version, loopback in ((4, "127.0.0.1"), (6, "::1")):
        guard.append(
            _rule(
                "guard",
                _match({"ct": {"key": "status"}}, "dnat", "in"),
                _match(_daddr(version), loopback),
                _match(_dport(), p.redirect_port),
                accept,
            )
        )
    # Only what would leave the host: a protected range may hold this host's own address (the
    # bastion's subnet), and the resets and ICMP errors these rules send to a local socket
    # pass through this chain too; rejecting them in turn would turn a refusal into a silent
    # timeout.
    leaving = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local", "!=")
    for version in (4, 6):
        nets = [_element(n) for n in p.networks(version)]
        if nets:
            guard += _rejects(_match(_daddr(version), _values(nets)), leaving)
    # Beyond the protected ranges, for users other than root: a socket of uid 0 (root's
    # tools, and the kernel's own, such as neighbour discovery) must keep working, and a
    # packet the kernel sends without a socket matches no skuid at all.
    user = _match(_skuid(), 0, "!=")
    if p.link_local:
        for version, network in ((6, "fe80::/10"), (4, "169.254.0.0/16")):
            link_local = _element(ipaddress.ip_network(network))
            guard += _rejects(_match(_daddr(version), link_local), user, leaving)
    if p.interfaces:
        out = _match({"meta": {"key": "oifname"}}, _values(list(p.interfaces)))
        guard += _rejects(out, user)
    # What this host would route to a protected range for another (a container on a bridge,
    # a host that uses the bastion as its gateway) is no agent's connection made here: it is
    # rejected, whoever sent it. Diverting it is gateway mode's, not built.
    forward: list[Json] = []
    for version in (4, 6):
        nets = [_element(n) for n in p.networks(version)]
        if nets:
            forward += _rejects(_match(_daddr(version), _values(nets)), chain="forward")
    return [
        {"table": {"family": FAMILY, "name": TABLE}},
        _chain("divert", "nat", DIVERT_PRIORITY),
        _chain("guard", "filter", GUARD_PRIORITY),
        _chain("forward", "filter", GUARD_PRIORITY, hook="forward"),
        *divert,
        *guard,
        *forward,
    ]


def _rejects(*conditions: Json, chain: str = "guard") -> list[Json]:
    """Two rules for what matches ``conditions``: TCP is reset, the rest gets ICMP(v6)
    administratively prohibited."""
    tcp = _match({"meta": {"key": "l4proto"}}, "tcp")
    return [
        _rule(chain, *conditions, tcp, {"reject": {"type": "tcp reset"}}),
        _rule(chain, *conditions, {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}),
    ]


def _the_table() -> Json:
    return {"table": {"family": FAMILY, "name": TABLE}}


def up_ruleset(p: Plan) -> Json:
    """One transaction: make sure the table exists, delete it, create it anew with its rules."""
    commands: list[Json] = [{"add": _the_table()}, {"delete": _the_table()}]
    commands += [{"add": obj} for obj in table(p)]
    return {"nftables": commands}


def down_ruleset() -> Json:
    """One transaction that removes the table whether or not it exists, and nothing else."""
    return {"nftables": [{"add": _the_table()}, {"delete": _the_table()}]}


def _canonical(value: Any) -> Any:
    """Sets compared as sets: elements sorted, a one-element set as its element."""
    if isinstance(value, dict):
        if set(value) == {"set"} and isinstance(value["set"], list):
            items = sorted((_canonical(v) for v in value["set"]), key=json.dumps)
            return items[0] if len(items) == 1 else {"set": items}
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def normalize(listing: Iterable[Json]) -> list[Json]:
    """Objects of a listing without what the kernel adds (handles, metainfo), sets sorted."""
    out = []
    for obj in listing:
        if "metainfo" in obj:
            continue
        ((kind, body),) = obj.items()
        body = {k: v for k, v in body.items() if k != "handle"}
        out.append({kind: _canonical(body)})
    return out


# --- running nft --------------------------------------------------------------------------------


def _nft(
    args: list[str], netns: str | None, data: str | None = None
) -> subprocess.CompletedProcess[str]:
    nft = shutil.which("nft", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if nft is None:
        raise NftError("nft is not installed (Debian: apt-get install nftables)")
    command = [nft, *args]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    try:
        return subprocess.run(
            command, input=data, capture_output=True, text=True, timeout=_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise NftError(f"{' '.join(command)}: no answer after {_TIMEOUT:.0f} s") from None


def _load(ruleset: Json, netns: str | None, check_only: bool) -> None:
    args = ["-c", "-j", "-f", "-"] if check_only else ["-j", "-f", "-"]
    done = _nft(args, netns, json.dumps(ruleset))
    if done.returncode != 0:
        what = "rejected the ruleset" if check_only else "could not apply the ruleset"
        raise NftError(f"nft {what}: {done.stderr.strip() or f'exit status {done.returncode}'}")


def check(ruleset: Json, netns: str | None = None) -> None:
    """Have ``nft -c`` check ``ruleset`` without applying it (NftError with nft's reason)."""
    _load(ruleset, netns, check_only=True)


def up(p: Plan, netns: str | None = None) -> None:
    """Check the rendered table with ``nft -c``, then replace the live one in one transaction."""
    ruleset = up_ruleset(p)
    _load(ruleset, netns, check_only=True)
    _load(ruleset, netns, check_only=False)


def down(netns: str | None = None) -> None:
    """Remove the ``inet witness`` table, if there is one; nothing else is touched."""
    _load(down_ruleset(), netns, check_only=False)


def live(netns: str | None = None) -> list[Json] | None:
    """The live table as listed by the kernel (normalized), or None when there is none."""
    done = _nft(["-j", "list", "table", FAMILY, TABLE], netns)
    if done.returncode != 0:
        if "No such file or directory" in done.stderr:
            return None
        raise NftError(f"nft could not list table {FAMILY} {TABLE}: {done.stderr.strip()}")
    try:
        listing = json.loads(done.stdout)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise NftError(
            f"nft listed table {FAMILY} {TABLE} in a form not understood: {exc}"
        ) from None
    return normalize(listing)


def matches(p: Plan, current: list[Json] | None) -> bool:
    """Whether ``current`` (from :func:`live`) is exactly the table ``p`` renders."""
    return current is not None and current == normalize(table(p))
