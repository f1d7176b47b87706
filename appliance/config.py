"""One TOML file to typed, validated settings; every error names the key and the reason."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_CONFIG = Path("/etc/witness/witness.toml")
PROTOCOLS = ("postgresql",)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DURABILITY = ("process", "power")


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
class TrailSettings:
    """Where the trail and its signing key live, and how hard each commit tries to be durable.

    ``durability`` is ``process`` (a commit survives the recorder being killed) or ``power``
    (it also survives the host losing power: every commit is fsynced).
    """

    path: Path
    signing_key: Path
    durability: str = "process"
    checkpoint_events: int = 10_000
    checkpoint_seconds: float = 10.0

    @property
    def public_key(self) -> Path:
        return self.signing_key.with_name(self.signing_key.name + ".pub")

    @property
    def checkpoint_file(self) -> Path:
        """The newest signed checkpoint, kept beside the key so a cut tail can be noticed."""
        return self.signing_key.with_name(self.signing_key.name + ".checkpoint")

    @classmethod
    def beside(cls, trail: Path) -> TrailSettings:
        """Settings for a trail given on the command line: the key lives next to it."""
        return cls(path=trail, signing_key=trail.with_name(trail.name + ".key"))


@dataclass(frozen=True, slots=True)
class Capture:
    """Optional row capture per command; ``rows == 0`` turns it off."""

    rows: int = 0
    bytes: int = 65536


@dataclass(frozen=True, slots=True)
class EnforceSettings:
    """Host enforcement: who is exempt from the diversion, and where diverted traffic goes.

    ``service_user`` is the Unix user the recorder runs as: its traffic to protected backends
    passes, everyone else's is redirected to ``redirect_port`` on loopback or rejected.
    """

    service_user: str = "witness"
    redirect_port: int = 15432


@dataclass(frozen=True, slots=True)
class Settings:
    listeners: tuple[Listener, ...]
    backends: dict[str, Backend]
    trail: TrailSettings
    capture: Capture = field(default_factory=Capture)
    enforce: EnforceSettings = field(default_factory=EnforceSettings)
    max_message_bytes: int = 64 * 1024 * 1024
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


def _backend(raw: Any, key: str) -> Backend:
    table = _table(raw, key)
    _no_unknown(table, key, {"name", "address", "port", "protocol", "protect", "protect_ports"})
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


def _trail(raw: Any, base: Path) -> TrailSettings:
    table = _table(raw, "trail")
    _no_unknown(
        table,
        "trail",
        {"path", "signing_key", "durability", "checkpoint_events", "checkpoint_seconds"},
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
            table.get("checkpoint_events", 10_000), "trail.checkpoint_events", 1, 10_000_000
        ),
        checkpoint_seconds=_number(
            table.get("checkpoint_seconds", 10.0), "trail.checkpoint_seconds", 0.1
        ),
    )


def _capture(raw: Any) -> Capture:
    table = _table(raw, "capture")
    _no_unknown(table, "capture", {"rows", "bytes"})
    return Capture(
        rows=_int(table.get("rows", 0), "capture.rows", 0, 1_000_000),
        bytes=_int(table.get("bytes", 65536), "capture.bytes", 0, 1 << 30),
    )


def _enforce(raw: Any) -> EnforceSettings:
    table = _table(raw, "enforce")
    _no_unknown(table, "enforce", {"service_user", "redirect_port"})
    return EnforceSettings(
        service_user=_str(table.get("service_user", "witness"), "enforce.service_user"),
        redirect_port=_int(table.get("redirect_port", 15432), "enforce.redirect_port", 1, 65535),
    )


def parse(data: dict[str, Any], base: Path = Path("/")) -> Settings:
    """Validate a parsed TOML document. Relative paths are taken from ``base``."""
    _no_unknown(data, "", {"listener", "backend", "trail", "capture", "limits", "enforce"})
    raw_backends = data.get("backend", [])
    if not isinstance(raw_backends, list) or not raw_backends:
        raise ConfigError("backend: expected at least one [[backend]] table")
    backends: dict[str, Backend] = {}
    for i, raw in enumerate(raw_backends):
        backend = _backend(raw, f"backend[{i}]")
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
    return Settings(
        listeners=listeners,
        backends=backends,
        trail=_trail(data.get("trail", {}), base),
        capture=_capture(data.get("capture", {})),
        enforce=_enforce(data.get("enforce", {})),
        max_message_bytes=_int(
            limits.get("max_message_bytes", 64 * 1024 * 1024),
            "limits.max_message_bytes",
            1024,
            1 << 30,
        ),
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
