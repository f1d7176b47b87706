"""The guardrail rules as the configuration states them: validated at load, every error naming
the rule (by index and name) and the key.

They live in witness.toml's ``[policy]`` table, or in a policy file that table names
(``[policy] file = "policy.toml"``, relative to the configuration's directory) with the same
keys at its top level; never both. The keys:

- ``default``: ``allow`` (the default) or ``block``, for a command no rule matches;
- ``unknown``: ``block`` (the default) or ``allow``, for a statement whose effect cannot be
  known from its text and that no rule matches;
- ``functions``: functions allowed beyond the built-in list (:mod:`.functions`), as globs;
- ``rules``: an array of tables, tried in order for each statement; the first that matches
  decides. Each has a unique ``name``, an ``action`` (``allow``, ``block``, or ``hold``: the
  statement waits for a person's approval, see :mod:`.approvals`), for a block or a hold an
  optional ``message`` shown to the client, and match keys, all optional, all of which
  must match: ``subjects``, ``emails``, ``groups`` (the session's identity), ``backends``,
  ``databases``, ``kinds`` (statement kinds or categories), ``reads``, ``writes``,
  ``tables`` (globs, see :mod:`.globs`), ``functions`` (globs), and the flags ``no_where``,
  ``multiple`` and ``unknown`` (each only ``true``). A list matches when any item does.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.policy import globs, kinds, maskrules
from appliance.policy.maskrules import MaskRule

ACTIONS = ("allow", "block", "hold")
LATER = ("mask",)  # a rule's action in the design; masking has rules of its own
IDENTITY_KEYS = ("subjects", "emails", "groups")
LIST_KEYS = (*IDENTITY_KEYS, "backends", "databases", "kinds", "reads", "writes", "tables")
GLOB_KEYS = ("reads", "writes", "tables", "functions")
FLAGS = ("no_where", "multiple", "unknown")
RULE_KEYS = ("name", "action", "message", *LIST_KEYS, "functions", *FLAGS)
TOP_KEYS = ("default", "unknown", "functions", "max_text", "rules", "masks")
MAX_TEXT = 65536  # characters the analysis reads by default; a longer text is unknown


class PolicyError(Exception):
    """The policy is invalid; the message names the rule, the key and what was expected."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule as written. Empty tuples and False flags mean the key was left out."""

    name: str
    action: str
    message: str | None = None
    subjects: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    """Compared ignoring case, as email addresses are in practice."""
    groups: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()
    databases: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    no_where: bool = False
    multiple: bool = False
    unknown: bool = False

    @property
    def text(self) -> str:
        """What a client is told when this rule blocks or holds its command."""
        if self.message:
            return self.message
        verb = "held for approval" if self.action == "hold" else "blocked"
        return f"{verb} by the policy's rule {self.name!r}"


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The whole policy: no rules, allow by default, block what cannot be known."""

    default: str = "allow"
    unknown: str = "block"
    functions: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    max_text: int = MAX_TEXT
    """The longest text the analysis reads (it runs on the relay's loop): longer is unknown."""
    file: Path | None = None
    """The policy file it was read from, when the configuration names one."""
    masks: tuple[MaskRule, ...] = ()
    """What is masked, for whom (see :mod:`.maskrules`)."""

    def summary(self) -> str:
        """One line for people."""
        count = len(self.rules)
        return (
            f"{count} rule{'' if count == 1 else 's'}, default {self.default},"
            f" unknown {self.unknown}"
            + (f", {len(self.functions)} extra functions" if self.functions else "")
        )


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_keys(table: dict[str, Any], where: str, known: tuple[str, ...]) -> None:
    for key in table:
        if key not in known:
            raise PolicyError(
                f"{where}{key}: unknown key{_suggest(key, known)}"
                f" (expected one of {', '.join(sorted(known))})"
            )


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise PolicyError(f"{where}: expected a non-empty list of strings, got {value!r}")
    return tuple(_string(item, f"{where}[{i}]") for i, item in enumerate(value))


def _globs(value: Any, where: str) -> tuple[str, ...]:
    out = []
    for i, item in enumerate(_strings(value, where)):
        try:
            out.append(globs.check(item))
        except globs.GlobError as exc:
            raise PolicyError(f"{where}[{i}]: {exc}") from None
    return tuple(out)


def _max_text(value: Any, where: str) -> int:
    if type(value) is not int or not 1024 <= value <= 16 << 20:
        raise PolicyError(f"{where}: expected a number of characters, 1024 to 16777216")
    return value


def _either(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]


def _action(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if value in LATER:
        raise PolicyError(
            f"{where}: {value!r} is not an action (expected {_either(choices)};"
            " masking has rules of its own)"
        )
    if value not in choices:
        hint = _suggest(value, choices) if isinstance(value, str) else ""
        raise PolicyError(f"{where}: expected {_either(choices)}, got {value!r}{hint}")
    return str(value)


def _kinds(value: Any, where: str) -> tuple[str, ...]:
    out = []
    for i, item in enumerate(_strings(value, where)):
        word = item.strip().lower()
        if word == "unknown":
            raise PolicyError(
                f"{where}[{i}]: 'unknown' is not a kind: write unknown = true in the rule"
            )
        if word not in kinds.WORDS:
            raise PolicyError(f"{where}: unknown kind {item!r}{_suggest(word, kinds.WORDS)}")
        out.append(word)
    return tuple(out)


def _rule(raw: Any, index: int, prefix: str, seen: dict[str, int]) -> Rule:
    bare = f"{prefix}rules[{index}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{bare}: expected a table ([[rules]]), got {raw!r}")
    name = raw.get("name")
    if name is None:
        raise PolicyError(f"{bare}: name: every rule needs a name")
    name = _string(name, f"{bare}: name").strip()
    where = f"{bare} ({json.dumps(name, ensure_ascii=False)}): "
    if name in seen:
        raise PolicyError(f"{where}name: already the name of rules[{seen[name]}]")
    seen[name] = index
    _unknown_keys(raw, where, RULE_KEYS)
    if "action" not in raw:
        raise PolicyError(f"{where}action: required (allow, block or hold)")
    action = _action(raw["action"], f"{where}action", ACTIONS)
    message = None
    if "message" in raw:
        if action == "allow":
            raise PolicyError(
                f"{where}message: only a block or hold rule has a message for the client"
            )
        message = _string(raw["message"], f"{where}message")
    fields: dict[str, Any] = {}
    for key in LIST_KEYS:
        if key in raw:
            if key == "kinds":
                fields[key] = _kinds(raw[key], f"{where}{key}")
            elif key in GLOB_KEYS:
                fields[key] = _globs(raw[key], f"{where}{key}")
            else:
                fields[key] = _strings(raw[key], f"{where}{key}")
    if "functions" in raw:
        fields["functions"] = _globs(raw["functions"], f"{where}functions")
    for flag in FLAGS:
        if flag in raw:
            if raw[flag] is not True:
                raise PolicyError(
                    f"{where}{flag}: only true is meaningful (leave the key out otherwise),"
                    f" got {raw[flag]!r}"
                )
            fields[flag] = True
    return Rule(name=name, action=action, message=message, **fields)


def parse_document(data: dict[str, Any], prefix: str, file: Path | None = None) -> PolicySettings:
    """The policy in ``data`` (a ``[policy]`` table without ``file``, or a policy file's
    top level); ``prefix`` starts every error's key (``policy.``, or the file's name)."""
    _unknown_keys(data, prefix, TOP_KEYS)
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        raise PolicyError(f"{prefix}rules: expected an array of tables ([[rules]])")
    seen: dict[str, int] = {}
    return PolicySettings(
        default=_action(data.get("default", "allow"), f"{prefix}default", ("allow", "block")),
        unknown=_action(data.get("unknown", "block"), f"{prefix}unknown", ("block", "allow")),
        functions=_globs(data["functions"], f"{prefix}functions") if "functions" in data else (),
        max_text=_max_text(data.get("max_text", MAX_TEXT), f"{prefix}max_text"),
        rules=tuple(_rule(raw, i, prefix, seen) for i, raw in enumerate(raw_rules)),
        file=file,
        masks=_masks(data.get("masks", []), prefix),
    )


def _masks(raw: Any, prefix: str) -> tuple[MaskRule, ...]:
    try:
        return maskrules.parse(raw, prefix)
    except maskrules.MaskError as exc:
        raise PolicyError(str(exc)) from None


def load_file(path: Path) -> PolicySettings:
    """A policy file: the policy's keys at its top level."""
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"{path}: no such policy file") from None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from None
    return parse_document(data, f"{path}: ", path)


def parse(raw: Any, base: Path) -> PolicySettings:
    """witness.toml's ``[policy]`` table: the policy itself, or ``file`` naming where it is
    (relative to ``base``, the configuration's directory)."""
    if not isinstance(raw, dict):
        raise PolicyError(f"policy: expected a table, got {raw!r}")
    if "file" not in raw:
        return parse_document(raw, "policy.")
    others = sorted(k for k in raw if k != "file")
    if others:
        raise PolicyError(
            f"policy.{others[0]}: the policy is in policy.file, so [policy] holds no other key"
            " (put it in the file)"
        )
    return load_file(base / _string(raw["file"], "policy.file"))


def check_backends(policy: PolicySettings, names: Any) -> None:
    """Every backend a rule names is configured: a misspelt one would never match."""
    prefix = f"{policy.file}: " if policy.file is not None else "policy."
    for index, rule in enumerate(policy.rules):
        for i, backend in enumerate(rule.backends):
            if backend not in names:
                known = ", ".join(sorted(names)) or "none are defined"
                where = f"{prefix}rules[{index}] ({json.dumps(rule.name)}): backends[{i}]"
                raise PolicyError(f"{where}: no backend is named {backend!r} ({known})")
    for index, mask in enumerate(policy.masks):
        for i, backend in enumerate(mask.backends):
            if backend not in names:
                known = ", ".join(sorted(names)) or "none are defined"
                where = f"{prefix}masks[{index}] ({json.dumps(mask.name)}): backends[{i}]"
                raise PolicyError(f"{where}: no backend is named {backend!r} ({known})")
