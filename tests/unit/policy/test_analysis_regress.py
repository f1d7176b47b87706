"""Every statement of PostgreSQL's own regression suite through the analysis.

The suite exercises nearly every statement and object type PostgreSQL has, many of them in
odd spellings. Each statement must be analysed without an error and be given a kind, or be
marked unknown; a stretch the grammar refuses must be one that PostgreSQL refused too (its
expected output shows an ERROR right after it), or psql's own syntax.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pgparse
import pgregress
import pytest

from appliance.policy.analysis import Analysis, analyse

# Statement nodes allowed to be of kind "other", and why. None is, today: every statement
# node of the grammar has a kind.
OTHER_ALLOWED: dict[str, str] = {}

# Scripts that test psql itself: their refused stretches are psql's syntax (\if branches,
# \r, variables inside meta-commands, deliberate syntax errors whose echo psql suppresses).
PSQL_SCRIPTS = {"psql.sql", "psql_crosstab.sql"}


@pytest.fixture(scope="module")
def regress() -> Path:
    try:
        return pgregress.regress_sources()
    except pgregress.Unavailable as exc:
        pytest.skip(f"PostgreSQL's regression sources cannot be fetched: {exc}")


def _expected(regress: Path, stem: str) -> list[str]:
    outs = [regress / "expected" / f"{stem}.out"]
    outs += sorted((regress / "expected").glob(f"{stem}_[0-9].out"))
    return [out.read_text(encoding="utf-8", errors="replace") for out in outs if out.exists()]


def test_every_regression_statement_is_classified(regress: Path) -> None:
    kinds: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    unknown = 0
    failures: list[str] = []
    scripts = sorted((regress / "sql").glob("*.sql"))
    assert len(scripts) > 150
    for path in scripts:
        script = pgregress.strip_psql(path.read_text(encoding="utf-8", errors="replace"))
        expected = _expected(regress, path.stem)
        for piece in pgregress.split(script):
            where = f"{path.name}: {piece.text.strip()[:120]!r}"
            if piece.error is not None:
                reason = _why_refused(path.name, piece, expected)
                if reason is None:
                    failures.append(f"{where}: refused here, not by PostgreSQL: {piece.error}")
                else:
                    refused[reason] += 1
                continue
            result = analyse(piece.text)
            if result.error is not None:
                failures.append(f"{where}: {result.error}")
            for statement in result.statements:
                kinds[statement.kind] += 1
                unknown += statement.unknown is not None
                if statement.kind == "other" and statement.unknown is None:
                    node = next(iter(pgparse.parse(piece.text)[0]["stmt"]))
                    if node not in OTHER_ALLOWED:
                        failures.append(f"{where}: {node} has no kind")
        # The whole script at once, as one long text, must give an answer too.
        assert isinstance(analyse(script), Analysis)

    print(f"\n{sum(kinds.values())} statements in {len(scripts)} scripts, {unknown} unknown")
    for kind, count in sorted(kinds.items()):
        print(f"  {kind:40} {count}")
    print("refused by the grammar:")
    for reason, count in sorted(refused.items()):
        print(f"  {reason:40} {count}")
    assert not failures, "\n".join(failures[:50])
    assert sum(kinds.values()) > 30_000
    assert refused["psql variable (skipped)"] < 500


def _why_refused(script: str, piece: pgregress.Piece, expected: list[str]) -> str | None:
    if pgregress.expected_error(piece.text, expected):
        return "PostgreSQL refused it too"
    if pgregress.PSQL_VARIABLE.search(piece.text):
        return "psql variable (skipped)"
    if script in PSQL_SCRIPTS:
        return "psql's own syntax"
    if "\\'" in piece.text:
        # strings.sql runs these with standard_conforming_strings off; the grammar reads
        # strings with it on, and the analysis marks such texts unknown.
        return "standard_conforming_strings off"
    return None
