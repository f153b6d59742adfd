"""The import is bounded per line (issue 22; identity/order_file.py, MAX_LINE_CHARS).

A file with one 100 MB line among valid orders: the line is rejected by its number with its
first characters, it is not copied into --rejects, the other orders are imported, and the
import's peak memory (the command and its reading process, as the kernel counts them) stays
within a few MiB of the same import without the long line. Control: before this, the whole
line was held in memory several times over (peak 2.97 GB for a 1 GB line) and copied whole
into the rejects file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from identity.order_file import MAX_LINE_CHARS
from identity.settings import SETTINGS
from tests.harness.database import blank_settings, read_contacts
from tests.harness.processes import SERVICE_DIR

LONG_LINE_BYTES = 100 * 2**20
# The import and everything it started, waited for: the kernel's peak RSS of the largest of
# them (Linux counts a reaped grandchild's peak in its parent's children figure).
MEASURED = """
import resource, subprocess, sys
status = subprocess.run(sys.argv[1:]).returncode
print("PEAK_KIB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "STATUS", status, file=sys.stderr)
"""


def measured_import(settings: dict[str, Any], path: Path, rejects: Path) -> tuple[int, int, str]:
    """`flask import` of `path` in its own process: (exit status, peak RSS in MiB, its stderr)."""
    env = {name: value for name, value in os.environ.items() if name not in SETTINGS}
    env.update({name: str(value) for name, value in settings.items() if name in SETTINGS})
    command = [
        sys.executable,
        "-m",
        "flask",
        "--app",
        "fluxkart",
        "import",
        str(path),
        "--rejects",
        str(rejects),
    ]
    result = subprocess.run(
        [sys.executable, "-c", MEASURED, *command],
        cwd=SERVICE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    words = result.stderr.rsplit("PEAK_KIB", 1)[1].split()
    return int(words[2]), int(words[0]) // 1024, result.stderr


def write_orders(path: Path, long_line: bool, fmt: str) -> None:
    """Ten orders; with `long_line`, a 100 MB line as the file's line 5."""
    with path.open("wb") as out:
        if fmt == "csv":
            out.write(b"email,phoneNumber\n")
        for number in range(10):
            if long_line and number == 4:
                start = b'{"email": "' if fmt == "jsonl" else b"huge@example.com,"
                out.write(start)
                chunk = b"9" * 2**20
                for _ in range(LONG_LINE_BYTES // len(chunk)):
                    out.write(chunk)
                out.write(b'"}\n' if fmt == "jsonl" else b"\n")
                continue
            email, phone = f"order{number}@example.com", f"98765{number:05d}"
            if fmt == "jsonl":
                out.write(json.dumps({"email": email, "phoneNumber": phone}).encode() + b"\n")
            else:
                out.write(f"{email},{phone}\n".encode())


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_100_mb_line_is_rejected_by_number_in_bounded_memory(tmp_path: Path, fmt: str) -> None:
    peaks, outcomes = {}, {}
    for long_line in (False, True):
        settings = {**blank_settings(), "FLUXKART_SQLITE_PATH": str(tmp_path / f"{long_line}.db")}
        path, rejects = tmp_path / f"orders-{long_line}.{fmt}", tmp_path / f"rejects-{long_line}.{fmt}"
        write_orders(path, long_line, fmt)
        status, peaks[long_line], stderr = measured_import(settings, path, rejects)
        outcomes[long_line] = (status, stderr, {row["email"] for row in read_contacts(settings)}, rejects)
    print(f"\npeak RSS ({fmt}): {peaks[False]} MiB without the long line, {peaks[True]} MiB with it")
    assert peaks[True] - peaks[False] < 20, peaks

    status, stderr, imported, _ = outcomes[False]
    assert status == 0 and len(imported) == 10, stderr
    status, stderr, imported, rejects = outcomes[True]
    assert status == 3, stderr  # finished, some lines rejected
    assert len(imported) == 9 and "huge@example.com" not in imported
    line_number = 6 if fmt == "csv" else 5
    (report,) = [line for line in stderr.splitlines() if line.startswith(f"line {line_number}:")]
    assert f"longer than {MAX_LINE_CHARS:,} characters" in report
    assert ("huge@example.com,999" if fmt == "csv" else '{"email": "999') in report  # its first bytes
    assert len(report) < 400
    assert rejects.stat().st_size < 1000  # the line is not copied
