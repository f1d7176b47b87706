"""One TOML file to typed, validated settings; every error names the key and the reason."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from appliance.policy.redact import parse_functions
from appliance.policy.rules import PolicyError, PolicySettings
from appliance.policy.rules import check_backends as _check_policy_backends
from appliance.policy.rules import parse as _parse_policy

DEFAULT_CONFIG = Path("/etc/witness/witness.toml")
PROTOCOLS = ("postgresql",)
UNBOUND = ("refuse", "allow")
# Asymmetric signatures only: HS* would make the verifier's key a signing key, and "none" is
# no signature at all.
ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
LOGIN_TOKENS = ("access_token", "id_token")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DURABILITY = ("process", "power")
EXPORT_FORMATS = ("jsonl", "ocsf", "cef", "pcap")
SYSLOG_FORMATS = ("cef",)
TRANSPORTS = ("udp", "tcp")
FRAMINGS = ("rfc5424", "rfc3164")
_EXPORT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_INTERFACE = re.compile(r"[^/:\s]{1,15}")


class ConfigError(Exception):
    """The configuration is invalid; the message names the key, the value and what was expected."""


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    address: str
    port: int
    protocol: str = "postgresql"
    protect: tuple[Network, ...] = ()
    """Destination ranges no one but the service user may reach directly; empty: the address."""
    protect_ports: tuple[int, ...] = ()
    """Ports on those ranges that are diverted to the recorder; empty: the backend's port."""
    allow_identities: tuple[str, ...] = ()
    """Connect-time policy: identities (email or subject) that may connect."""
    allow_groups: tuple[str, ...] = ()
    """Connect-time policy: groups whose members may connect. With neither list, any bound
    identity may; with either, only those they name."""
    end_at_expiry: bool = False
    """End live sessions when their identity's binding expires (new ones are always refused)."""
    connect_timeout: float = 10.0
    """Seconds the recorder waits for the backend to accept a connection before refusing."""
    max_connections_per_identity: int = 20
    """Sessions one identity may hold open to this backend at once."""
    max_connections_per_uid: int = 40
    """Sessions one Unix user (whatever its identities) may hold open to this backend."""
    max_new_connections_per_second: float = 20.0
    """New sessions one identity may open per second (a burst of one second's worth)."""
    catalog_user: str | None = None
    """The role the recorder reads the catalog as, to resolve masked columns."""
    catalog_password_file: Path | None = None
    """A file holding that role's password (its first line), if the backend asks for one."""

    @property
    def restricted(self) -> bool:
        return bool(self.allow_identities or self.allow_groups)

    @property
    def protected_networks(self) -> tuple[Network, ...]:
        """``protect``, or the backend's own address as a /32 or /128."""
        return self.protect or (ipaddress.ip_network(self.address),)

    @property
    def protected_ports(self) -> tuple[int, ...]:
        """``protect_ports``, or the backend's port."""
        return self.protect_ports or (self.port,)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "protocol": self.protocol,
        }


@dataclass(frozen=True, slots=True)
class Listener:
    address: str
    port: int
    backend: str


@dataclass(frozen=True, slots=True)
class AnchorSettings:
    """Where checkpoints are published off the host: a PostgreSQL table that this bastion's
    role may only add to (``witness anchor schema`` prints the SQL that makes it).

    ``dsn`` is a libpq connection string or URI, ``passfile`` a libpq password file for it.
    ``bastion`` is the name the anchor records this bastion's checkpoints under, which is
    the role the DSN logs in as (by default, the DSN's user): verify expects it on them.
    ``timeout`` bounds connecting and each statement; a failed publication is retried after
    1, 2, 4... seconds, at most ``retry_max`` apart.
    """

    dsn: str
    passfile: Path | None = None
    bastion: str | None = None
    timeout: float = 5.0
    retry_max: float = 60.0


@dataclass(frozen=True, slots=True)
class TrailSettings:
    """Where the trail and its signing key live, and how hard each commit tries to be durable.

    ``durability`` is ``process`` (a commit survives the recorder being killed) or ``power``
    (it also survives the host losing power: every commit is fsynced).
    """

    path: Path
    signing_key: Path
    durability: str = "process"
    checkpoint_events: int = 1_000
    checkpoint_seconds: float = 1.0
    anchor: AnchorSettings | None = None
    central: AnchorSettings | None = None
    """The central store every event is shipped to (``[trail.central]``): connected to as
    the anchor is, by a role that may only add events."""
    segment_bytes: int = 256 << 20
    """Past this size (at a checkpoint) the active file is sealed, and a new one begins; 0
    never seals. At most ``MAX_SEALED`` sealed segments wait: past that, the active file
    grows until one is retired."""
    retire: str | None = None
    """Which copy off the host lets a sealed segment be deleted once it holds the segment and
    has verified it: ``central`` or ``export:NAME``; None keeps every segment."""
    examine_commits: int = 1000
    """Commits between two checks that the trail's files are whole (each also copies the WAL
    into the database), besides the check at every timed checkpoint: about the WAL size at
    which SQLite would copy it on its own (1,000 pages). Not in the configuration file."""

    @property
    def public_key(self) -> Path:
        return self.signing_key.with_name(self.signing_key.name + ".pub")

    @property
    def checkpoint_file(self) -> Path:
        """The newest signed checkpoint, kept beside the key so a cut tail can be noticed."""
        return self.signing_key.with_name(self.signing_key.name + ".checkpoint")

    @property
    def mask_key(self) -> Path:
        """The key of masking's tokens (HMAC-SHA256), beside the signing key."""
        return self.signing_key.with_name(self.signing_key.name + ".mask")

    @property
    def anchor_state(self) -> Path:
        """What has been published to the anchor, and the last failure, beside the trail."""
        return self.path.with_name(self.path.name + ".anchor")

    @property
    def central_state(self) -> Path:
        """What has been shipped to the central store, and the last failure."""
        return self.path.with_name(self.path.name + ".central")

    def export_state(self, name: str) -> Path:
        """How far the continuous export ``name`` has come, beside the trail."""
        return self.path.with_name(f"{self.path.name}.export-{name}")

    @classmethod
    def beside(cls, trail: Path, **settings: Any) -> TrailSettings:
        """Settings for a trail given on the command line: the key lives next to it."""
        return cls(path=trail, signing_key=trail.with_name(trail.name + ".key"), **settings)


@dataclass(frozen=True, slots=True)
class Capture:
    """What is captured of each command: rows (``rows == 0`` turns capture off), and which
    functions' arguments are secrets beyond the built-in ones (``redact_functions``: name ->
    1-based argument positions; secrets are never recorded). With ``wire``, each session's
    raw messages too, up to ``wire_bytes`` a session (where they cannot hold a secret or a
    masked value: see :mod:`appliance.protocols.postgres.wire`)."""

    rows: int = 0
    bytes: int = 65536
    redact_functions: tuple[tuple[str, tuple[int, ...]], ...] = ()
    wire: bool = False
    wire_bytes: int = 16 << 20


@dataclass(frozen=True, slots=True)
class ExportSettings:
    """A continuous export (``[[export]]``): the trail's events, as they are committed, in
    ``format``, appended to ``file`` or sent to the syslog server at ``syslog`` (HOST:PORT,
    over ``transport``, framed as ``framing``); only those of ``identities`` and
    ``backends`` when they are given (the trail's own events are always taken)."""

    name: str
    format: str
    file: Path | None = None
    syslog: str | None = None
    transport: str = "udp"
    framing: str = "rfc5424"
    identities: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()

    @property
    def destination(self) -> str:
        return str(self.file) if self.file is not None else f"syslog {self.syslog}"


@dataclass(frozen=True, slots=True)
class EnforceSettings:
    """Host enforcement: who is exempt from the diversion, and where diverted traffic goes.

    ``service_user`` is the Unix user the recorder runs as: its traffic to protected backends
    passes, everyone else's is redirected to ``redirect_port`` on loopback or rejected.
    """

    service_user: str = "witness"
    redirect_port: int = 15432
    guard_link_local: bool = True
    """Reject what users other than root and the service user send to link-local addresses
    (fe80::/10, 169.254.0.0/16): a backend host's link-local address is not in any
    protected range, yet reaches it."""
    backend_interfaces: tuple[str, ...] = ()
    """Interfaces that face only the backends: everything users other than root and the
    service user send out of them is rejected, whatever its address."""


@dataclass(frozen=True, slots=True)
class IssuerSettings:
    """One trusted OIDC issuer: where its keys are, and how its tokens are read.

    ``issuer`` is the exact ``iss`` its tokens carry, and the discovery document must say the
    same. ``audience`` lists the ``aud`` values accepted. ``client_id`` (a public client
    allowed the device authorization grant) is what ``witness login`` signs in with, passing
    ``login_params`` along (for example a ``resource`` or ``audience``), and it binds the
    ``login_token`` the token endpoint returns.
    """

    name: str
    issuer: str
    audience: tuple[str, ...]
    discovery: str = ""
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    client_id: str | None = None
    login_params: tuple[tuple[str, str], ...] = ()
    login_scopes: tuple[str, ...] = ("openid", "email", "profile")
    login_token: str = "access_token"  # noqa: S105  (which token, not a token)
    subject_claim: str = "sub"
    email_claim: str = "email"
    name_claim: str = "name"
    groups_claim: str = "groups"
    timeout: float = 5.0
    """Seconds allowed for each fetch from the issuer (discovery, keys, device flow)."""
    leeway: float = 30.0
    """Seconds of clock difference tolerated on exp, nbf and iat."""
    allow_clients: tuple[str, ...] = ()
    """The clients whose tokens are accepted, by ``azp`` or else ``client_id``; empty: any.
    For an issuer whose other clients can get tokens for the same audience."""

    @property
    def discovery_url(self) -> str:
        return self.discovery or self.issuer.rstrip("/") + "/.well-known/openid-configuration"


@dataclass(frozen=True, slots=True)
class StaticBinding:
    """A Unix user bound to an identity by configuration: for service accounts, no expiry."""

    user: str
    issuer: str
    subject: str
    email: str | None = None
    name: str | None = None
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    """Who may be bound, how, and what a connection with no binding gets.

    ``unbound`` is ``refuse`` (SQLSTATE 28000, telling the user to run ``witness login``) or
    ``allow`` (recorded with no identity). The control socket is where ``witness login``,
    ``run``, ``whoami`` and ``logout`` reach the recorder; the warden socket is where the
    recorder asks the root warden to place a ``witness run`` in a cgroup of its own.
    """

    issuers: tuple[IssuerSettings, ...] = ()
    bindings: tuple[StaticBinding, ...] = ()
    unbound: str = "refuse"
    control_socket: Path = Path("/run/witness/control.sock")
    warden_socket: Path = Path("/run/witness-warden/warden.sock")
    state: Path | None = None
    """Where live bindings are kept across restarts; default: bindings.json beside the trail."""


@dataclass(frozen=True, slots=True)
class ApprovalSettings:
    """Who may approve a held statement, and how a hold ends (``[approvals]``).

    A hold needs ``required`` approvals from identities in ``groups``, none of them the
    identity that sent the statement; any one of them may deny it. It is denied when
    ``timeout_seconds`` pass without a decision. An approver may grant a window of at most
    ``max_window_minutes`` (0: none), during which the same statement shape from the same
    identity on the same backend and database goes on without another hold. ``webhook`` is
    told of each new hold (a Slack-compatible JSON POST), tried ``webhook_attempts`` times.
    One identity may have at most ``max_pending`` statements waiting at once: past that, a
    statement a rule would hold is blocked, so that no agent can bury the approvers.
    """

    groups: tuple[str, ...]
    required: int = 1
    max_pending: int = 20
    timeout_seconds: float = 300.0
    max_window_minutes: int = 0
    webhook: str | None = None
    webhook_attempts: int = 5
    webhook_timeout_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class Settings:
    listeners: tuple[Listener, ...]
    backends: dict[str, Backend]
    trail: TrailSettings
    capture: Capture = field(default_factory=Capture)
    enforce: EnforceSettings = field(default_factory=EnforceSettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    policy: PolicySettings | None = None
    """The guardrails: the ``[policy]`` table, or the policy file it names. None without
    one: commands are recorded, and none is decided (nothing is blocked)."""
    approvals: ApprovalSettings | None = None
    """Who approves the statements a ``hold`` rule holds; required by such a rule."""
    max_message_bytes: int = 64 * 1024 * 1024
    exports: tuple[ExportSettings, ...] = ()
    """Continuous exports of the trail, shipped off the recorder's path."""
    transparent: bool = False
    """The file has an ``[enforce]`` table: ``witness serve`` then also accepts the connections
    that ``witness up`` diverts, on ``enforce.redirect_port`` at 127.0.0.1 and ::1, and must run
    as ``enforce.service_user``. Without the table, ``enforce`` holds the defaults that
    ``witness up`` would use, and the recorder has no transparent listener."""


# --- small validators: each takes the dotted key so the error can name it -------------------


def _table(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table, got {type(value).__name__} {value!r}")
    return value


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _int(value: Any, key: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{key}: expected an integer from {lo} to {hi}, got {value!r}")
    return value


def _number(value: Any, key: str, lo: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < lo:
        raise ConfigError(f"{key}: expected a number of at least {lo}, got {value!r}")
    return float(value)


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _address(value: Any, key: str) -> str:
    text = _str(value, key)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"{key}: expected an IP address, got {text!r}") from None
    return text


def _network(value: Any, key: str) -> Network:
    text = _str(value, key)
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        raise ConfigError(
            f"{key}: expected a CIDR such as 10.0.0.0/24 or fd00::/64, got {text!r} ({exc})"
        ) from None


def _list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a non-empty list, got {value!r}")
    return value


def _strings(value: Any, key: str) -> tuple[str, ...]:
    return tuple(_str(item, f"{key}[{i}]") for i, item in enumerate(_list(value, key)))


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _url(value: Any, key: str) -> str:
    text = _str(value, key)
    url = urlsplit(text)
    if url.scheme not in ("https", "http") or not url.hostname:
        raise ConfigError(f"{key}: expected an https:// (or http://) URL, got {text!r}")
    return text


def _no_unknown(table: dict[str, Any], key: str, known: set[str]) -> None:
    for name in table:
        if name not in known:
            where = f"{key}.{name}" if key else name
            raise ConfigError(f"{where}: unknown key (expected one of {', '.join(sorted(known))})")


def parse_hostport(text: str, key: str) -> tuple[str, int]:
    """``127.0.0.1:6432`` or ``[::1]:6432`` to (address, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ConfigError(f"{key}: expected ADDRESS:PORT, got {text!r}")
    host = host.strip("[]")
    if not port.isdigit():
        raise ConfigError(f"{key}: expected ADDRESS:PORT, got {text!r}")
    return _address(host, key), _int(int(port), key, 1, 65535)


def parse_backend_url(text: str, key: str = "--backend") -> Backend:
    """``postgresql://127.0.0.1:5432`` to a Backend named ``default``."""
    url = urlsplit(text)
    if url.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"{key}: expected postgresql://ADDRESS:PORT, got {text!r}")
    if not url.hostname:
        raise ConfigError(f"{key}: expected postgresql://ADDRESS:PORT, got {text!r}")
    try:
        port = url.port or 5432
    except ValueError:
        raise ConfigError(f"{key}: the port in {text!r} is not a number from 1 to 65535") from None
    return Backend("default", _address(url.hostname, key), port, "postgresql")


# --- the file -------------------------------------------------------------------------------


def _backend(raw: Any, key: str, base: Path) -> Backend:
    table = _table(raw, key)
    _no_unknown(
        table,
        key,
        {
            "name",
            "address",
            "port",
            "protocol",
            "protect",
            "protect_ports",
            "allow_identities",
            "allow_groups",
            "end_sessions_at_expiry",
            "connect_timeout_seconds",
            "max_connections_per_identity",
            "max_connections_per_uid",
            "max_new_connections_per_second",
            "catalog_user",
            "catalog_password_file",
        },
    )
    protect: tuple[Network, ...] = ()
    if "protect" in table:
        protect = tuple(
            _network(item, f"{key}.protect[{i}]")
            for i, item in enumerate(_list(table["protect"], f"{key}.protect"))
        )
    ports: tuple[int, ...] = ()
    if "protect_ports" in table:
        ports = tuple(
            _int(item, f"{key}.protect_ports[{i}]", 1, 65535)
            for i, item in enumerate(_list(table["protect_ports"], f"{key}.protect_ports"))
        )
    return Backend(
        name=_str(table.get("name"), f"{key}.name"),
        address=_address(table.get("address"), f"{key}.address"),
        port=_int(table.get("port"), f"{key}.port", 1, 65535),
        protocol=_choice(table.get("protocol", "postgresql"), f"{key}.protocol", PROTOCOLS),
        protect=protect,
        protect_ports=ports,
        allow_identities=_strings(table["allow_identities"], f"{key}.allow_identities")
        if "allow_identities" in table
        else (),
        allow_groups=_strings(table["allow_groups"], f"{key}.allow_groups")
        if "allow_groups" in table
        else (),
        end_at_expiry=_bool(
            table.get("end_sessions_at_expiry", False), f"{key}.end_sessions_at_expiry"
        ),
        connect_timeout=_number(
            table.get("connect_timeout_seconds", 10.0), f"{key}.connect_timeout_seconds", 0.1
        ),
        max_connections_per_identity=_int(
            table.get("max_connections_per_identity", 20),
            f"{key}.max_connections_per_identity",
            1,
            1_000_000,
        ),
        max_connections_per_uid=_int(
            table.get("max_connections_per_uid", 40), f"{key}.max_connections_per_uid", 1, 1_000_000
        ),
        max_new_connections_per_second=_number(
            table.get("max_new_connections_per_second", 20.0),
            f"{key}.max_new_connections_per_second",
            1.0,
        ),
        catalog_user=_str(table["catalog_user"], f"{key}.catalog_user")
        if "catalog_user" in table
        else None,
        catalog_password_file=base
        / _str(table["catalog_password_file"], f"{key}.catalog_password_file")
        if "catalog_password_file" in table
        else None,
    )


def _listener(raw: Any, key: str, backends: dict[str, Backend]) -> Listener:
    table = _table(raw, key)
    _no_unknown(table, key, {"listen", "backend"})
    address, port = parse_hostport(_str(table.get("listen"), f"{key}.listen"), f"{key}.listen")
    backend = _str(table.get("backend"), f"{key}.backend")
    if backend not in backends:
        known = ", ".join(sorted(backends)) or "none are defined"
        raise ConfigError(f"{key}.backend: no backend is named {backend!r} ({known})")
    return Listener(address, port, backend)


def _dsn(value: Any, key: str) -> dict[str, str]:
    """The parameters of a libpq connection string; the error never repeats a password."""
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"{key}: expected a PostgreSQL connection string, got {type(value).__name__}"
        )
    from psycopg import ProgrammingError  # noqa: PLC0415 (only for files that name an anchor)
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

    try:
        params = conninfo_to_dict(value)
    except ProgrammingError as exc:
        raise ConfigError(
            f"{key}: expected a PostgreSQL connection string such as"
            f" 'host=anchor.example.com dbname=witness user=bastion1' or"
            f" 'postgresql://bastion1@anchor.example.com/witness' ({exc})"
        ) from None
    return {k: str(v) for k, v in params.items() if v is not None}


def _anchor(raw: Any, base: Path, key: str = "trail.anchor") -> AnchorSettings:
    table = _table(raw, key)
    _no_unknown(table, key, {"dsn", "passfile", "bastion", "timeout_seconds", "retry_max_seconds"})
    dsn = table.get("dsn")
    params = _dsn(dsn, f"{key}.dsn")
    bastion = table.get("bastion")
    return AnchorSettings(
        dsn=str(dsn),
        passfile=base / _str(table["passfile"], f"{key}.passfile") if "passfile" in table else None,
        bastion=_str(bastion, f"{key}.bastion") if bastion is not None else params.get("user"),
        timeout=_number(table.get("timeout_seconds", 5.0), f"{key}.timeout_seconds", 0.1),
        retry_max=_number(table.get("retry_max_seconds", 60.0), f"{key}.retry_max_seconds", 1),
    )


def _trail(raw: Any, base: Path) -> TrailSettings:
    table = _table(raw, "trail")
    _no_unknown(
        table,
        "trail",
        {
            "path",
            "signing_key",
            "durability",
            "checkpoint_events",
            "checkpoint_seconds",
            "anchor",
            "central",
            "segment_mb",
            "retire",
        },
    )
    path = base / _str(table.get("path", "/var/lib/witness/trail.db"), "trail.path")
    key = table.get("signing_key")
    defaults = TrailSettings.beside(path)
    return TrailSettings(
        path=path,
        signing_key=base / _str(key, "trail.signing_key")
        if key is not None
        else defaults.signing_key,
        durability=_choice(table.get("durability", "process"), "trail.durability", DURABILITY),
        checkpoint_events=_int(
            table.get("checkpoint_events", defaults.checkpoint_events),
            "trail.checkpoint_events",
            1,
            10_000_000,
        ),
        checkpoint_seconds=_number(
            table.get("checkpoint_seconds", defaults.checkpoint_seconds),
            "trail.checkpoint_seconds",
            0.1,
        ),
        anchor=_anchor(table["anchor"], base) if "anchor" in table else None,
        central=_anchor(table["central"], base, "trail.central") if "central" in table else None,
        segment_bytes=_int(table.get("segment_mb", 256), "trail.segment_mb", 0, 1 << 20) << 20,
        retire=_retire(table),
    )


def _retire(table: dict[str, Any]) -> str | None:
    """``trail.retire``: by default the central store when there is one, else nothing."""
    value = table.get("retire", "central" if "central" in table else "never")
    value = _str(value, "trail.retire")
    if value == "never":
        return None
    if value == "central":
        if "central" not in table:
            raise ConfigError(
                "trail.retire: 'central' needs [trail.central], the store that must hold and"
                " verify each sealed segment before it is deleted"
            )
        return value
    if value.startswith("export:") and _EXPORT_NAME.fullmatch(value[7:]):
        return value  # checked against the exports once they are read
    raise ConfigError(f"trail.retire: expected 'central', 'export:NAME' or 'never', got {value!r}")


def _capture(raw: Any) -> Capture:
    table = _table(raw, "capture")
    _no_unknown(table, "capture", {"rows", "bytes", "redact_functions", "wire", "wire_bytes"})
    try:
        functions = parse_functions(table.get("redact_functions", {}), "capture.redact_functions")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Capture(
        rows=_int(table.get("rows", 0), "capture.rows", 0, 1_000_000),
        bytes=_int(table.get("bytes", 65536), "capture.bytes", 0, 1 << 30),
        redact_functions=tuple(sorted(functions.items())),
        wire=_bool(table.get("wire", False), "capture.wire"),
        wire_bytes=_int(table.get("wire_bytes", 16 << 20), "capture.wire_bytes", 1024, 1 << 30),
    )


def host_port(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as a host and a port; ValueError if it is not."""
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _export(raw: Any, key: str, base: Path, backends: dict[str, Backend]) -> ExportSettings:
    table = _table(raw, key)
    _no_unknown(
        table,
        key,
        {"name", "format", "file", "syslog", "transport", "framing", "identities", "backends"},
    )
    name = _str(table.get("name"), f"{key}.name")
    if not _EXPORT_NAME.fullmatch(name):
        raise ConfigError(
            f"{key}.name: expected 1 to 64 letters, digits, '-' or '_' (it names the export's"
            f" state file beside the trail), got {name!r}"
        )
    fmt = _choice(table.get("format"), f"{key}.format", EXPORT_FORMATS)
    if ("file" in table) == ("syslog" in table):
        raise ConfigError(f"{key}: expected either file or syslog (one destination)")
    syslog = None
    if "syslog" in table:
        syslog = _str(table["syslog"], f"{key}.syslog")
        if fmt not in SYSLOG_FORMATS:
            raise ConfigError(
                f"{key}.syslog: a {fmt} export goes to a file; syslog takes"
                f" {', '.join(SYSLOG_FORMATS)}"
            )
        try:
            host_port(syslog)
        except ValueError as exc:
            raise ConfigError(f"{key}.syslog: {exc}") from None
    names = _strings(table["backends"], f"{key}.backends") if "backends" in table else ()
    for i, backend in enumerate(names):
        if backend not in backends:
            raise ConfigError(f"{key}.backends[{i}]: no backend is named {backend!r}")
    return ExportSettings(
        name=name,
        format=fmt,
        file=base / _str(table["file"], f"{key}.file") if "file" in table else None,
        syslog=syslog,
        transport=_choice(table.get("transport", "udp"), f"{key}.transport", TRANSPORTS),
        framing=_choice(table.get("framing", "rfc5424"), f"{key}.framing", FRAMINGS),
        identities=_strings(table["identities"], f"{key}.identities")
        if "identities" in table
        else (),
        backends=names,
    )


def _exports(raw: Any, base: Path, backends: dict[str, Backend]) -> tuple[ExportSettings, ...]:
    if not isinstance(raw, list):
        raise ConfigError("export: expected [[export]] tables")
    found: list[ExportSettings] = []
    for i, item in enumerate(raw):
        export = _export(item, f"export[{i}]", base, backends)
        if any(e.name == export.name for e in found):
            raise ConfigError(f"export[{i}].name: {export.name!r} is defined twice")
        found.append(export)
    return tuple(found)


def _check_retire(trail: TrailSettings, exports: tuple[ExportSettings, ...]) -> None:
    """An export that retires segments must be able to show it holds every event: a JSONL
    file of the whole trail, which can be read back and checked."""
    if trail.retire is None or not trail.retire.startswith("export:"):
        return
    name = trail.retire[7:]
    export = next((e for e in exports if e.name == name), None)
    if export is None:
        raise ConfigError(f"trail.retire: no [[export]] is named {name!r}")
    if export.file is None or export.format != "jsonl" or export.identities or export.backends:
        raise ConfigError(
            f"trail.retire: export {name!r} cannot retire segments: only a jsonl export to a"
            " file, of every event (no identities or backends), can be read back and verified"
        )


def _enforce(raw: Any) -> EnforceSettings:
    table = _table(raw, "enforce")
    _no_unknown(
        table,
        "enforce",
        {"service_user", "redirect_port", "guard_link_local", "backend_interfaces"},
    )
    interfaces: tuple[str, ...] = ()
    if "backend_interfaces" in table:
        interfaces = _strings(table["backend_interfaces"], "enforce.backend_interfaces")
        for i, name in enumerate(interfaces):
            if not _INTERFACE.fullmatch(name):
                raise ConfigError(
                    f"enforce.backend_interfaces[{i}]: expected an interface name (1 to 15"
                    f" characters, no '/', ':' or whitespace), got {name!r}"
                )
    return EnforceSettings(
        service_user=_str(table.get("service_user", "witness"), "enforce.service_user"),
        redirect_port=_int(table.get("redirect_port", 15432), "enforce.redirect_port", 1, 65535),
        guard_link_local=_bool(table.get("guard_link_local", True), "enforce.guard_link_local"),
        backend_interfaces=interfaces,
    )


_ISSUER_KEYS = {
    "name",
    "issuer",
    "discovery",
    "audience",
    "algorithms",
    "client_id",
    "login_params",
    "login_scopes",
    "login_token",
    "claims",
    "timeout_seconds",
    "leeway_seconds",
    "allow_clients",
}
_CLAIMS = ("subject", "email", "name", "groups")


def _issuer(raw: Any, key: str) -> IssuerSettings:
    table = _table(raw, key)
    _no_unknown(table, key, _ISSUER_KEYS)
    audience = table.get("audience")
    algorithms = _strings(table.get("algorithms", ["RS256", "ES256"]), f"{key}.algorithms")
    for i, alg in enumerate(algorithms):
        if alg not in ALGORITHMS:
            raise ConfigError(
                f"{key}.algorithms[{i}]: {alg!r} is not allowed (expected asymmetric ones: "
                f"{', '.join(ALGORITHMS)}; 'none' and HS* are never accepted)"
            )
    params = _table(table.get("login_params", {}), f"{key}.login_params")
    claims = _table(table.get("claims", {}), f"{key}.claims")
    _no_unknown(claims, f"{key}.claims", set(_CLAIMS))
    claim = {
        name: _str(claims.get(name, default), f"{key}.claims.{name}")
        for name, default in zip(_CLAIMS, ("sub", "email", "name", "groups"), strict=True)
    }
    client_id = _str(table["client_id"], f"{key}.client_id") if "client_id" in table else None
    allow_clients = (
        _strings(table["allow_clients"], f"{key}.allow_clients") if "allow_clients" in table else ()
    )
    if allow_clients and client_id is not None and client_id not in allow_clients:
        # A device-flow token is issued to client_id: leaving it out refuses every login.
        raise ConfigError(
            f"{key}.allow_clients: {list(allow_clients)} leaves out the client_id {client_id!r}, "
            "so no `witness login` could bind: add it, or remove client_id"
        )
    return IssuerSettings(
        name=_str(table.get("name"), f"{key}.name"),
        issuer=_url(table.get("issuer"), f"{key}.issuer"),
        audience=(_str(audience, f"{key}.audience"),)
        if isinstance(audience, str)
        else _strings(audience, f"{key}.audience"),
        discovery=_url(table["discovery"], f"{key}.discovery") if "discovery" in table else "",
        algorithms=algorithms,
        client_id=client_id,
        login_params=tuple(
            (name, _str(value, f"{key}.login_params.{name}")) for name, value in params.items()
        ),
        login_scopes=_strings(
            table.get("login_scopes", ["openid", "email", "profile"]), f"{key}.login_scopes"
        ),
        login_token=_choice(
            table.get("login_token", "access_token"), f"{key}.login_token", LOGIN_TOKENS
        ),
        subject_claim=claim["subject"],
        email_claim=claim["email"],
        name_claim=claim["name"],
        groups_claim=claim["groups"],
        timeout=_number(table.get("timeout_seconds", 5.0), f"{key}.timeout_seconds", 0.1),
        leeway=_number(table.get("leeway_seconds", 30.0), f"{key}.leeway_seconds", 0),
        allow_clients=allow_clients,
    )


def _static_binding(raw: Any, key: str, issuers: dict[str, IssuerSettings]) -> StaticBinding:
    table = _table(raw, key)
    _no_unknown(table, key, {"user", "issuer", "subject", "email", "name", "groups"})
    issuer = _str(table.get("issuer"), f"{key}.issuer")
    if issuer in issuers:  # an issuer's name stands for its iss
        issuer = issuers[issuer].issuer
    return StaticBinding(
        user=_str(table.get("user"), f"{key}.user"),
        issuer=issuer,
        subject=_str(table.get("subject"), f"{key}.subject"),
        email=_str(table["email"], f"{key}.email") if "email" in table else None,
        name=_str(table["name"], f"{key}.name") if "name" in table else None,
        groups=_strings(table["groups"], f"{key}.groups") if "groups" in table else (),
    )


def _identity(raw: Any, base: Path) -> IdentitySettings:
    table = _table(raw, "identity")
    _no_unknown(
        table,
        "identity",
        {"issuer", "binding", "unbound", "control_socket", "warden_socket", "state"},
    )
    raw_issuers = table.get("issuer", [])
    if not isinstance(raw_issuers, list):
        raise ConfigError("identity.issuer: expected [[identity.issuer]] tables")
    issuers: dict[str, IssuerSettings] = {}
    for i, item in enumerate(raw_issuers):
        issuer = _issuer(item, f"identity.issuer[{i}]")
        if issuer.name in issuers:
            raise ConfigError(f"identity.issuer[{i}].name: {issuer.name!r} is defined twice")
        # Tokens are matched to a table by their iss: a second table for the same iss would
        # never be used, and its restrictions (allow_clients, audience) silently with it.
        for j, other in enumerate(issuers.values()):
            if other.issuer == issuer.issuer:
                raise ConfigError(
                    f"identity.issuer[{i}].issuer: {issuer.issuer!r} is already trusted by "
                    f"identity.issuer[{j}] (one table per issuer)"
                )
        issuers[issuer.name] = issuer
    raw_bindings = table.get("binding", [])
    if not isinstance(raw_bindings, list):
        raise ConfigError("identity.binding: expected [[identity.binding]] tables")
    bindings = tuple(
        _static_binding(item, f"identity.binding[{i}]", issuers)
        for i, item in enumerate(raw_bindings)
    )
    users = [b.user for b in bindings]
    for i, user in enumerate(users):
        if user in users[:i]:
            raise ConfigError(f"identity.binding[{i}].user: {user!r} is bound twice")
    defaults = IdentitySettings()
    return IdentitySettings(
        issuers=tuple(issuers.values()),
        bindings=bindings,
        unbound=_choice(table.get("unbound", "refuse"), "identity.unbound", UNBOUND),
        control_socket=base / _str(table["control_socket"], "identity.control_socket")
        if "control_socket" in table
        else defaults.control_socket,
        warden_socket=base / _str(table["warden_socket"], "identity.warden_socket")
        if "warden_socket" in table
        else defaults.warden_socket,
        state=base / _str(table["state"], "identity.state") if "state" in table else None,
    )


def _policy(raw: Any, base: Path, backends: dict[str, Backend]) -> PolicySettings | None:
    # The rules are validated by their own module; its errors are this file's errors.
    if raw is None:
        return None
    try:
        policy = _parse_policy(raw, base)
        _check_policy_backends(policy, backends)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
    _check_catalog_users(policy, backends)
    return policy


def _approvals(raw: Any, policy: PolicySettings | None) -> ApprovalSettings | None:
    holding = [r.name for r in policy.rules if r.action == "hold"] if policy else []
    if raw is None:
        if holding:
            raise ConfigError(
                f"approvals: the policy's rule {holding[0]!r} holds statements for approval, "
                "but there is no [approvals] table saying who may approve (groups)"
            )
        return None
    table = _table(raw, "approvals")
    _no_unknown(
        table,
        "approvals",
        {
            "groups",
            "required",
            "timeout_seconds",
            "max_window_minutes",
            "webhook",
            "webhook_attempts",
            "webhook_timeout_seconds",
            "max_pending",
        },
    )
    if "groups" not in table:
        raise ConfigError("approvals.groups: required (the groups whose members may approve)")
    return ApprovalSettings(
        groups=_strings(table["groups"], "approvals.groups"),
        required=_int(table.get("required", 1), "approvals.required", 1, 16),
        max_pending=_int(table.get("max_pending", 20), "approvals.max_pending", 1, 10_000),
        timeout_seconds=_number(
            table.get("timeout_seconds", 300.0), "approvals.timeout_seconds", 1
        ),
        max_window_minutes=_int(
            table.get("max_window_minutes", 0), "approvals.max_window_minutes", 0, 24 * 60
        ),
        webhook=_url(table["webhook"], "approvals.webhook") if "webhook" in table else None,
        webhook_attempts=_int(
            table.get("webhook_attempts", 5), "approvals.webhook_attempts", 1, 50
        ),
        webhook_timeout_seconds=_number(
            table.get("webhook_timeout_seconds", 5.0), "approvals.webhook_timeout_seconds", 0.1
        ),
    )


def _check_catalog_users(policy: PolicySettings, backends: dict[str, Backend]) -> None:
    """A backend whose results a mask covers by column names a role to read its catalog:
    without one, its columns could not be resolved, and every result would be masked."""
    for index, mask in enumerate(policy.masks):
        if not mask.by_column:
            continue
        for i, backend in enumerate(backends.values()):
            if backend.catalog_user is None and (
                not mask.backends or backend.name in mask.backends
            ):
                raise ConfigError(
                    f"backend[{i}].catalog_user: required, since the policy's masks[{index}]"
                    f" ({mask.name!r}) masks columns of backend {backend.name!r}: the recorder"
                    " reads the catalog as this role to know which table a column is of"
                )


def parse(data: dict[str, Any], base: Path = Path("/")) -> Settings:
    """Validate a parsed TOML document. Relative paths are taken from ``base``."""
    _no_unknown(
        data,
        "",
        {
            "listener",
            "backend",
            "trail",
            "capture",
            "limits",
            "enforce",
            "identity",
            "policy",
            "approvals",
            "export",
        },
    )
    raw_backends = data.get("backend", [])
    if not isinstance(raw_backends, list) or not raw_backends:
        raise ConfigError("backend: expected at least one [[backend]] table")
    backends: dict[str, Backend] = {}
    for i, raw in enumerate(raw_backends):
        backend = _backend(raw, f"backend[{i}]", base)
        if backend.name in backends:
            raise ConfigError(f"backend[{i}].name: {backend.name!r} is defined twice")
        backends[backend.name] = backend
    transparent = "enforce" in data
    raw_listeners = data.get("listener", [])
    # With [enforce], diverted connections need no [[listener]]: they find their backend by
    # their original destination.
    if not isinstance(raw_listeners, list) or (not raw_listeners and not transparent):
        raise ConfigError("listener: expected at least one [[listener]] table (or an [enforce])")
    listeners = tuple(
        _listener(raw, f"listener[{i}]", backends) for i, raw in enumerate(raw_listeners)
    )
    limits = _table(data.get("limits", {}), "limits")
    _no_unknown(limits, "limits", {"max_message_bytes"})
    policy = _policy(data.get("policy"), base, backends)
    trail = _trail(data.get("trail", {}), base)
    exports = _exports(data.get("export", []), base, backends)
    _check_retire(trail, exports)
    return Settings(
        listeners=listeners,
        backends=backends,
        trail=trail,
        capture=_capture(data.get("capture", {})),
        enforce=_enforce(data.get("enforce", {})),
        identity=_identity(data.get("identity", {}), base),
        policy=policy,
        approvals=_approvals(data.get("approvals"), policy),
        max_message_bytes=_int(
            limits.get("max_message_bytes", 64 * 1024 * 1024),
            "limits.max_message_bytes",
            1024,
            1 << 30,
        ),
        exports=exports,
        transparent=transparent,
    )


def load(path: Path) -> Settings:
    """Read and validate the file at ``path``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, path.parent)
