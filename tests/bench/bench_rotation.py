"""Trail rotation benchmark: a bastion's disk under pgbench at full speed.

Two recorders in turn, in front of the same PostgreSQL, each shipping every event to a
central store (another PostgreSQL on this machine, loopback):

- ``kept``: ``segment_mb = 0`` (never sealed), the baseline: the trail grows with every event;
- ``sealed``: ``segment_mb = --segment-mb``, ``retire = "central"``: the active file is
  sealed, shipped, checked by the store (``witness.held``) and deleted.

Each runs ``pgbench -S -c 8`` for ``--seconds``, and the trail's directory (active file,
WAL, sealed segments, state files) is measured every half second. Printed, and written to
``--out``: each run's transactions per second (``sealed`` as a ratio of ``kept``), events
recorded, the bytes per event left on the disk at the end, the largest the directory grew,
and its size at the end.

Run: ``.venv/bin/python tests/bench/bench_rotation.py [--seconds 60] [--segment-mb 16]``
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from bench_postgres import pgbench, wait_port
from results import report

from appliance.lab.net import free_port
from appliance.lab.postgres import PostgresServer
from appliance.trail import central, db

ROOT = Path(__file__).resolve().parents[2]
WITNESS = str(Path(sys.executable).parent / "witness")


def store_up() -> PostgresServer:
    pg = PostgresServer({"shared_buffers": "256MB"})
    pg.start()
    pg.psql("CREATE DATABASE central")
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-", pg.url(database="central")],
        input=central.SCHEMA + 'CREATE ROLE "b1" LOGIN IN ROLE witness_bastion;\n',
        text=True, check=True, capture_output=True,
    )  # fmt: skip
    with psycopg.connect(pg.url(database="central"), autocommit=True) as owner:
        central.maintain(owner, today=datetime.now(UTC).date())
    return pg


def size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


class Run:
    """One recorder, measured while pgbench runs through it."""

    def __init__(self, pg: PostgresServer, store: PostgresServer, trail_options: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="witness-rotation-"))
        self.trail = self.dir / "trail.db"
        self.port = free_port()
        config = self.dir / "witness.toml"
        config.write_text(
            f'[[backend]]\nname = "pg"\naddress = "127.0.0.1"\nport = {pg.port}\n\n'
            f'[[listener]]\nlisten = "127.0.0.1:{self.port}"\nbackend = "pg"\n\n'
            f'[trail]\npath = "{self.trail}"\n{trail_options}\n\n'
            f'[trail.central]\ndsn = "postgresql://b1@127.0.0.1:{store.port}/central"\n\n'
            '[identity]\nunbound = "allow"\n'
        )
        self.proc = subprocess.Popen(
            [WITNESS, "--config", str(config), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "witness.log").open("wb"),
        )
        wait_port(self.port)
        self.largest = 0
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._measure)
        self._watch.start()

    def _measure(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.largest = max(self.largest, size(self.dir))
            except FileNotFoundError:
                continue  # a segment deleted as it was measured

    def load(self, seconds: int) -> float:
        return pgbench(self.port, 8, seconds)[0]

    def finish(self) -> tuple[int, int, int]:
        """(events, the directory's size at the end, the largest it grew)."""
        self._stop.set()
        self._watch.join()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        with db.reading(self.trail) as conn:
            events = db.last_seq(conn)
        end = size(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        return events, end, max(self.largest, end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--segment-mb", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results/rotation.md")
    args = parser.parse_args()
    pg = PostgresServer()
    pg.start()
    store = store_up()
    subprocess.run(["pgbench", "-i", "-q", "-s", "10", pg.url()], check=True, capture_output=True)
    results = {}
    try:
        for name, options in (
            ("kept", "segment_mb = 0"),
            ("sealed", f'segment_mb = {args.segment_mb}\nretire = "central"'),
        ):
            run = Run(pg, store, options)
            tps = run.load(args.seconds)
            time.sleep(3)  # the last segment shipped, checked and retired
            results[name] = (tps, *run.finish())
    finally:
        pg.remove()
        store.remove()
    mib = 1 << 20
    lines = [
        f"trail rotation, pgbench -S -c 8 for {args.seconds} s through witness, every event"
        f" shipped to a central PostgreSQL on this machine; sealed every {args.segment_mb} MiB",
        f"{'run':<8}{'tps':>9}{'events':>11}{'B/event':>9}{'largest MiB':>13}{'at end MiB':>12}",
    ]
    for name, (tps, events, end, largest) in results.items():
        lines.append(
            f"{name:<8}{tps:>9.0f}{events:>11}{end / events:>9.0f}"
            f"{largest / mib:>13.1f}{end / mib:>12.1f}"
        )
    kept, sealed = results["kept"], results["sealed"]
    lines.append(
        f"sealed vs kept: {sealed[0] / kept[0]:.2f} of the throughput; the directory grew to"
        f" {sealed[3] / mib:.0f} MiB at most for {sealed[1]} events, where keeping them all"
        f" took {kept[3] / mib:.0f} MiB for {kept[1]}"
    )
    report(lines, args.out)


if __name__ == "__main__":
    main()
