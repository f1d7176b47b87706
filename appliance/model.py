"""The records that flow through Witness: who owns a connection, what it sent, what came back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Owner:
    """The kernel's view of the process that owns a client socket.

    ``source`` says how it was learned: ``sock_diag`` (netlink plus /proc), ``ebpf``, or
    ``unknown`` when the socket could not be attributed (a remote client, or a process that
    exited before it was looked at). ``detail`` explains an incomplete attribution.
    ``doubt`` says why what was seen cannot be trusted (an eBPF record that the live socket
    contradicts): such an owner names no one, and its connection is refused.
    """

    uid: int | None = None
    pid: int | None = None
    exe: str | None = None
    cgroup: str | None = None
    comm: str | None = None
    source: str = "unknown"
    detail: str | None = None
    cgroup_id: int | None = None
    """The kernel's id of ``cgroup`` (its directory's inode): kept when the process is gone."""
    doubt: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "uid": self.uid,
            "pid": self.pid,
            "exe": self.exe,
            "cgroup": self.cgroup,
            "cgroup_id": self.cgroup_id,
            "comm": self.comm,
            "source": self.source,
            "detail": self.detail,
        }
        if self.doubt is not None:
            out["doubt"] = self.doubt
        return out


@dataclass(frozen=True, slots=True)
class Identity:
    """Who an OIDC token (or a static binding in the configuration) says the owner is.

    ``issuer`` is the token's ``iss``; ``subject``, ``email``, ``name`` and ``groups`` come
    from the claims the issuer's configuration names.
    """

    issuer: str
    subject: str
    email: str | None = None
    name: str | None = None
    groups: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "subject": self.subject,
            "email": self.email,
            "name": self.name,
            "groups": list(self.groups),
        }

    @property
    def label(self) -> str:
        """A short name for people: the email, else the subject."""
        return self.email or self.subject


@dataclass(frozen=True, slots=True)
class Command:
    """One client command, recorded before any of its bytes reach the backend.

    ``kind`` is ``query`` (simple protocol, possibly several statements), ``execute``
    (extended protocol), ``function_call`` or ``cancel``. ``params`` are the decoded bind
    parameters, text where the type is known, ``\\x``-prefixed hex otherwise, ``None`` for NULL.
    ``statement`` names the prepared statement an ``execute`` came from ("" is the unnamed
    one); ``portal`` likewise.
    """

    kind: str
    text: str
    params: tuple[str | None, ...] = ()
    statement: str | None = None
    portal: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "text": self.text}
        if self.params:
            out["params"] = list(self.params)
        if self.statement is not None:
            out["statement"] = self.statement
        if self.portal is not None:
            out["portal"] = self.portal
        return out


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error reported by the backend: severity, SQLSTATE and message."""

    severity: str
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "message": self.message}


@dataclass(slots=True)
class Result:
    """The summary of what the backend did with one command.

    ``status`` is ``ok``, ``error``, ``suspended`` (a portal ran out of its row limit),
    ``skipped`` (the backend discarded it after an earlier error in the same pipeline) or
    ``aborted`` (the session ended before an answer came).
    """

    status: str
    tags: list[str] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    copy_bytes: int = 0
    duration_ms: float = 0.0
    error: ErrorInfo | None = None
    columns: list[str] | None = None
    captured: list[list[str | None]] | None = None
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "tags": self.tags,
            "rows": self.rows,
            "bytes": self.bytes,
            "duration_ms": round(self.duration_ms, 3),
        }
        if self.copy_bytes:
            out["copy_bytes"] = self.copy_bytes
        if self.error is not None:
            out["error"] = self.error.as_dict()
        if self.captured is not None:
            out["columns"] = self.columns
            out["captured"] = self.captured
            out["truncated"] = self.truncated
        return out
