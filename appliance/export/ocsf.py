"""OCSF: a session's start and each command as a Datastore Activity event (class 6005), sans-io.

Sessions start as Connect (3), commands are Query (4), a cancel request Other (99). The actor
is the OIDC identity (``user``, ``idp``) and the process that sent it (``process``: the
kernel's pid, command name, executable and Unix user); the source endpoint is the client,
the destination the backend; ``database`` names the database (its ``uid`` also the
backend); ``query_info`` holds the text as recorded, so redacted and masked. What the policy
decided is said with the security_control profile (``action_id``, ``disposition_id``,
``policy``). Results, session ends, errors and the trail's own events have no OCSF event.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from appliance import __version__
from appliance.export import fields
from appliance.export.record import Meta, Record
from appliance.trail.query import identity_label

VERSION = "1.5.0"
PROFILES = ["security_control"]
CLASS_UID, CATEGORY_UID = 6005, 6
CONNECT, QUERY, OTHER = 3, 4, 99
_ACTIVITIES = {CONNECT: "Connect", QUERY: "Query", OTHER: "Other"}
INFORMATIONAL, LOW, MEDIUM = 1, 2, 3
_SEVERITIES = {INFORMATIONAL: "Informational", LOW: "Low", MEDIUM: "Medium"}
SUCCESS, FAILURE = 1, 2
# action -> (action_id, disposition_id, severity_id)
_DECIDED = {
    "allow": (1, 1, INFORMATIONAL),  # Allowed, Allowed
    "recorded": (3, 17, INFORMATIONAL),  # Observed, Logged
    "hold": (99, 14, LOW),  # Other, Delayed
    "block": (2, 2, MEDIUM),  # Denied, Blocked
    "refused": (2, 27, MEDIUM),  # Denied, Error
}


def lines(record: Record, meta: Meta) -> list[bytes]:
    found = event(record, meta)
    return [] if found is None else [orjson.dumps(found)]


def event(record: Record, meta: Meta) -> dict[str, Any] | None:
    """The OCSF event for a record, or None for one that has none."""
    if record.type == "session_start":
        return _connect(record, meta)
    if record.type == "command":
        return _command(record, meta)
    return None


def _connect(record: Record, meta: Meta) -> dict[str, Any]:
    refused = record.payload.get("refused")
    out = _base(record, meta, CONNECT)
    who = identity_label(record.identity) or "no identity"
    where = _where(record)
    if isinstance(refused, dict):
        out.update(
            severity_id=MEDIUM,
            status_id=FAILURE,
            status_code=str(refused.get("code")),
            status_detail=str(refused.get("message")),
            action_id=2,  # Denied
            disposition_id=25,  # Rejected
            message=f"connection refused: {who} to {where}",
        )
    else:
        out.update(status_id=SUCCESS, action_id=1, disposition_id=1)
        out["message"] = f"session of {who} to {where}"
    out["severity"] = _SEVERITIES[out["severity_id"]]
    return out


def _command(record: Record, meta: Meta) -> dict[str, Any]:
    payload = record.payload
    kind = str(payload.get("kind", "query"))
    out = _base(record, meta, OTHER if kind == "cancel" else QUERY)
    if kind == "cancel":
        out["activity_name"] = "Cancel"
    action, rule, reason = fields.decision(payload)
    action_id, disposition_id, severity = _DECIDED.get(action, (99, 99, MEDIUM))
    out.update(action_id=action_id, disposition_id=disposition_id, severity_id=severity)
    out["severity"] = _SEVERITIES[severity]
    if action in ("block", "refused"):
        out["status_id"] = FAILURE
        if reason:
            out["status_detail"] = reason
    if rule is not None:
        out["policy"] = {"name": rule, **({"desc": reason} if reason else {})}
    out["query_info"] = {
        "query_string": str(payload.get("text", "")),
        "name": kind,
        "uid": f"{record.session}:{payload.get('n')}",
    }
    who = identity_label(record.identity) or "no identity"
    out["message"] = f"{kind} by {who} on {_where(record)}: {action}"
    return out


def _base(record: Record, meta: Meta, activity: int) -> dict[str, Any]:
    name = _ACTIVITIES[activity]
    out: dict[str, Any] = {
        "class_uid": CLASS_UID,
        "class_name": "Datastore Activity",
        "category_uid": CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": activity,
        "activity_name": name,
        "type_uid": CLASS_UID * 100 + activity,
        "type_name": f"Datastore Activity: {name}",
        "time": record.ts // 1000,
        "severity_id": INFORMATIONAL,
        "metadata": _metadata(record, meta),
        "actor": _actor(record),
        "src_endpoint": _source(record),
    }
    destination = _destination(record)
    if destination:
        out["dst_endpoint"] = destination
    database = _database(record)
    if database:
        out["database"] = database
    out["unmapped"] = {"witness": _unmapped(record)}
    return out


def _metadata(record: Record, meta: Meta) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": VERSION,
        "product": {"name": "Witness", "vendor_name": "Witness", "version": __version__},
        "profiles": PROFILES,
        "uid": f"{meta.trail}:{record.seq}" if meta.trail else str(record.seq),
        "sequence": record.seq,
        "log_name": "trail",
        "log_provider": "witness",
        "logged_time": record.ts // 1000,
    }
    if record.session is not None:
        out["correlation_uid"] = record.session
    return out


def _actor(record: Record) -> dict[str, Any]:
    actor: dict[str, Any] = {}
    identity = record.identity
    if identity is not None:
        subject = fields.text(identity.get("subject"))
        email = fields.text(identity.get("email"))
        user: dict[str, Any] = {"name": email or subject or "unknown"}
        if subject:
            user["uid"] = subject
        if email:
            user["email_addr"] = email
        if identity.get("name"):
            user["full_name"] = str(identity["name"])
        groups = identity.get("groups")
        if isinstance(groups, list) and groups:
            user["groups"] = [{"name": str(g)} for g in groups]
        actor["user"] = user
        issuer = fields.text(identity.get("issuer"))
        if issuer:
            actor["idp"] = {"name": issuer, "issuer": issuer, "protocol_name": "OIDC"}
    owner = fields.owner(record)
    if isinstance(owner.get("pid"), int):
        process: dict[str, Any] = {"pid": owner["pid"]}
        if owner.get("comm"):
            process["name"] = str(owner["comm"])
        exe = owner.get("exe")
        if exe:
            process["file"] = {"name": os.path.basename(str(exe)), "path": str(exe), "type_id": 1}
        if owner.get("uid") is not None:
            process["user"] = {"uid": str(owner["uid"])}
        actor["process"] = process
    if record.session is not None:
        actor["session"] = {"uid": record.session}
    if not actor:
        actor["app_name"] = "unknown"
    return actor


def _source(record: Record) -> dict[str, Any]:
    found = fields.endpoint(record.payload.get("client") or record.start.get("client"))
    if found is None:
        return {"name": "unknown"}
    return {"ip": found[0], "port": found[1]}


def _destination(record: Record) -> dict[str, Any]:
    out: dict[str, Any] = {}
    found = fields.destination(record)
    if found is not None:
        out.update(ip=found[0], port=found[1])
    if record.backend is not None:
        out["name"] = record.backend
    protocol = fields.protocol(record)
    if out and protocol:
        out["svc_name"] = protocol
    return out


def _database(record: Record) -> dict[str, Any]:
    database = fields.text(record.start.get("database"))
    if database is None:
        return {}
    out = {"name": database, "type_id": 1, "type": "Relational"}
    if record.backend is not None:
        out["uid"] = f"{record.backend}/{database}"
    return out


def _where(record: Record) -> str:
    database = record.start.get("database")
    return f"{record.backend or '-'}/{database or '-'}"


_EXTRA = ("n", "kind", "text_known", "redacted", "masked", "params", "prepared", "refused")


def _unmapped(record: Record) -> dict[str, Any]:
    """What OCSF has no place for: the trail's own fields, and the record's details."""
    out: dict[str, Any] = {"seq": record.seq, "event": record.type}
    if record.session is not None:
        out["session"] = record.session
    for key in ("db_user", "application_name", "diverted"):
        if record.start.get(key) is not None:
            out[key] = record.start[key]
    if record.type == "command":
        out.update((k, record.payload[k]) for k in _EXTRA if k in record.payload)
    owner = fields.owner(record)
    for key in ("uid", "cgroup", "source"):
        if owner.get(key) is not None:
            out[f"owner_{key}"] = owner[key]
    return out
