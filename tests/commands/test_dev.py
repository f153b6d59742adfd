"""The commands as the docs show them, from a fresh clone (issue 22, point 2).

- `python3 dev.py flask ARGS` runs the venv's Flask on this app whatever `flask` comes first
  on PATH. Control: a fake `flask` first on PATH stands for the system Flask that ran before
  (`No such command 'migrate'`).
- `python3 dev.py serve` on a taken port says so and exits, without the "FluxKart Identity
  on http://..." banner. Control: before, the banner came first and gunicorn failed after it.
- README.md and docs/*.md show commands one way: no bare `flask --app fluxkart` and no
  `.venv/bin/...` in a command line.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from tests.harness.processes import SERVICE_DIR

DEV = str(SERVICE_DIR / "dev.py")


def test_dev_flask_runs_the_venvs_flask_whatever_is_on_path(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "flask"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho \"Error: No such command 'migrate'.\"; exit 2\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    env["FLUXKART_SQLITE_PATH"] = "orders.db"  # relative: the caller's folder, not the clone's
    for name in [n for n in env if n.startswith("MYSQL_")]:
        del env[name]
    result = subprocess.run(
        [sys.executable, DEV, "flask", "init-db"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"schema ready on SQLite {tmp_path / 'orders.db'}" in result.stdout
    listed = subprocess.run([sys.executable, DEV, "flask", "--help"], env=env, capture_output=True, text=True)
    for command in ("init-db", "migrate", "repair", "import"):
        assert re.search(rf"^\s+{command}\s", listed.stdout, re.MULTILINE), listed.stdout


def test_serve_on_a_taken_port_says_so_without_the_banner() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1"}
        result = subprocess.run(
            [sys.executable, DEV, "serve"], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode != 0
    assert "FluxKart Identity on" not in result.stdout
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr


def test_the_docs_show_each_command_one_way() -> None:
    pages = [SERVICE_DIR / "README.md", *sorted((SERVICE_DIR / "docs").glob("*.md"))]
    wrong = []
    for page in pages:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if re.search(r"(^|[\s`(])flask --app fluxkart\b|\.venv/bin/(flask|gunicorn|python)", line):
                wrong.append(f"{page.name}:{number}: {line.strip()}")
    assert wrong == [], "\n".join(wrong)
