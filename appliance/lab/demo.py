"""The live demo: a throwaway PostgreSQL, Witness recording in front of it, a few psql
commands through it, and the trail they left."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from appliance.lab.net import free_port, wait_port
from appliance.lab.postgres import LabError, PostgresServer

# One agent session: a few statements through one connection, one of them failing.
AGENT = """\
create table orders (id int primary key, customer text, total numeric);
insert into orders values (1, 'ada', 12.50), (2, 'grace', 99.00), (3, 'linus', 7.25);
select customer, total from orders where total > 10 order by id;
update orders set total = total * 1.1 where id = 2;
select * from invoices;
select count(*) from orders;
"""
# And a second, shorter one.
AUDITOR = "select customer from orders order by total desc limit 1"


def run(directory: Path, keep: bool, say: Callable[[str], None]) -> None:
    """Run the demo in ``directory`` (emptied first). With ``keep``, stay up until Ctrl-C."""
    witness = str(Path(sys.executable).parent / "witness")
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    trail = directory / "trail.db"
    say("Starting a throwaway PostgreSQL 15 ...")
    with PostgresServer() as pg:
        port = free_port()
        say(f"Starting Witness on 127.0.0.1:{port}, recording to {trail} ...")
        log = (directory / "witness.log").open("wb")
        recorder = subprocess.Popen(
            [
                witness,
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--backend",
                f"postgresql://127.0.0.1:{pg.port}",
                "--trail",
                str(trail),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            try:
                wait_port(port, recorder)
            except RuntimeError as exc:
                raise LabError(f"witness did not start: {exc}") from None
            url = pg.url(port)
            say(f"\nAn agent sends a script through Witness ({url}):\n")
            _psql(say, ["-e", "-f", "-", url + "?application_name=demo-agent"], AGENT)
            say("\nA second session:\n")
            _psql(say, ["-e", "-c", AUDITOR, url + "?application_name=demo-auditor"])
            time.sleep(0.2)
            first = _first_session(witness, trail)
            for argv in (
                ["sessions", "list", "--trail", str(trail)],
                ["sessions", "show", first, "--trail", str(trail)],
                ["search", "orders", "--trail", str(trail)],
            ):
                _witness(say, witness, argv)
            if keep:
                _witness(say, witness, ["verify", "--trail", str(trail)])
                say(
                    "\nWitness is still recording. In another terminal, try:\n"
                    f"  psql '{url}'\n"
                    f"  {witness} sessions list --trail {trail}\n"
                    f"  {witness} search orders --trail {trail}\n"
                    "Press Ctrl-C here to stop the demo."
                )
                try:
                    signal.pause()
                except KeyboardInterrupt:
                    say("")
        finally:
            recorder.send_signal(signal.SIGTERM)
            recorder.wait(timeout=30)
            log.close()
    say("\nWitness stopped and signed a last checkpoint over the trail:")
    _witness(say, witness, ["verify", "--trail", str(trail)])
    say(f"\nThe trail stays in {trail}.")


def _psql(say: Callable[[str], None], args: list[str], stdin: str | None = None) -> None:
    out = subprocess.run(
        ["psql", "-X", *args], input=stdin, capture_output=True, text=True, check=False
    )
    for line in (out.stdout + out.stderr).rstrip().splitlines():
        say(f"    {line}")


def _witness(say: Callable[[str], None], witness: str, argv: list[str]) -> None:
    say(f"\n$ witness {' '.join(argv)}")
    shown = subprocess.run([witness, *argv], capture_output=True, text=True, check=False)
    say((shown.stdout + shown.stderr).rstrip())


def _first_session(witness: str, trail: Path) -> str:
    import json  # noqa: PLC0415

    out = subprocess.run(
        [witness, "sessions", "list", "--trail", str(trail), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    listed = json.loads(out.stdout)
    if not listed:
        raise LabError("the demo recorded no session")
    return str(listed[0]["id"])


def default_directory() -> Path:
    return Path(os.environ.get("WITNESS_DEMO_DIR", "witness-demo")).resolve()
