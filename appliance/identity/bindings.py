"""Which identity owns a connection: the bindings from socket owners to OIDC identities.

A binding ties an identity to one of three things:

- ``cgroup``: an agent cgroup made by ``witness run``. Everything in it, and everything it
  spawns, is that identity. Matched by the cgroup's kernel id first (the eBPF record keeps
  it after the process exits), then by its path or an ancestor's.
- ``uid``: a Unix user who ran ``witness login``.
- ``static``: a Unix user bound in the configuration, for service accounts; no expiry.

Resolution takes the most specific: cgroup, then login, then static. A binding that has
expired still resolves, so that the refusal can say so rather than "not bound".

Dynamic bindings are kept in a state file (0600, replaced atomically) so that a restart of
the recorder does not strip running agents of their identities. Expired bindings, and cgroup
bindings whose cgroup is gone, are dropped when the file is read.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config import StaticBinding
from appliance.model import Identity, Owner

log = logging.getLogger(__name__)

CGROUP = "cgroup"
UID = "uid"
STATIC = "static"


class BindingError(Exception):
    """A binding cannot be made or read: the message says why."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is on the other end of the control socket, as the kernel says (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int
    cgroup: str | None = None
    start: int | None = None
    """The process's start time (clock ticks after boot): with the pid, names it uniquely."""

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "uid": self.uid, "gid": self.gid, "cgroup": self.cgroup}


@dataclass(frozen=True, slots=True)
class Binding:
    identity: Identity
    kind: str
    target: str
    """The cgroup path, or the uid as text."""
    expires: float | None = None
    cgroup_id: int | None = None
    uid: int | None = None
    bound_at: float = 0.0
    by: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict, compare=False)
    """The identity as sessions and commands record it; made once, shared by every event."""

    def __post_init__(self) -> None:
        record = self.identity.as_dict()
        record["binding"] = {"kind": self.kind, "target": self.target, "expires": self.expires}
        object.__setattr__(self, "record", record)

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now

    def describe(self) -> str:
        """For messages: ``alice@example.test (cgroup /witness-agents/run-1f2e)``."""
        where = f"uid {self.target}" if self.kind in (UID, STATIC) else f"cgroup {self.target}"
        return f"{self.identity.label} ({where}{' static' if self.kind == STATIC else ''})"

    def event(self, action: str, by: Caller | None, **extra: Any) -> dict[str, Any]:
        """The payload of the trail's ``binding`` event for a change to this binding."""
        return {
            "action": action,
            "kind": self.kind,
            "target": self.target,
            "cgroup_id": self.cgroup_id,
            "identity": self.identity.as_dict(),
            "expires": self.expires,
            "by": None if by is None else by.as_dict(),
            **extra,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity.as_dict(),
            "kind": self.kind,
            "target": self.target,
            "expires": self.expires,
            "cgroup_id": self.cgroup_id,
            "uid": self.uid,
            "bound_at": self.bound_at,
            "by": self.by,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Binding:
        ident = data["identity"]
        return cls(
            identity=Identity(
                issuer=str(ident["issuer"]),
                subject=str(ident["subject"]),
                email=ident.get("email"),
                name=ident.get("name"),
                groups=tuple(str(g) for g in ident.get("groups", ())),
            ),
            kind=str(data["kind"]),
            target=str(data["target"]),
            expires=None if data.get("expires") is None else float(data["expires"]),
            cgroup_id=data.get("cgroup_id"),
            uid=data.get("uid"),
            bound_at=float(data.get("bound_at", 0.0)),
            by=dict(data.get("by") or {}),
        )


def _uid_of(user: str) -> int:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise BindingError(f"identity.binding: no Unix user named {user!r} on this host") from None


def _within(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


class Bindings:
    """The live bindings, and the static ones from the configuration."""

    def __init__(
        self,
        static: Iterable[StaticBinding] = (),
        state: Path | None = None,
        clock: Callable[[], float] = time.time,
        cgroup_exists: Callable[[Binding], bool] | None = None,
    ) -> None:
        self._clock = clock
        self._state = state
        self._static: dict[int, Binding] = {}
        for item in static:
            uid = _uid_of(item.user)
            self._static[uid] = Binding(
                Identity(item.issuer, item.subject, item.email, item.name, item.groups),
                STATIC,
                str(uid),
                uid=uid,
            )
        self._by_uid: dict[int, Binding] = {}
        self._by_cgroup: dict[str, Binding] = {}
        self._by_cgroup_id: dict[int, Binding] = {}
        if state is not None:
            self._load(state, cgroup_exists)

    # --- reading -----------------------------------------------------------------------

    def resolve(self, owner: Owner) -> Binding | None:
        """The binding for a connection's owner (possibly expired), or None."""
        if owner.cgroup_id is not None:
            found = self._by_cgroup_id.get(owner.cgroup_id)
            if found is not None:
                return found
        if owner.cgroup is not None and self._by_cgroup:
            found = self._cgroup_binding(owner.cgroup)
            if found is not None:
                return found
        if owner.uid is None:
            return None
        return self._by_uid.get(owner.uid) or self._static.get(owner.uid)

    def _cgroup_binding(self, path: str) -> Binding | None:
        best: Binding | None = None
        for target, binding in self._by_cgroup.items():
            if _within(path, target) and (best is None or len(target) > len(best.target)):
                best = binding
        return best

    def for_caller(self, caller: Caller) -> Binding | None:
        """The binding that applies to a control-socket caller (what ``whoami`` shows)."""
        if caller.cgroup is not None:
            found = self._cgroup_binding(caller.cgroup)
            if found is not None:
                return found
        return self._by_uid.get(caller.uid) or self._static.get(caller.uid)

    def live(self) -> list[Binding]:
        """Every dynamic binding, oldest first."""
        return sorted([*self._by_uid.values(), *self._by_cgroup.values()], key=lambda b: b.bound_at)

    # --- changing ----------------------------------------------------------------------

    def bind_uid(
        self, uid: int, identity: Identity, expires: float, by: Caller
    ) -> tuple[Binding, Binding | None]:
        """Bind ``uid`` (a login); returns the new binding and the one it replaced."""
        binding = Binding(
            identity, UID, str(uid), expires, uid=uid, bound_at=self._clock(), by=by.as_dict()
        )
        old = self._by_uid.get(uid)
        self._by_uid[uid] = binding
        self._save()
        return binding, old

    def bind_cgroup(
        self, path: str, cgroup_id: int, identity: Identity, expires: float | None, by: Caller
    ) -> Binding:
        """Bind a fresh agent cgroup (a ``witness run``)."""
        binding = Binding(
            identity,
            CGROUP,
            path,
            expires,
            cgroup_id=cgroup_id,
            uid=by.uid,
            bound_at=self._clock(),
            by=by.as_dict(),
        )
        self._by_cgroup[path] = binding
        self._by_cgroup_id[cgroup_id] = binding
        self._save()
        return binding

    def restore(self, binding: Binding) -> None:
        """Put back a binding exactly as it was (undoing a change the trail refused)."""
        if binding.kind == UID:
            self._by_uid[int(binding.target)] = binding
        elif binding.kind == CGROUP and binding.cgroup_id is not None:
            self._by_cgroup[binding.target] = binding
            self._by_cgroup_id[binding.cgroup_id] = binding
        self._save()

    def unbind(self, binding: Binding) -> None:
        """Remove a dynamic binding (a logout, an expiry, a cgroup that is gone)."""
        if binding.kind == STATIC:
            raise BindingError(
                f"uid {binding.target} is bound to {binding.identity.label} by the "
                "configuration (identity.binding); only an operator can change that"
            )
        if binding.kind == UID:
            if self._by_uid.get(int(binding.target)) is binding:
                del self._by_uid[int(binding.target)]
        else:
            if self._by_cgroup.get(binding.target) is binding:
                del self._by_cgroup[binding.target]
            if binding.cgroup_id is not None:
                self._by_cgroup_id.pop(binding.cgroup_id, None)
        self._save()

    def expired(self, now: float | None = None) -> list[Binding]:
        """The dynamic bindings whose tokens have expired (they stay until unbound)."""
        now = self._clock() if now is None else now
        return [b for b in self.live() if b.expired(now)]

    # --- the state file ----------------------------------------------------------------

    def _save(self) -> None:
        """Keep the live bindings in the state file. A failure is logged, not raised: the
        trail has the binding events, and the worst a lost state file does is fail closed
        (after a restart, the agents it held are refused until they bind again)."""
        if self._state is None:
            return
        data = {"bindings": [b.as_dict() for b in self.live()]}
        tmp = self._state.with_name(self._state.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._state)
        except OSError as exc:
            log.error("%s: cannot keep the bindings across a restart: %s", self._state, exc)

    def _load(self, state: Path, cgroup_exists: Callable[[Binding], bool] | None) -> None:
        try:
            text = state.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BindingError(f"{state}: cannot read the bindings: {exc.strerror}") from None
        try:
            items = json.loads(text)["bindings"]
            loaded = [Binding.from_dict(item) for item in items]
        except (ValueError, KeyError, TypeError) as exc:
            raise BindingError(
                f"{state}: not a bindings file ({exc!r}); move it aside to start without "
                "the bindings it held"
            ) from None
        now = self._clock()
        for binding in loaded:
            if binding.expired(now):
                continue
            if binding.kind == UID:
                self._by_uid[int(binding.target)] = binding
            elif binding.kind == CGROUP and binding.cgroup_id is not None:
                if cgroup_exists is not None and not cgroup_exists(binding):
                    continue
                self._by_cgroup[binding.target] = binding
                self._by_cgroup_id[binding.cgroup_id] = binding
