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
the text of another command); everything else is kept as it is, quoted identifiers
included. A text with anything less plain (a comment, whose end only PostgreSQL's lexer may
say; an escape string, a dollar-quoted string, a string with a prefix, a backslash inside
quotes, where ``standard_conforming_strings`` would change its meaning; UESCAPE, whose
literal says how the identifiers before it read; an unterminated quote) has no shape, and
is decided by its own text. Nor is a text whose analysis read a literal's value (EXPLAIN's
``ANALYZE 1``) decided by its shape: the guardrails store such a decision by its text.
"""

from __future__ import annotations

import re

# One mark per kind of literal: the grammar takes a string where it takes no number (a
# typed literal, ``date '2024-01-01'``), and an integer where it takes no decimal.
_STRING = "\0s"
_INTEGER = "\0i"
_DECIMAL = "\0f"
_INT_DIGITS = 9  # longer integers may not fit 32 bits, and the lexer makes them decimals


# Where something may need a closer look: a quote, a dollar, a NUL, the start of a comment,
# or a run of digits. Everything between is copied as it is, at C speed.
_NOTABLE = re.compile(r"['\"$\0]|--|/\*|[0-9]+")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")


def _word(c: str) -> bool:
    """A character that continues an identifier (or a keyword, or a parameter's number):
    ASCII letters and digits, ``_``, ``$`` and every non-ASCII character (other scripts'
    digits among them, which PostgreSQL's lexer takes for letters)."""
    return c in _WORD or ord(c) >= 0x80


def shape(text: str) -> str | None:
    """The text with each plain literal replaced by a mark, or None if it has no shape."""
    if "escape" in text.lower():
        return None  # UESCAPE: a literal that says how the identifiers before it read
    out: list[str] = []
    n = len(text)
    copied = 0  # text[copied:at] is yet to be copied
    at = 0
    search = _NOTABLE.search
    while True:
        found = search(text, at)
        if found is None:
            break
        i = found.start()
        c = text[i]
        before = text[i - 1] if i else " "
        if c == "'":
            if _word(before) or before == "&":
                return None  # E'..', B'..', X'..', N'..', U&'..': not plain
            j = i + 1
            while True:
                end = text.find("'", j)
                if end < 0 or text.find("\\", j, end) >= 0:
                    return None  # unterminated, or a backslash inside
                if end + 1 < n and text[end + 1] == "'":
                    j = end + 2  # a doubled quote inside
                    continue
                break
            out.append(text[copied:i])
            out.append(_STRING)
            at = copied = end + 1
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
            at = end + 1
        elif c in "-/":  # -- or /*
            return None  # a comment: where it ends is for PostgreSQL's lexer alone to say
        elif c == "$":
            if _word(before):
                at = i + 1  # inside an identifier
            elif i + 1 < n and "0" <= text[i + 1] <= "9":
                at = _NUMBER.match(text, i + 1).end()  # type: ignore[union-attr]  # $1: kept
            else:
                return None  # a dollar-quoted string, or something as rare
        elif c == "\0":
            return None  # no text holds one: such a text is never the same as another's
        elif _word(before) or before == ".":
            at = found.end()  # digits inside an identifier (t1), or after a dot
        else:
            number = _NUMBER.match(text, i)
            assert number is not None
            j = number.end()
            if number.group(1) is not None:
                mark = _DECIMAL
            elif j - i <= _INT_DIGITS:
                mark = _INTEGER
            else:
                return None  # it may not fit 32 bits: the lexer makes it a decimal
            if j < n and (_word(text[j]) or text[j] == "."):
                return None  # 1e5, 0x1F, 1., 1_000: PostgreSQL versions read these apart
            out.append(text[copied:i])
            out.append(mark)
            at = copied = j
    if not out:
        return text
    out.append(text[copied:])
    return "".join(out)
