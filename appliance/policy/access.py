"""Connect-time policy: may this owner, under this identity, reach this backend?

Sans-io and pure: the relay asks once per connection, after it knows the owner and before it
dials the backend, so a refused connection never reaches the backend. The answer is the
binding (for the record) and, when refused, a SQLSTATE and a message for the client:

- ``28000`` (invalid authorization): no identity is bound to the owner and unbound
  connections are refused, or the bound identity has expired;
- ``42501`` (insufficient privilege): the identity is not one the backend admits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.config import Backend
from appliance.identity.bindings import Binding, Bindings
from appliance.model import Owner
from appliance.protocols.handler import DENIED, NOT_BOUND

HOW_TO_BIND = "run `witness login`, or start the agent with `witness run -- COMMAND`"


@dataclass(frozen=True, slots=True)
class Refusal:
    why: str  # the relay's reason (appliance.protocols.handler); the protocol says it its way
    message: str


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _owner_text(owner: Owner) -> str:
    parts = [f"uid {owner.uid}" if owner.uid is not None else "an unknown owner"]
    if owner.cgroup:
        parts.append(f"cgroup {owner.cgroup}")
    return ", ".join(parts)


def admits(backend: Backend, binding: Binding) -> bool:
    """Whether the backend's allow lists name the identity (an email or subject, or a group)."""
    if not backend.restricted:
        return True
    identity = binding.identity
    email = (identity.email or "").lower()
    # A subject matches exactly; an email whatever its case.
    if any(
        n == identity.subject or (email and n.lower() == email) for n in backend.allow_identities
    ):
        return True
    return any(g in identity.groups for g in backend.allow_groups)


class Access:
    """The bindings, and what a connection with none gets (``refuse`` or ``allow``)."""

    def __init__(
        self, bindings: Bindings, unbound: str = "refuse", clock: Callable[[], float] = time.time
    ) -> None:
        self.bindings = bindings
        self.unbound = unbound
        self.clock = clock

    def admit(self, backend: Backend, owner: Owner) -> tuple[Binding | None, Refusal | None]:
        binding = self.bindings.resolve(owner)
        if binding is None:
            if self.unbound == "refuse":
                return None, Refusal(
                    NOT_BOUND,
                    f"no identity is bound to this connection's owner ({_owner_text(owner)}); "
                    f"{HOW_TO_BIND}",
                )
            if backend.restricted:
                return None, Refusal(
                    NOT_BOUND,
                    f"backend {backend.name} admits only the identities and groups it names, "
                    f"and this connection has no identity ({_owner_text(owner)}); {HOW_TO_BIND}",
                )
            return None, None
        if binding.expired(self.clock()):
            assert binding.expires is not None
            return binding, Refusal(
                NOT_BOUND,
                f"the identity {binding.describe()} expired at {_when(binding.expires)}; "
                f"{HOW_TO_BIND} again",
            )
        if not admits(backend, binding):
            allowed = [*backend.allow_identities, *(f"group {g}" for g in backend.allow_groups)]
            return binding, Refusal(
                DENIED,
                f"{binding.identity.label} may not connect to backend {backend.name} "
                f"(it admits {', '.join(allowed)})",
            )
        return binding, None
