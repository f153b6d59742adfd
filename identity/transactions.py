"""Units of work: one transaction, retried whole on lock conflicts (never one statement)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from identity.database import Database
from identity.errors import DatabaseUnavailable, RetryTransaction
from identity.observability import TRANSACTION_RETRIES
from identity.pool import get_db

log = logging.getLogger("fluxkart")

T = TypeVar("T")

# How often a unit of work is tried before the client gets a 503 ...
MAX_ATTEMPTS = 12
# ... and for how long at most, whatever the attempt count: a client (and a
# load balancer) would rather have a prompt 503 than a request that hangs.
RETRY_BUDGET_S = 10


def in_transaction(db: Database, work: Callable[[Database], T], unit: str) -> T:
    """Run work(db) in one transaction, retrying the whole of it on lock conflicts.

    `unit` names the unit of work (identify, repair, ...) in the retry log line
    and metric. A deadlock has already rolled everything back and a lock-wait
    timeout rolled back one statement, so we roll back the rest and start over
    from the first read. `work` must have no side effects outside the database.
    Raises DatabaseUnavailable when MAX_ATTEMPTS or RETRY_BUDGET_S run out.
    """
    deadline = time.monotonic() + RETRY_BUDGET_S
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            db.begin()
            result = work(db)
            db.commit()
            return result
        except RetryTransaction as exc:
            db.rollback()
            if attempt == MAX_ATTEMPTS or time.monotonic() > deadline:
                raise DatabaseUnavailable(f"gave up after {attempt} attempts: {exc}") from exc
            log.warning("retrying %s transaction (attempt %d): %s", unit, attempt, exc.reason)
            TRANSACTION_RETRIES.labels(exc.reason, unit).inc()
            # Jittered exponential backoff, capped: lets the winner commit first.
            time.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))
        except BaseException:
            db.rollback()
            raise
    raise AssertionError("unreachable")


def reconnect_once(work: Callable[[Database], T]) -> T:
    """Run work against this thread's database, reconnecting once if the connection was stale.

    A kept connection the server has closed (restart, idle timeout) fails on
    first use; one fresh connection is tried before answering 503.
    """
    db = get_db()
    try:
        return work(db)
    except RetryTransaction:
        db.close()
        try:
            return work(db)
        except RetryTransaction as exc:
            raise DatabaseUnavailable(str(exc)) from exc
