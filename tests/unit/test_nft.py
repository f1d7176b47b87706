"""The inet witness table as rendered from the configuration: pure data, no nft needed."""

from __future__ import annotations

import copy
import ipaddress
import json
from typing import Any

import pytest

from appliance import config
from appliance.config import ConfigError
from appliance.enforce import nft

BASE: dict[str, Any] = {
    "backend": [{"name": "orders", "address": "10.0.0.5", "port": 5432}],
    "listener": [{"listen": "127.0.0.1:6432", "backend": "orders"}],
    "enforce": {"service_user": "root", "redirect_port": 15000},
}


def settings(**backend: Any) -> config.Settings:
    data = copy.deepcopy(BASE)
    data["backend"][0].update(backend)
    return config.parse(data)


def rules(plan: nft.Plan, chain: str) -> list[list[Any]]:
    return [o["rule"]["expr"] for o in nft.table(plan) if o.get("rule", {}).get("chain") == chain]


def test_by_default_a_backend_protects_its_own_address_and_port() -> None:
    plan = nft.plan(settings())
    assert plan.service_uid == 0
    assert plan.redirect_port == 15000
    assert plan.protected == (
        nft.Protected("orders", (ipaddress.ip_network("10.0.0.5/32"),), (5432,)),
    )
    v6 = nft.plan(settings(address="fd00::5"))
    assert v6.protected[0].networks == (ipaddress.ip_network("fd00::5/128"),)


def test_enforce_defaults() -> None:
    data = copy.deepcopy(BASE)
    del data["enforce"]
    enforce = config.parse(data).enforce
    assert (enforce.service_user, enforce.redirect_port) == ("witness", 15432)


def test_agents_are_diverted_by_range_and_port_in_both_families() -> None:
    plan = nft.plan(settings(protect=["10.0.0.0/24", "fd00::/64"], protect_ports=[5433, 5432]))
    divert = rules(plan, "divert")
    assert divert == [
        [
            {"match": {"op": "!=", "left": {"meta": {"key": "skuid"}}, "right": 0}},
            {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": family, "field": "daddr"}},
                    "right": {"prefix": {"addr": addr, "len": length}},
                }
            },
            {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                    "right": {"set": [5432, 5433]},
                }
            },
            {"redirect": {"port": 15000}},
        ]
        for family, addr, length in (("ip", "10.0.0.0", 24), ("ip6", "fd00::", 64))
    ]


def test_the_guard_lets_the_service_user_and_the_diverted_flow_pass_and_rejects_the_rest() -> None:
    plan = nft.plan(settings(protect=["10.0.0.0/24", "10.0.0.7/32", "fd00::/64"]))
    guard = rules(plan, "guard")
    assert guard[0] == [
        {"match": {"op": "==", "left": {"meta": {"key": "skuid"}}, "right": 0}},
        {"accept": None},
    ]
    assert [r[1]["match"]["right"] for r in guard[1:3]] == ["127.0.0.1", "::1"]
    assert all(r[0]["match"]["right"] == "dnat" and r[-1] == {"accept": None} for r in guard[1:3])
    rejects = guard[3:7]  # the protected ranges; link-local follows
    assert [r[-1] for r in rejects] == [
        {"reject": {"type": "tcp reset"}},
        {"reject": {"type": "icmpx", "expr": "admin-prohibited"}},
    ] * 2
    # 10.0.0.7/32 lies inside 10.0.0.0/24: merged, nft refuses overlapping set elements
    assert rejects[0][0]["match"]["right"] == {"prefix": {"addr": "10.0.0.0", "len": 24}}
    assert rejects[2][0]["match"]["right"] == {"prefix": {"addr": "fd00::", "len": 64}}


def test_several_backends_share_one_reject_per_family_and_v4_only_has_no_v6_rules() -> None:
    data = copy.deepcopy(BASE)
    data["backend"].append({"name": "billing", "address": "10.1.0.9", "port": 3306})
    plan = nft.plan(config.parse(data))
    assert len(rules(plan, "divert")) == 2
    rejects = [r for r in rules(plan, "guard")[3:] if "skuid" not in json.dumps(r)]
    assert len(rejects) == 2
    assert rejects[0][0]["match"]["right"] == {"set": ["10.0.0.5", "10.1.0.9"]}
    assert "ip6" not in json.dumps(rules(plan, "divert"))


def test_what_the_host_would_route_to_a_protected_range_is_rejected() -> None:
    plan = nft.plan(settings(protect=["10.0.0.0/24", "fd00::/64"]))
    forward = rules(plan, "forward")
    assert [r[0]["match"]["right"] for r in forward] == [
        {"prefix": {"addr": "10.0.0.0", "len": 24}},
        {"prefix": {"addr": "10.0.0.0", "len": 24}},
        {"prefix": {"addr": "fd00::", "len": 64}},
        {"prefix": {"addr": "fd00::", "len": 64}},
    ]
    assert "skuid" not in json.dumps(forward)  # routed packets have no local owner to exempt
    assert [r[-1] for r in forward] == [
        {"reject": {"type": "tcp reset"}},
        {"reject": {"type": "icmpx", "expr": "admin-prohibited"}},
    ] * 2


def test_link_local_is_rejected_for_users_other_than_root_unless_turned_off() -> None:
    guard = rules(nft.plan(settings()), "guard")
    link_local = [r for r in guard if "fe80::" in json.dumps(r) or "169.254.0.0" in json.dumps(r)]
    assert len(link_local) == 4
    for rule in link_local:
        assert {"match": {"op": "!=", "left": {"meta": {"key": "skuid"}}, "right": 0}} in rule
        fib = {"fib": {"result": "type", "flags": ["daddr"]}}
        assert any(e.get("match", {}).get("left") == fib for e in rule)
    assert link_local[0][0]["match"]["right"] == {"prefix": {"addr": "fe80::", "len": 10}}
    assert link_local[2][0]["match"]["right"] == {"prefix": {"addr": "169.254.0.0", "len": 16}}
    data = copy.deepcopy(BASE)
    data["enforce"]["guard_link_local"] = False
    assert "fe80::" not in json.dumps(nft.table(nft.plan(config.parse(data))))


def test_backend_interfaces_reject_everything_users_send_out_of_them() -> None:
    data = copy.deepcopy(BASE)
    data["enforce"]["backend_interfaces"] = ["eth1", "eth2", "eth1"]
    guard = rules(nft.plan(config.parse(data)), "guard")
    out = [r for r in guard if "oifname" in json.dumps(r)]
    assert len(out) == 2
    oif = {"meta": {"key": "oifname"}}
    assert out[0][0] == {"match": {"op": "==", "left": oif, "right": {"set": ["eth1", "eth2"]}}}
    assert out[0][1]["match"] == {"op": "!=", "left": {"meta": {"key": "skuid"}}, "right": 0}
    assert [r[-1] for r in out] == [
        {"reject": {"type": "tcp reset"}},
        {"reject": {"type": "icmpx", "expr": "admin-prohibited"}},
    ]
    assert "oifname" not in json.dumps(rules(nft.plan(settings()), "guard"))


def test_up_replaces_the_table_in_one_input_and_down_touches_only_the_table() -> None:
    plan = nft.plan(settings())
    commands = nft.up_ruleset(plan)["nftables"]
    table = {"table": {"family": "inet", "name": "witness"}}
    assert commands[:3] == [{"add": table}, {"delete": table}, {"add": table}]
    assert all(list(c) == ["add"] for c in commands[2:])
    chains = [c["add"]["chain"] for c in commands[2:] if "chain" in c["add"]]
    assert [(c["name"], c["type"], c["hook"], c["prio"]) for c in chains] == [
        ("divert", "nat", "output", -100),
        ("guard", "filter", "output", 0),
        ("forward", "filter", "forward", 0),
    ]
    assert nft.down_ruleset() == {"nftables": [{"add": table}, {"delete": table}]}


def test_a_listing_matches_regardless_of_handles_and_set_order() -> None:
    plan = nft.plan(settings(protect=["10.0.0.0/24", "10.2.0.0/16"]))
    listing: list[dict[str, Any]] = [{"metainfo": {"version": "1.0.6"}}]
    for i, obj in enumerate(copy.deepcopy(nft.table(plan))):
        ((kind, body),) = obj.items()
        listing.append({kind: {**body, "handle": i}})
    for obj in listing:
        for expr in obj.get("rule", {}).get("expr", []):
            right = expr.get("match", {}).get("right")
            if isinstance(right, dict) and "set" in right:
                right["set"].reverse()
    current = nft.normalize(listing)
    assert nft.matches(plan, current)
    assert not nft.matches(nft.plan(settings(protect=["10.0.0.0/24"])), current)
    assert not nft.matches(plan, current[:-1])
    assert not nft.matches(plan, None)


def test_an_unknown_service_user_is_a_configuration_error() -> None:
    data = copy.deepcopy(BASE)
    data["enforce"]["service_user"] = "no-such-user-witness"
    with pytest.raises(ConfigError, match=r"enforce.service_user: no user named"):
        nft.plan(config.parse(data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"protect": ["10.0.0.300/32"]}, "backend[0].protect[0]: expected a CIDR"),
        ({"protect": ["10.0.0.5/24"]}, "backend[0].protect[0]: expected a CIDR"),
        ({"protect": ["10.0.0.0/24", 7]}, "backend[0].protect[1]: expected a non-empty string"),
        ({"protect": []}, "backend[0].protect: expected a non-empty list"),
        ({"protect": "10.0.0.0/24"}, "backend[0].protect: expected a non-empty list"),
        ({"protect_ports": [0]}, "backend[0].protect_ports[0]: expected an integer from 1"),
        ({"protect_ports": 5432}, "backend[0].protect_ports: expected a non-empty list"),
        ({"protekt": ["10.0.0.0/24"]}, "backend[0].protekt: unknown key"),
    ],
)
def test_protect_errors_name_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(**change)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("enforce", "message"),
    [
        ({"redirect_port": 70000}, "enforce.redirect_port: expected an integer from 1 to 65535"),
        ({"service_user": ""}, "enforce.service_user: expected a non-empty string"),
        ({"mode": "x"}, "enforce.mode: unknown key"),
        ({"guard_link_local": "yes"}, "enforce.guard_link_local: expected true or false"),
        ({"backend_interfaces": []}, "enforce.backend_interfaces: expected a non-empty list"),
        ({"backend_interfaces": ["a/b"]}, "enforce.backend_interfaces[0]: expected an interface"),
        ({"backend_interfaces": ["x" * 16]}, "enforce.backend_interfaces[0]: expected"),
    ],
)
def test_enforce_errors_name_the_key(enforce: dict[str, Any], message: str) -> None:
    data = copy.deepcopy(BASE)
    data["enforce"] = enforce
    with pytest.raises(ConfigError) as info:
        config.parse(data)
    assert message in str(info.value)
