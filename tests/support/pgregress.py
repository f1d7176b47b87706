"""PostgreSQL's own regression SQL, from Debian's source package, split into statements.

The sources come through apt, from the mirror this machine already uses, with a private
apt configuration (its own sources list, lists and archives under the cache directory), so
the machine's own apt setup is neither read for writing nor changed. The files are kept in
the cache between runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pgparse

PACKAGE = "postgresql-15"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_MEMBER = re.compile(r"^[^/]+/src/test/regress/(sql/[^/]+\.sql|expected/[^/]+\.out)$")


class Unavailable(Exception):
    """The sources cannot be fetched here; the message says why."""


def cache_dir() -> Path:
    base = os.environ.get("WITNESS_TEST_CACHE") or os.path.expanduser("~/.cache/witness-tests")
    return Path(base) / "pg-regress"


def regress_sources(cache: Path | None = None) -> Path:
    """A directory with ``sql/*.sql`` and ``expected/*.out``, fetched once and then kept."""
    cache = cache or cache_dir()
    done = cache / "regress" / ".complete"
    if done.exists():
        return done.parent
    tarball = _download(cache)
    target = cache / "regress"
    with tarfile.open(tarball) as tar:
        for member in tar:
            match = _MEMBER.match(member.name)
            if match and member.isfile():
                data = tar.extractfile(member)
                if data is None:
                    continue
                out = target / match.group(1)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data.read())
    if not any((target / "sql").glob("*.sql")):
        raise Unavailable(f"{tarball.name} holds no src/test/regress/sql/*.sql")
    done.write_text(tarball.name + "\n")
    return target


def _download(cache: Path) -> Path:
    """``apt-get source --download-only`` with a private configuration; the orig tarball."""
    apt = cache / "apt"
    archives = apt / "archives"
    for sub in (apt / "lists" / "partial", archives / "partial", apt / "parts"):
        sub.mkdir(parents=True, exist_ok=True)
    found = sorted(archives.glob(f"{PACKAGE}_*.orig.tar.*"))
    if found:
        return found[-1]
    mirror, keyring, suite = _mirror()
    (apt / "sources.list").write_text(f"deb-src [signed-by={keyring}] {mirror} {suite} main\n")
    options = [
        f"-oDir::Etc::SourceList={apt / 'sources.list'}",
        f"-oDir::Etc::SourceParts={apt / 'parts'}",
        f"-oDir::State::Lists={apt / 'lists'}",
        f"-oDir::Cache::Archives={archives}",
        "-oDir::Cache::pkgcache=",
        "-oDir::Cache::srcpkgcache=",
        "-oAPT::Sandbox::User=root" if os.geteuid() == 0 else "-oAPT::Sandbox::User=",
        "-qq",
    ]
    for args in (["update"], ["source", "--download-only", PACKAGE]):
        try:
            run = subprocess.run(
                ["apt-get", *options, *args],
                cwd=archives,
                capture_output=True,
                text=True,
                timeout=600,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"apt-get {args[0]} could not run: {exc}") from exc
        if run.returncode != 0:
            raise Unavailable(
                f"apt-get {' '.join(args)} failed against {mirror} {suite}: "
                f"{(run.stderr or run.stdout).strip()[-500:]}"
            )
    found = sorted(archives.glob(f"{PACKAGE}_*.orig.tar.*"))
    if not found:
        raise Unavailable(f"apt-get source left no {PACKAGE} orig tarball in {archives}")
    return found[-1]


def _mirror() -> tuple[str, str, str]:
    """The Debian mirror, keyring and release this machine's apt sources use."""
    suite = _codename()
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (line.partition(":") for line in stanza.splitlines())
                    if not k.startswith("#") and v
                )
                if suite in fields.get("suites", "").split() and "uris" in fields:
                    uri = fields["uris"].split()[0]
                    return uri, fields.get("signed-by", DEFAULT_KEYRING), suite
        elif path.name.endswith(".list"):
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1], DEFAULT_KEYRING, suite
    return DEFAULT_MIRROR, DEFAULT_KEYRING, suite


def _codename() -> str:
    try:
        release = Path("/etc/os-release").read_text()
    except OSError:
        return "bookworm"
    match = re.search(r"^VERSION_CODENAME=(\w+)", release, re.M)
    return match.group(1) if match else "bookworm"


# --- turning a regression script into statements ------------------------------------------

_COPY_FROM_STDIN = re.compile(r"\bcopy\s+(?!\()[^;]*?\bfrom\s+std(?:in|out)\b", re.I)
_META_COPY_FROM = re.compile(r"\\copy\b.*\bfrom\s+p?std(?:in|out)\b", re.I)
_STATEMENT_END = re.compile(r";\s*(?:--.*)?$")
# Meta-commands that send the query buffer, as a semicolon would, and one that empties it.
_SENDS = re.compile(r"\\(?:g(?:set|exec|x|desc)?|crosstabview)\b.*$")
_RESETS = re.compile(r"\\r\b")
PSQL_VARIABLE = re.compile(r"(?<![:\w]):(?:'\w+'|\"\w+\"|\{\?\w+\}|\w+\b)")


def strip_psql(script: str) -> str:
    """The script without psql's own syntax: meta-commands, COPY data, ``\\g``, ``\\;``, ``\\r``.

    Removed lines become empty, so that positions keep their line numbers.
    """
    out: list[str] = []
    pending: list[int] = []
    data_blocks = 0
    for original in script.split("\n"):
        line = original
        if data_blocks:
            if line == "\\.":
                data_blocks -= 1
            out.append("")
            continue
        meta = line.lstrip()
        if meta.startswith("\\"):
            if _RESETS.match(meta):
                for i in pending:
                    out[i] = ""
                pending = []
            data_blocks = 1 if _META_COPY_FROM.match(meta) else 0
            line = ";" if _SENDS.match(meta) else ""
        line = _SENDS.sub(";", line.replace("\\;", ";"))
        pending.append(len(out))
        out.append(line)
        if _STATEMENT_END.search(line):
            text = re.sub(r"--[^\n]*", "", "\n".join(out[i] for i in pending))
            data_blocks += len(_COPY_FROM_STDIN.findall(text))
            pending = []
    return "\n".join(out)


@dataclass(frozen=True)
class Piece:
    """A statement of a script, or a stretch the grammar refused (``error`` set)."""

    text: str
    error: str | None = None


def split(script: str) -> Iterator[Piece]:
    """The statements of a script, as PostgreSQL's grammar splits them.

    A stretch that does not parse is cut at the line ends with a semicolon around the
    error, yielded with the parser's message, and the splitting goes on after it.
    """
    rest = script.encode()
    while rest.strip():
        try:
            tree = pgparse.parse(rest.decode())
        except pgparse.PGQueryError as exc:
            ends = [m.end() for m in re.finditer(rb";[ \t]*(?:--[^\n]*)?\n", rest)]
            where = exc.position - 1
            if where < 0:
                # An error raised by a grammar action has no position: the first line end
                # at which the text so far no longer parses is past it.
                where = next((e - 1 for e in ends if not _parses(rest[:e])), len(rest))
            start = 0
            for end in reversed([e for e in ends if e <= where]):
                if _parses(rest[:end]):
                    start = end
                    break
            if start:
                yield from split(rest[:start].decode())
            stop = next((e for e in ends if e > where), len(rest))
            yield Piece(rest[start:stop].decode(), f"{exc.message} (at position {exc.position})")
            rest = rest[stop:]
            continue
        for raw in tree:
            begin = raw.get("stmt_location", 0)
            length = raw.get("stmt_len") or len(rest) - begin
            yield Piece(rest[begin : begin + length].decode())
        return


def _parses(text: bytes) -> bool:
    try:
        pgparse.parse(text.decode())
    except (pgparse.PGQueryError, UnicodeDecodeError):
        return False
    return True


def expected_error(piece: str, expected: list[str]) -> bool:
    """Whether PostgreSQL's expected output shows an ERROR right after this statement."""
    lines = [line for line in piece.strip().split("\n") if line.strip()]
    if not lines:
        return False
    first, last = lines[0], lines[-1]
    for out in expected:
        at = out.find(first)
        while at >= 0:
            end = out.find(last, at)
            if end < 0:
                break
            following = out[end + len(last) :].split("\n")[1:6]
            if any(line.startswith(("ERROR:", "psql:")) for line in following):
                return True
            at = out.find(first, at + 1)
    return False
