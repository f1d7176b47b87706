"""Diverted connections: reading SO_ORIGINAL_DST's answer, and finding the backend it names."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest

from appliance import config
from appliance.daemon import StartError, check_service_user
from appliance.enforce.divert import (
    IP6T_SO_ORIGINAL_DST,
    SO_ORIGINAL_DST,
    SOL_IPV6,
    NotDiverted,
    Routes,
    original_destination,
    parse_sockaddr,
)


def sockaddr_in(address: str, port: int) -> bytes:
    return (
        struct.pack("=H", socket.AF_INET)
        + struct.pack("!H", port)
        + ipaddress.IPv4Address(address).packed
        + bytes(8)
    )


def sockaddr_in6(address: str, port: int) -> bytes:
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI", port, 0)
        + ipaddress.IPv6Address(address).packed
        + bytes(4)
    )


class FakeSocket:
    """Answers getsockopt as the kernel would, and remembers what was asked."""

    def __init__(self, family: socket.AddressFamily, answer: bytes | OSError) -> None:
        self.family = family
        self.answer = answer
        self.asked: list[tuple[int, int, int]] = []

    def getsockopt(self, level: int, optname: int, buflen: int) -> bytes:
        self.asked.append((level, optname, buflen))
        if isinstance(self.answer, OSError):
            raise self.answer
        return self.answer


def test_sockaddrs_are_read_in_the_kernels_byte_order() -> None:
    assert parse_sockaddr(sockaddr_in("10.77.0.3", 5432)) == ("10.77.0.3", 5432)
    assert parse_sockaddr(sockaddr_in6("fd77::2", 65000)) == ("fd77::2", 65000)
    with pytest.raises(ValueError, match="family"):
        parse_sockaddr(struct.pack("=H", socket.AF_UNIX) + bytes(14))
    with pytest.raises(ValueError, match="too short"):
        parse_sockaddr(b"\x02")


def test_the_ipv4_and_ipv6_options_are_asked_for_by_family() -> None:
    v4 = FakeSocket(socket.AF_INET, sockaddr_in("10.77.0.2", 5432))
    assert original_destination(v4, ("127.0.0.1", 15432)) == ("10.77.0.2", 5432)
    assert v4.asked == [(socket.SOL_IP, SO_ORIGINAL_DST, 16)]
    v6 = FakeSocket(socket.AF_INET6, sockaddr_in6("fd77::2", 5432))
    assert original_destination(v6, ("::1", 15432)) == ("fd77::2", 5432)
    assert v6.asked == [(SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)]


def test_a_connection_that_was_not_redirected_is_not_diverted() -> None:
    # No conntrack entry at all: the kernel answers ENOENT.
    missing = FakeSocket(socket.AF_INET, OSError(errno.ENOENT, "No such file or directory"))
    with pytest.raises(NotDiverted, match="did not come through the witness redirect"):
        original_destination(missing, ("127.0.0.1", 15432))
    # Tracked but never rewritten: the original destination is the listener itself.
    direct = FakeSocket(socket.AF_INET, sockaddr_in("127.0.0.1", 15432))
    with pytest.raises(NotDiverted, match="not diverted"):
        original_destination(direct, ("127.0.0.1", 15432))


def settings(enforce: bool = True) -> config.Settings:
    data: dict[str, object] = {
        "backend": [
            {
                "name": "orders",
                "address": "10.77.0.2",
                "port": 5432,
                "protect": ["10.77.0.0/24", "fd77::/64"],
            },
            {
                "name": "billing",
                "address": "10.88.0.9",
                "port": 5432,
                "protect_ports": [5432, 6543],
            },
        ],
        "listener": [{"listen": "127.0.0.1:6432", "backend": "orders"}],
    }
    if enforce:
        data["enforce"] = {"service_user": "root"}
    return config.parse(data)


def test_a_destination_finds_the_backend_whose_ranges_and_ports_hold_it() -> None:
    routes = Routes(list(settings().backends.values()))
    assert routes.backend_for("10.77.0.2", 5432).name == "orders"  # type: ignore[union-attr]
    assert routes.backend_for("10.77.0.3", 5432).name == "orders"  # type: ignore[union-attr]
    assert routes.backend_for("fd77::2", 5432).name == "orders"  # type: ignore[union-attr]
    assert routes.backend_for("::ffff:10.77.0.9", 5432).name == "orders"  # type: ignore[union-attr]
    assert routes.backend_for("10.88.0.9", 6543).name == "billing"  # type: ignore[union-attr]
    assert routes.backend_for("10.77.0.2", 5433) is None  # a port that is not diverted
    assert routes.backend_for("10.77.1.2", 5432) is None  # outside every range
    assert routes.backend_for("10.88.0.10", 5432) is None  # billing protects only its address


def test_an_enforce_table_turns_the_transparent_listener_on_and_makes_listeners_optional() -> None:
    assert settings().transparent is True
    assert settings(enforce=False).transparent is False
    alone = config.parse(
        {
            "backend": [{"name": "orders", "address": "10.77.0.2", "port": 5432}],
            "enforce": {"service_user": "root"},
        }
    )
    assert alone.listeners == ()
    assert alone.transparent
    with pytest.raises(config.ConfigError, match="expected at least one"):
        config.parse({"backend": [{"name": "orders", "address": "10.77.0.2", "port": 5432}]})


def test_the_recorder_must_run_as_the_service_user() -> None:
    check_service_user(settings(), euid=0)  # root is uid 0: no error
    with pytest.raises(StartError, match=r"runs as uid 1, but enforce\.service_user is root"):
        check_service_user(settings(), euid=1)
    unknown = config.parse(
        {
            "backend": [{"name": "orders", "address": "10.77.0.2", "port": 5432}],
            "enforce": {"service_user": "no-such-user-here"},
        }
    )
    with pytest.raises(StartError, match="no user named 'no-such-user-here'"):
        check_service_user(unknown)
