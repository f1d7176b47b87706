"""Guardrail benchmark: microseconds per decision, and ``witness policy test`` over a trail
of a million commands.

- ``decide``: a policy of 20 rules of the kinds operators write (identity, database, kinds,
  schema globs, no WHERE, functions) decides pgbench's statements. ``hit``: the same
  command again (the decision cache); ``shape``: a new text whose literal values alone are
  new, as pgbench's simple protocol sends (the cache by shape); ``miss``: a text of a shape
  not seen before, so the statement analysis runs too.
- ``policy test``: a trail of ``--commands`` pgbench commands in sessions of 1,000, written
  through the trail's own writer (so its chain is real; generated once, then kept in the
  temporary directory), is replayed through the same policy. Most commands are prepared
  statements with parameters (one text each); a tenth are simple-protocol texts with
  literals, each new. Reports commands per second.

Pure CPU, no server. The table is printed and written to ``--out``.

Run: ``.venv/bin/python tests/bench/bench_policy.py [--commands 1000000]``
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

from results import report

from appliance.config import TrailSettings
from appliance.model import Command
from appliance.policy import replay
from appliance.policy.guardrails import Policy
from appliance.policy.rules import parse
from appliance.trail import db
from appliance.trail.store import Trail

ROOT = Path(__file__).resolve().parents[2]

POLICY = (Path(__file__).parent / "policy20.toml").read_text()

AGENT = {
    "issuer": "https://idp",
    "subject": "agent",
    "email": "agent@example.com",
    "groups": ["bots"],
}
PREPARED = [
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)"
    " VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
]


def literal(rng: random.Random) -> str:
    """A simple-protocol pgbench statement, its values in its text."""
    aid, delta = rng.randrange(1, 1_000_000), rng.randrange(-5000, 5000)
    return f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid}"


def make_policy() -> Policy:
    return Policy(parse(tomllib.loads(POLICY), Path("/")))


def per_decision(policy: Policy, commands: list[Command]) -> float:
    """Microseconds per decision over ``commands``."""
    started = time.perf_counter()
    for command in commands:
        policy.decide(AGENT, "main", "bench", command)
    return (time.perf_counter() - started) / len(commands) * 1e6


def unseen(rng: random.Random, n: int) -> str:
    """A text of a shape not seen before: the analysis runs for it."""
    aid = rng.randrange(9)
    return f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = {aid} AND bid{n} = 1"


def micro(rounds: int) -> tuple[float, float, float]:
    rng = random.Random(1)
    hits, shapes, misses = [], [], []
    for _ in range(rounds):
        policy = make_policy()
        warm = [Command("execute", text) for text in PREPARED]
        per_decision(policy, warm)
        hits.append(per_decision(policy, warm * 20_000))
        shapes.append(per_decision(policy, [Command("query", literal(rng)) for _ in range(20_000)]))
        misses.append(
            per_decision(policy, [Command("query", unseen(rng, n)) for n in range(5_000)])
        )
    return statistics.median(hits), statistics.median(shapes), statistics.median(misses)


def generated(count: int) -> Path:
    """A trail of ``count`` pgbench commands, made once and kept in the temporary directory."""
    path = Path(tempfile.gettempdir()) / f"witness-bench-policy-{count}.db"
    done = path.with_name(path.name + ".done")
    if done.exists():
        return path
    for stale in path.parent.glob(path.name + "*"):
        stale.unlink()
    rng = random.Random(2)
    trail = Trail.open(TrailSettings.beside(path))
    session = ""
    for n in range(count):
        if n % 1000 == 0:
            if session:
                trail.append("session_end", session, {"reason": "client closed"})
            session = f"bench-{n // 1000}"
            start = {"backend": {"name": "main"}, "database": "bench", "identity": AGENT}
            trail.append("session_start", session, start)
        if n % 10 == 9:
            payload = {"n": n, "kind": "query", "text": literal(rng)}
        else:
            text = PREPARED[n % len(PREPARED)]
            params = [str(rng.randrange(1, 100_000)) for _ in range(text.count("$"))]
            payload = {"n": n, "kind": "execute", "text": text, "params": params}
        trail.append("command", session, payload)
        if n % 5000 == 4999:
            trail.commit()
    trail.append("session_end", session, {"reason": "client closed"})
    trail.commit()
    trail.close()
    done.touch()
    return path


def replayed(path: Path) -> tuple[float, int]:
    """(commands per second, commands) of a whole replay of the trail at ``path``."""
    policy = make_policy()
    with db.reading(path) as conn:
        started = time.perf_counter()
        report = replay.replay(policy, replay.events(conn, None, None))
        seconds = time.perf_counter() - started
    return report.commands / seconds, report.commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "policy.md")
    args = parser.parse_args()

    hit, shaped, miss = micro(args.rounds)
    started = time.perf_counter()
    path = generated(args.commands)
    made = time.perf_counter() - started
    rate, count = replayed(path)
    lines = [
        f"# Guardrail benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores)",
        "",
        "| measure | figure |",
        "|---|---|",
        f"| decide, cache hit (20 rules, pgbench statements) | {hit:.2f} us |",
        f"| decide, a new text of a known shape (new literal values) | {shaped:.2f} us |",
        f"| decide, cache miss (a new shape: analysis and rules) | {miss:.1f} us |",
        f"| policy test over {count:,} commands | {rate:,.0f} commands/s |",
        "",
        f"Trail: {path} ({made:.0f}s to generate, or reused)",
    ]
    report(lines, args.out)


if __name__ == "__main__":
    main()
