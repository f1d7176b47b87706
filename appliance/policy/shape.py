"""A text's shape: the text with its literal values taken out, so that the decisions about
``... WHERE aid = 1`` and ``... WHERE aid = 2`` are made once.

Nothing a rule matches depends on a literal's value (the kinds, the tables and functions
named, the WHERE clause's columns, how many statements there are), but every literal value
makes a new text: a simple-protocol client such as psql or pgbench sends a new text for
every row it touches. The shape is the key the decisions are cached by.

Two texts with the same shape must be the same but for the values of literals. So the shape
is made by lexing the text as PostgreSQL does, and only for the plainest texts: an integer
of up to 9 digits, a decimal, or a string in plain single quotes with no backslash in it, is
replaced by a mark for its kind, a NUL and a letter (no text holds a NUL, so a shape is never
the text of another command); everything else is kept as it is, comments and quoted
identifiers included. A text with anything less plain (an
escape string, a dollar-quoted string, a string with a prefix, a backslash inside quotes,
where ``standard_conforming_strings`` would change its meaning; an unterminated quote or
comment) has no shape, and is decided by its own text.
"""

from __future__ import annotations

# One mark per kind of literal: the grammar takes a string where it takes no number (a
# typed literal, ``date '2024-01-01'``), and an integer where it takes no decimal.
_STRING = "\0s"
_INTEGER = "\0i"
_DECIMAL = "\0f"
_INT_DIGITS = 9  # longer integers may not fit 32 bits, and the lexer makes them decimals


def _digit(c: str) -> bool:
    return "0" <= c <= "9"  # ASCII only, as PostgreSQL's lexer: other digits are letters


def _word(c: str) -> bool:
    """A character that continues an identifier (or a keyword, or a parameter's number)."""
    return "a" <= c <= "z" or "A" <= c <= "Z" or _digit(c) or c in "_$" or ord(c) >= 0x80


def shape(text: str) -> str | None:
    """The text with each plain literal replaced by a NUL, or None if it has no shape."""
    out: list[str] = []
    n = len(text)
    i = 0
    copied = 0  # text[copied:i] is yet to be copied
    changed = False
    while i < n:
        c = text[i]
        if c == "'":
            if i > 0 and (_word(text[i - 1]) or text[i - 1] == "&"):
                return None  # E'..', B'..', X'..', N'..', U&'..': not plain
            j = i + 1
            while True:
                end = text.find("'", j)
                if end < 0:
                    return None
                if text.find("\\", j, end) >= 0:
                    return None
                if end + 1 < n and text[end + 1] == "'":
                    j = end + 2  # a doubled quote inside
                    continue
                break
            out.append(text[copied:i])
            out.append(_STRING)
            i = copied = end + 1
            changed = True
        elif c == '"':
            end = i + 1
            while True:
                end = text.find('"', end)
                if end < 0:
                    return None
                if end + 1 < n and text[end + 1] == '"':
                    end += 2
                    continue
                break
            i = end + 1
        elif c == "-" and i + 1 < n and text[i + 1] == "-":
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "/" and i + 1 < n and text[i + 1] == "*":
            depth = 1
            i += 2
            while depth:
                close = text.find("*/", i)
                if close < 0:
                    return None
                opened = text.find("/*", i, close)
                if opened >= 0:
                    depth += 1
                    i = opened + 2
                else:
                    depth -= 1
                    i = close + 2
        elif c == "$" and (i == 0 or not _word(text[i - 1])):
            if i + 1 < n and _digit(text[i + 1]):
                i += 2  # a parameter, $1: kept
                while i < n and _digit(text[i]):
                    i += 1
            else:
                return None  # a dollar-quoted string, or something as rare
        elif _digit(c) and (i == 0 or not (_word(text[i - 1]) or text[i - 1] == ".")):
            j = i + 1
            while j < n and _digit(text[j]):
                j += 1
            mark = _INTEGER if j - i <= _INT_DIGITS else ""
            if j < n and text[j] == "." and j + 1 < n and _digit(text[j + 1]):
                j += 1
                mark = _DECIMAL
                while j < n and _digit(text[j]):
                    j += 1
            if not mark or (j < n and (_word(text[j]) or text[j] == ".")):
                return None  # 1e5, 0x1F, 1., 1_000: PostgreSQL versions read these apart
            out.append(text[copied:i])
            out.append(mark)
            i = copied = j
            changed = True
        elif c == "\0":
            return None  # no text holds one: such a text is never the same as another's
        else:
            i += 1
    if not changed:
        return text
    out.append(text[copied:])
    return "".join(out)
