"""PostgreSQL recording benchmark: direct vs pgbouncer (session pool) vs Witness, recording
only and with a policy of 20 rules deciding every command (tests/bench/policy20.toml).

Every path is measured in the same run, alternating, and the median of the rounds is kept:
- ``pgbench -S -c 8 -j 2`` and ``-c 1`` (tps, the latency Witness adds at c=1, and the CPU
  time the proxy process spends per transaction at c=8);
- a ~100 MB ``COPY pgbench_accounts TO STDOUT`` read (scale 10), direct vs Witness.
Witness records every statement; the run checks that the trail holds one command per
transaction pgbench reports. The table is printed and written to ``--out``.

Run: ``.venv/bin/python tests/bench/bench_postgres.py [--seconds 10] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import report

from appliance import native
from appliance.lab.net import free_port
from appliance.lab.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
WITNESS = str(Path(sys.executable).parent / "witness")


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


class Pgbouncer:
    """pgbouncer in session mode in front of ``pg`` (as the postgres user when root)."""

    def __init__(self, pg: PostgresServer) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="witness-bouncer-"))
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            f"[databases]\npostgres = host=127.0.0.1 port={pg.port} dbname=postgres\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"unix_socket_dir =\nauth_type = trust\nauth_file = {self.dir}/users.txt\n"
            "pool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 20\n"
            f"logfile = {self.dir}/pgbouncer.log\n"
        )
        user = None
        if os.geteuid() == 0:
            user = "postgres"
            shutil.chown(self.dir, "postgres")
            for f in self.dir.iterdir():
                shutil.chown(f, "postgres")
        self.proc = subprocess.Popen(
            ["pgbouncer", str(self.dir / "pgbouncer.ini")],
            user=user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


POLICY = Path(__file__).parent / "policy20.toml"


class Recorder:
    """``witness serve`` recording every statement into a fresh trail; with ``policy``, a
    policy file deciding each command too."""

    def __init__(self, pg: PostgresServer, policy: Path | None = None) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="witness-bench-"))
        self.trail = self.dir / "trail.db"
        argv = [
            WITNESS, "serve", "--listen", f"127.0.0.1:{self.port}",
            "--backend", f"postgresql://127.0.0.1:{pg.port}", "--trail", str(self.trail),
        ]  # fmt: skip
        if policy is not None:
            config = self.dir / "witness.toml"
            config.write_text(
                f'[[backend]]\nname = "pg"\naddress = "127.0.0.1"\nport = {pg.port}\n\n'
                f'[[listener]]\nlisten = "127.0.0.1:{self.port}"\nbackend = "pg"\n\n'
                f'[trail]\npath = "{self.trail}"\n\n[identity]\nunbound = "allow"\n\n'
                f'[policy]\nfile = "{policy}"\n'
            )
            argv = [WITNESS, "--config", str(config), "serve"]
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "witness.log").open("wb"),
        )
        wait_port(self.port)

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
        return kb / 1024

    def commands(self) -> int:
        db = sqlite3.connect(f"file:{self.trail}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT count(*) FROM events WHERE type='command'").fetchone()[0])
        finally:
            db.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pgbench(port: int, clients: int, seconds: int) -> tuple[float, float, int]:
    """(tps, average latency in ms, transactions) of a select-only run."""
    out = subprocess.run(
        [
            "pgbench",
            "-n",
            "-S",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(seconds),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "postgres",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))  # type: ignore[union-attr]
    return tps, latency, done


def copy_out(port: int) -> tuple[float, int]:
    """(seconds, bytes) to read pgbench_accounts with COPY TO STDOUT through ``port``."""
    started = time.perf_counter()
    proc = subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-c",
            "COPY pgbench_accounts TO STDOUT",
            "postgres",
        ],
        stdout=subprocess.PIPE,
        check=True,
    )
    return time.perf_counter() - started, len(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "postgres.md")
    args = parser.parse_args()

    pg = PostgresServer({"shared_buffers": "256MB", "log_statement": "none"})
    pg.start()
    bouncer = recorder = guarded = None
    try:
        subprocess.run(
            [
                "pgbench",
                "-i",
                "-q",
                "-s",
                "10",
                "-h",
                "127.0.0.1",
                "-p",
                str(pg.port),
                "-U",
                "postgres",
                "postgres",
            ],
            check=True,
            capture_output=True,
        )
        bouncer = Pgbouncer(pg)
        recorder = Recorder(pg)
        guarded = Recorder(pg, POLICY)
        paths = {
            "direct": pg.port,
            "pgbouncer": bouncer.port,
            "witness": recorder.port,
            "witness+policy": guarded.port,
        }
        tps8: dict[str, list[float]] = {p: [] for p in paths}
        lat1: dict[str, list[float]] = {p: [] for p in paths}
        tps1: dict[str, list[float]] = {p: [] for p in paths}
        # CPU time per transaction of the proxy process at c=8: steadier than tps on a busy
        # two-core machine, so it is the figure to compare between versions.
        proxies = {
            "pgbouncer": bouncer.proc.pid,
            "witness": recorder.proc.pid,
            "witness+policy": guarded.proc.pid,
        }
        cpu8: dict[str, list[float]] = {p: [] for p in proxies}
        witness_done = 0
        for r in range(args.rounds):
            for name, port in paths.items():
                before = cpu_seconds(proxies[name]) if name in proxies else 0.0
                tps, _, done = pgbench(port, 8, args.seconds)
                tps8[name].append(tps)
                if name in proxies:
                    cpu8[name].append((cpu_seconds(proxies[name]) - before) / done * 1e6)
                witness_done += done if name == "witness" else 0
                tps, latency, done = pgbench(port, 1, args.seconds)
                tps1[name].append(tps)
                lat1[name].append(latency)
                witness_done += done if name == "witness" else 0
                print(
                    f"round {r + 1} {name}: c8 {tps8[name][-1]:.0f} tps, "
                    f"c1 {tps1[name][-1]:.0f} tps {latency * 1000:.0f} us",
                    flush=True,
                )
        copies: dict[str, list[float]] = {"direct": [], "witness": []}
        size = 0
        for _ in range(args.rounds):
            for name, times in copies.items():
                seconds, size = copy_out(paths[name])
                times.append(seconds)
        recorded = recorder.commands()
        rss = recorder.peak_rss_mb()
    finally:
        if recorder:
            recorder.stop()
        if guarded:
            guarded.stop()
        if bouncer:
            bouncer.stop()
        pg.remove()

    med = statistics.median
    d8, b8 = med(tps8["direct"]), med(tps8["pgbouncer"])
    # Each round measures both proxies back to back, so a round's ratio shows the spread.
    paired = [w / b for w, b in zip(tps8["witness"], tps8["pgbouncer"], strict=True)]
    guarded_paired = [w / b for w, b in zip(tps8["witness+policy"], tps8["pgbouncer"], strict=True)]
    lines = [
        f"# PostgreSQL benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"median of {args.rounds} alternating rounds of {args.seconds}s)",
        "",
        "| path | tps c=8 | vs direct | vs pgbouncer | proxy CPU c=8 (us/txn) | tps c=1 "
        "| latency c=1 (us) | added (us) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in paths:
        t8, t1, l1 = med(tps8[name]), med(tps1[name]), med(lat1[name]) * 1000
        added = l1 - med(lat1["direct"]) * 1000
        cpu = f"{med(cpu8[name]):.1f}" if name in cpu8 else "-"
        lines.append(
            f"| {name} | {t8:.0f} | {t8 / d8:.2f} | {t8 / b8:.2f} | {cpu} | {t1:.0f} | "
            f"{l1:.0f} | {added:+.0f} |"
        )
    cd, cw = med(copies["direct"]), med(copies["witness"])
    lines += [
        "",
        f"COPY TO STDOUT of {size / 1e6:.0f} MB: direct {cd:.2f}s, witness {cw:.2f}s, "
        f"ratio {cw / cd:.2f} (target <= 1.3)",
        f"Witness at c=8 vs pgbouncer: {med(tps8['witness']) / b8:.2f} (target >= 0.6); "
        f"round by round {min(paired):.2f} to {max(paired):.2f}",
        f"Witness with a policy of 20 rules at c=8 vs pgbouncer: "
        f"{med(tps8['witness+policy']) / b8:.2f} (target >= 0.6, aim 0.8); round by round "
        f"{min(guarded_paired):.2f} to {max(guarded_paired):.2f}",
        f"Statements recorded: {recorded} commands for {witness_done} pgbench transactions "
        f"(plus the COPY reads)",
        f"Witness peak RSS: {rss:.0f} MB",
        f"Witness hot path: {native.STATUS}",
    ]
    report(lines, args.out)


if __name__ == "__main__":
    main()
