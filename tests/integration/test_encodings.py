"""Witness's codecs against PostgreSQL's own conversions, sequence by sequence: where the server
accepts bytes in a client encoding, Witness reads them as the same text, or keeps the bytes."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from appliance.lab.postgres import PostgresServer
from appliance.protocols.postgres.encodings import ENCODINGS, codec

_CONVERT = """
create or replace function pg_temp.conversions(enc name, seqs bytea[])
returns table (i int, t text) language plpgsql as $$
declare
  k int;
begin
  for k in 1 .. coalesce(array_length(seqs, 1), 0) loop
    i := k;
    begin
      t := convert_from(seqs[k], enc);
    exception when others then
      t := null;  -- the server refuses these bytes in this encoding
    end;
    return next;
  end loop;
end $$
"""
_MULTIBYTE = {
    "SJIS",
    "SHIFT_JIS_2004",
    "BIG5",
    "GBK",
    "UHC",
    "JOHAB",
    "GB18030",
    "EUC_JP",
    "EUC_JIS_2004",
    "EUC_CN",
    "EUC_KR",
    "EUC_TW",
    "MULE_INTERNAL",
    "UTF8",
}


def _sequences(encoding: str) -> Iterator[bytes]:
    yield from (bytes([b]) for b in range(1, 256))
    if encoding not in _MULTIBYTE:
        return
    yield from (bytes([a, b]) for a in range(0x80, 0x100) for b in range(0x30, 0x100))
    if encoding in ("EUC_JP", "EUC_JIS_2004", "EUC_TW"):
        yield from (bytes([0x8F, a, b]) for a in range(0xA1, 0xFF) for b in range(0xA1, 0xFF))
    if encoding == "GB18030":  # four-byte sequences: every 7th third byte of two planes
        for first in (0x81, 0x82, 0x84, 0x90, 0x95, 0xE3):
            for third in range(0x81, 0xFF, 7):
                yield from (
                    bytes([first, second, third, fourth])
                    for second in range(0x30, 0x3A)
                    for fourth in range(0x30, 0x3A)
                )
    if encoding == "UTF8":  # three- and four-byte characters, every 5th last byte
        yield from (
            bytes([a, b, c])
            for a in range(0xE0, 0xF0)
            for b in range(0x80, 0xC0, 3)
            for c in range(0x80, 0xC0, 5)
        )
        yield from (
            bytes([0xF0, b, c, d])
            for b in range(0x90, 0xC0, 7)
            for c in range(0x80, 0xC0, 11)
            for d in range(0x80, 0xC0, 5)
        )


@pytest.fixture(scope="module")
def server(pg: PostgresServer) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(_CONVERT)
        yield conn


# SQL_ASCII converts nothing; a UTF8 server has no conversion from MULE_INTERNAL at all.
@pytest.mark.parametrize(
    "encoding", [e for e in ENCODINGS if e not in ("SQL_ASCII", "MULE_INTERNAL")]
)
def test_witness_reads_what_the_server_reads(
    server: psycopg.Connection[tuple[object, ...]], encoding: str
) -> None:
    sequences = list(_sequences(encoding))
    rows = server.execute(
        "select i, t from pg_temp.conversions(%s, %s)", (encoding, sequences)
    ).fetchall()
    ours = codec(encoding)
    accepted = kept = 0
    wrong = []
    for i, text in rows:
        if text is None:
            continue  # refused: the server runs nothing with it, whatever Witness reads
        accepted += 1
        raw = sequences[int(i) - 1]  # type: ignore[call-overload]
        read = ours.text(raw)
        if read is None:
            kept += 1
        elif read != text:
            wrong.append((raw.hex(), text, read))
    assert not wrong, wrong[:10]
    assert accepted > 200
    if ours.python is not None:  # a codec that keeps much as bytes would be of little use
        assert kept <= accepted // 50, (kept, accepted)
