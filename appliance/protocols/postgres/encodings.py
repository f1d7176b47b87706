"""PostgreSQL's client encodings as Python codecs, checked against a real server's conversions.

The server converts everything a client sends from its ``client_encoding`` (and everything it
sends back into it). Witness reads the same bytes, so it must decode them as the server does:
a text decoded in the wrong encoding can read differently from what runs (under SJIS, byte
0x5C after a lead byte is part of a character, not a backslash).

Each encoding maps to the Python codec closest to the server's conversion table, corrected
where they differ:

- ``fixes`` turns a character Python gives into the one the server gives, where only one
  byte sequence yields it;
- ``refuse`` lists byte sequences the server reads differently and no fix can repair (BIG5:
  the server maps seven to U+FFFD, Python to real characters); a text holding any of them,
  even split across characters, is not decoded.

A text Python cannot decode (the server's tables are a little larger in places: user-defined
areas, vendor extensions), or that hits ``refuse``, or in an encoding with no codec at all
(EUC_TW, MULE_INTERNAL), is kept as its bytes: the record shows them as ``\\x`` hex and names
the encoding. Bytes below 0x80 read as ASCII in every client encoding, so an ASCII text is the
same whatever the encoding. ``tests/integration/test_encodings.py`` compares every one- and
two-byte sequence (and the three-byte EUC ones, and samples of GB18030's four-byte and
UTF-8's longer ones) with PostgreSQL's own conversion: where the server accepts a sequence,
Witness gives the same text or keeps the bytes, the latter for under 2% of them.
"""

from __future__ import annotations

_SINGLE_BYTE = {
    "LATIN1": "latin_1",
    "LATIN2": "iso8859_2",
    "LATIN3": "iso8859_3",
    "LATIN4": "iso8859_4",
    "LATIN5": "iso8859_9",
    "LATIN6": "iso8859_10",
    "LATIN7": "iso8859_13",
    "LATIN8": "iso8859_14",
    "LATIN9": "iso8859_15",
    "LATIN10": "iso8859_16",
    "ISO_8859_5": "iso8859_5",
    "ISO_8859_6": "iso8859_6",
    "ISO_8859_7": "iso8859_7",
    "ISO_8859_8": "iso8859_8",
    "KOI8R": "koi8_r",
    "KOI8U": "koi8_u",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
}
_MULTIBYTE = {
    "UTF8": "utf-8",
    "SJIS": "cp932",  # the server's SJIS is Microsoft's: NEC and IBM extensions, U+FF5E for 0x8160
    "BIG5": "big5",  # closer than cp950, which maps a dozen characters differently
    "UHC": "cp949",
    "EUC_KR": "euc_kr",
    "JOHAB": "johab",
    "GBK": "gbk",
    "EUC_CN": "gb2312",
    "GB18030": "gb18030",
    "EUC_JP": "euc_jp",
    "EUC_JIS_2004": "euc_jis_2004",
    "SHIFT_JIS_2004": "shift_jis_2004",
    "EUC_TW": None,  # no Python codec
    "MULE_INTERNAL": None,  # no Python codec
}
# Python character -> the server's, where exactly one byte sequence gives the former.
_FIXES: dict[str, dict[str, str]] = {
    "EUC_JP": {
        "\u301c": "\uff5e",
        "\u2016": "\u2225",
        "\u2212": "\uff0d",
        "\u00a2": "\uffe0",
        "\u00a3": "\uffe1",
        "\u00ac": "\uffe2",
        "\u00a6": "\uffe4",
    },
    "EUC_JIS_2004": {
        "\uffe3": "\u203e",
        "\u2015": "\u2014",
        "\uffe5": "\u00a5",
        "\u2985": "\uff5f",
        "\u2986": "\uff60",
    },
    "SHIFT_JIS_2004": {
        # Python reads 0x5C and 0x7E as JIS X 0201 (yen, overline); the server as ASCII.
        "\u00a5": "\\",
        "\u203e": "~",
        "\u2015": "\u2014",
        "\u2985": "\uff5f",
        "\u2986": "\uff60",
    },
}
_REFUSE: dict[str, tuple[bytes, ...]] = {
    "BIG5": (
        b"\xa1\x5a",
        b"\xa1\xc3",
        b"\xa1\xc5",
        b"\xa1\xfe",
        b"\xa2\x40",
        b"\xa2\xcc",
        b"\xa2\xce",
    ),
}


def hexed(raw: bytes) -> str:
    """Bytes that are not text, as the record shows them."""
    return "\\x" + raw.hex()


class Codec:
    """Decodes the bytes of one PostgreSQL encoding as the server reads them."""

    __slots__ = ("fixes", "name", "plain", "python", "refuse", "utf8")

    def __init__(self, name: str, python: str | None) -> None:
        self.name = name
        self.python = python
        fixes = _FIXES.get(name)
        self.fixes = str.maketrans(fixes) if fixes else {}
        self.refuse = _REFUSE.get(name, ())
        self.plain = python is not None and not fixes and not self.refuse
        self.utf8 = python == "utf-8"

    def text(self, raw: bytes) -> str | None:
        """``raw`` as text, or None if it cannot be decoded exactly as the server would."""
        if self.utf8:  # the common case, with the codec named where the compiler sees it
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return None
        if self.plain:  # most others: the codec alone is right
            try:
                return raw.decode(self.python or "")
            except UnicodeDecodeError:
                return None
        if self.python is None:
            return raw.decode("ascii") if raw.isascii() else None
        try:
            text = raw.decode(self.python)
        except UnicodeDecodeError:
            return None
        if self.refuse and any(seq in raw for seq in self.refuse):
            return None
        return text.translate(self.fixes) if self.fixes else text

    def show(self, raw: bytes) -> str:
        """``raw`` as text, or as ``\\x`` hex when it cannot be decoded."""
        text = self.text(raw)
        return hexed(raw) if text is None else text


UTF8 = Codec("UTF8", "utf-8")
_CODECS: dict[str, Codec] = {"UTF8": UTF8}


def codec(client_encoding: str, server_encoding: str = "UTF8") -> Codec:
    """The codec for a ``client_encoding`` as the server reports it (``SJIS``, ``WIN1251``...).

    SQL_ASCII means no conversion: the server takes the bytes as they are, in its own
    encoding. A name PostgreSQL does not have gets a codec that decodes only ASCII.
    """
    name = server_encoding if client_encoding == "SQL_ASCII" else client_encoding
    found = _CODECS.get(name)
    if found is None:
        if name == "SQL_ASCII":  # both sides: bytes with no declared meaning
            found = Codec(name, None)
        else:
            found = Codec(name, _SINGLE_BYTE.get(name) or _MULTIBYTE.get(name))
        _CODECS[name] = found
    return found


ENCODINGS = (*_SINGLE_BYTE, *_MULTIBYTE, "SQL_ASCII")
"""Every client encoding PostgreSQL has."""
