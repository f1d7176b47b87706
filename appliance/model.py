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


_SHOWN = 500  # characters of a statement's last text that ``Prepared.describe`` shows


@dataclass(frozen=True, slots=True)
class Prepared:
    """A prepared statement (or portal) a command runs by name, as far as the wire tells.

    ``text`` is its text when last defined on this connection, ``how`` that definition
    (``parsed``, ``prepared`` by SQL, or, for a portal, ``bound``) and ``defined`` where: the
    command whose SQL prepared it, or, for a Parse or Bind, the last command sent before it
    (0: none was). ``doubt`` is None when
    ``text`` is what the backend runs; otherwise it says why it may not be:

    - ``changed``: command ``changed_by`` could run code (itself, through its Bind's planning,
      or at the commit it left code for) that may have redefined it since;
    - ``unconfirmed``: its last Parse reused a name the backend may still hold, and the
      backend had not answered: had it refused the Parse, an older statement runs;
    - ``unseen``: it was never defined on this connection's wire. Code run by command
      ``changed_by`` may have defined it; if nothing did, the backend refuses the command;
    - ``name``: its name is not ASCII, and command ``changed_by`` may have changed
      ``client_encoding`` before the backend read it: the backend may read another name.
    """

    name: str
    text: str | None
    how: str = "parsed"
    defined: int | None = None
    doubt: str | None = None
    changed_by: int | None = None
    kind: str = "statement"

    @property
    def known(self) -> bool:
        return self.doubt is None

    def describe(self) -> str:
        """One line for people: the text when known, else what is and is not known."""
        if self.doubt is None:
            return str(self.text)
        label = f"{self.kind} {self.name!r}" if self.name else f"the unnamed {self.kind}"
        text = str(self.text)
        if len(text) > _SHOWN:  # the whole of it is in ``text``, beside
            text = text[:_SHOWN] + "..."
        if self.how == "prepared":
            last = f"last prepared by command {self.defined} as: {text}"
        elif self.defined:
            last = f"last {self.how} after command {self.defined} as: {text}"
        else:
            last = f"last {self.how} before any command as: {text}"
        if self.doubt == "changed":
            again = "replaced" if self.kind == "portal" else "redefined"
            return f"unknown: {label} may have been {again} by command {self.changed_by}; {last}"
        if self.doubt == "name":
            return (
                f"unknown: {label} may not be the one the backend reads its name as (command"
                f" {self.changed_by} may have changed client_encoding first); {last}"
            )
        if self.doubt == "unconfirmed":
            return (
                f"unknown: {label} may still be an older one (the backend had not accepted the"
                f" reuse of its name); {last}"
            )
        if self.kind == "portal":
            line = f"unknown: {label} was never bound on this connection"
            if self.changed_by is not None:
                line += f"; command {self.changed_by} may have opened a cursor by that name"
            return line
        line = f"unknown: {label} was never prepared on this connection"
        if self.changed_by is not None:
            line += f"; code run by command {self.changed_by} may have prepared it"
        return line

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "name": self.name, "text": self.text}
        if self.text is not None:
            out["how"] = self.how
            out["defined"] = self.defined
        if self.doubt is not None:
            out["doubt"] = self.doubt
            if self.changed_by is not None:
                out["changed_by"] = self.changed_by
        return out


@dataclass(frozen=True, slots=True)
class Decoding:
    """How a command's bytes became text, recorded when that was not plain.

    ``encoding`` is the client encoding (PostgreSQL's name) they were decoded in. ``raw``:
    the text is not valid in it, or Witness has no codec for it, so ``text`` is its bytes as
    ``\\x`` hex (text parameters in that case are hex too, ``raw`` or not). ``changed_by``:
    command ``changed_by``, sent before this one, may have changed ``client_encoding`` before
    the backend read these bytes, so the backend may have read them in another encoding.
    """

    encoding: str
    raw: bool = False
    changed_by: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"encoding": self.encoding}
        if self.raw:
            out["raw"] = True
        if self.changed_by is not None:
            out["changed_by"] = self.changed_by
        return out


# Not frozen, unlike the records around it: one is made for every command, and a frozen
# dataclass sets each field through object.__setattr__ (three times the cost). Nothing
# changes a Command once made.
@dataclass(slots=True)
class Command:
    """One client command, recorded before any of its bytes reach the backend.

    ``kind`` is ``query`` (simple protocol, possibly several statements), ``execute``
    (extended protocol), ``function_call`` or ``cancel``. ``params`` are the decoded bind
    parameters, text where the type is known, ``\\x``-prefixed hex otherwise, ``None`` for NULL.
    ``statement`` names the prepared statement an ``execute`` came from ("" is the unnamed
    one); ``portal`` likewise.

    ``prepared``: for a ``query``, the prepared statements its EXECUTEs run; for an
    ``execute`` whose statement or portal is not known, that one, and ``text`` then says what
    is known instead of stating a text. ``decoding`` is set when its bytes were not plainly
    decoded. ``text_known`` is False when the backend may run something other than ``text``
    (and the prepared texts): a policy must treat such a command as unknown.
    """

    kind: str
    text: str
    params: tuple[str | None, ...] = ()
    statement: str | None = None
    portal: str | None = None
    prepared: tuple[Prepared, ...] = ()
    decoding: Decoding | None = None

    @property
    def text_known(self) -> bool:
        for prepared in self.prepared:
            if prepared.doubt is not None:
                return False
        decoding = self.decoding
        return decoding is None or not (decoding.raw or decoding.changed_by is not None)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "text": self.text}
        if self.params:
            out["params"] = list(self.params)
        if self.statement is not None:
            out["statement"] = self.statement
        if self.portal is not None:
            out["portal"] = self.portal
        if self.prepared:
            out["prepared"] = [p.as_dict() for p in self.prepared]
        if self.decoding is not None:
            out["decoding"] = self.decoding.as_dict()
        if not self.text_known:
            out["text_known"] = False
        return out


@dataclass(frozen=True, slots=True)
class Reading:
    """A command's text and parameters as the backend read them, learned after the command
    was recorded in a guessed encoding (``Decoding.changed_by``): ``encoding`` is the one the
    backend reported for them."""

    encoding: str
    text: str
    params: tuple[str | None, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"encoding": self.encoding, "text": self.text}
        if self.params:
            out["params"] = list(self.params)
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
    ``aborted`` (the session ended before an answer came). ``reading`` corrects a command
    recorded in a guessed encoding, once the backend said which one it read it in.
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
    reading: Reading | None = None

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
        if self.reading is not None:
            out["reading"] = self.reading.as_dict()
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy decided for one command, before any of its bytes reach the backend.

    ``action`` is ``allow``, ``block`` or ``hold`` (it waits for a person's approval, then
    goes on as ``allow`` or ``block``). ``rule`` names the rule that decided, or is None
    when no rule matched and the policy's default (or its setting for commands whose effect
    cannot be known) did. ``reason`` is for people: the rule's message, or why.
    """

    action: str
    rule: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "rule": self.rule, "reason": self.reason}
