"""The masking rules as the policy states them (``[[masks]]``): validated at load, every error
naming the mask (by index and name) and the key.

A mask says whose results are masked (``subjects``, ``emails``, ``groups``; exempted by
``except_subjects``, ``except_emails``, ``except_groups``), where (``backends``,
``databases``), which values (by column: ``tables``, ``columns``, ``types``, all of which
given must match; by content: ``detectors`` and ``patterns``, within the columns named, or
in every column when none is), where the masking applies (``scope``: the ``trail``, the
``wire``, or both, the default) and how (``method``: ``redact``, ``partial`` or ``token``).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from typing import Any

from appliance.policy import globs

METHODS = ("redact", "partial", "token")
SCOPES = ("trail", "wire")
IDENTITY_KEYS = ("subjects", "emails", "groups")
EXCEPT_KEYS = ("except_subjects", "except_emails", "except_groups")
COLUMN_KEYS = ("tables", "columns", "types")
MASK_KEYS = (
    "name",
    *IDENTITY_KEYS,
    *EXCEPT_KEYS,
    "backends",
    "databases",
    *COLUMN_KEYS,
    "detectors",
    "patterns",
    "scope",
    "method",
    "keep",
    "mark",
)
KEEP = 4  # characters a partial mask shows by default: the last four


class MaskError(ValueError):
    """A mask is invalid; the message names the mask and the key."""


@dataclass(frozen=True, slots=True)
class MaskRule:
    """One ``[[masks]]`` entry as written; empty tuples mean the key was left out."""

    name: str
    subjects: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    except_subjects: tuple[str, ...] = ()
    except_emails: tuple[str, ...] = ()
    except_groups: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()
    databases: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    detectors: tuple[str, ...] = ()
    patterns: tuple[tuple[str, str], ...] = ()
    scope: tuple[str, ...] = SCOPES
    method: str = "redact"
    keep: int = KEEP
    mark: str | None = None

    @property
    def by_column(self) -> bool:
        """Whether the mask names columns (by table, name or type)."""
        return bool(self.tables or self.columns or self.types)

    @property
    def by_content(self) -> bool:
        return bool(self.detectors or self.patterns)

    @property
    def wire(self) -> bool:
        return "wire" in self.scope

    @property
    def trail(self) -> bool:
        return "trail" in self.scope

    @property
    def label(self) -> str:
        """What a redacted value reads: ``[masked:NAME]`` unless ``mark`` says otherwise."""
        return self.mark if self.mark is not None else f"[masked:{self.name}]"


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MaskError(f"{where}: expected a non-empty string, got {value!r}")
    return value.strip()


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise MaskError(f"{where}: expected a non-empty list of strings, got {value!r}")
    return tuple(_string(item, f"{where}[{i}]") for i, item in enumerate(value))


def _globs(value: Any, where: str, *, dotted: bool) -> tuple[str, ...]:
    out = []
    for i, item in enumerate(_strings(value, where)):
        if dotted:
            try:
                out.append(globs.check(item))
            except globs.GlobError as exc:
                raise MaskError(f"{where}[{i}]: {exc}") from None
        else:
            if "." in item:
                raise MaskError(
                    f"{where}[{i}]: a column glob names no table ({item!r}); put the table in"
                    " tables"
                )
            out.append(item.lower())
    return tuple(out)


def _scope(value: Any, where: str) -> tuple[str, ...]:
    items = _strings(value, where)
    for item in items:
        if item not in SCOPES:
            raise MaskError(f"{where}: expected a list of trail and wire, got {item!r}")
    return tuple(s for s in SCOPES if s in items)


def _patterns(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not value:
        raise MaskError(
            f'{where}: expected a table of names and patterns, such as {{ emp_id = "E[0-9]{{6}}" }}'
        )
    return tuple((_string(k, where), _string(v, f"{where}.{k}")) for k, v in value.items())


def check_content(rule: MaskRule, where: str) -> None:
    """The detectors exist and the patterns compile (with the content detectors' engine)."""
    if not rule.by_content:
        return
    try:
        detectors: Any = importlib.import_module("appliance.policy.detectors")
    except ImportError:
        raise MaskError(
            f"{where}detectors: content detection is not available in this build"
        ) from None
    try:
        detectors.Scanner(rule.detectors, rule.patterns)
    except detectors.DetectorError as exc:
        raise MaskError(f"{where}detectors: {exc}") from None


def _mask(raw: Any, index: int, prefix: str, seen: dict[str, int]) -> MaskRule:
    bare = f"{prefix}masks[{index}]"
    if not isinstance(raw, dict):
        raise MaskError(f"{bare}: expected a table ([[masks]]), got {raw!r}")
    if "name" not in raw:
        raise MaskError(f"{bare}: name: every mask needs a name")
    name = _string(raw["name"], f"{bare}: name")
    where = f"{bare} ({json.dumps(name, ensure_ascii=False)}): "
    if name in seen:
        raise MaskError(f"{where}name: already the name of masks[{seen[name]}]")
    seen[name] = index
    for key in raw:
        if key not in MASK_KEYS:
            raise MaskError(f"{where}{key}: unknown key (expected one of {', '.join(MASK_KEYS)})")
    fields: dict[str, Any] = {}
    for key in (*IDENTITY_KEYS, *EXCEPT_KEYS, "backends", "databases", "types", "detectors"):
        if key in raw:
            fields[key] = _strings(raw[key], f"{where}{key}")
    if "types" in fields:
        fields["types"] = tuple(t.lower() for t in fields["types"])
    if "tables" in raw:
        fields["tables"] = _globs(raw["tables"], f"{where}tables", dotted=True)
    if "columns" in raw:
        fields["columns"] = _globs(raw["columns"], f"{where}columns", dotted=False)
    if "patterns" in raw:
        fields["patterns"] = _patterns(raw["patterns"], f"{where}patterns")
    if "scope" in raw:
        fields["scope"] = _scope(raw["scope"], f"{where}scope")
    method = raw.get("method", "redact")
    if method not in METHODS:
        raise MaskError(f"{where}method: expected one of {', '.join(METHODS)}, got {method!r}")
    fields["method"] = method
    if "keep" in raw:
        keep = raw["keep"]
        if method != "partial":
            raise MaskError(f"{where}keep: only a partial mask keeps characters")
        if type(keep) is not int or not 1 <= keep <= 16:
            raise MaskError(f"{where}keep: expected a number of characters, 1 to 16, got {keep!r}")
        fields["keep"] = keep
    if "mark" in raw:
        if method != "redact":
            raise MaskError(f"{where}mark: only a redact mask has a mark")
        fields["mark"] = _string(raw["mark"], f"{where}mark")
    rule = MaskRule(name=name, **fields)
    if not rule.by_column and not rule.by_content:
        raise MaskError(
            f"{where}a mask needs tables, columns or types (by column), or detectors or"
            " patterns (by content)"
        )
    check_content(rule, where)
    return rule


def parse(raw: Any, prefix: str) -> tuple[MaskRule, ...]:
    """The policy's ``masks`` array; ``prefix`` starts every error's key."""
    if not isinstance(raw, list):
        raise MaskError(f"{prefix}masks: expected an array of tables ([[masks]])")
    seen: dict[str, int] = {}
    return tuple(_mask(entry, i, prefix, seen) for i, entry in enumerate(raw))
