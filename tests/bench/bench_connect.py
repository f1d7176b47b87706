"""Connection benchmark: new connections per second, each running one no-op query, direct vs
diverted through Witness by the nftables redirect (host enforcement), in the namespace lab.

``pgbench -n -C -f noop.sql`` (``SELECT 1``, a new connection per transaction) runs in the
lab's bastion against the backend's address, unchanged, as:

- ``direct``: the exempt service user (the ``inet witness`` table lets it through);
- ``witness-ebpf``: an agent in its agent cgroup, diverted to the recorder, its owner read
  from the eBPF map (only when eBPF can be attached here);
- ``witness-sock_diag``: an agent user outside the agent cgroups, diverted, its owner found
  through sock_diag and /proc (the fallback).

Each diverted connection is attributed, its session and command recorded, and relayed. All
paths are measured in the same run, alternating, and the median of the rounds is kept: at
``-c 4 -j 2`` (connections per second, and the recorder's CPU time per connection) and at
``-c 1`` (the time each connection takes, and what Witness adds to it). The run checks that
the trail holds a command for every diverted transaction. The table is printed and written
to ``--out``. Needs root.

Run: ``.venv/bin/python tests/bench/bench_connect.py [--seconds 10] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from results import report

from appliance import native
from appliance.enforce import bpf
from appliance.lab.enforced import EnforcedLab
from appliance.lab.postgres import postgres_bindir

ROOT = Path(__file__).resolve().parents[2]
AGENT = "nobody"
PGBENCH = str(postgres_bindir() / "pgbench")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pgbench(
    lab: EnforcedLab, path: str, script: Path, clients: int, seconds: int
) -> tuple[float, int]:
    """(connections per second, transactions) of a ``-C`` run on ``path`` in the bastion."""
    command = [
        PGBENCH, "-n", "-C", "-f", str(script),
        "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds),
        "-h", str(lab.topology.backend_ipv4), "-p", "5432", "-U", "postgres", "postgres",
    ]  # fmt: skip
    if path == "direct":
        argv = lab.as_user(lab.service_user, command)
    elif path == "witness-ebpf":
        argv = lab.agent_argv(1, command)
    else:
        argv = lab.as_user(AGENT, command)
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pgbench on the {path} path failed: {done.stderr.strip()}")
    out = done.stdout
    # With -C every transaction opens its own connection, so tps is connections per second.
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))  # type: ignore[union-attr]
    return tps, count


def recorded_commands(trail: Path) -> int:
    db = sqlite3.connect(f"file:{trail}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM events WHERE type='command'").fetchone()[0])
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "connect.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, nftables)")

    probe = bpf.probe()
    if not probe.available:
        print(f"eBPF attribution is not available ({probe.why}): sock_diag only", flush=True)
    state = Path(tempfile.mkdtemp(prefix="witness-bench-lab-"))
    lab = EnforcedLab(
        f"bench{uuid.uuid4().hex[:6]}", state, agents=1 if probe.available else 0,
        ebpf=probe.available,
    )  # fmt: skip
    try:
        lab.start()
        assert lab.directory is not None and lab.recorder is not None
        script = lab.directory / "noop.sql"
        script.write_text("SELECT 1;\n")
        script.chmod(0o644)
        recorder = lab.recorder.pid
        paths = ["direct", *(["witness-ebpf"] if probe.available else []), "witness-sock_diag"]
        cps4: dict[str, list[float]] = {p: [] for p in paths}
        cps1: dict[str, list[float]] = {p: [] for p in paths}
        cpu: dict[str, list[float]] = {p: [] for p in paths}
        diverted = 0
        for r in range(args.rounds):
            for name in paths:
                before = cpu_seconds(recorder)
                rate, done = pgbench(lab, name, script, 4, args.seconds)
                cps4[name].append(rate)
                cpu[name].append((cpu_seconds(recorder) - before) / done * 1e6)
                diverted += done if name != "direct" else 0
                rate, done = pgbench(lab, name, script, 1, args.seconds)
                cps1[name].append(rate)
                diverted += done if name != "direct" else 0
                print(
                    f"round {r + 1} {name}: c4 {cps4[name][-1]:.0f}/s, c1 {rate:.0f}/s "
                    f"({1e6 / rate:.0f} us per connection)",
                    flush=True,
                )
        lab.stop_recorder()
        recorded = recorded_commands(lab.trail)
    finally:
        lab.close()
        state.rmdir()

    med = statistics.median
    d4, d1 = med(cps4["direct"]), med(cps1["direct"])
    lines = [
        f"# Connection benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"median of {args.rounds} alternating rounds of {args.seconds}s)",
        "",
        "Each transaction is a new connection (`pgbench -n -C`) running `SELECT 1`, in the "
        "namespace lab; direct = the exempt service user; witness-* = an agent diverted by the "
        "nftables redirect, attributed (eBPF map, or sock_diag and /proc), recorded, relayed.",
        "",
        "| path | conn/s c=4 | vs direct | round by round | conn/s c=1 "
        "| us per connection c=1 | added (us) | recorder CPU (us/conn) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in paths:
        w4, w1 = med(cps4[name]), med(cps1[name])
        paired = [w / d for w, d in zip(cps4[name], cps4["direct"], strict=True)]
        added = "-" if name == "direct" else f"{1e6 / w1 - 1e6 / d1:+.0f}"
        used = "-" if name == "direct" else f"{med(cpu[name]):.0f}"
        lines.append(
            f"| {name} | {w4:.0f} | {w4 / d4:.2f} | {min(paired):.2f}-{max(paired):.2f} "
            f"| {w1:.0f} | {1e6 / w1:.0f} | {added} | {used} |"
        )
    lines += [
        "",
        f"Commands recorded: {recorded} for {diverted} diverted pgbench transactions",
        f"Witness hot path: {native.STATUS}",
    ]
    if recorded < diverted:
        print("\n".join(lines))
        raise SystemExit(f"the trail is missing commands: {recorded} < {diverted}")
    report(lines, args.out)


if __name__ == "__main__":
    main()
