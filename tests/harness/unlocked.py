"""A copy of the service with its concurrency protection taken out, to show the stress test bites.

    app_dir = build_unlocked_copy(tmp_path / "unlocked")
    # serve app_dir with gunicorn exactly like the real service, run the same burst

The copy (fluxkart.py, gunicorn.conf.py, openapi.json and sql/) differs from the service only
in its SQL: `FOR UPDATE` is dropped from every statement, and the three
statements that write rows to lock on (the identifier rows, `touch_identifiers` and
`touch_contact_identifiers`; a customer's growth lock, `touch_customer_locks`) become
`SELECT 1`. Everything else (the transaction, the retry loop, the "demoted meanwhile"
re-check) is untouched, so what the burst catches against the copy is exactly what the locks prevent.
fluxkart.py itself is never edited and has no switch for this.

On SQLite the copy is still correct: `BEGIN IMMEDIATE` takes the database's only
write lock, so identify transactions run one at a time with or without these
statements. The races show on MySQL/MariaDB (whose sessions the service runs at READ
COMMITTED, whatever the server's default).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.harness.processes import SERVICE_DIR

UNLOCKED_STATEMENTS = ("touch_identifiers", "touch_contact_identifiers", "touch_customer_locks")
BLOCK = re.compile(r"(^-- name: (\w+)\s*\n)(.*?)(?=^-- name: |\Z)", re.MULTILINE | re.DOTALL)
FOR_UPDATE = re.compile(r"^[ \t]*FOR UPDATE[ \t]*$\n?", re.MULTILINE | re.IGNORECASE)


def strip_locks(text: str) -> str:
    """The same named statements with FOR UPDATE removed and the identifier touches made no-ops."""

    def replace(match: re.Match[str]) -> str:
        header, name, body = match.group(1), match.group(2), match.group(3)
        if name in UNLOCKED_STATEMENTS:
            return (
                f"{header}-- Unlocked copy for the stress test: writes nothing, locks nothing.\nSELECT 1\n\n"
            )
        return header + FOR_UPDATE.sub("", body)

    return BLOCK.sub(replace, text)


def copy_service(dest: Path, source: Path = SERVICE_DIR) -> Path:
    """The files gunicorn serves the service from (fluxkart.py, identity/, gunicorn.conf.py,
    openapi.json, sql/) copied into `dest`, for a test or benchmark to patch and serve; returns `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("fluxkart.py", "gunicorn.conf.py", "openapi.json"):
        if name == "openapi.json" and not (source / name).exists():
            continue  # served at /openapi.json only; nothing that patches a copy needs it
        shutil.copy2(source / name, dest / name)
    for folder in ("identity", "sql"):
        shutil.copytree(
            source / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
        )
    return dest


def build_unlocked_copy(dest: Path, source: Path = SERVICE_DIR) -> Path:
    """Copy the service to `dest` with the locking removed; returns `dest` (serve it from there)."""
    copy_service(dest, source)
    for path in sorted((dest / "sql").rglob("*.sql")):
        if path.name != "schema.sql":
            path.write_text(strip_locks(path.read_text()))
    check_unlocked(dest)
    return dest


# Run in the copy's own interpreter: importing a second fluxkart here would clash
# with the real one (its metrics register in the process-wide registry).
LOAD_QUERIES = """
import json
from identity.sql import check_dialects_agree, load_queries
check_dialects_agree()
print(json.dumps({dialect: load_queries(dialect) for dialect in ("mysql", "sqlite")}))
"""


def check_unlocked(app_dir: Path) -> None:
    """Fail loudly unless the copy's own loader yields lock-free statements (e.g. after the SQL moved)."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_QUERIES], cwd=app_dir, env=env, capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"the unlocked copy does not load its queries:\n{result.stderr}")
    for dialect, queries in json.loads(result.stdout).items():
        for name, sql in queries.items():
            if re.search(r"\bFOR\s+UPDATE\b", sql, re.IGNORECASE):
                raise RuntimeError(f"the unlocked copy's {dialect} {name} still has FOR UPDATE")
        for name in UNLOCKED_STATEMENTS:
            if queries.get(name) != "SELECT 1":
                raise RuntimeError(
                    f"the unlocked copy's {dialect} {name} is not a no-op: {queries.get(name)!r}"
                )
