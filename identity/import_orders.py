"""`flask --app fluxkart import FILE` (SPEC, "Commands"; docs/import.md): historical orders,
with the same result as sending each line to POST /identify in file order. The file is read
ahead in a forked process while this one writes; Ctrl-C or SIGTERM rolls back the open batch."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import click
from flask import current_app
from flask.cli import with_appcontext

from identity.database import Database
from identity.errors import DatabaseMisconfigured, DatabaseUnavailable, RetryTransaction, database_problem
from identity.import_batch import BatchResult, OrderClock, import_batch, settled_read
from identity.merge import trusts_fast_path
from identity.order_file import (
    ORDER_FORMATS,
    ImportRefused,
    OrderBatch,
    OrderFile,
    OrderLine,
    Rejects,
    order_batches,
)
from identity.pool import get_db, new_database
from identity.progress import Progress, peak_rss_mib
from identity.protection_in_force import current_protection
from identity.settings import database_location
from identity.transactions import in_transaction

# Lines per batch: one transaction, a handful of multi-row statements. Big
# enough to amortize round trips, small enough that a batch holds its locks
# for a fraction of a second (live identify requests wait at most that long).
IMPORT_BATCH_LINES = 2000
# SQLite has one write lock and its busy handler is not a queue: a waiting
# writer polls (every 100 ms once it has waited a while), so an import that
# starts its next batch as soon as the last commits would starve live
# requests. After this much time holding the lock, the import pauses for
# longer than one poll.
SQLITE_HOLD_S = 0.5
SQLITE_PAUSE_S = 0.15


# -- the command: batches, progress, summary --------------------------------


@dataclass
class ImportTotals:
    """What an import did so far, for the progress line and the summary."""

    started: float = field(default_factory=time.monotonic)
    lines: int = 0  # order lines read (blank lines and the header not counted)
    imported: int = 0  # lines applied in committed batches
    rejected: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    left_out: Counter[str] = field(default_factory=Counter)  # identifiers left out: blocked, limit
    last_line: int = 0  # the file line of the last order in a committed batch
    reader_rss_mib: float = 0.0  # the peak memory of the process reading the file (ReadAhead)

    def progress(self) -> str:
        """The progress line's words (Progress's `describe`)."""
        return f"{self.imported:,} orders imported, {self.rejected:,} rejected, {self.rate():,.0f} orders/s"

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.imported / elapsed if elapsed > 0 else 0.0

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        o = self.outcomes
        return (
            f"lines read {self.lines:,}, imported {self.imported:,}: customers created {o['created']:,}, "
            f"rows linked {o['linked']:,}, merges {o['merged']:,}, repaired {o['repaired']:,}, "
            f"unchanged {o['unchanged']:,}; "
            f"rejected {self.rejected:,}; {elapsed:.1f} s, {self.rate():,.0f} orders/s, "
            f"peak RSS {peak_rss_mib():.0f} MiB, reading {self.reader_rss_mib:.0f} MiB; "
            f"identifiers left out: {self.left_out['blocked']:,} blocked, "
            f"{self.left_out['limit']:,} over the customer limit"
        )


@dataclass
class ReadEnd:
    """The reading process's last message: the file is read."""

    header: str  # the CSV header row as read ("" for JSON Lines): a header-only file has no batch
    file_lines: int  # the file's lines, blank ones and the header included (0: an empty file)
    peak_rss_mib: float  # the reading process's peak memory


class ReaderStopped(Exception):
    """The process reading the file ended without finishing it (killed, or out of memory)."""


class ReadAhead:
    """Reads the file into batches, with each batch's settled read, in a process of its own,
    ahead of the batch being written; iterating gives the batches in file order.

    Why a process: reading, validating and the settled read are a third of the
    import's Python work; in a thread they would wait for the one interpreter lock,
    in a forked process they run on the other core while this one writes
    (docs/import.md, "Performance"). Reading ahead is sound: a settled order stays
    settled whatever is applied after the read, except through an erasure, which
    import_batch detects by the erasure count read before the settled read.

    The reading process has its own connection and never touches this one's. It
    ignores Ctrl-C (this process stops it), and ends when this one does: its next
    send finds the pipe closed. Its errors (the file refused, a misconfigured
    database) are raised here; a failed settled read is left to the transaction.
    """

    def __init__(self, orders: OrderFile, size: int, db: Database):
        receiving, sending = multiprocessing.Pipe(duplex=False)
        self.pid = os.fork()
        if self.pid == 0:
            receiving.close()
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 1
            try:
                code = self.run(orders, size, db, sending)
            finally:
                os._exit(code)  # no atexit, no flushing of buffers this process shares
        sending.close()
        self.receiving = receiving
        self.status: int | None = None
        self.end: ReadEnd | None = None  # once every batch was given

    @staticmethod
    def run(orders: OrderFile, size: int, db: Database, sending: Any) -> int:
        """The reading process: every batch, then a ReadEnd; an error instead if one stops it.
        Returns its exit status."""
        try:
            for batch in order_batches(orders, size):
                if batch.orders:
                    with contextlib.suppress(RetryTransaction, DatabaseUnavailable):
                        batch.settled = settled_read(db, batch.pairs()) if trusts_fast_path(db) else None
                sending.send(batch)
            sending.send(ReadEnd(orders.header, orders.line_number, peak_rss_mib()))
            return 0
        except BrokenPipeError:  # the importing process stopped
            return 1
        except Exception as exc:
            if not isinstance(exc, ImportRefused | DatabaseMisconfigured):
                exc = ReaderStopped(f"the process reading the file failed: {exc!r}")
            with contextlib.suppress(OSError):
                sending.send(exc)
            return 1

    def __iter__(self) -> Iterator[OrderBatch]:
        while True:
            try:
                item = self.receiving.recv()
            except EOFError:
                raise ReaderStopped(f"the process reading the file ended ({self.wait()})") from None
            if isinstance(item, Exception):
                raise item
            if isinstance(item, ReadEnd):
                self.end = item
                return
            yield item

    def wait(self) -> str:
        """Reap the reading process; how it ended, for a message."""
        if self.status is None:
            _, self.status = os.waitpid(self.pid, 0)
        if os.WIFSIGNALED(self.status):
            return f"killed by signal {os.WTERMSIG(self.status)}"
        return f"exit status {os.waitstatus_to_exitcode(self.status)}"

    def close(self) -> None:
        """Stop the reading process if it still runs, and reap it."""
        self.receiving.close()
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            self.wait()


def apply_batch(db: Database, batch: OrderBatch, clock: OrderClock) -> BatchResult:
    """import_batch in one transaction; when lock conflicts keep aborting it (in_transaction
    gave up), in two halves, each in its own transaction, down to one order. A batch touches
    dozens of identifiers: on a multi-primary cluster beside live traffic, some identify on
    another node nearly always certifies first, and the batch would lose every retry (seen
    in tests/cluster/test_galera_changes.py: 12 attempts in 1.2 s). Raises DatabaseUnavailable
    when a single order cannot commit, or the database is gone."""
    try:
        return in_transaction(db, functools.partial(import_batch, batch=batch, clock=clock), "import")
    except DatabaseUnavailable as exc:
        conflict = isinstance(exc.__cause__, RetryTransaction) and exc.__cause__.reason != "connection_lost"
        if len(batch.orders) < 2 or not conflict:
            raise
    half = len(batch.orders) // 2
    result = BatchResult()
    for orders, texts in (
        (batch.orders[:half], batch.texts[:half]),
        (batch.orders[half:], batch.texts[half:]),
    ):
        part = apply_batch(db, OrderBatch(orders=orders, texts=texts, header=batch.header), clock)
        result.outcomes.update(part.outcomes)
        result.left_out.update(part.left_out)
        result.rejected += part.rejected
    return result


def raise_interrupt(signum: int, _frame: Any) -> None:
    """SIGTERM stops an import as Ctrl-C does: the open batch rolls back."""
    raise KeyboardInterrupt


@click.command("import")
@click.argument("file", type=click.File("rb"))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(ORDER_FORMATS),
    default="auto",
    show_default=True,
    help="csv (a header row naming email and/or phoneNumber) or jsonl (one JSON object a line); "
    "auto: JSON Lines when the first non-blank line starts with '{'.",
)
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the rejected lines here, as they were (with the CSV header): fix them and import this file.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 5000),  # SQLite binds at most 32766 parameters a statement
    default=IMPORT_BATCH_LINES,
    show_default=True,
    help="Orders per transaction.",
)
@click.option("--quiet", is_flag=True, help="No progress, only rejected lines and the summary.")
@with_appcontext
def import_orders(file: IO[bytes], fmt: str, rejects: str | None, batch_size: int, quiet: bool) -> None:
    """Import historical orders from FILE ('-' reads standard input): the result equals sending
    each valid line to POST /identify in file order, merge protection included (blocked values
    ignored, the customer limit). Invalid lines, and lines whose every identifier is blocked,
    are reported (line number and reason) and skipped. Re-running the same file changes nothing
    it already imported, so an interrupted import is finished by running it again.
    docs/import.md.

    Exit status: 0 every line imported; 3 finished, some lines rejected; 1 refused or stopped
    (nothing after the last committed batch was written).
    """
    settings = current_app.config
    totals = ImportTotals()
    orders = OrderFile(file, fmt, settings["FLUXKART_PHONE_REGION"])
    size = None
    with contextlib.suppress(OSError, ValueError):
        size = os.fstat(file.fileno()).st_size if file.seekable() else None
    if not quiet:
        click.echo(f"importing into {database_location(settings)}", err=True)
    progress = Progress("import", size, totals.progress, quiet)
    rejected = Rejects(rejects)
    db = get_db()
    clock = OrderClock()
    previous = signal.signal(signal.SIGTERM, raise_interrupt)

    def reject(order: OrderLine) -> None:
        totals.rejected += 1
        click.echo(f"line {order.number}: {order.reason}", err=True)
        rejected.add(order)

    status = 0
    held_since = time.monotonic()
    reader = None
    try:
        db.connect()  # before the fork: the schema is created (if missing) by this connection alone
        current_protection(db)  # ... and the default blocked values seeded (identity/protection_in_force.py)
        reader = ReadAhead(orders, batch_size, new_database())
        for batch in reader:
            totals.lines += batch.lines
            rejected.header = batch.header
            blocked: list[OrderLine] = []
            if batch.orders:
                result = apply_batch(db, batch, clock)
                if db.dialect == "sqlite" and time.monotonic() - held_since > SQLITE_HOLD_S:
                    time.sleep(SQLITE_PAUSE_S)  # let the writers waiting in line in
                    held_since = time.monotonic()
                totals.outcomes.update(result.outcomes)
                totals.left_out.update(result.left_out)
                totals.imported += len(batch.orders) - len(result.rejected)
                totals.last_line = batch.orders[-1][0]
                blocked = result.rejected
            # Invalid lines and orders whose identifiers are all blocked, in file order.
            for order in sorted([*batch.rejected, *blocked], key=lambda order: order.number):
                reject(order)
            progress.update(batch.bytes_read)
        assert reader.end is not None
        rejected.header = reader.end.header
        totals.reader_rss_mib = reader.end.peak_rss_mib
        if reader.end.file_lines == 0:
            click.echo("the file is empty: nothing to import", err=True)
    except (ImportRefused, DatabaseMisconfigured) as exc:
        progress.close()
        click.echo(f"refused: {exc}", err=True)
        status = 1
    except (DatabaseUnavailable, ReaderStopped, KeyboardInterrupt) as exc:
        progress.close()
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped: {database_problem(exc)}"
        done = (
            f"Imported every order up to line {totals.last_line}; the batch after it was rolled back"
            if totals.imported
            else "Nothing was imported"
        )
        click.echo(
            f"{why}. {done}. Run the same command again to finish: orders already imported change nothing.",
            err=True,
        )
        status = 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        if reader is not None:
            reader.close()
        signal.signal(signal.SIGTERM, previous)
        progress.close()
        rejected.close()
        orders.release()
        db.close()
    click.echo(totals.summary())
    if status == 0 and totals.rejected:
        status = 3
    if status:
        click.get_current_context().exit(status)
