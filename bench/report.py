"""Turning a run's results into bench/results/latest.md, throughput.png and a profile summary.

Every figure is the median over the repeated runs, with [min-max] when there were
several; ratios are medians divided by medians measured in the same run.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

Records = list[dict[str, Any]]


# --------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------


def values(records: Records, field: str, every: bool = False) -> list[float]:
    """The field's values over the runs: a run marked disturbed (processes outside the
    benchmark used more than DISTURBED_CORES) is left out, unless every run was, or `every`;
    `others_cores` always counts every run, so the report shows the disturbance."""
    if not every and field != "others_cores":
        records = [r for r in records if not r.get("disturbed")] or records
    return [float(r[field]) for r in records if field in r]


def median(records: Records, field: str) -> float:
    found = values(records, field)
    return statistics.median(found) if found else 0.0


def number(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def spread(records: Records, field: str, digits: int = 0) -> str:
    """'1,986 [1,628-2,021]': median, and the range when there were several runs."""
    found = values(records, field)
    if not found:
        return "-"
    text = number(statistics.median(found), digits)
    if len(found) > 1:
        text += f" [{number(min(found), digits)}-{number(max(found), digits)}]"
    return text


def percent(records: Records, field: str) -> str:
    """Median share as a percentage."""
    return f"{median(records, field):.0%}" if values(records, field) else "-"


def total(records: Records, field: str) -> int:
    return int(sum(values(records, field, every=True)))


def concurrency_of(key: str) -> int:
    return int(key.rsplit("=", 1)[1])


def series(runs: dict[str, Records], prefix: str) -> dict[int, Records]:
    """{concurrency: records} for keys like 'shop/0/C=8' or 'db/P=2'."""
    return {
        concurrency_of(k): v for k, v in runs.items() if k.rsplit("=", 1)[0] in (f"{prefix}C", f"{prefix}P")
    }


def ceiling_at(ceiling: dict[int, Records], c: int) -> float:
    """The ceiling's median throughput at concurrency c (the nearest measured one)."""
    if not ceiling:
        return 0.0
    nearest = min(ceiling, key=lambda p: abs(p - c))
    return median(ceiling[nearest], "throughput")


def ratio(value: float, ceiling: float) -> str:
    return f"{value / ceiling:.2f}" if ceiling else "-"


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------


def header(results: dict[str, Any]) -> list[str]:
    m, o = results["machine"], results["options"]
    runs = f"{o['runs']} run{'s' if o['runs'] > 1 else ''} of {o['duration']:g} s"
    return [
        "# FluxKart Identity: benchmark results",
        "",
        f"Measured {m['date']} on {m['nproc']} cores ({m['cpu_model']}, {m['memory_gib']} GiB, {m['os']}); "
        f"MariaDB {m['mariadb']} on 127.0.0.1 (throwaway server, tests/harness/mariadb.py); "
        f"Python {m['python']}; "
        f"{m['gunicorn']}; {m['wrk']}; commit {m['commit']}; InnoDB buffer pool {o['buffer_pool_mib']} MiB, "
        f"innodb_flush_log_at_trx_commit={o.get('flush_at_commit', 2)}.",
        "",
        f"Command: `.venv/bin/python -m bench.run {' '.join(o.get('argv', []))}`".replace(" `", " `").rstrip()
        + f" - {o['contacts']:,} contacts preloaded; {runs} per configuration, interleaved; "
        "figures are medians [min-max]. Closed loop, keep-alive, wrk with one thread on the same machine. "
        "`others` is CPU (in cores) used during the run by processes outside the benchmark: "
        "when it is not near 0, the machine was shared and absolute figures are low; ratios hold better. "
        "A run during which it passed 0.2 cores is disturbed and left out of the other figures "
        f"({disturbed_count(results)} here; all of a configuration's runs are used when every one was).",
        "",
    ]


def disturbed_count(results: dict[str, Any]) -> str:
    """'1 of 12 runs': the runs marked disturbed, over every run recorded."""
    runs = [r for records in results.get("runs", {}).values() for r in records if isinstance(r, dict)]
    return f"{sum(1 for r in runs if r.get('disturbed'))} of {len(runs)} runs"


def summary(results: dict[str, Any]) -> list[str]:
    """The figures with targets (docs/performance.md): first configuration, shop workload, top concurrency."""
    runs, o = results["runs"], results["options"]
    top = max(o["concurrency"])
    shop = series(runs, "shop/0/").get(top)
    if not shop:
        return []
    rate = median(shop, "throughput")
    db = ceiling_at(series(runs, "db/"), top)
    http = ceiling_at(series(runs, "http/0/"), top)
    verdicts = results.get("invariants", [])
    found = sum(sum((v.get("project") or v["linkage"]).values()) for v in verdicts)
    lines = [
        f"## Summary ({o['configs'][0]}, shop workload, C={top})",
        "",
        "| figure | this run | target |",
        "|---|---|---|",
        f"| throughput | {rate:,.0f} req/s | - |",
        f"| x DB ceiling | {ratio(rate, db)} | at least 0.55 (the Node reference: 0.42) |",
        f"| x HTTP ceiling | {ratio(rate, http)} | - |",
        f"| p99 | {median(shop, 'p99'):.1f} ms | under 30 ms |",
        f"| non-2xx answers, all service runs | {sum(v['non_2xx_total'] for v in verdicts[:1])} | 0 |",
        f"| invariant violations (all checks) | {found} | 0 |",
        f"| load generator CPU | {median(shop, 'generator_us'):.1f} µs/request (wrk) | - |",
    ]
    growth = results.get("growth")
    if growth and growth["probes"].get("small") and growth["probes"].get("large"):
        small = median([p["shop_C1"] for p in growth["probes"]["small"]], "p50")
        large = median([p["shop_C1"] for p in growth["probes"]["large"]], "p50")
        lines.append(
            f"| shop p50 at C=1, {o['growth_contacts']:,} / {o['contacts']:,} contacts | "
            f"{large / small:.2f}x | at most 1.3x |"
        )
    return lines + [""]


def ceiling_tables(results: dict[str, Any]) -> list[str]:
    runs = results["runs"]
    lines = [
        "## Ceilings (same run)",
        "",
        "Database-bound: BEGIN; SELECT by email; SELECT by phone; INSERT when new; COMMIT, straight "
        "through PyMySQL from P processes on a copy of the preloaded table, no HTTP.",
        "",
        "| P | tx/s | p50 ms | p99 ms | clients µs/tx | mariadbd µs/tx | others (cores) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p, records in sorted(series(runs, "db/").items()):
        lines.append(
            f"| {p} | {spread(records, 'throughput')} | {spread(records, 'p50', 2)} | "
            f"{spread(records, 'p99', 2)} | {spread(records, 'clients_us')} | "
            f"{spread(records, 'mariadb_us')} | {spread(records, 'others_cores', 2)} |"
        )
    for index, label in enumerate(results["options"]["configs"]):
        lines += [
            "",
            f"HTTP-bound: a constant-JSON Flask app (bench/trivial_app.py) under the same gunicorn "
            f"settings ({label}).",
            "",
            "| C | req/s | p50 ms | p99 ms | non-2xx | wrk µs/req | workers µs/req | workers in kernel | "
            "others (cores) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c, records in sorted(series(runs, f"http/{index}/").items()):
            lines.append(
                f"| {c} | {spread(records, 'throughput')} | {spread(records, 'p50', 2)} | "
                f"{spread(records, 'p99', 2)} | {total(records, 'non_2xx')} | "
                f"{spread(records, 'generator_us', 1)} | {spread(records, 'workers_us')} | "
                f"{percent(records, 'workers_system_share')} | "
                f"{spread(records, 'others_cores', 2)} |"
            )
    return lines + [""]


def outcome_line(records: Records) -> str:
    """What the service did with the requests (from its /metrics), summed over the runs."""
    counts: Counter[str] = Counter()
    for record in records:
        counts.update(record.get("counts", {}))
    outcomes = ", ".join(
        f"{k.split(':', 1)[1]} {v:,}" for k, v in sorted(counts.items()) if k.startswith("outcome")
    )
    retries = sum(v for k, v in counts.items() if k.startswith("retry"))
    return f"{outcomes}; retried transactions {retries:,}"


def service_tables(results: dict[str, Any]) -> list[str]:
    runs, lines = results["runs"], []
    db = series(runs, "db/")
    titles = {
        "shop": "shop workload (repeat customers, new customers, new email/phone, ~2% bridges)",
        "hot": "hot contention (every 16 requests share 2 emails and 2 phones)",
    }
    for index, label in enumerate(results["options"]["configs"]):
        http = series(runs, f"http/{index}/")
        for workload in results["options"]["workloads"]:
            found = series(runs, f"{workload}/{index}/")
            if not found:
                continue
            lines += [
                f"## Service, {titles.get(workload, workload)}: {label}",
                "",
                "| C | req/s | p50 ms | p95 ms | p99 ms | non-2xx | x DB ceiling | x HTTP ceiling | "
                "wrk µs/req | workers µs/req | workers in kernel | mariadbd µs/req | others (cores) |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for c, records in sorted(found.items()):
                rate = median(records, "throughput")
                lines.append(
                    f"| {c} | {spread(records, 'throughput')} | {spread(records, 'p50', 2)} | "
                    f"{spread(records, 'p95', 2)} | {spread(records, 'p99', 2)} | "
                    f"{total(records, 'non_2xx')} | "
                    f"{ratio(rate, ceiling_at(db, c))} | {ratio(rate, ceiling_at(http, c))} | "
                    f"{spread(records, 'generator_us', 1)} | {spread(records, 'workers_us')} | "
                    f"{percent(records, 'workers_system_share')} | "
                    f"{spread(records, 'mariadb_us')} | {spread(records, 'others_cores', 2)} |"
                )
            every = [r for records in found.values() for r in records]
            lines += ["", f"Outcomes over these runs: {outcome_line(every)}."]
            if any(r.get("wrapped") for r in every):
                lines.append(
                    "Some runs used up their bodies and sent them again (more repeats than planned)."
                )
            lines.append("")
    return lines


def merge_table(results: dict[str, Any]) -> list[str]:
    merges = results.get("merges")
    if not merges:
        return []
    lines = [
        "## Merge latency",
        "",
        "One POST /identify whose email belongs to one customer and phone to another, both built "
        "directly in the database with n rows each (the newer customer's n rows are relinked). "
        f"Sequential, one keep-alive connection, {results['options']['merge_repeats']} merges per size.",
        "",
        "| rows per customer | median ms | min-max ms | wrong answers |",
        "|---|---|---|---|",
    ]
    for size, m in merges.items():
        lines.append(
            f"| {int(size):,} | {m['median_ms']:.1f} | {m['min_ms']:.1f}-{m['max_ms']:.1f} | "
            f"{m['wrong_answers']} |"
        )
    return lines + [""]


def growth_table(results: dict[str, Any]) -> list[str]:
    growth = results.get("growth")
    if not growth:
        return []
    o = results["options"]
    top = max(o["concurrency"])
    probes: dict[str, Records] = growth["probes"]
    # Flatten each probe into one record per repetition, so spread() can summarize it.
    flat: dict[str, Records] = {
        size: [
            {
                "repeat": p["sequential"]["repeat"],
                "new": p["sequential"]["new"],
                "link": p["sequential"]["link"],
                "shop1": p["shop_C1"]["p50"],
                "shop_top": p[f"shop_C{top}"]["p50"],
                "shop_top_p99": p[f"shop_C{top}"]["p99"],
                "rate": p[f"shop_C{top}"]["throughput"],
                "misses": p["misses_per_request"],
            }
            for p in found
        ]
        for size, found in probes.items()
    }
    lines = [
        "## Growth: identify latency against table size",
        "",
        f"Two fresh databases, {o['contacts']:,} and {o['growth_contacts']:,} contacts, each with its own "
        "gunicorn (same settings), probed alternately so that drift hits both alike; "
        f"{o['runs']} probe(s) each. A probe: {o['probe_requests']} sequential requests of each kind on one "
        "connection (a repeat customer sending a known email and phone; a new customer; a known customer "
        f"with a new email or phone), then the shop workload under wrk at C=1 and C={top}.",
        "",
        f"| table | repeat p50 ms | new p50 ms | link p50 ms | shop C=1 p50 ms | shop C={top} p50 ms | "
        f"shop C={top} p99 ms | shop C={top} req/s | buffer pool misses / request | "
        "MiB (Contact, Identifier) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, records in flat.items():
        tables = growth.get(f"tables_mib_{size}", {})
        mib = f"{tables.get('Contact', 0):,.0f}, {tables.get('ContactIdentifier', 0):,.0f}"
        lines.append(
            f"| {growth['preload'][size]['contacts']:,} contacts | {spread(records, 'repeat', 2)} | "
            f"{spread(records, 'new', 2)} | {spread(records, 'link', 2)} | {spread(records, 'shop1', 2)} | "
            f"{spread(records, 'shop_top', 2)} | {spread(records, 'shop_top_p99', 1)} | "
            f"{spread(records, 'rate')} | {spread(records, 'misses', 2)} | {mib} |"
        )
    small, large = flat.get("small", []), flat.get("large", [])
    if small and large:
        names = {
            "repeat": "repeat",
            "new": "new",
            "link": "link",
            "shop1": "shop C=1",
            "shop_top": f"shop C={top}",
        }
        parts = [f"{label} {median(large, key) / median(small, key):.2f}x" for key, label in names.items()]
        seconds = growth["preload"]["large"]["seconds"]
        lines += [
            "",
            "p50 large / small: " + ", ".join(parts) + f" (target: at most 1.3x). "
            f"Bulk load of {growth['preload']['large']['contacts']:,} contacts: {seconds} s.",
        ]
    return lines + [""]


def invariant_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Invariants of the final table",
        "",
        "`tests/harness/checker.py`: the project's checker. `linkage`: the benchmark's own, independent "
        "implementation of the same invariants (bench/invariants.py); a disagreement means a bug in one "
        "of the two judges. Both are given every request sent, seed rows included.",
        "",
        "| after | rows | requests sent | non-2xx | tests/harness/checker.py violations "
        "| linkage violations |",
        "|---|---|---|---|---|---|",
    ]

    def show(kinds: dict[str, int] | None) -> str:
        if kinds is None:
            return "checker not available"
        if not kinds:
            return "0"
        return f"{sum(kinds.values()):,} (" + ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items())) + ")"

    for verdict in results.get("invariants", []):
        lines.append(
            f"| {verdict['label']} | {verdict['rows']:,} | {verdict['requests']:,} | "
            f"{verdict['non_2xx_total']} | {show(verdict['project'])} | {show(verdict['linkage'])} |"
        )
    return lines + [""]


def resources(results: dict[str, Any]) -> list[str]:
    rss = results.get("peak_rss_mib", {})
    phases = results.get("phases", {})
    lines = [
        "## Memory and run time",
        "",
        f"Peak RSS per worker (MiB): service {rss.get('service')}, trivial app {rss.get('trivial')}; "
        f"mariadbd {rss.get('mariadbd')} MiB. Preload: {results['preload']['contacts']:,} contacts "
        f"({results['preload']['customers']:,} customers) in {results['preload']['seconds']} s.",
        "",
        "Phases (s): " + ", ".join(f"{k} {v}" for k, v in phases.items()) + ".",
        "",
    ]
    return lines


def profile_section(results: dict[str, Any]) -> list[str]:
    profile = results.get("profile")
    if not profile:
        return []
    lines = [
        "## Where the workers' CPU goes (py-spy, shop workload at top concurrency)",
        "",
        f"{profile['samples']:,} samples of worker threads holding the GIL (CPU in Python, not waits), "
        "all workers together; shares of those samples.",
        "",
        "| by library (self time) | share |",
        "|---|---|",
    ]
    lines += [f"| {name} | {share:.0%} |" for name, share in profile["by_library"]]
    lines += ["", "| function (self time) | share |", "|---|---|"]
    lines += [f"| `{name}` | {share:.1%} |" for name, share in profile["self"]]
    lines += ["", "| fluxkart.py function (inclusive) | share |", "|---|---|"]
    lines += [f"| `{name}` | {share:.1%} |" for name, share in profile["inclusive"]]
    return lines + [""]


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = (
        header(results)
        + summary(results)
        + ceiling_tables(results)
        + service_tables(results)
        + merge_table(results)
    )
    lines += growth_table(results) + invariant_table(results) + profile_section(results) + resources(results)
    lines.append("![throughput and p99 against concurrency](throughput.png)")
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput and p99 against concurrency: the service's workloads against both ceilings."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    runs = results["runs"]
    lines_to_draw: list[tuple[str, dict[int, Records], str]] = [
        ("DB ceiling (PyMySQL, P processes)", series(runs, "db/"), "k--s")
    ]
    styles = iter(["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7"])
    for index, label in enumerate(results["options"]["configs"]):
        suffix = f" ({label})" if len(results["options"]["configs"]) > 1 else ""
        lines_to_draw.append((f"HTTP ceiling{suffix}", series(runs, f"http/{index}/"), "k:^"))
        for workload in results["options"]["workloads"]:
            lines_to_draw.append(
                (f"service, {workload}{suffix}", series(runs, f"{workload}/{index}/"), next(styles) + "-o")
            )
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, found, style in lines_to_draw:
        xs = sorted(found)
        if not xs:
            continue
        for axis, field in ((left, "throughput"), (right, "p99")):
            mid = [median(found[x], field) for x in xs]
            low = [m - min(values(found[x], field)) for m, x in zip(mid, xs, strict=True)]
            high = [max(values(found[x], field)) - m for m, x in zip(mid, xs, strict=True)]
            axis.errorbar(xs, mid, yerr=[low, high], fmt=style, label=name, capsize=3, markersize=4)
    for axis, title, unit in (
        (left, "throughput", "requests (transactions) per second"),
        (right, "p99 latency", "ms"),
    ):
        axis.set_xscale("log", base=2)
        ticks = sorted({c for _, found, _ in lines_to_draw for c in found})
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.set_xlabel("concurrency (connections, or processes for the DB ceiling)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    right.set_yscale("log")
    left.set_ylim(bottom=0)
    left.legend(fontsize=8)
    m = results["machine"]
    fig.suptitle(
        f"FluxKart Identity on MariaDB {m['mariadb'].split('-')[0]}, {m['nproc']} cores, "
        f"{m['date']}, commit {m['commit']} (medians, bars min-max)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------
# py-spy profiles
# --------------------------------------------------------------------------

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
LIBRARIES = (
    ("pymysql", "PyMySQL"),
    ("werkzeug", "Werkzeug"),
    ("flask", "Flask"),
    ("gunicorn", "gunicorn"),
    ("prometheus_client", "prometheus_client"),
    ("json", "json"),
    ("logging", "logging"),
    ("fluxkart.py", "fluxkart.py"),
    ("socket", "socket/selectors"),
    ("selectors", "socket/selectors"),
    ("threading", "threading"),
    ("phonenumbers", "phonenumbers"),
    ("unicodedata", "unicodedata"),
)


def frame_name(frame: str) -> tuple[str, str]:
    """('function (file)', library) for one py-spy frame 'function (path/file.py:123)'."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip(), "other"
    path = match["file"]
    library = next((name for key, name in LIBRARIES if key in path), "other")
    return f"{match['func']} ({Path(path).name})", library


def summarize_profiles(paths: list[Path], top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares of the hottest functions, and self time by library, over all workers."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    samples = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [frame_name(f) for f in stack.split(";")]
            frames = [f for f in frames if not f[0].startswith(("process ", "thread "))]
            if not frames:
                continue
            samples += count
            own[frames[-1][0]] += count
            libraries[frames[-1][1]] += count
            # Inclusive time of the service's own functions: where its requests spend their CPU.
            for name in {name for name, library in frames if library == "fluxkart.py"}:
                inclusive[name] += count
    if not samples:
        return {}
    return {
        "samples": samples,
        "by_library": [(name, n / samples) for name, n in libraries.most_common()],
        "self": [(name, n / samples) for name, n in own.most_common(top)],
        "inclusive": [(name, n / samples) for name, n in inclusive.most_common(top)],
    }
