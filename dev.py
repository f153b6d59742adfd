#!/usr/bin/env python3
"""Set up and run FluxKart Identity on a machine that has only Python 3.11+.

    python3 dev.py serve      # the service on http://127.0.0.1:3000 (embedded SQLite)
    python3 dev.py flask ARGS # a command: `flask --app fluxkart ARGS` from .venv (init-db, migrate, ...)
    python3 dev.py python ARGS  # .venv's python in this folder (python -m bench.legacy, -m tests.harness...)
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
import socket
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


def port_taken(host: str, port: int) -> str | None:
    """Why gunicorn could not listen on host:port (e.g. "Address already in use"), or None."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def main(args: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 (a clear message on an older python3)
        sys.exit("FluxKart needs Python 3.11 or newer")
    command, rest = (args[0], args[1:]) if args else ("help", [])
    if command == "serve":
        ensure_venv("requirements.txt")
        os.environ.setdefault("PORT", "3000")
        host, port = os.environ.get("HOST", "127.0.0.1"), os.environ["PORT"]
        if not port.isdigit():
            sys.exit(f"PORT={port!r} is not a port number")
        if problem := port_taken(host, int(port)):
            sys.exit(
                f"cannot listen on {host}:{port}: {problem}; stop what uses it, or choose another: PORT=3001"
            )
        print(f"FluxKart Identity on http://{host}:{port} (Ctrl-C stops it)", flush=True)
        # gunicorn takes this process's place, so a process manager's SIGTERM reaches it.
        os.chdir(ROOT)
        argv = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "fluxkart:create_app()", *rest]
        os.execve(argv[0], argv, venv_env())
    if command == "flask":
        # The venv's Flask with this app, whichever `flask` is first on PATH (a system one
        # has neither the requirements nor the commands).
        # Run from the caller's folder, so `import orders.csv` and a relative
        # FLUXKART_SQLITE_PATH mean what they say; the app is found through PYTHONPATH.
        ensure_venv("requirements.txt")
        env = venv_env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return subprocess.run([str(BIN / "flask"), "--app", "fluxkart", *rest], env=env).returncode
    if command == "python":
        ensure_venv("requirements-dev.txt")
        return run([str(BIN / "python"), *rest])
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
