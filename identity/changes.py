"""The feed of changes (GET /changes; docs/changes.md): every committed history event and
erasure record, numbered after it has committed by one serialized sequencer, and read in that
order after a consumer's cursor, with long polling and a retention.

Why a number given after commit, not the rows' ids: a transaction takes its auto-increment
id when it inserts and commits later, so a reader past id 10 could still see id 9 appear (and
Galera's nodes interleave their ids). The sequencer only ever sees committed rows and numbers
them one run at a time under the counter's lock, so a reader that has seen position S never
sees a new change at S or below. identify's write path pays nothing: its rows are written as
before (feedSeq NULL), and numbered by the first reader that asks.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import prometheus_client

from identity.database import Database, Row, utcnow
from identity.errors import ApiError, RetryTransaction
from identity.history import event_to_json
from identity.pool import release_db
from identity.transactions import in_transaction, reconnect_once

# How many changes one sequencer run numbers: a short transaction whatever the backlog (a
# database migrated with millions of events is numbered by successive reads).
SEQUENCE_BATCH = 500
# How often a held-open read (wait=SECONDS) looks again: one cheap read of the feed's state
# per look, with its database connection given back to the pool in between.
POLL_INTERVAL_S = 0.1
MAX_WAIT_S = 30

FEED_READS = prometheus_client.Counter(
    "fluxkart_changes_reads",
    "GET /changes answers: outcome changes (some), empty (none before the wait ended), expired (410)",
    ["outcome"],
)
FEED_LAG = prometheus_client.Histogram(
    "fluxkart_changes_reader_lag",
    "per GET /changes: the newest sequenced change minus the reader's cursor, in changes",
    buckets=(0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000),
)
FEED_WAITING = prometheus_client.Gauge(
    "fluxkart_changes_waiting_readers",
    "GET /changes requests held open (wait=SECONDS) now",
    multiprocess_mode="livesum",
)
FEED_SEQUENCED = prometheus_client.Counter(
    "fluxkart_changes_sequenced", "history events and erasure records given their feed position"
)
# The sequencer's statement per source table (the order between tables at equal times).
SEQUENCE_STATEMENT = {0: "sequence_history_event", 1: "sequence_erasure"}


@dataclass(frozen=True)
class FeedState:
    """The newest position handed out (0 before the first), and whether committed changes wait for one."""

    head: int
    pending: bool


def as_datetime(value: Any) -> datetime:
    """A timestamp column as read (SQLite answers text where a compound SELECT hides the type)."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def feed_state(db: Database) -> FeedState:
    """The feed's head and whether anything waits for a position: one statement, no lock."""
    row = db.one("select_feed_state") or {}
    pending = bool(row.get("historyPending")) or bool(row.get("erasurePending"))
    return FeedState(int(row.get("head") or 0), pending)


def sequence_changes(db: Database, retention_days: int, batch: int = SEQUENCE_BATCH) -> int:
    """Number the oldest committed changes that have no position yet; returns how many.

    One short transaction: lock the counter's row, read up to `batch` unnumbered history
    events and erasure records (committed ones only: nothing else is visible), order them by
    (time, table, id), give them the next positions, move the counter on, and clear the erased
    ids the retention no longer needs. Two sequencers wait for each other on the counter (one
    node) or conflict on it (Galera: one is aborted and run again), so runs are serialized.
    """

    def work(db: Database) -> int:
        counter = db.one("lock_feed_counter")
        if counter is None:  # the very first run
            db.run("seed_feed_counter")
            counter = db.one("lock_feed_counter")
        last = int(counter["lastSeq"]) if counter else 0
        history = db.all("select_unsequenced_history", limit=batch)
        erasures = db.all("select_unsequenced_erasures", limit=batch)
        waiting = [(as_datetime(r["createdAt"]), 0, r["id"]) for r in history]
        waiting += [(as_datetime(r["erasedAt"]), 1, r["id"]) for r in erasures]
        chosen = sorted(waiting)[:batch]
        for offset, (_, table, row_id) in enumerate(chosen, 1):
            if db.execute(SEQUENCE_STATEMENT[table], {"seq": last + offset, "id": row_id}).rowcount != 1:
                raise RetryTransaction("feed_sequenced_meanwhile")  # never on a serialized counter
        if chosen:
            db.run("advance_feed_counter", last_seq=last + len(chosen))
            db.run("clear_expired_erasure_ids", cutoff=utcnow() - timedelta(days=retention_days))
        return len(chosen)

    numbered = in_transaction(db, work, "changes")
    FEED_SEQUENCED.inc(numbered)
    return numbered


def change_to_json(row: Row) -> dict[str, Any]:
    """One change as GET /changes answers it: its position, kind, time, request id and ids.

    A history event reads as in a customer's history (identity/history.py: event_to_json,
    without the event's own id); an erasure as kind `erased`, naming the erased customer's
    primary (customerId) and every contact id erased (contactIds, the primary first).
    """
    seq = int(row["feedSeq"])
    if row["kind"] == "erased":
        ids = json.loads(row["contactIds"])
        at = as_datetime(row["createdAt"]).isoformat(timespec="microseconds") + "Z"
        return {
            "seq": seq,
            "kind": "erased",
            "at": at,
            "requestId": row["requestId"],
            "customerId": ids[0],
            "contactIds": ids,
        }
    event = event_to_json({**row, "id": seq, "createdAt": as_datetime(row["createdAt"])})
    del event["id"]
    return {"seq": seq, **event}


def expired(message: str) -> ApiError:
    """410 cursor_expired: the consumer cannot follow on from its cursor and must resync."""
    return ApiError(
        410,
        "cursor_expired",
        f"{message}. Resync: read the feed's head (GET /changes without `after`: its `cursor`), "
        "copy the customers from GET /contacts, then follow from after=<that cursor> (docs/changes.md)",
    )


def read_changes(db: Database, after: int | None, limit: int, retention_days: int) -> dict[str, Any]:
    """One page of the feed: {"changes": [...], "cursor": the next `after`, "head": newest position}.

    Numbers what waits first (a bounded run), then reads the positions in (after, head]:
    every one of them was committed before the head was, so the page holds each change up to
    the head that still exists. `after` None starts at the head (no changes: where a resync
    starts following). ApiError 410 when the change after the cursor is older than the
    retention (or its erased ids were cleared), or the cursor is past the head.
    """
    state = feed_state(db)
    if state.pending:
        sequence_changes(db, retention_days)
        state = feed_state(db)
    head = state.head
    after = head if after is None else after
    if after > head:
        raise expired(f"cursor {after} is past the newest change ({head}): was the database restored")
    rows = db.all("select_feed_page", after=after, head=head, limit=limit) if after < head else []
    cutoff = utcnow() - timedelta(days=retention_days)
    if rows and as_datetime(rows[0]["createdAt"]) < cutoff:
        raise expired(f"the changes after cursor {after} are older than the feed keeps ({retention_days} d)")
    if any(row["kind"] == "erased" and row["contactIds"] is None for row in rows):
        raise expired(f"an erasure after cursor {after} is past the feed's retention ({retention_days} days)")
    # A short page holds every change in (after, head]: positions missing from it were erased.
    cursor = int(rows[-1]["feedSeq"]) if len(rows) == limit else head
    return {"changes": [change_to_json(row) for row in rows], "cursor": cursor, "head": head}


def follow_changes(after: int | None, limit: int, wait_s: int, retention_days: int) -> dict[str, Any]:
    """GET /changes: a page of the feed, held open up to `wait_s` seconds until a change arrives.

    Polls every POLL_INTERVAL_S with one cheap read, giving the request's database connection
    back to the pool between looks (a held read must not starve identify of connections).
    Counts the read and observes its lag (head minus cursor) once.
    """
    deadline = time.monotonic() + wait_s
    try:
        page = reconnect_once(lambda db: read_changes(db, after, limit, retention_days))
    except ApiError:
        FEED_READS.labels("expired").inc()
        raise
    FEED_LAG.observe(max(page["head"] - (page["head"] if after is None else after), 0))
    if not page["changes"] and time.monotonic() < deadline:
        FEED_WAITING.inc()
        try:
            while not page["changes"] and time.monotonic() < deadline:
                release_db()
                time.sleep(min(POLL_INTERVAL_S, max(deadline - time.monotonic(), 0)))
                page = reconnect_once(
                    partial(read_changes, after=page["cursor"], limit=limit, retention_days=retention_days)
                )
        finally:
            FEED_WAITING.dec()
    FEED_READS.labels("changes" if page["changes"] else "empty").inc()
    return page
