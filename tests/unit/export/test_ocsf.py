"""OCSF events of a real trail, validated against the published OCSF schema (the export of
schema.ocsf.io that ocsf-json-schema ships, turned into JSON Schema 2020-12 by it), and
checked field by field against what the trail recorded."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
from exporting import HOSTILE, messages
from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from appliance.config import TrailSettings
from appliance.export import ocsf


@functools.cache
def validator(version: str, profiles: tuple[str, ...]) -> Draft202012Validator:
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
    name = schema.lookup_class_name_from_uid(class_uid=ocsf.CLASS_UID)
    found = schema.get_class_schema(class_name=name, profiles=list(profiles))
    Draft202012Validator.check_schema(found)
    return Draft202012Validator(found)


def problems(event: dict[str, Any]) -> list[str]:
    """What the published schema says is wrong with ``event``, for the version and profiles
    it declares."""
    metadata = event["metadata"]
    check = validator(metadata["version"], tuple(metadata.get("profiles", ())))
    return [f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(event)]


@pytest.fixture
def events(fleet: TrailSettings) -> list[dict[str, Any]]:
    return [json.loads(line) for line in messages(fleet.path, "ocsf")]


def test_every_event_validates_against_the_published_schema(
    events: list[dict[str, Any]],
) -> None:
    assert len(events) == 10  # three session starts, seven commands
    for event in events:
        assert problems(event) == [], event
        assert event["metadata"]["version"] == "1.5.0"
        assert (event["class_uid"], event["category_uid"]) == (6005, 6)
        assert event["type_uid"] == 600500 + event["activity_id"]


def test_the_schema_is_strict_enough_to_fail(events: list[dict[str, Any]]) -> None:
    event = events[2]
    assert problems({**event, "query": "select 1"}) != []  # no such attribute
    assert problems({**event, "activity_id": 42}) != []
    assert problems({**event, "query_info": {"name": "query"}}) != []  # query_string required
    no_actor = {k: v for k, v in event.items() if k != "actor"}
    assert problems(no_actor) != []


def test_commands_carry_the_recorded_text_and_who_sent_it(events: list[dict[str, Any]]) -> None:
    queries = [e for e in events if e["activity_name"] == "Query"]
    texts = [e["query_info"]["query_string"] for e in queries]
    assert texts[:4] == ["select * from orders", *HOSTILE]
    assert "alter role app password '[redacted]'" in texts
    first = queries[0]
    assert first["actor"]["user"] == {
        "name": "Alice@Example.com",
        "uid": "sub-alice",
        "email_addr": "Alice@Example.com",
        "full_name": "Alice Adams",
        "groups": [{"name": "dba"}, {"name": "agents"}],
    }
    assert first["actor"]["idp"]["issuer"] == "https://idp.example.com"
    assert first["actor"]["process"] == {
        "pid": 5001,
        "name": "psql",
        "file": {"name": "psql", "path": "/usr/bin/psql", "type_id": 1},
        "user": {"uid": "1001"},
    }
    assert first["src_endpoint"] == {"ip": "10.0.9.1", "port": 41001}
    assert first["dst_endpoint"] == {
        "ip": "10.0.0.5",
        "port": 5432,
        "name": "orders",
        "svc_name": "postgresql",
    }
    assert first["database"] == {
        "name": "shop",
        "type_id": 1,
        "type": "Relational",
        "uid": "orders/shop",
    }
    assert first["query_info"]["uid"] == "a1-alice:1"
    assert first["metadata"]["correlation_uid"] == "a1-alice"


def test_what_the_policy_decided(events: list[dict[str, Any]]) -> None:
    by_text = {e["query_info"]["query_string"]: e for e in events if "query_info" in e}
    allowed, blocked = by_text["select * from orders"], by_text["delete from invoices"]
    assert (allowed["action_id"], allowed["disposition_id"]) == (1, 1)
    assert "status_id" not in allowed
    assert (blocked["action_id"], blocked["disposition_id"], blocked["status_id"]) == (2, 2, 2)
    assert blocked["policy"] == {"name": "no-wipe", "desc": "DELETE needs a WHERE"}
    assert blocked["severity"] == "Medium"
    undecided = by_text["select $1::int"]
    assert (undecided["action_id"], undecided["disposition_id"]) == (3, 17)
    assert undecided["unmapped"]["witness"]["params"] == ["7"]


def test_sessions_connect_and_a_refusal_fails(events: list[dict[str, Any]]) -> None:
    connects = [e for e in events if e["activity_name"] == "Connect"]
    assert [e["status_id"] for e in connects] == [1, 1, 2]
    refused = connects[-1]
    assert refused["status_code"] == "28000"
    assert refused["status_detail"] == "no identity is bound to uid 1003"
    assert "user" not in refused["actor"]
    assert refused["actor"]["process"]["user"] == {"uid": "1003"}
