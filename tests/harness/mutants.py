"""Mutants that the tests must kill: proof that a green run means something.

    .venv/bin/python -m tests.harness.mutants checker             # each check of the checker removed
    .venv/bin/python -m tests.harness.mutants dropped-connection  # a 500 on a dropped connection

`checker`: for every `violations.append(...)` in tests/harness/checker.py (each is
one check: one kind of damage it names), a copy of checker.py without that call is
run against tests/merge/test_checker.py. A mutant is killed when a test fails.

`dropped-connection`: the service with its transaction helper replaced by name
(tests/harness/patched.py, dropped_connection_500) so that it answers 500
("internal_error") when the database connection drops inside a transaction,
instead of retrying and answering 503. tests/merge/test_faults.py runs against it
(conftest's gunicorn fixture serves FLUXKART_TEST_APP when set) and must fail. The
audit of issue 15 found that this mutant survived the whole suite before the fault
tests kept writing.

Exit status 0 when every mutant was killed, 1 otherwise. Each mutant's pytest
output is kept under the folder printed at the end. Not part of the suite (it
runs the suite's tests again, a minute or more); CI does not need it.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.harness.processes import SERVICE_DIR

CHECKER = SERVICE_DIR / "tests" / "harness" / "checker.py"
CHECKER_TEST = "tests/merge/test_checker.py"
FAULT_TESTS = "tests/merge/test_faults.py"


def checker_mutants(source: str) -> list[tuple[str, str]]:
    """(name, mutated source) per `violations.append(...)` call: that statement becomes `pass`."""
    lines = source.splitlines(keepends=True)
    mutants = []
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute)
            and node.value.func.attr == "append"
            and isinstance(node.value.func.value, ast.Name)
            and node.value.func.value.id == "violations"
        ):
            continue
        message = ast.unparse(node.value.args[0]) if node.value.args else ""
        kind = message.split("]")[0].split("[")[-1] if "[" in message else "?"
        start, end = node.lineno - 1, node.end_lineno or node.lineno
        indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
        mutated = "".join([*lines[:start], f"{indent}pass  # mutant\n", *lines[end:]])
        mutants.append((f"line {node.lineno}: [{kind}]", mutated))
    return sorted(mutants, key=lambda m: int(m[0].split()[1].rstrip(":")))


def run_checker_mutants(workdir: Path) -> bool:
    """Each checker mutant against tests/merge/test_checker.py; True when all are killed."""
    source = CHECKER.read_text()
    survivors = []
    mutants = checker_mutants(source)
    print(f"{len(mutants)} checks in tests/harness/checker.py, each removed in turn:")
    for number, (name, mutated) in enumerate(mutants, 1):
        copy = workdir / f"checker-{number}"
        # The test and the packages it imports through, with the mutated checker in place.
        packages = ("tests/__init__.py", "tests/harness/__init__.py", "tests/merge/__init__.py")
        for name_ in (*packages, CHECKER_TEST):
            (copy / name_).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(SERVICE_DIR / name_, copy / name_)
        (copy / "tests" / "harness" / "checker.py").write_text(mutated)
        shutil.copy2(SERVICE_DIR / "pyproject.toml", copy / "pyproject.toml")
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", CHECKER_TEST],
            cwd=copy,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        (copy / "pytest.log").write_text(result.stdout + result.stderr)
        failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
        verdict = "killed" if result.returncode == 1 and failed else f"SURVIVED (exit {result.returncode})"
        if not verdict.startswith("killed"):
            survivors.append(name)
        print(f"  {name:<40} {verdict:<10} {time.monotonic() - started:5.1f}s  {failed[0] if failed else ''}")
    print(f"checker mutants: {len(mutants) - len(survivors)}/{len(mutants)} killed")
    return not survivors


def run_dropped_connection_mutant(workdir: Path) -> bool:
    """tests/merge/test_faults.py against the mutant tests.harness.patched:dropped_connection_500()
    (a connection lost inside a transaction answers 500 instead of a retry and a 503); True when
    it fails (the mutant is killed)."""
    app = "tests.harness.patched:dropped_connection_500()"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/merge/test_faults.py"]
    print(f"FLUXKART_TEST_APP='{app}' {' '.join(command[1:])}")
    started = time.monotonic()
    result = subprocess.run(
        command,
        cwd=SERVICE_DIR,
        env={**os.environ, "FLUXKART_TEST_APP": app},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    (workdir / "dropped-connection.log").write_text(result.stdout + result.stderr)
    lines = result.stdout.splitlines()
    for line in lines:
        if line.startswith(("FAILED", "ERROR")) or " passed" in line or " failed" in line:
            print(f"  {line}")
    killed = result.returncode == 1 and any(line.startswith("FAILED") for line in lines)
    verdict = "killed" if killed else "SURVIVED"
    print(f"dropped-connection mutant: {verdict} ({time.monotonic() - started:.0f}s)")
    return killed


def main(args: list[str]) -> int:
    which = args or ["checker", "dropped-connection"]
    workdir = Path(tempfile.mkdtemp(prefix="fluxkart-mutants-"))
    results = []
    for name in which:
        if name == "checker":
            results.append(run_checker_mutants(workdir))
        elif name == "dropped-connection":
            results.append(run_dropped_connection_mutant(workdir))
        else:
            raise SystemExit(f"unknown mutant family {name!r}: checker, dropped-connection")
    print(f"outputs in {workdir}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
