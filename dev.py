#!/usr/bin/env python3
"""Set up and run FluxKart Identity on a machine that has only Python 3.11+.

    python3 dev.py serve      # the service on http://127.0.0.1:3000 (embedded SQLite)
    python3 dev.py test       # the whole test suite (extra arguments go to pytest)
    python3 dev.py lint       # ruff and mypy, as CI runs them
    python3 dev.py bench      # the benchmark (bench/README.md; needs wrk and mariadb-server)

Each command first makes ./.venv and installs the pinned requirements into it
(again only when a requirements file changed), then runs the tool from there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def ensure_venv(requirements: str) -> None:
    """Create .venv and install `requirements` unless the same files are installed already."""
    files = sorted([*ROOT.glob("requirements*.txt"), *ROOT.glob("bench/requirements.txt")])
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
    tag = requirements.replace("/", "-")
    stamp = VENV / f".installed-{tag}-{digest}"
    if stamp.exists():
        return
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    print(f"installing {requirements} into .venv ...", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(ROOT / requirements)], check=True)
    for old in VENV.glob(f".installed-{tag}-*"):
        old.unlink()
    stamp.touch()


def venv_env() -> dict[str, str]:
    """The environment with the venv first on PATH."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(argv: list[str]) -> int:
    """Run a command with the venv first on PATH; returns its exit code."""
    return subprocess.run(argv, cwd=ROOT, env=venv_env()).returncode


def main(args: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 (a clear message on an older python3)
        sys.exit("FluxKart needs Python 3.11 or newer")
    command, rest = (args[0], args[1:]) if args else ("help", [])
    if command == "serve":
        ensure_venv("requirements.txt")
        os.environ.setdefault("PORT", "3000")
        print(f"FluxKart Identity on http://127.0.0.1:{os.environ['PORT']} (Ctrl-C stops it)", flush=True)
        # gunicorn takes this process's place, so a process manager's SIGTERM reaches it.
        os.chdir(ROOT)
        argv = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "fluxkart:create_app()", *rest]
        os.execve(argv[0], argv, venv_env())
    if command == "test":
        ensure_venv("requirements-dev.txt")
        return run([str(BIN / "python"), "-m", "pytest", *rest])
    if command == "lint":
        ensure_venv("requirements-dev.txt")
        checks = [
            ["ruff", "check", "."],
            ["ruff", "format", "--check", "."],
            ["mypy", "fluxkart.py", "identity"],
        ]
        return max(run([str(BIN / tool), *argv]) for tool, *argv in checks)
    if command == "bench":
        if not shutil.which("wrk"):
            sys.exit("the benchmark drives load with wrk: apt-get install -y wrk mariadb-server")
        ensure_venv("bench/requirements.txt")
        return run([str(BIN / "python"), "-m", "bench.run", *rest])
    print(__doc__)
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
