"""Central store benchmark: many bastions shipping into one PostgreSQL on this machine.

Each simulated bastion has a trail of its own, written through the trail's own writer (a
real chain, its own genesis and key), and a shipper of its own (the recorder's, in a
thread), logging in as its own role. Two figures, against one PostgreSQL (loopback, its
default settings but for ``shared_buffers``):

- ``backlog``: every bastion starts with ``--events`` events unshipped (a bastion back from
  an outage); events per second until the store holds them all, and how long that took;
- ``steady``: every bastion writes ``--rate`` events a second for ``--seconds`` while
  shipping; events per second stored, and the lag (the age of the oldest event not yet
  shipped), its median and worst, sampled every half second across all bastions.

The run checks that the store holds each event once. The table is printed and written to
``--out``.

Run: ``.venv/bin/python tests/bench/bench_central.py [--bastions 50] [--events 20000]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from results import report

from appliance.config import AnchorSettings, TrailSettings
from appliance.lab.postgres import PostgresServer
from appliance.trail import central, shipper
from appliance.trail.shipper import Shipper
from appliance.trail.store import Trail

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = {
    "n": 0,
    "kind": "execute",
    "text": "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
}


class Bastion:
    def __init__(self, name: str, directory: Path, store: str) -> None:
        self.name = name
        self.settings = TrailSettings.beside(directory / f"{name}.db")
        self.trail = Trail.open(self.settings)
        self.shipper = Shipper(self.settings, AnchorSettings(store, bastion=name), self.trail.id)
        self.stop = threading.Event()

    def write(self, count: int) -> None:
        for n in range(count):
            self.trail.append("command", "s1", {**PAYLOAD, "n": n, "params": [str(n)]})
            if n % 1000 == 999:
                self.trail.commit()
        self.trail.commit()

    def ship_until_stopped(self) -> None:
        """Ship as the recorder does: a round whenever there may be more, else a pause."""
        while not self.stop.is_set():
            try:
                sent = self.shipper.carry()
            except Exception:  # the store is busy: the next round tries again
                sent = 0
            if sent < shipper.BATCH:
                self.stop.wait(shipper.POLL_SECONDS / 4)

    def behind(self) -> float | None:
        lag = shipper.lag(self.settings)
        return None if lag.oldest is None else time.time() - lag.oldest


def store_up(count: int) -> tuple[PostgresServer, list[str]]:
    pg = PostgresServer({"shared_buffers": "256MB", "max_connections": "200"})
    pg.start()
    pg.psql("CREATE DATABASE central")
    names = [f"b{i:02d}" for i in range(count)]
    sql = central.SCHEMA + "".join(
        f'CREATE ROLE "{n}" LOGIN IN ROLE witness_bastion;\n' for n in names
    )
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-", pg.url(database="central")],
        input=sql, text=True, check=True, capture_output=True,
    )  # fmt: skip
    with psycopg.connect(pg.url(database="central"), autocommit=True) as owner:
        central.maintain(owner, today=datetime.now(UTC).date())
    return pg, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bastions", type=int, default=50)
    parser.add_argument("--events", type=int, default=20_000, help="each bastion's backlog")
    parser.add_argument("--rate", type=int, default=100, help="events a second, each")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "central.md")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="witness-bench-central-"))
    pg, names = store_up(args.bastions)
    try:
        url = f"postgresql://{{}}@127.0.0.1:{pg.port}/central"
        bastions = [Bastion(n, directory, url.format(n)) for n in names]
        for bastion in bastions:
            bastion.write(args.events)
        written = sum(b.trail.head[0] for b in bastions)

        started = time.perf_counter()
        threads = [threading.Thread(target=b.ship_until_stopped) for b in bastions]
        for thread in threads:
            thread.start()
        while any(b.shipper.state.published < b.trail.head[0] for b in bastions):
            time.sleep(0.1)
        drained = time.perf_counter() - started

        lags: list[float] = []
        before = sum(b.shipper.state.published for b in bastions)
        steady_start = time.perf_counter()
        deadline = steady_start + args.seconds
        tick = 0
        while (now := time.perf_counter()) < deadline:
            due = int((now - steady_start) * args.rate)
            for bastion in bastions:  # each bastion's writes, up to what its rate allows
                for _ in range(due - tick):
                    bastion.trail.append("command", "s1", PAYLOAD)
                bastion.trail.commit()
            tick = due
            if int(now * 2) != int((now - 0.05) * 2):
                lags += [lag for b in bastions if (lag := b.behind()) is not None]
            time.sleep(0.05)
        while any(b.shipper.state.published < b.trail.head[0] for b in bastions):
            time.sleep(0.1)
        steady = time.perf_counter() - steady_start
        stored = sum(b.shipper.state.published for b in bastions) - before
        for bastion in bastions:
            bastion.stop.set()
        for thread in threads:
            thread.join()
        ((rows, distinct),) = (
            psycopg.connect(pg.url(database="central"))
            .execute("SELECT count(*), count(DISTINCT (bastion, seq)) FROM witness.events")
            .fetchall()
        )
        total = sum(b.trail.head[0] for b in bastions)
        if not rows == distinct == total:
            raise SystemExit(f"the store holds {rows} rows, {distinct} distinct, of {total}")
        for bastion in bastions:
            bastion.trail.close()
    finally:
        pg.remove()
        shutil.rmtree(directory, ignore_errors=True)
    lags.sort()
    lines = [
        f"# Central store benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores,"
        f" {args.bastions} bastions into one PostgreSQL on the same machine)",
        "",
        f"backlog: {written} events ({args.events} per bastion) stored in {drained:.1f} s:"
        f" {written / drained:.0f} events/s",
        f"steady: {args.bastions} x {args.rate} events/s for {args.seconds} s: {stored} stored,"
        f" {stored / steady:.0f} events/s; lag median {statistics.median(lags or [0]):.2f} s,"
        f" worst {max(lags or [0]):.2f} s",
    ]
    report(lines, args.out)


if __name__ == "__main__":
    main()
