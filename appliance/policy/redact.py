"""Which parts of a SQL command are secrets, so that the trail never stores them.

Sans-io: a command's text in, a :class:`Redaction` out (or None, the common case). The
secrets are found in PostgreSQL's own parse tree (``pgparse``, libpg_query): role passwords
(``CREATE|ALTER ROLE|USER|GROUP ... [ENCRYPTED] PASSWORD '...'``, pre-hashed verifiers
included), password-like options of user mappings, servers and other option lists, the
connection string of a subscription, and chosen arguments of chosen functions (pgcrypto's
keys, dblink's connection strings, and whatever the configuration adds). The tree says where
the enclosing node starts; :mod:`appliance.policy.sqllex` reads the exact token from there,
so a secret is never found by searching the text for its value.

A text that does not parse is read by the lexer alone and redacted generously: everything
after a password-like word up to the end of its statement, everything after CONNECTION in a
subscription statement, and the chosen function arguments. When in doubt, more is redacted.

A redacted literal, quotes, prefix and continuation lines included, becomes :data:`REDACTED`
(``'[redacted]'``, a plain SQL string literal), so the recorded text still parses to the same
statement. A secret passed as a bind parameter stays ``$n`` in the text; its number is in
:attr:`Redaction.params`, for the recorder to drop that parameter's value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pgparse

from appliance.policy import sqllex
from appliance.policy.sqllex import Token

REDACTED = "'[redacted]'"
"""What replaces a secret literal in a command's text: a valid SQL string literal."""

SCRUBBED = "[redacted]"
"""What replaces a secret in a server's message."""

DEFAULT_FUNCTIONS: Mapping[str, tuple[int, ...]] = {
    # pgcrypto: the symmetric key, the secret key and its passphrase, the password to hash
    # (and a stored hash passed as the salt), the HMAC key, the raw cipher keys.
    "pgp_sym_encrypt": (2,),
    "pgp_sym_encrypt_bytea": (2,),
    "pgp_sym_decrypt": (2,),
    "pgp_sym_decrypt_bytea": (2,),
    "pgp_pub_decrypt": (2, 3),
    "pgp_pub_decrypt_bytea": (2, 3),
    "crypt": (1, 2),
    "hmac": (2,),
    "encrypt": (2,),
    "decrypt": (2,),
    "encrypt_iv": (2,),
    "decrypt_iv": (2,),
    # dblink: the connection string (dblink_connect's second argument when it has two, the
    # first otherwise; with one argument, dblink and dblink_exec take SQL there, which is
    # redacted too rather than guessed about).
    "dblink_connect": (1, 2),
    "dblink_connect_u": (1, 2),
    "dblink": (1,),
    "dblink_exec": (1,),
}

_SENSITIVE_WORDS = ("password", "passwd", "passphrase", "secret")
"""An option or keyword containing one of these has a secret value."""

_PREFILTER_WORDS = ("pass", "secret", "subscription", "u&")
"""Substrings of every lower-cased text that may hold a secret, besides function names.

``pass`` and ``secret`` cover the sensitive words, in keywords, option names and quoted
identifiers; ``subscription`` the connection strings; ``u&`` any name spelled with Unicode
escapes, which could be any of them.
"""

_CACHE_SIZE = 4096
LONGEST = 256 * 1024
"""Longer texts that may hold a secret are not searched (on the relay's loop, a long parse
would stall every session): they are recorded without their text."""


def _withheld(text: str) -> Redaction:
    return Redaction(
        f"[redacted: {len(text)} characters that may hold a secret, too long to search]",
        frozenset(),
        (),
    )


_MIN_BARE = 4
"""Secrets shorter than this are scrubbed from messages only inside quoted fragments."""


@dataclass(frozen=True, slots=True)
class Redaction:
    """A command with its secrets removed.

    ``text`` is the command with each secret literal replaced by :data:`REDACTED`;
    ``params`` the 1-based numbers of the bind parameters that are secrets; ``secrets`` the
    removed values, decoded and as written, for :meth:`Redactor.scrub` to remove from the
    server's answer.
    """

    text: str
    params: frozenset[int]
    secrets: tuple[str, ...]

    @property
    def changed(self) -> bool:
        """True when the text differs from the command's (not only parameters are secret)."""
        return bool(self.secrets)


class Redactor:
    """Finds secrets in commands; one per configuration, shared by all sessions.

    ``functions`` maps a function name (lower-case, optionally ``schema.name``) to the
    1-based positions of its secret arguments; they are added to :data:`DEFAULT_FUNCTIONS`.
    An unqualified name matches a call in any schema; a qualified one matches calls that
    name that schema or none (the search path could lead there).
    """

    def __init__(self, functions: Mapping[str, Sequence[int]] | None = None) -> None:
        table: dict[str, dict[str | None, set[int]]] = {}
        for name, defaults in DEFAULT_FUNCTIONS.items():
            table.setdefault(name, {}).setdefault(None, set()).update(defaults)
        for name, positions in (functions or {}).items():
            schema, _, last = name.lower().rpartition(".")
            table.setdefault(last, {}).setdefault(schema or None, set()).update(positions)
        self._functions = {
            last: {schema: tuple(sorted(p)) for schema, p in by_schema.items()}
            for last, by_schema in table.items()
        }
        words = {*_PREFILTER_WORDS, *self._functions}
        # A word that contains another is implied by it: fewer substring searches.
        self._prefilter = tuple(
            sorted(w for w in words if not any(o != w and o in w for o in words))
        )
        self._cached = lru_cache(maxsize=_CACHE_SIZE)(self._redact)

    def command(self, text: str) -> Redaction | None:
        """The command without its secrets, or None when it has none."""
        lowered = text.lower()
        for word in self._prefilter:
            if word in lowered:
                if len(text) > LONGEST:
                    return _withheld(text)
                return self._cached(text)
        return None

    def _redact(self, text: str) -> Redaction | None:
        try:
            return self._read(text)
        except Exception:  # a defect here must not let a secret through: read it coarsely
            return self._coarse(text)

    def _coarse(self, text: str) -> Redaction | None:
        try:
            found = _Found(text)
            self._fallback(found, 0, len(text))
            return found.result()
        except Exception:  # nor here: then nothing of the text is kept
            params = frozenset(int(n) for n in _ANY_PARAM.findall(text))
            return Redaction(REDACTED, params, (text,))

    def _read(self, text: str) -> Redaction | None:
        found = _Found(text)
        try:
            statements = pgparse.parse(text)
        except Exception:  # any failure to parse (an encoding's too) leaves the lexer alone
            statements = None
        if statements is None:
            self._fallback(found, 0, len(text))
        else:
            offsets = _Offsets(text)
            for statement in statements:
                start = offsets.char(statement.get("stmt_location", 0))
                length = statement.get("stmt_len", 0)
                end = (
                    offsets.char(statement.get("stmt_location", 0) + length)
                    if length
                    else len(text)
                )
                self._statement(found, offsets, statement["stmt"], start, end)
        return found.result()

    # The parse tree.

    def _statement(
        self, found: _Found, offsets: _Offsets, tree: dict[str, Any], start: int, end: int
    ) -> None:
        for name, node in _nodes(tree):
            if name == "DefElem":
                self._option(found, offsets, node, start, end)
            elif name == "FuncCall":
                self._call(found, offsets, node, start, end)
            elif name in ("DoStmt", "CreateFunctionStmt"):
                self._bodies(found, offsets, node, end)
            elif name in ("CreateSubscriptionStmt", "AlterSubscriptionStmt") and (
                "conninfo" in node
            ):
                self._conninfo(found, node["conninfo"], start, end)

    def _option(
        self, found: _Found, offsets: _Offsets, node: dict[str, Any], start: int, end: int
    ) -> None:
        """A password-like option: ``PASSWORD 'x'``, ``password 'x'``, ``password = 'x'``."""
        if "arg" not in node or not _sensitive(node.get("defname", "")):
            return
        arg = node["arg"]
        if "ParamRef" in arg:
            found.params.add(arg["ParamRef"]["number"])
            return
        stream = sqllex.tokens(found.text, offsets.char(node.get("location", start)))
        token = next(stream, None)  # the keyword or the option's name
        if (
            token is not None
            and token.kind == sqllex.IDENT
            and token.value
            in (
                "encrypted",
                "unencrypted",
            )
        ):
            token = next(stream, None)
        token = next(stream, None)
        if token is not None and token.kind == sqllex.OP and token.value == "=":
            token = next(stream, None)
        value = arg.get("String", {}).get("sval")
        if token is None or token.end > end or token.kind in (sqllex.PUNCT, sqllex.OP):
            # Not where the grammar said: take no chances with the rest of the statement.
            self._rest(found, offsets.char(node["location"]) if "location" in node else start, end)
            return
        found.replace(token, value)

    def _call(
        self, found: _Found, offsets: _Offsets, node: dict[str, Any], start: int, end: int
    ) -> None:
        """A chosen function's secret arguments: each literal in them, each ``$n``."""
        names = [part.get("String", {}).get("sval", "").lower() for part in node["funcname"]]
        positions = self._positions(names)
        if not positions:
            return
        for index, arg in enumerate(node.get("args", ()), start=1):
            if index in positions or "NamedArgExpr" in arg:
                # Named arguments: which parameter they fill is not known here; all of them.
                self._constants(found, offsets, arg, start, end)

    def _positions(self, names: list[str]) -> tuple[int, ...]:
        by_schema = self._functions.get(names[-1]) if names else None
        if not by_schema:
            return ()
        schema = names[-2] if len(names) > 1 else None
        positions: set[int] = set()
        for configured, chosen in by_schema.items():
            if configured is None or schema is None or configured == schema:
                positions.update(chosen)
        return tuple(sorted(positions))

    def _constants(
        self, found: _Found, offsets: _Offsets, tree: dict[str, Any], start: int, end: int
    ) -> None:
        for name, node in _nodes(tree):
            if name == "ParamRef":
                found.params.add(node["number"])
            elif (
                name == "A_Const"
                and "location" in node
                and not (node.get("isnull") or "boolval" in node)
            ):
                stream = sqllex.tokens(found.text, offsets.char(node["location"]))
                token = next(stream, None)
                if token is not None and token.kind == sqllex.OP and token.value in "+-":
                    sign, token = token, next(stream, None)
                    if token is not None:
                        token = Token(token.kind, sign.start, token.end, token.value)
                if (
                    token is None
                    or token.end > end
                    or token.kind
                    not in (
                        sqllex.STRING,
                        sqllex.NUMBER,
                    )
                ):
                    self._rest(found, offsets.char(node["location"]), end)
                    continue
                value = node.get("sval", {}).get("sval") if "sval" in node else None
                found.replace(token, value)

    def _bodies(self, found: _Found, offsets: _Offsets, node: dict[str, Any], end: int) -> None:
        """The body of a DO block or a function, read as a command of its own.

        A PL/pgSQL body does not parse as SQL, so it is read by the lexer alone. A body in
        dollar quotes keeps its text, with its own secrets redacted; any other literal
        (where the escapes make positions differ) is redacted whole. The body's ``$n`` are
        the function's arguments, not the command's parameters: they are not reported.
        """
        for option in [*node.get("options", ()), *node.get("args", ())]:
            element = option.get("DefElem", {})
            if element.get("defname") != "as" or "location" not in element:
                continue
            stream = sqllex.tokens(found.text, offsets.char(element["location"]))
            for token in stream:
                if token.start >= end or (token.kind == sqllex.PUNCT and token.value == ";"):
                    break
                if token.kind != sqllex.STRING:
                    continue
                inner = self._cached(token.value)
                if inner is not None and inner.changed:
                    raw = found.text[token.start : token.end]
                    if raw.startswith("$") and token.closed:
                        tag = raw[: raw.index("$", 1) + 1]
                        found.rewrite(token, tag + inner.text + tag, inner.secrets)
                    else:
                        found.replace(token, None)
                        for secret in inner.secrets:
                            found.secrets[secret] = None

    def _conninfo(self, found: _Found, conninfo: str, start: int, end: int) -> None:
        """A subscription's ``CONNECTION '...'``: the whole connection string."""
        previous: Token | None = None
        for token in sqllex.tokens(found.text, start):
            if token.start >= end:
                break
            if (
                previous is not None
                and previous.kind == sqllex.IDENT
                and (previous.value == "connection")
            ):
                if token.kind == sqllex.STRING:
                    found.replace(token, conninfo)
                    return
                if token.kind == sqllex.PARAM:
                    found.params.add(int(token.value))
                    return
            previous = token
        self._rest_chars(found, start, end)

    def _rest(self, found: _Found, position: int, end: int) -> None:
        """Everything after the token at ``position`` to the statement's end."""
        stream = sqllex.tokens(found.text, position)
        first = next(stream, None)
        if first is not None:
            self._rest_chars(found, first.end, end)

    @staticmethod
    def _rest_chars(found: _Found, start: int, end: int) -> None:
        span = [t for t in sqllex.tokens(found.text[:end], start)]
        found.replace_run(span)

    # The lexer alone, for a text that does not parse.

    def _fallback(self, found: _Found, start: int, end: int) -> None:
        for statement in _split(list(sqllex.tokens(found.text[:end], start))):
            subscription = any(
                t.kind == sqllex.IDENT and t.value == "subscription" for t in statement
            )
            for index, token in enumerate(statement):
                if token.kind in (sqllex.IDENT, sqllex.QIDENT) and (
                    _sensitive(token.value.lower())
                    or (subscription and token.kind == sqllex.IDENT and token.value == "connection")
                ):
                    found.replace_run(statement[index + 1 :])
                    break
            self._fallback_calls(found, statement)

    def _fallback_calls(self, found: _Found, statement: list[Token]) -> None:
        for index, token in enumerate(statement):
            if token.kind not in (sqllex.IDENT, sqllex.QIDENT):
                continue
            names = [token.value.lower()]
            if (
                index >= 2
                and statement[index - 1].value == "."
                and statement[index - 2].kind in (sqllex.IDENT, sqllex.QIDENT)
            ):
                names.insert(0, statement[index - 2].value.lower())
            positions = self._positions(names)
            if not positions or index + 1 >= len(statement):
                continue
            if statement[index + 1].kind != sqllex.PUNCT or statement[index + 1].value != "(":
                continue
            for number, arg in enumerate(_arguments(statement, index + 2), start=1):
                named = any(t.kind == sqllex.OP and t.value in ("=>", ":=") for t in arg)
                if number in positions or named:
                    for t in arg:
                        if t.kind in (sqllex.STRING, sqllex.NUMBER):
                            found.replace(t, None)
                        elif t.kind == sqllex.PARAM:
                            found.params.add(int(t.value))

    # Server messages.

    def scrub(self, message: str, secrets: Sequence[str]) -> str:
        """``message`` (an error's message, detail, hint, context...) without the secrets.

        Each secret is removed as given and as PostgreSQL would quote it in a message
        (quotes doubled inside a literal, double quotes doubled inside an identifier).
        Secrets of fewer than four characters are removed only inside quoted fragments
        (``"..."``, ``'...'``), where the server echoes a token: everywhere else, removing
        every ``a`` would leave nothing readable, and a bare three-letter word is as likely
        to be the message's own.
        """
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms.update((secret, secret.replace("'", "''"), secret.replace('"', '""')))
        if not forms:
            return message
        long = [f for f in forms if len(f) >= _MIN_BARE]
        short = [f for f in forms if len(f) < _MIN_BARE]
        spans: list[tuple[int, int]] = []
        if long:
            spans += _occurrences(message, long, 0, len(message))
        if short:
            for fragment in _QUOTED.finditer(message):
                spans += _occurrences(message, short, fragment.start() + 1, fragment.end() - 1)
        return _replace_spans(message, spans, SCRUBBED)


_ANY_PARAM = re.compile(r"\$([0-9]{1,9})")
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")


def _occurrences(text: str, forms: list[str], start: int, end: int) -> list[tuple[int, int]]:
    """Every span of ``text[start:end]`` where a form occurs, overlapping ones included."""
    spans = []
    for form in forms:
        at = text.find(form, start, end)
        while at >= 0:
            spans.append((at, at + len(form)))
            at = text.find(form, at + 1, end)
    return spans


def _replace_spans(
    text: str,
    spans: list[tuple[int, int]],
    marker: str,
    rewrites: Mapping[tuple[int, int], str] | None = None,
) -> str:
    """``text`` with each span, overlapping ones merged, replaced by ``marker``.

    A span in ``rewrites`` that nothing else overlaps is replaced by its own text instead.
    """
    if not spans:
        return text
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out: list[str] = []
    position = 0
    for start, end in merged:
        out.append(text[position:start])
        out.append((rewrites or {}).get((start, end), marker))
        position = end
    out.append(text[position:])
    return "".join(out)


class _Found:
    """What a text's secrets are, as they are found: spans, parameters, values."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.spans: list[tuple[int, int]] = []
        self.params: set[int] = set()
        self.secrets: dict[str, None] = {}
        self.rewrites: dict[tuple[int, int], str] = {}

    def replace(self, token: Token, value: str | None) -> None:
        """Redact one token; ``value`` is what the parse tree says it means, if known."""
        if token.kind == sqllex.PARAM:
            self.params.add(int(token.value))
            return
        self.spans.append((token.start, token.end))
        for secret in (value, token.value, self.text[token.start : token.end], *token.pieces):
            if secret:
                self.secrets[secret] = None

    def replace_run(self, run: Sequence[Token]) -> None:
        """Redact a run of tokens as one span; its parameters go to :attr:`params`."""
        if not run:
            return
        for token in run:
            if token.kind == sqllex.PARAM:
                self.params.add(int(token.value))
            elif token.kind != sqllex.PUNCT:
                self.replace(token, None)
        values = [t for t in run if t.kind not in (sqllex.PARAM, sqllex.PUNCT)]
        if values:
            self.spans.append((values[0].start, values[-1].end))

    def rewrite(self, token: Token, text: str, secrets: Sequence[str]) -> None:
        """Replace one token by ``text`` (unless another redaction overlaps it)."""
        self.spans.append((token.start, token.end))
        self.rewrites[(token.start, token.end)] = text
        for secret in secrets:
            self.secrets[secret] = None

    def result(self) -> Redaction | None:
        if not self.spans and not self.params:
            return None
        return Redaction(
            _replace_spans(self.text, self.spans, REDACTED, self.rewrites),
            frozenset(self.params),
            tuple(self.secrets),
        )


class _Offsets:
    """Character offsets from the byte offsets of the parse tree (it counts UTF-8 bytes)."""

    def __init__(self, text: str) -> None:
        self._encoded = None if text.isascii() else text.encode("utf-8")

    def char(self, byte: int) -> int:
        if self._encoded is None:
            return byte
        return len(self._encoded[:byte].decode("utf-8", "replace"))


def _sensitive(name: str) -> bool:
    return any(word in name for word in _SENSITIVE_WORDS)


def _nodes(tree: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every node of a parse tree, as (type name, fields), depth first."""
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key[:1].isupper() and isinstance(value, dict):
                    yield key, value
                if isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _split(run: list[Token]) -> Iterator[list[Token]]:
    """Statements, split at each ``;`` outside parentheses."""
    depth = 0
    current: list[Token] = []
    for token in run:
        if token.kind == sqllex.PUNCT:
            if token.value in "([":
                depth += 1
            elif token.value in ")]":
                depth = max(depth - 1, 0)
            elif token.value == ";" and depth == 0:
                yield current
                current = []
                continue
        current.append(token)
    yield current


def _arguments(statement: list[Token], index: int) -> Iterator[list[Token]]:
    """A call's arguments, from the token after its ``(``: runs split at top-level commas."""
    depth = 0
    current: list[Token] = []
    for token in statement[index:]:
        if token.kind == sqllex.PUNCT and token.value in "([":
            depth += 1
        elif token.kind == sqllex.PUNCT and token.value in ")]":
            if depth == 0:
                break
            depth -= 1
        elif token.kind == sqllex.PUNCT and token.value == "," and depth == 0:
            yield current
            current = []
            continue
        current.append(token)
    yield current


def parse_functions(raw: object, key: str) -> dict[str, tuple[int, ...]]:
    """The ``[capture] redact_functions`` table: name -> a position or a list of positions.

    Raises ValueError naming ``key`` (and the entry) when the table is not that.
    """
    if not isinstance(raw, Mapping):
        raise ValueError(f"{key}: expected a table of function name = argument positions")
    parsed: dict[str, tuple[int, ...]] = {}
    for name, value in raw.items():
        where = f"{key}.{name}"
        if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name.lower()):
            raise ValueError(
                f"{where}: expected a function name, optionally schema-qualified, got {name!r}"
            )
        items = value if isinstance(value, list) else [value]
        if not items or not all(
            isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 100 for p in items
        ):
            raise ValueError(
                f"{where}: expected an argument position (1 to 100) or a non-empty list of"
                f" them, got {value!r}"
            )
        parsed[name.lower()] = tuple(sorted(set(items)))
    return parsed


_FUNCTION_NAME = re.compile(r"(?:[^.\s\"]+\.)?[^.\s\"]+")
