"""Masking benchmark: what masking on the wire costs.

Two figures, each from the same run, alternating, the median of the rounds kept:
- ``pgbench -S -c 8 -j 2`` through Witness with a mask on the one column its query returns
  (``pgbench_accounts.abalance``), as a ratio to Witness with the same policy and no mask;
- a ``COPY pgbench_accounts TO STDOUT`` read (about 100 MB at scale 10) with a mask on
  ``filler``, through Witness, as a ratio to direct.
The run checks that the values are masked. The table is printed and written to ``--out``.

Run: ``.venv/bin/python tests/bench/bench_masking.py [--seconds 10] [--rounds 3] [--scale 10]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_postgres import copy_out, pgbench, wait_port
from results import report

from appliance.lab.net import free_port
from appliance.lab.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
WITNESS = str(Path(sys.executable).parent / "witness")
MASKS = """
[[policy.masks]]
name = "balance"
tables = ["pgbench_accounts"]
columns = ["abalance", "filler"]
"""


class Recorder:
    """``witness serve`` with a policy that allows everything, masked or not."""

    def __init__(self, pg: PostgresServer, masked: bool) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="witness-bench-mask-"))
        config = self.dir / "witness.toml"
        config.write_text(
            f'[[backend]]\nname = "pg"\naddress = "127.0.0.1"\nport = {pg.port}\n'
            'catalog_user = "postgres"\n\n'
            f'[[listener]]\nlisten = "127.0.0.1:{self.port}"\nbackend = "pg"\n\n'
            f'[trail]\npath = "{self.dir / "trail.db"}"\n\n[identity]\nunbound = "allow"\n\n'
            '[policy]\ndefault = "allow"\n' + (MASKS if masked else "")
        )
        self.proc = subprocess.Popen(
            [WITNESS, "--config", str(config), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "witness.log").open("wb"),
        )
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def masked_value(port: int) -> str:
    return subprocess.run(
        ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
         "select abalance from pgbench_accounts limit 1", "postgres"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "masking.md")
    args = parser.parse_args()

    pg = PostgresServer({"shared_buffers": "256MB", "log_statement": "none"})
    pg.start()
    plain = masked = None
    try:
        subprocess.run(
            ["pgbench", "-i", "-q", "-s", str(args.scale), "-h", "127.0.0.1",
             "-p", str(pg.port), "-U", "postgres", "postgres"],
            check=True, capture_output=True,
        )  # fmt: skip
        plain, masked = Recorder(pg, masked=False), Recorder(pg, masked=True)
        if masked_value(masked.port) != "[masked:balance]":
            raise SystemExit("the masked recorder does not mask abalance")
        tps: dict[str, list[float]] = {"unmasked": [], "masked": []}
        copies: dict[str, list[float]] = {"direct": [], "masked": []}
        size = 0
        for _ in range(args.rounds):
            tps["unmasked"].append(pgbench(plain.port, 8, args.seconds)[0])
            tps["masked"].append(pgbench(masked.port, 8, args.seconds)[0])
            seconds, size = copy_out(pg.port)
            copies["direct"].append(seconds)
            copies["masked"].append(copy_out(masked.port)[0])
    finally:
        for recorder in (plain, masked):
            if recorder is not None:
                recorder.stop()
        pg.remove()
    med = statistics.median
    tm, tu = med(tps["masked"]), med(tps["unmasked"])
    cd, cm = med(copies["direct"]), med(copies["masked"])
    lines = [
        f"# Masking benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"median of {args.rounds} alternating rounds of {args.seconds}s, scale {args.scale})",
        "",
        f"pgbench -S -c 8: masked {tm:.0f} tps, unmasked {tu:.0f} tps, ratio {tm / tu:.2f}",
        f"COPY TO STDOUT of {size / 1e6:.0f} MB, a masked column in every row: direct"
        f" {cd:.2f}s, through Witness {cm:.2f}s, ratio {cm / cd:.2f}",
    ]
    report(lines, args.out)


if __name__ == "__main__":
    main()
