"""Stopping the servers the tests and the benchmark start (gunicorn, mariadbd)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process(process: subprocess.Popen[bytes] | None, grace: float = 15) -> None:
    """SIGTERM (graceful), then SIGKILL to the process and its group if it lingers.

    The group is killed only when the process leads one (started with
    start_new_session=True), so a server's workers never outlive it.
    """
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        except ProcessLookupError:
            pass
        process.wait(10)
