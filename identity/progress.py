"""What a long command reports while it runs and when it ends: progress and peak memory."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import click


class Progress:
    """A long command's progress on stderr: a click bar on a terminal when the total is known,
    else a plain line every PLAIN_EVERY_S seconds.

    `total` is in the caller's unit (rows, customers, bytes of a file), None when unknown.
    `describe`, when given, words the plain line and the bar's caption (the import's orders
    and rate); by default they show the count, the total and the rate, and `close` prints
    the count. `quiet`: nothing at all.
    """

    PLAIN_EVERY_S = 5.0

    def __init__(
        self, label: str, total: int | None, describe: Callable[[], str] | None = None, quiet: bool = False
    ):
        self.label, self.total, self.describe, self.quiet = label, total, describe, quiet
        self.done = 0
        self.started = self.printed = time.monotonic()
        self.closed = False
        self.bar: Any = None
        if not quiet and total and sys.stderr.isatty():
            self.bar = click.progressbar(
                length=total,
                label=label,
                file=sys.stderr,
                show_eta=True,
                show_pos=describe is None,
                show_percent=describe is not None,
                item_show_func=(lambda _: describe()) if describe is not None else None,
            )
            self.bar.__enter__()

    def advance(self, count: int) -> None:
        """Count `count` more done."""
        self.update(self.done + count)

    def update(self, done: int) -> None:
        """`done` of the total are done now (e.g. the file's position)."""
        if self.bar is not None:
            self.bar.update(done - self.done, done)
        elif not self.quiet and time.monotonic() - self.printed >= self.PLAIN_EVERY_S:
            self.printed = time.monotonic()
            click.echo(f"{self.label}: {self.line(done)}", err=True)
        self.done = done

    def line(self, done: int) -> str:
        """The plain line's words after the label."""
        if self.describe is not None:
            return self.describe()
        rate = done / max(time.monotonic() - self.started, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        return f"{done}{of} ({rate:.0f}/s)"

    def close(self) -> None:
        """Finish the bar, or print the count done (once; a second call does nothing)."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        elif not self.quiet and self.describe is None:
            click.echo(f"{self.label}: {self.done} done", err=True)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB.

    Linux's VmHWM (/proc/self/status, KiB) when there is one: getrusage's ru_maxrss
    carries over the peak of the process that started us (Linux keeps it across exec),
    so a command started by a big process would report that process's memory.
    """
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
