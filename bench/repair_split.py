"""The time and memory of `repair` splitting a blob (issue 21, "Done when").

    .venv/bin/python -m bench.repair_split                       # 10,000 rows, SQLite and MariaDB
    .venv/bin/python -m bench.repair_split --rows 2000 --backend sqlite

Writes a blob behind the service's back, as a service without merge protection left it: one
customer of N rows written by SQL, all sharing the phone 0000000000 (blocked by default), each
with its own email, row 1 its primary and every other row pointing at it. Then runs the real
command, `flask --app fluxkart repair`, as a subprocess (wall time, and the peak memory the
command reports itself), checks it split the blob into N customers, and runs it a second time
(which changes nothing, and re-reads every part). MariaDB is a throwaway mariadbd
(tests/harness/mariadb.py); SQLite a file in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.harness.database import blank_settings, run_sql
from tests.harness.mariadb import MariaDBServer
from tests.harness.processes import SERVICE_DIR

BLOCKED_PHONE = "0000000000"


def write_blob(settings: dict[str, Any], rows: int) -> None:
    """The blob: row 1 primary, rows 2..N secondaries of it, all carrying BLOCKED_PHONE."""
    stamp = "2024-01-01 00:00:00.{:06d}"
    values = [
        (
            i,
            f"user{i}@blob.example",
            BLOCKED_PHONE,
            None if i == 1 else 1,
            "primary" if i == 1 else "secondary",
            stamp.format(i),
            stamp.format(i),
        )
        for i in range(1, rows + 1)
    ]
    for start in range(0, rows, 5000):
        run_sql(
            settings,
            "INSERT INTO Contact (id, email, phoneNumber, linkedId, linkPrecedence, createdAt, updatedAt)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            values[start : start + 5000],
            many=True,
        )


def flask(settings: dict[str, Any], *args: str) -> tuple[float, str]:
    """Run `flask --app fluxkart <args>` on these settings; (wall seconds, stdout and stderr)."""
    env = {**os.environ, **{name: str(value) for name, value in settings.items() if value}}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "fluxkart", *args],
        cwd=SERVICE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"flask {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout + done.stderr


def measure(settings: dict[str, Any], rows: int) -> dict[str, Any]:
    """init-db, the blob, repair twice; what each repair took and reported."""
    flask(settings, "init-db")
    flask(settings, "block", "list")  # the shipped defaults, written on first use
    write_blob(settings, rows)
    results: dict[str, Any] = {}
    for run in ("first", "second"):
        wall, output = flask(settings, "repair")
        peak = re.search(r"peak memory: (\d+) MiB", output)
        waited = re.search(r"waiting ([\d.]+) s until every worker applies", output)
        split = re.search(r"split because a blocked value joined them: (\d+)(?: into (\d+) parts)?", output)
        results[run] = {
            "wall_s": wall,
            "waited_s": float(waited.group(1)) if waited else 0.0,
            "peak_mib": int(peak.group(1)) if peak else None,
            "customers_split": int(split.group(1)) if split else None,
            "parts": int(split.group(2)) if split and split.group(2) else 0,
        }
    primaries = run_sql(settings, "SELECT COUNT(*) AS n FROM Contact WHERE linkedId IS NULL")[0]["n"]
    events = run_sql(settings, "SELECT COUNT(*) AS n FROM CustomerHistory WHERE kind = 'split'")[0]["n"]
    results["check"] = {"customers_after": primaries, "split_events": events}
    if primaries != rows or events != rows - 1:
        raise SystemExit(f"the blob was not split into {rows} customers: {results}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the blob")
    parser.add_argument("--backend", choices=["sqlite", "mysql", "both"], default="both")
    args = parser.parse_args()
    backends = ["sqlite", "mysql"] if args.backend == "both" else [args.backend]
    lines = [
        f"repair splitting a {args.rows:,}-row blob (one customer sharing phone {BLOCKED_PHONE}, each row"
        " its own email), `flask --app fluxkart repair` as a subprocess:",
        "",
        "| backend | run | wall time | of which waiting for workers | peak memory (repair's report)"
        " | customers split | parts |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="fluxkart-repair-split-") as tmp:
        for backend in backends:
            settings = blank_settings()
            settings["FLUXKART_SQLITE_PATH"] = str(Path(tmp) / "blob.db")
            server = None
            if backend == "mysql":
                (Path(tmp) / "mariadb").mkdir()
                server = MariaDBServer(Path(tmp) / "mariadb")
                server.start()
                with server.connect() as conn, conn.cursor() as cur:
                    cur.execute("CREATE DATABASE `repair_split`")
                settings.update(server.settings("repair_split"))
            try:
                results = measure(settings, args.rows)
            finally:
                if server is not None:
                    server.stop()
            for run in ("first", "second"):
                r = results[run]
                lines.append(
                    f"| {backend} | {run} | {r['wall_s']:.1f} s | {r['waited_s']:.1f} s |"
                    f" {r['peak_mib']} MiB | {r['customers_split']} | {r['parts']} |"
                )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
