"""FluxKart Identity benchmark on MariaDB: the service against its two ceilings, in one run.

    .venv/bin/python -m bench.run                   # default: 10,000 contacts, 3 runs each (~6 min)
    .venv/bin/python -m bench.run --quick           # 1 short run each, for development (~1 min)
    .venv/bin/python -m bench.run --growth          # also p50 at 10,000 vs 1,000,000 contacts
    .venv/bin/python -m bench.run --gunicorn 2:8:gthread --gunicorn 4:1:sync   # compare configs

Starts a throwaway mariadbd (tests/harness/mariadb.py) and the service under gunicorn exactly as
the Procfile does, preloads contacts with bulk SQL, drives closed-loop load with wrk,
measures the database-bound and HTTP-bound ceilings in the same run, times merges, checks
the final table's invariants, and writes bench/results/latest.md and throughput.png.
Every process it starts is stopped at the end, also on errors and Ctrl-C. See README.md.
The phases themselves are bench/measure.py's `Bench` (bench/compare.py's `Compare` for --compare).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import compare, report
from bench.measure import BENCH, REPO, STARTED, Bench, Options, log
from bench.procs import GunicornConfig

# --------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_options(argv: list[str]) -> Options:
    """Command-line options; --quick changes the defaults it is given none for."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=10_000, help="contacts preloaded (default 10000)")
    parser.add_argument(
        "--quick", action="store_true", help="1 short run each, results under results/raw/quick"
    )
    parser.add_argument("--runs", type=int, help="repeats of each configuration (default 3; --quick 1)")
    parser.add_argument(
        "--duration", type=float, help="seconds per measured run (default 8, with --compare 10; --quick 3)"
    )
    parser.add_argument(
        "--warmup", type=float, help="seconds of unmeasured load first (default 2, --compare 3; --quick 1)"
    )
    parser.add_argument(
        "--concurrency", type=int_list, help="e.g. 1,8,32 (default 1,8,32; with --compare 32)"
    )
    parser.add_argument("--db-processes", type=int_list, default=[1, 2, 8, 32], help="e.g. 1,2,8,32")
    parser.add_argument(
        "--gunicorn",
        action="append",
        metavar="WORKERS:THREADS:CLASS[:POOL]",
        help="a gunicorn configuration (repeat to compare; empty parts keep "
        "gunicorn.conf.py's defaults, e.g. 4:1:sync or :16:)",
    )
    parser.add_argument("--workers", type=int, help="WEB_CONCURRENCY for the single configuration")
    parser.add_argument("--threads", type=int, help="GUNICORN_THREADS for the single configuration")
    parser.add_argument("--worker-class", help="GUNICORN_WORKER_CLASS for the single configuration")
    parser.add_argument("--workloads", default="shop,hot", help="shop,hot (default both)")
    parser.add_argument("--growth", action="store_true", help="also measure identify at --growth-contacts")
    parser.add_argument("--growth-contacts", type=int, default=1_000_000)
    parser.add_argument("--merge-sizes", type=int_list, default=[10, 100, 1000])
    parser.add_argument("--merge-repeats", type=int, help="merges timed per size (default 5; --quick 2)")
    parser.add_argument("--probe-requests", type=int, help="sequential requests per kind in growth probes")
    parser.add_argument("--profile", action="store_true", help="py-spy the workers during an extra shop run")
    parser.add_argument(
        "--buffer-pool-mib",
        type=int,
        default=1024,
        help="InnoDB buffer pool (default 1024: holds a million contacts, as a production server would)",
    )
    parser.add_argument(
        "--flush-at-commit",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="innodb_flush_log_at_trx_commit (default 1, durable as in production; "
        "tests/harness/mariadb.py uses 2)",
    )
    parser.add_argument(
        "--compare",
        metavar="URL@DATABASE",
        help="side by side with another service on the benchmark's MariaDB, A B B A (bench/compare.py)",
    )
    parser.add_argument(
        "--compare-command",
        metavar="COMMAND",
        help="starts the other service; {port}, {database}, {mysql_port} are filled in and "
        "MYSQL_HOST/MYSQL_PORT/MYSQL_USER/MYSQL_PASSWORD point at the throwaway server",
    )
    parser.add_argument(
        "--slow-clients",
        type=int,
        default=1000,
        metavar="N",
        help="with --compare: a fast client's identify latency while N idle/slow connections are held "
        "(default 1000; 0 skips)",
    )
    parser.add_argument(
        "--statements",
        type=int,
        default=1000,
        metavar="N",
        help="with --compare: statements per identify by request kind, N requests per side sent one "
        "at a time (default 1000; 0 skips)",
    )
    parser.add_argument(
        "--statements-only",
        action="store_true",
        help="with --compare: only the statements phase (no load, no slow clients)",
    )
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    if args.statements_only and not (args.compare and args.statements):
        parser.error("--statements-only needs --compare and a --statements count above 0")
    quick = args.quick
    if args.gunicorn:
        configs = [GunicornConfig.parse(text) for text in args.gunicorn]
    else:
        configs = [GunicornConfig(args.workers, args.threads, args.worker_class)]
    return Options(
        contacts=args.contacts,
        runs=args.runs or (1 if quick else 3),
        duration=args.duration or (3 if quick else 10 if args.compare else 8),
        warmup=args.warmup or (1 if quick else 3 if args.compare else 2),
        concurrency=args.concurrency or ([32] if args.compare else [1, 8, 32]),
        db_processes=args.db_processes,
        configs=configs,
        workloads=[w for w in args.workloads.split(",") if w],
        growth=args.growth,
        growth_contacts=args.growth_contacts,
        merge_sizes=args.merge_sizes,
        merge_repeats=args.merge_repeats or (2 if quick else 5),
        probe_requests=args.probe_requests or (100 if quick else 300),
        profile=args.profile,
        buffer_pool_mib=args.buffer_pool_mib,
        flush_at_commit=args.flush_at_commit,
        seed=args.seed,
        out=args.out or (BENCH / "results" / "raw" / "quick" if quick else BENCH / "results"),
        quick=quick,
        compare=args.compare,
        compare_command=args.compare_command,
        slow_clients=args.slow_clients,
        statements=args.statements,
        statements_only=args.statements_only,
    )


def prune_raw(keep: int = 5) -> None:
    """Keep the newest `keep` run folders under results/raw: each holds the gunicorn logs,
    one JSON line per request (tens of MB per run), so they would otherwise pile up."""
    runs = sorted(p for p in (BENCH / "results" / "raw").glob("2*T*Z") if p.is_dir())
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def install_signal_handlers() -> None:
    """SIGTERM (and SIGHUP) unwind like Ctrl-C, so every started process is stopped."""

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)


def run_bench(
    make: Callable[[Options, contextlib.ExitStack], Bench], options: Options
) -> tuple[dict[str, Any], Path]:
    """Run one benchmark (a Bench or a Compare) to the end; returns its results and its raw folder.

    results.json is written whatever was measured, even when a later phase failed: for the
    post-mortem. Every process the run started is stopped before this returns.
    """
    with contextlib.ExitStack() as stack:
        bench = make(options, stack)
        try:
            results = bench.run()
            results["phases"]["total"] = round(time.monotonic() - STARTED, 1)
        finally:
            (bench.raw / "results.json").write_text(json.dumps(bench.results, indent=1, default=str))
            log("stopping servers ...")
    prune_raw()
    options.out.mkdir(parents=True, exist_ok=True)
    return results, bench.raw


def main(argv: list[str]) -> int:
    options = parse_options(argv)
    install_signal_handlers()
    os.chdir(REPO)
    if options.compare:
        return compare_main(options)
    results, raw = run_bench(Bench, options)
    report.write_markdown(results, options.out / "latest.md")
    report.plot(results, options.out / "throughput.png")
    log(f"wrote {options.out / 'latest.md'}, {options.out / 'throughput.png'}, {raw / 'results.json'}")
    print((options.out / "latest.md").read_text())
    return 0


def compare_main(options: Options) -> int:
    """--compare: this service and another, side by side (bench/compare.py)."""
    results, raw = run_bench(compare.Compare, options)
    path = options.out / "latest-compare.md"
    compare.write_markdown(results, path)
    log(f"wrote {path}, {raw / 'results.json'}")
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
