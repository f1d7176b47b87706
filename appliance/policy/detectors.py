"""Sensitive values found in a text, each one validated: what masking hides.

Sans-io and pure: a decoded text in, a sorted list of :class:`Finding` out. A detector first
finds candidates by shape, then keeps only those that pass the checks the value's own standard
defines (a Luhn digit, an IBAN's mod-97, an identity number's check character, a phone number
plan, a JWT's JSON header), so that ordinary numbers and words are not masked by accident.

The built-in detectors (:data:`NAMES`):

- ``email``: ``local@domain`` in ASCII, a dot-atom local part of at most 64 characters and a
  domain of dotted labels that ends in a letter-only (or ``xn--``) top-level label. Quoted
  local parts, address literals and addresses in other scripts are not found, nor are the
  rare local parts with quotes, ``=``, ``/``, braces, ``|`` or a backquote, which are read
  as the text around the address.
- ``phone``: a candidate of 7 to 17 digits with spaces, dots, dashes and brackets, parsed
  and checked against its country's numbering plan by ``phonenumbers``. Without a region
  only international numbers (``+`` and a country code) are found; with ``phone_region`` the
  region's national forms are found too (and so, inevitably, some other figures written like
  that region's numbers). A candidate that starts with an ISO date or is followed by a time
  (``:12``) is a timestamp, not a number; trailing figures after a number are left out
  (``+44 20 7946 0958 2024``), but a number preceded by other figures in one run is missed.
- ``card``: 12 to 19 digits, contiguous or in groups (a first group of 4 digits, then groups
  of 3 to 6) joined by one space or one dash throughout, that starts with 2 to 6 (the payment
  networks' industry digits) and passes Luhn. Grouped digits that run on are tried without
  their last groups, so ``4111 1111 1111 1111 1234`` still yields the card; a number that is
  part of a decimal (``0.4111...``) or of a word is not one.
- ``iban``: a country code, two check digits and 11 to 30 letters or digits, optionally in
  space-separated groups, that ``stdnum.iban`` accepts (mod-97, the country's length and
  structure, and the country's own check where stdnum has one).
- ``national_id``: the identity numbers below, checked by ``stdnum`` (``stdnum.us.ssn`` and
  so on); each has a check character or a structure rare enough in ordinary data:

  - US Social Security number, written ``123-45-6789`` (it has no check digit, so a bare nine
    digit number is not taken for one);
  - UK National Insurance number (``AB 12 34 56 C``; stdnum has none, and it has no check
    character: its allowed letters and prefixes are checked here);
  - French NIR (15 digits, Corsica's ``2A``/``2B`` included, spaced or not; the key is mod-97);
  - German Steuer-IdNr (11 digits, spaced or not: digit-repetition rule and check digit);
  - Spanish DNI (8 digits and a check letter) and NIE (``X``/``Y``/``Z``, 7 digits, letter);
  - Italian codice fiscale (16 characters, any case: birth date and check letter; one whose
    every digit was replaced by a letter, as happens only after seven clashes, is not found);
  - Swedish personnummer, written with its ``-`` or ``+`` (birth date and Luhn);
  - Finnish HETU (birth date, century sign and check character);
  - Brazilian CPF, written ``123.456.789-09`` (two check digits).

  Left out on purpose: the Dutch BSN (any nine digits pass its 11-test one time in eleven, so
  ordinary nine digit ids would be masked), and numbers with no check character written bare.
- ``aws_key``: AWS access key ids and the other unique ids of that family (``AKIA``, ``ASIA``,
  ``AGPA``, ``AIDA``, ``AROA``... and 16 more characters), and a 40-character secret access
  key where it is labelled as one (``aws_secret_access_key = ...``, ``"SecretAccessKey":
  "..."``): a secret key has no shape of its own, so an unlabelled one is not found.
- ``jwt``: a JWS (three base64url segments) or JWE (five) whose first segment decodes to a
  JSON object with a string ``alg``.
- ``private_key``: a PEM block from ``-----BEGIN <label>-----`` to the ``-----END
  <label>-----`` with the same label, for the private key labels (PKCS#8, RSA, DSA, EC,
  OpenSSH, encrypted PKCS#8, OpenSSL's ``ANY``, PGP). A block whose END is missing (a value
  cut short) runs to the end of the text: the key material is there all the same.

Custom patterns are named regular expressions compiled by RE2, whose matching time is linear
in the text whatever the pattern: a pattern cannot be made to backtrack by what a backend
returns. RE2 refuses what it cannot match in linear time (backreferences, lookaround), and
such a pattern is a :class:`DetectorError` that names it. RE2's ``\\d``, ``\\w`` and ``\\b``
are ASCII-only; inline flags such as ``(?i)`` work.

Every text may be scanned (each cell of a result), so the common case is cheap: each
detector first looks for something it cannot do without (an ``@``, a ``+``, a digit,
``PRIVATE KEY``) and stops there. The built-in patterns use Python's ``re`` (cheaper to call
than RE2 on short texts) but are written so that every scan stays linear in the text: their
repetitions are bounded or cannot overlap, an attempt starts only where a value can start
(not inside a word), and nothing is searched for twice.

Findings that overlap are settled into one finding that covers all of them, so that nothing a
detector validated is left showing; it takes the kind of the longest one (on a tie, the one
that starts first, then the first in :data:`NAMES` order, then the custom patterns in the
order given).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import phonenumbers
import re2
from stdnum import iban as stdnum_iban
from stdnum.br import cpf
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.fi import hetu
from stdnum.fr import nir
from stdnum.it import codicefiscale
from stdnum.se import personnummer
from stdnum.us import ssn


class DetectorError(ValueError):
    """A detector that cannot be built: an unknown name, a bad pattern or a bad option (the
    message names which, and why)."""


NAMES: tuple[str, ...] = (
    "email",
    "phone",
    "card",
    "iban",
    "national_id",
    "aws_key",
    "jwt",
    "private_key",
)
"""The built-in detectors, in the order that settles a tie between equal findings."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One sensitive value: ``text[start:end]``, of ``kind`` (a built-in name or the name of
    a custom pattern)."""

    start: int
    end: int
    kind: str


Span = tuple[int, int]
Detect = Callable[[str], Iterator[Span]]
"""A detector: a text in, the spans of the validated values it holds out."""

_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_DIGITS = frozenset("0123456789")
_DIGIT = re.compile(r"[0-9]")
"""Cards, IBANs, identity numbers and phone numbers all hold digits: a text without one (a
name, a word, a sentence) is not searched for them."""


# email

_ATEXT = "A-Za-z0-9!#$%&*+?^_~-"
"""The local part's characters: RFC 5321's, less those that in practice delimit an address
in the text around it (quotes, ``=``, ``/``, braces, ``|``, backquote), so that in
``email='bob@example.com'`` the address is ``bob@example.com``."""
_LOCAL_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.!#$%&*+?^_~-"
)
_LOCAL = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*\Z")
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})(?![A-Za-z0-9-])"
)
_DOMAIN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")
_LOCAL_MAX = 64
_DOMAIN_MAX = 255


def _emails(text: str) -> Iterator[Span]:
    """Each address is found from its ``@``: the local part is read backwards over at most 64
    characters and the domain forwards over at most 255, so a long run of word characters
    costs no more than reading it (a pattern that started at every letter would not)."""
    at = text.find("@")
    while at >= 0:
        floor = max(0, at - _LOCAL_MAX)
        local = _LOCAL.search(text, floor, at)
        if local is not None and not (
            local.start() == floor and floor > 0 and text[floor - 1] in _LOCAL_CHARS
        ):
            ceiling = at + 1 + _DOMAIN_MAX
            domain = _DOMAIN.match(text, at + 1, ceiling)
            if domain is not None and not (
                domain.end() == ceiling < len(text) and text[ceiling] in _DOMAIN_CHARS
            ):
                yield local.start(), domain.end()
                at = text.find("@", domain.end())
                continue
        at = text.find("@", at + 1)


# card

_CARD_CONTIGUOUS = re.compile(
    r"(?<![A-Za-z0-9])(?<![0-9][.,])[2-6][0-9]{11,18}(?![A-Za-z0-9])(?![.,][0-9])"
)
_CARD_GROUPED = re.compile(
    r"(?<![A-Za-z0-9])(?<![0-9][.,])[2-6][0-9]{3}([ -])[0-9]{3,6}(?:\1[0-9]{3,6}){1,4}"
)
_CARD_MIN = 12
_CARD_MAX = 19
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def _luhn(digits: str) -> bool:
    """Whether the last digit of ``digits`` is its Luhn check digit."""
    total = sum(int(d) for d in digits[-1::-2]) + sum(_DOUBLED[int(d)] for d in digits[-2::-2])
    return total % 10 == 0


def _cards(text: str) -> Iterator[Span]:
    """Contiguous numbers are taken whole. A grouped candidate may run on into other figures
    (``4111 1111 1111 1111 1234``), so it is tried without its last groups too, longest
    first; and the search goes on from its second group whether or not it held a card, as
    other figures before a card may pass Luhn too (``2024 4111 1111 | 1111 1111``): the
    overlapping findings are then merged, and the whole card is covered. Each try reads a
    bounded stretch of text."""
    if _DIGIT.search(text) is None:
        return
    for number in _CARD_CONTIGUOUS.finditer(text):
        if _luhn(number.group()):
            yield number.span()
    pos = 0
    while (grouped := _CARD_GROUPED.search(text, pos)) is not None:
        start = grouped.start()
        found = _grouped_card(text, start, grouped.group(), grouped.group(1))
        if found is not None:
            yield start, found
        pos = start + 5  # past the first group and its separator


def _grouped_card(text: str, start: int, written: str, separator: str) -> int | None:
    """Where the longest card written as the first groups of ``written`` ends, if any."""
    groups = written.split(separator)
    while groups:
        digits = "".join(groups)
        end = start + len(separator.join(groups))
        if len(digits) < _CARD_MIN:
            return None
        alone = end == len(text) or (
            text[end] not in _ALNUM
            and not (text[end] in ".," and end + 1 < len(text) and text[end + 1] in _DIGITS)
        )
        if len(digits) <= _CARD_MAX and alone and _luhn(digits):
            return end
        groups.pop()
    return None


# iban

_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}")
_IBAN_MIN = 15


def _ibans(text: str) -> Iterator[Span]:
    """A candidate may run on into a following word (``... 7654 32 ABC``) or the next IBAN,
    so it is cut at each space, longest first, and the search goes on from the cut; a
    candidate written without spaces is taken whole or not at all. The mod-97 sum is checked
    here first, as it rules out nearly every wrong cut cheaply, and stdnum then checks the
    country's length and structure."""
    if _DIGIT.search(text) is None:
        return
    pos = 0
    while (match := _IBAN.search(text, pos)) is not None:
        start, end = match.span()
        pos = start + 1
        cuts = [end] if end == len(text) or text[end] not in _ALNUM else []
        cuts += [k for k in range(end - 1, start, -1) if text[k] == " "]
        for cut in cuts:
            number = text[start:cut].replace(" ", "")
            if len(number) >= _IBAN_MIN and _mod97(number) and stdnum_iban.is_valid(number):
                yield start, cut
                pos = cut
                break


def _mod97(number: str) -> bool:
    """Whether ``number`` (an IBAN, compact, upper case) has a correct mod-97 sum."""
    moved = number[4:] + number[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


# national identity numbers

_NINO_FIRST = "ABCEGHJKLMNOPRSTWXYZ"  # not D F I Q U V
_NINO_SECOND = "ABCEGHJKLMNPRSTWXYZ"  # not D F I O Q U V
_NINO_UNUSED = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def _nino(number: str) -> bool:
    """A UK NINO has no check character: the letters HMRC allocates (the pattern's classes,
    and the prefixes never issued) are the whole check."""
    return number[:2] not in _NINO_UNUSED


_NATIONAL_SPECS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    (r"[0-9]{3}-[0-9]{2}-[0-9]{4}", ssn.is_valid),
    (rf"[{_NINO_FIRST}][{_NINO_SECOND}](?: ?[0-9]{{2}}){{3}} ?[A-D]", _nino),
    (r"[1-478](?: ?[0-9]{2}){2} ?(?:[0-9]{2}|2[AB])(?: ?[0-9]{3}){2} ?[0-9]{2}", nir.is_valid),
    (r"[1-9][0-9](?: ?[0-9]{3}){3}", idnr.is_valid),
    (r"[0-9]{8}-?[A-Z]", dni.is_valid),
    (r"[XYZ]-?[0-9]{7}-?[A-Z]", nie.is_valid),
    (
        r"(?i:[A-Z]{6}[0-9LMNPQRSTUV]{2}[ABCDEHLMPRST][0-9LMNPQRSTUV]{2}"
        r"[A-Z][0-9LMNPQRSTUV]{3}[A-Z])",
        codicefiscale.is_valid,
    ),
    (r"(?:[0-9]{2})?[0-9]{6}[-+][0-9]{4}", personnummer.is_valid),
    (r"[0-9]{6}[-+A-FU-Y][0-9]{3}[0-9A-FHJ-NPR-Y]", hetu.is_valid),
    (r"[0-9]{3}\.[0-9]{3}\.[0-9]{3}-[0-9]{2}", cpf.is_valid),
)
_NATIONAL = tuple(
    (re.compile(rf"(?:{pattern})(?![A-Za-z0-9])"), valid) for pattern, valid in _NATIONAL_SPECS
)
_NATIONAL_ANY = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    + "|".join(pattern for pattern, _ in _NATIONAL_SPECS)
    + r")(?![A-Za-z0-9])"
)


def _national_ids(text: str) -> Iterator[Span]:
    """One pattern that joins every kind finds where a number may start, in a single scan;
    there each kind is tried in turn, so that one kind's failed check cannot hide another
    kind's number at the same place."""
    if _DIGIT.search(text) is None:
        return
    pos = 0
    while (candidate := _NATIONAL_ANY.search(text, pos)) is not None:
        start = candidate.start()
        pos = start + 1
        for pattern, valid in _NATIONAL:
            match = pattern.match(text, start)
            if match is not None and valid(match.group()):
                yield match.span()
                pos = match.end()
                break


# aws_key

_AWS_KEY_ID = re.compile(
    r"(?<![A-Za-z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA|ABIA|ACCA|A3T[A-Z0-9])"
    r"[A-Z0-9]{16}(?![A-Za-z0-9])"
)
_AWS_SECRET = re.compile(
    r"(?i:aws[_-]?secret[_-]?(?:access[_-]?)?key|secret[_-]?access[_-]?key)"
    r"[\"']?[ \t]{0,8}(?::|=>?)[ \t]{0,8}[\"']?"
    r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
)


def _aws_keys(text: str) -> Iterator[Span]:
    """Key ids by their prefix; secret keys only behind their label (the value of the finding
    is the key alone, not the label)."""
    if "A" in text:
        for match in _AWS_KEY_ID.finditer(text):
            yield match.span()
    if "ecret" in text or "ECRET" in text:
        for match in _AWS_SECRET.finditer(text):
            yield match.span(1)


# jwt

_JWT = re.compile(
    r"(?<![A-Za-z0-9_.-])e[wy][A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"
    r"(?:\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*)?(?![A-Za-z0-9_-]|\.[A-Za-z0-9_-])"
)


_JOSE_HEADER_MAX = 64 * 1024


def _jwts(text: str) -> Iterator[Span]:
    """A JOSE header is a JSON object, so its base64url starts with ``ey`` (``{"``) or ``ew``
    (``{`` and a line break); decoding the header is the check."""
    if "." not in text or ("ey" not in text and "ew" not in text):
        return
    for match in _JWT.finditer(text):
        header = match.group().split(".", 1)[0]
        if _jose_header(header):
            yield match.span()


def _jose_header(segment: str) -> bool:
    """Whether ``segment`` is base64url of a JSON object with a string ``alg``. A header
    longer than any real one (certificate chains included) is not decoded, nor is JSON nested
    deeper than the parser's recursion allows."""
    if len(segment) > _JOSE_HEADER_MAX:
        return False
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return False
    return isinstance(header, dict) and isinstance(header.get("alg"), str)


# private_key

_PEM_BEGIN = re.compile(
    r"-----BEGIN ((?:RSA |DSA |EC |OPENSSH |ENCRYPTED |ANY |PGP )?PRIVATE KEY(?: BLOCK)?)-----"
)


def _private_keys(text: str) -> Iterator[Span]:
    """Each block's END is searched for from its BEGIN, and the next BEGIN after that END, so
    the text is read once; a missing END ends the search, as the block runs to the end."""
    if "PRIVATE KEY" not in text:
        return
    pos = 0
    while (begin := _PEM_BEGIN.search(text, pos)) is not None:
        end_marker = f"-----END {begin.group(1)}-----"
        end = text.find(end_marker, begin.end())
        if end < 0:
            yield begin.start(), len(text)
            return
        pos = end + len(end_marker)
        yield begin.start(), pos


# phone

_PHONE_INTERNATIONAL = re.compile(r"(?<![A-Za-z0-9+])\+[0-9](?:[ .()-]{0,2}[0-9]){6,16}")
_PHONE_NATIONAL = re.compile(
    r"(?<![A-Za-z0-9+])(?<![A-Za-z0-9][.-])(?:\+|\()?[0-9](?:[ .()-]{0,2}[0-9]){6,16}"
)
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME_AFTER = re.compile(r":[0-9]")
_DIGIT_GROUP = re.compile(r"[0-9]+")
_PHONE_DIGITS_MIN = 7
_PHONE_TRAILING_DROPS = 3
_PHONE_CACHE = 4096


class _Phones:
    """Phone numbers of one default region (None: international numbers only).

    The candidates are found by a bounded pattern of this module rather than by
    phonenumbers' own matcher, whose scan copies the rest of the text at each time-stamp-like
    candidate and gives up after a fixed number of tries: neither is right for a megabyte of
    text. A candidate glued to a word is part of something else (a UUID, a reference) and is
    skipped; a candidate that runs on into more digits is cut back to its last whole group.
    """

    __slots__ = ("_pattern", "_region")

    def __init__(self, region: str | None) -> None:
        self._region = region
        self._pattern = _PHONE_INTERNATIONAL if region is None else _PHONE_NATIONAL

    def __call__(self, text: str) -> Iterator[Span]:
        if (self._region is None and "+" not in text) or _DIGIT.search(text) is None:
            return
        pos = 0
        while (match := self._pattern.search(text, pos)) is not None:
            start, end = match.span()
            candidate = match.group()
            pos = end
            if end < len(text) and text[end] in _DIGITS:
                # The pattern stopped at its most digits inside a group: a number, if any,
                # ends at an earlier group.
                candidate = candidate.rstrip("0123456789").rstrip(" .()-")
                if sum(c in _DIGITS for c in candidate) < _PHONE_DIGITS_MIN:
                    continue
            elif end < len(text) and text[end] in _ALNUM:
                continue
            if _ISO_DATE.match(candidate) or _TIME_AFTER.match(text, start + len(candidate)):
                continue
            length = _phone_length(candidate, self._region)
            if length is not None:
                yield start, start + length
                pos = start + length


@functools.lru_cache(maxsize=_PHONE_CACHE)
def _phone_length(candidate: str, region: str | None) -> int | None:
    """How much of ``candidate``, from its start, is a valid phone number, if any.

    The whole of it, or, when phonenumbers finds the whole too long for its country, the
    whole less up to three trailing groups of digits (``+44 20 7946 0958 2024``): those are
    cut from the parsed number rather than parsed again, as parsing is the costly step. The
    same values recur down a column, hence the cache.
    """
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return None
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason == phonenumbers.ValidationResult.IS_POSSIBLE:
        return len(candidate) if phonenumbers.is_valid_number(number) else None
    if reason != phonenumbers.ValidationResult.TOO_LONG:
        return None
    groups = [m.span() for m in _DIGIT_GROUP.finditer(candidate)]
    digits = sum(end - start for start, end in groups)
    dropped = 0
    for drop in range(1, min(_PHONE_TRAILING_DROPS, len(groups) - 1) + 1):
        start, end = groups[-drop]
        dropped += end - start
        national = (number.national_number or 0) // 10**dropped
        if digits - dropped < _PHONE_DIGITS_MIN or national == 0:
            return None
        shorter = phonenumbers.PhoneNumber()
        shorter.merge_from(number)
        shorter.national_number = national
        reason = phonenumbers.is_possible_number_with_reason(shorter)
        if reason == phonenumbers.ValidationResult.IS_POSSIBLE:
            return groups[-drop - 1][1] if phonenumbers.is_valid_number(shorter) else None
        if reason != phonenumbers.ValidationResult.TOO_LONG:
            return None
    return None


def _phone_region(region: str | None) -> str | None:
    if region is None:
        return None
    if not isinstance(region, str) or region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise DetectorError(
            f"phone_region {region!r} is not a region phonenumbers knows "
            "(expected a two-letter region code such as 'US' or 'GB', or None)"
        )
    return region.upper()


# custom patterns

_PATTERN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


Compiled = Any
"""A pattern compiled by RE2 (google-re2 has no type information)."""


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # RE2 would print each refusal; the DetectorError says it
    options.never_capture = True  # only where a match is, not its groups: RE2's fastest path
    return options


def _compile(name: str, pattern: str) -> Compiled:
    """``pattern`` compiled by RE2, or a DetectorError that names it and says why not."""
    try:
        compiled = re2.compile(pattern, _re2_options())
    except re2.error as error:
        reason = error.args[0] if error.args else error
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise DetectorError(
            f"pattern {name!r} ({pattern!r}) is not one RE2 can match in linear time: {reason}"
            " (backreferences and lookaround are not supported)"
        ) from None
    if compiled.fullmatch("") is not None:
        raise DetectorError(f"pattern {name!r} ({pattern!r}) matches the empty text")
    return compiled


class _Patterns:
    """The custom patterns, and one RE2 pattern that joins them all, so that a text none of
    them matches (the common case) costs one search rather than one per pattern. Should the
    joined pattern be refused (RE2's memory bound for a large set), each is searched alone.
    """

    __slots__ = ("_compiled", "_joined")

    def __init__(self, patterns: list[str], names: list[str]) -> None:
        self._compiled = tuple(_compile(n, p) for n, p in zip(names, patterns, strict=True))
        self._joined: Compiled | None = None
        if len(patterns) > 1:
            with contextlib.suppress(re2.error):
                self._joined = re2.compile("|".join(f"(?:{p})" for p in patterns), _re2_options())

    def __bool__(self) -> bool:
        return bool(self._compiled)

    def find(self, text: str) -> list[tuple[int, int, int]]:
        """(start, end, index of the pattern) of each match of one character or more."""
        try:
            return self._find(text)
        except UnicodeEncodeError:
            # RE2 reads UTF-8, which a lone surrogate (bytes decoded with surrogateescape)
            # has no encoding in: it is searched as '?', one character for one, so the
            # offsets still fit the text. Every search encodes the whole text, so the
            # first one fails, before anything was found.
            return self._find(text.encode("utf-8", "replace").decode("utf-8"))

    def _find(self, text: str) -> list[tuple[int, int, int]]:
        if self._joined is not None and self._joined.search(text) is None:
            return []
        found = []
        for index, compiled in enumerate(self._compiled):
            for match in compiled.finditer(text):
                start, end = match.span()
                if end > start:
                    found.append((start, end, index))
        return found


_BUILT_IN: dict[str, Detect] = {
    "email": _emails,
    "card": _cards,
    "iban": _ibans,
    "national_id": _national_ids,
    "aws_key": _aws_keys,
    "jwt": _jwts,
    "private_key": _private_keys,
}


class Scanner:
    """A chosen set of detectors and custom patterns, built (and checked) once, then used on
    any number of texts."""

    __slots__ = ("_detectors", "_kinds", "_patterns")

    def __init__(
        self,
        detectors: Iterable[str] = (),
        patterns: Iterable[tuple[str, str]] = (),
        *,
        phone_region: str | None = None,
    ) -> None:
        if isinstance(detectors, str):
            raise DetectorError(f"detectors must be a list of names, not the text {detectors!r}")
        chosen: set[str] = set()
        for name in detectors:
            if name not in NAMES:
                raise DetectorError(
                    f"unknown detector {name!r} (expected one of {', '.join(NAMES)})"
                )
            chosen.add(name)
        region = _phone_region(phone_region)
        kinds: list[str] = []
        found: list[Detect] = []
        for name in NAMES:
            if name in chosen:
                kinds.append(name)
                found.append(_Phones(region) if name == "phone" else _BUILT_IN[name])
        names: list[str] = []
        regexes: list[str] = []
        for entry in patterns:
            if not (
                isinstance(entry, tuple | list)
                and len(entry) == 2
                and all(isinstance(part, str) for part in entry)
            ):
                raise DetectorError(f"a custom pattern is a (name, regex) pair, got {entry!r}")
            name, pattern = entry
            if not _PATTERN_NAME.fullmatch(name):
                raise DetectorError(
                    f"pattern name {name!r}: expected a letter, then up to 63 letters, digits,"
                    " '_' or '-'"
                )
            if name in NAMES or name in names:
                raise DetectorError(f"pattern name {name!r} is already taken")
            names.append(name)
            regexes.append(pattern)
        self._detectors = tuple(found)
        self._patterns = _Patterns(regexes, names)
        self._kinds = (*kinds, *names)

    @property
    def empty(self) -> bool:
        """Whether there is nothing to look for (no detector and no pattern)."""
        return not self._detectors and not self._patterns

    def find(self, text: str) -> list[Finding]:
        """The validated findings in ``text``, sorted and not overlapping."""
        spans: list[tuple[int, int, int]] = []
        for order, detect in enumerate(self._detectors):
            for start, end in detect(text):
                spans.append((start, end, order))
        if self._patterns:
            first = len(self._detectors)
            spans.extend(
                (start, end, first + index) for start, end, index in self._patterns.find(text)
            )
        if not spans:
            return []
        return _settle(spans, self._kinds)

    def redact(self, text: str, mark: Callable[[Finding, str], str]) -> str | None:
        """``text`` with each finding replaced by ``mark(finding, matched_text)``, or None if
        nothing was found (the caller then keeps its text as it is)."""
        findings = self.find(text)
        if not findings:
            return None
        parts: list[str] = []
        pos = 0
        for finding in findings:
            parts.append(text[pos : finding.start])
            parts.append(mark(finding, text[finding.start : finding.end]))
            pos = finding.end
        parts.append(text[pos:])
        return "".join(parts)


def _settle(spans: list[tuple[int, int, int]], kinds: tuple[str, ...]) -> list[Finding]:
    """Overlapping spans merged into one finding each, of the longest one's kind."""
    spans.sort(key=lambda s: (s[0], -s[1], s[2]))
    findings: list[Finding] = []
    start, end, order = spans[0]
    size = end - start
    for s, e, o in spans[1:]:
        if s < end:
            if e - s > size:
                size, order = e - s, o
            end = max(end, e)
            continue
        findings.append(Finding(start, end, kinds[order]))
        start, end, order, size = s, e, o, e - s
    findings.append(Finding(start, end, kinds[order]))
    return findings
