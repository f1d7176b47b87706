"""A small lexer for PostgreSQL's SQL: where each token starts and ends, and what a literal says.

PostgreSQL's parse tree gives the location of a node, not of every token in it (a password
option's location is its keyword's; the password itself has none). Redaction needs the exact
span of the literal that follows, so it reads tokens from that location with this lexer, which
follows the boundaries of PostgreSQL's own scanner (``scan.l``): comments (``--`` and nested
``/* */``), quoted identifiers (``"..."``, ``U&"..."``), every literal form (``'...'``,
``E'...'``, ``U&'...' UESCAPE '!'``, ``N'...'``, ``B'...'``, ``X'...'``, ``$tag$...$tag$``)
and the continuation of a quoted literal over a newline. A literal, identifier or comment that
the text cuts off runs to the end of the text (its token says ``closed=False``): an unfinished
literal is still a literal, never a run of keywords.

It assumes ``standard_conforming_strings`` is on (the default since PostgreSQL 9.1): in
``'...'`` a backslash is an ordinary character.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

IDENT = "ident"  # a keyword or an unquoted identifier; value: lower-cased (ASCII, as PostgreSQL)
QIDENT = "qident"  # a quoted identifier; value: its name
STRING = "string"  # any literal in quotes or dollar quotes; value: what it says
PARAM = "param"  # $n; value: n, in digits
NUMBER = "number"
OP = "op"  # an operator: a run of + - * / < > = ~ ! @ # % ^ & | ` ?
PUNCT = "punct"  # ( ) [ ] , ; : . and anything else of one character

_SPACE = " \t\n\r\f\v"
_OP_CHARS = frozenset("+-*/<>=~!@#%^&|`?")
_IDENT_START = re.compile(r"[A-Za-z_\x80-\U0010ffff]")
_IDENT = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_PARAM = re.compile(r"\$[0-9]+")
_NUMBER = re.compile(
    r"0[xX][0-9A-Fa-f_]+|0[oO][0-7_]+|0[bB][01_]+"
    r"|(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9]+)?"
)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True, slots=True)
class Token:
    """One token: ``text[start:end]`` is all of it (a literal's prefix, quotes, continuation
    lines and ``UESCAPE`` clause included)."""

    kind: str
    start: int
    end: int
    value: str
    closed: bool = True
    pieces: tuple[str, ...] = ()  # a continued literal's parts, as written, each in its quotes


def skip_space(text: str, pos: int) -> int:
    """The position of the next token at or after ``pos``: past whitespace and comments."""
    n = len(text)
    while pos < n:
        c = text[pos]
        if c in _SPACE:
            pos += 1
        elif text.startswith("--", pos):
            pos = _line_end(text, pos)
        elif text.startswith("/*", pos):
            pos = _block_comment_end(text, pos)
        else:
            break
    return pos


def _line_end(text: str, pos: int) -> int:
    ends = [i for i in (text.find("\n", pos), text.find("\r", pos)) if i >= 0]
    return min(ends) if ends else len(text)


def _block_comment_end(text: str, pos: int) -> int:
    """The end of the ``/* */`` comment at ``pos``: they nest, as in PostgreSQL."""
    depth, n = 0, len(text)
    while pos < n:
        if text.startswith("/*", pos):
            depth += 1
            pos += 2
        elif text.startswith("*/", pos):
            depth -= 1
            pos += 2
            if depth == 0:
                return pos
        else:
            pos += 1
    return n


def tokens(text: str, pos: int = 0) -> Iterator[Token]:
    """The tokens of ``text`` from ``pos`` on (``pos`` must not be inside a token)."""
    n = len(text)
    while True:
        pos = skip_space(text, pos)
        if pos >= n:
            return
        token = _token_at(text, pos)
        yield token
        pos = token.end


def _token_at(text: str, pos: int) -> Token:
    c = text[pos]
    two = text[pos : pos + 2].lower()
    if c == "'":
        return _quoted_literal(text, pos, pos, "'")
    if two in ("e'", "n'", "b'", "x'"):
        return _quoted_literal(text, pos, pos + 1, "e" if two == "e'" else "'")
    if two == "u&" and text[pos + 2 : pos + 3] == "'":
        return _quoted_literal(text, pos, pos + 2, "u")
    if c == '"' or (two == "u&" and text[pos + 2 : pos + 3] == '"'):
        return _quoted_ident(text, pos)
    if c == "$":
        match = _PARAM.match(text, pos)
        if match:
            return Token(PARAM, pos, match.end(), match.group()[1:])
        match = _DOLLAR_TAG.match(text, pos)
        if match:
            return _dollar_literal(text, pos, match.group())
        return Token(PUNCT, pos, pos + 1, c)
    if _IDENT_START.match(c):
        match = _IDENT.match(text, pos)
        assert match is not None
        return Token(IDENT, pos, match.end(), match.group().translate(_ASCII_LOWER))
    if c.isdigit() or (c == "." and text[pos + 1 : pos + 2].isdigit()):
        match = _NUMBER.match(text, pos)
        assert match is not None
        return Token(NUMBER, pos, match.end(), match.group())
    if c in _OP_CHARS:
        end = pos + 1
        n = len(text)
        while end < n and text[end] in _OP_CHARS:
            if text.startswith("--", end) or text.startswith("/*", end):
                break
            end += 1
        return Token(OP, pos, end, text[pos:end])
    return Token(PUNCT, pos, pos + 1, c)


def _quoted_literal(text: str, start: int, quote: int, mode: str) -> Token:
    """A literal in single quotes; ``mode`` is ``'`` (standard, also N, B, X), ``e`` or ``u``.

    After each closing quote, a newline-separated ``'...'`` continues the same literal.
    """
    n = len(text)
    pieces: list[str] = []
    bodies: list[str] = []
    pos = quote
    closed = True
    while True:
        body_start = pos + 1
        pos = body_start
        while True:
            if pos >= n:
                closed = False
                break
            ch = text[pos]
            if ch == "\\" and mode == "e":
                pos += 2
            elif ch == "'":
                if text.startswith("''", pos):
                    pos += 2
                else:
                    break
            else:
                pos += 1
        pos = min(pos, n)
        bodies.append(text[body_start:pos])
        if not closed:
            pieces.append(text[quote:pos])
            end = n
            break
        pos += 1  # the closing quote
        pieces.append(text[quote:pos])
        end = pos
        following = _continuation(text, pos)
        if following is None:
            break
        quote = pos = following
    escape = "\\"
    if mode == "u" and closed:
        uescape = _uescape(text, end)
        if uescape is not None:
            end, escape = uescape
    joined = "".join(bodies)
    if mode == "e":
        value = _decode_e(joined)
    elif mode == "u":
        value = _decode_u(joined.replace("''", "'"), escape)
    else:
        value = joined.replace("''", "'")
    return Token(STRING, start, end, value, closed, tuple(pieces) if len(pieces) > 1 else ())


def _continuation(text: str, pos: int) -> int | None:
    """The quote that continues a literal closed just before ``pos``, if one does.

    PostgreSQL joins ``'a'`` and ``'b'`` into one literal when only whitespace with at least
    one newline (and ``--`` comments, each ended by its newline) separates them.
    """
    n = len(text)
    newline = False
    while pos < n:
        ch = text[pos]
        if ch in "\n\r":
            newline = True
            pos += 1
        elif ch in " \t\f\v":
            pos += 1
        elif text.startswith("--", pos):
            pos = _line_end(text, pos)
            if pos >= n:
                return None
        else:
            break
    if newline and pos < n and text[pos] == "'":
        return pos
    return None


def _uescape(text: str, pos: int) -> tuple[int, str] | None:
    """A ``UESCAPE 'c'`` clause after a ``U&`` literal ending at ``pos``: its end and ``c``."""
    word = skip_space(text, pos)
    match = _IDENT.match(text, word)
    if not match or match.group().lower() != "uescape":
        return None
    quote = skip_space(text, match.end())
    if not text.startswith("'", quote):
        return None
    close = text.find("'", quote + 1)
    if close < 0:
        return len(text), "\\"
    return close + 1, text[quote + 1 : close] or "\\"


def _quoted_ident(text: str, start: int) -> Token:
    unicode = text[start] != '"'
    quote = start + 2 if unicode else start
    n = len(text)
    pos = quote + 1
    while True:
        close = text.find('"', pos)
        if close < 0:
            name = text[quote + 1 :].replace('""', '"')
            return Token(QIDENT, start, n, name, closed=False)
        if text.startswith('""', close):
            pos = close + 2
            continue
        break
    name = text[quote + 1 : close].replace('""', '"')
    end = close + 1
    if unicode:
        escape = "\\"
        uescape = _uescape(text, end)
        if uescape is not None:
            end, escape = uescape
        name = _decode_u(name, escape)
    return Token(QIDENT, start, end, name)


def _dollar_literal(text: str, start: int, tag: str) -> Token:
    body = start + len(tag)
    close = text.find(tag, body)
    if close < 0:
        return Token(STRING, start, len(text), text[body:], closed=False)
    return Token(STRING, start, close + len(tag), text[body:close])


_E_ESCAPE = re.compile(
    r"''|\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))", re.S
)
_E_SINGLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _decode_e(body: str) -> str:
    """What an ``E'...'`` body says: octal and hex escapes are bytes, read as UTF-8."""
    out: list[str] = []
    raw = bytearray()
    pos = 0
    for match in _E_ESCAPE.finditer(body):
        octal, hexa, u4, u8, single = match.groups()
        if octal is not None or hexa is not None:
            if match.start() > pos:
                out.append(raw.decode("utf-8", "replace"))
                raw.clear()
                out.append(body[pos : match.start()])
            raw.append(int(octal, 8) & 0xFF if octal is not None else int(hexa, 16))
            pos = match.end()
            continue
        out.append(raw.decode("utf-8", "replace"))
        raw.clear()
        out.append(body[pos : match.start()])
        if u4 is not None or u8 is not None:
            out.append(_code_point(int(u4 or u8, 16)))
        elif single is not None:
            out.append(_E_SINGLE.get(single, single))
        else:
            out.append("'")
        pos = match.end()
    out.append(raw.decode("utf-8", "replace"))
    out.append(body[pos:])
    return _combine_surrogates("".join(out))


def _decode_u(body: str, escape: str) -> str:
    """What a ``U&`` body says, with ``escape`` as its escape character."""
    out: list[str] = []
    pos, n = 0, len(body)
    while pos < n:
        ch = body[pos]
        if ch != escape:
            out.append(ch)
            pos += 1
        elif body.startswith(escape, pos + 1):
            out.append(escape)
            pos += 2
        elif body[pos + 1 : pos + 2] == "+" and _is_hex(body[pos + 2 : pos + 8], 6):
            out.append(_code_point(int(body[pos + 2 : pos + 8], 16)))
            pos += 8
        elif _is_hex(body[pos + 1 : pos + 5], 4):
            out.append(_code_point(int(body[pos + 1 : pos + 5], 16)))
            pos += 5
        else:
            out.append(ch)
            pos += 1
    return _combine_surrogates("".join(out))


def _is_hex(digits: str, length: int) -> bool:
    return len(digits) == length and all(d in "0123456789abcdefABCDEF" for d in digits)


def _code_point(value: int) -> str:
    return chr(value) if value <= 0x10FFFF else "\ufffd"


def _combine_surrogates(value: str) -> str:
    """Join surrogate pairs that escapes spelled separately; a lone one becomes U+FFFD."""
    if not any("\ud800" <= ch <= "\udfff" for ch in value):
        return value
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
