"""One import transaction: a batch of orders applied with identify's own rules and locks
(merge.py's protocol for many requests at once, merge protection included), written with
multi-row statements."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from identity.component import Component, CustomerRows
from identity.database import Database, Row, utcnow
from identity.errors import ApiError, RetryTransaction
from identity.history import history_event, record_imported
from identity.merge import (
    IdentifyPlan,
    lock_customer,
    plan_in_customers,
    stored_row_params,
    trusts_fast_path,
)
from identity.order_file import OrderBatch, OrderLine
from identity.protection import Protection, screen_blocked
from identity.protection_in_force import current_protection

# In-memory ids of rows a batch inserts: above every real id, in creation
# order, until the rows are written and get their real ids.
TEMP_ID_BASE = 2**62
ONE_MICROSECOND = timedelta(microseconds=1)


# -- identify's rules over the batch's customers, in memory ------------------


@dataclass
class PendingEvent:
    """A history event of the batch, in in-memory ids until the batch's rows are written."""

    kind: str  # merged or refused
    customer_id: int
    contact_ids: list[int]
    at: datetime
    former_customer_id: int | None = None
    evidence: dict[str, int | None] = field(default_factory=dict)  # merged: the rows matched
    refused: dict[str, Any] = field(default_factory=dict)  # refused: identifier, customerIds


class BatchCustomers:
    """The customers one import batch touches, in memory, in the model identify plans on:
    a CustomerRows (identity/component.py: union-find, blocked values connect nothing)
    holding every row lock_customer read for the batch's identifiers, customers past the
    limit marked and never written.

    `identify` plans one order with identify's own `plan_in_customers` (the same rules as
    plan_within_limits: the limit, its fallbacks, evidence, refusals), then applies the
    plan to the rows in memory, so the next order of the batch sees it as identify would
    see it in the table.
    """

    def __init__(self, found: Component, protection: Protection):
        self.graph = CustomerRows(protection, found.values(), found.past_limit)
        self.changed: set[int] = set()  # existing rows whose link or precedence changed
        self.inserted: list[int] = []  # temporary ids, in creation order
        self.grown: set[int] = set()  # existing customers grown or merged (write_plan's locks)
        self.events: list[PendingEvent] = []  # merges and refusals, in order

    @property
    def rows(self) -> dict[int, Row]:
        return self.graph.rows

    def identify(self, email: str | None, phone: str | None, now: datetime) -> IdentifyPlan:
        """Apply one (screened) order to the rows in memory, as identify would; returns its plan."""
        graph = self.graph
        plan = plan_in_customers(graph, email, phone, now)
        # The links the demoted customers' rows had, before the plan re-points them.
        former = {row_id: graph.rows[row_id]["linkedId"] for row_id in plan.relinked}
        new_rows = {row["id"]: row for row in plan.rows[1:] if row["id"] in former}
        if plan.promoted is not None:
            self.store(plan.promoted, now)
        for row_id in plan.relinked:
            self.store(new_rows[row_id], now)
        if plan.inserted is not None:
            new = plan.inserted
            new["id"] = TEMP_ID_BASE + len(self.inserted)
            new["updatedAt"] = new["createdAt"]
            self.inserted.append(new["id"])
            graph.add(new)
        primary_id = plan.rows[0]["id"]
        if plan.demoted or (plan.inserted is not None and plan.inserted["linkedId"] is not None):
            self.grown |= {i for i in (primary_id, *plan.demoted) if i < TEMP_ID_BASE}
        if plan.outcome != "unchanged":
            self.check_limit(primary_id)
        self.record(plan, former, now)
        return plan

    def store(self, row: Row, now: datetime) -> None:
        """A row as the plan re-points it: replaces the row in memory, joins its new primary."""
        self.graph.add({**row, "updatedAt": now})
        if row["id"] < TEMP_ID_BASE:
            self.changed.add(row["id"])

    def check_limit(self, row_id: int) -> None:
        """Mark the row's customer past the limit when it now is (as connected_rows would
        find it): a merge of customers from elsewhere can pass Protection.max_rows."""
        graph = self.graph
        root = graph.root(row_id)
        protection = graph.protection
        if (
            len(graph.members[root]) > protection.max_rows
            or len(graph.identifiers[root]) > protection.max_identifiers
        ):
            graph.past.add(root)

    def record(self, plan: IdentifyPlan, former: dict[int, int | None], now: datetime) -> None:
        """The plan's merges (a demoted primary and the rows that pointed at it, with the
        evidence) and refusals, as identify records them (record_plan_events)."""
        survivor = plan.rows[0]["id"]
        moved: dict[int, list[int]] = {primary_id: [primary_id] for primary_id in plan.demoted}
        for row_id in plan.relinked:
            parent = former[row_id]
            if row_id not in moved and parent is not None and parent in moved:
                moved[parent].append(row_id)
        for demoted, ids in moved.items():
            self.events.append(PendingEvent("merged", survivor, ids, now, demoted, evidence=plan.evidence))
        for refused in plan.refused:
            detail = {"identifier": refused.kind, "reason": "limit", "customerIds": refused.customer_ids}
            self.events.append(PendingEvent("refused", survivor, refused.contact_ids, now, refused=detail))


# -- the batch's transaction ------------------------------------------------


class OrderClock:
    """Each order's `now`: the wall clock, but strictly after the previous order's, so the
    file's order is the rows' (createdAt) order even when lines are microseconds apart."""

    def __init__(self) -> None:
        self.last = datetime.min

    def now(self) -> datetime:
        self.last = max(utcnow(), self.last + ONE_MICROSECOND)
        return self.last


@dataclass
class BatchResult:
    """What one batch did: the outcome counts (created, linked, merged, repaired, unchanged),
    the identifiers merge protection left out by reason (blocked, limit), and the orders
    rejected because every identifier they carry is blocked."""

    outcomes: Counter[str] = field(default_factory=Counter)
    left_out: Counter[str] = field(default_factory=Counter)
    rejected: list[OrderLine] = field(default_factory=list)


def screen_orders(
    protection: Protection, batch: OrderBatch, result: BatchResult
) -> list[tuple[str | None, str | None] | None]:
    """Each order's identifiers with the blocked ones taken out, as identify does first
    (screen_blocked); None for an order with nothing left, added to result.rejected with
    identify's 422 reason (it names the field)."""
    screened: list[tuple[str | None, str | None] | None] = []
    for (number, email, phone), text in zip(batch.orders, batch.texts, strict=True):
        try:
            email, phone, ignored = screen_blocked(protection, email, phone)
        except ApiError as exc:
            result.rejected.append(OrderLine(number, text, email, phone, exc.message))
            screened.append(None)
            continue
        result.left_out["blocked"] += len(ignored)
        screened.append((email, phone))
    return screened


def import_batch(db: Database, batch: OrderBatch, clock: OrderClock) -> BatchResult:
    """Apply a batch of orders in file order inside the caller's transaction, as POST
    /identify would apply each; returns what it did (BatchResult).

    identify's protocol (apply_identify) for many requests at once, under the merge
    protection in force (current_protection): 0. take each order's blocked identifiers out
    (an order left with none is rejected); on a consistent table, count the settled orders
    as unchanged (`settled_orders`, identify's fast path, read ahead by `ReadAhead` or now)
    and go on with the others; 1. touch every identifier of those (one statement, sorted:
    one lock order); 2. lock every live row of their customers (`lock_customer`, bounded: a
    customer past the limit is read in part, marked, never written); 3. decide order by
    order in memory with identify's `plan_in_customers` (the limit and its fallbacks); 4.
    write the final state with multi-row statements, touching the identifiers of every
    existing row whose link changes (as write_plan does), and record the history: each
    merge with its evidence, each refusal, an `imported` event per customer. Raises
    RetryTransaction("customer_erased") when an erasure committed between the settled read
    and the end (docs/import.md).
    """
    protection = current_protection(db)
    result = BatchResult()
    screened = screen_orders(protection, batch, result)
    orders = [order for order in screened if order is not None]
    erasures = None
    if trusts_fast_path(db):
        # identify's fast path for the whole batch: a repeat customer's order changes nothing.
        # The read made ahead saw the orders as they came: an order it settles changes nothing
        # without its blocked identifiers either (it has one left, or it is rejected).
        erasures, settled = batch.take_settled_read() or settled_read(
            db, [order or (None, None) for order in screened]
        )
        pending = [(order, done) for order, done in zip(screened, settled, strict=True) if order is not None]
        result.outcomes["unchanged"] = sum(done for _, done in pending)
        orders = [order for order, done in pending if not done]
        if not orders:
            return result
    emails = {email for email, _ in orders if email is not None}
    phones = {phone for _, phone in orders if phone is not None}
    identifiers = sorted([("email", e) for e in emails] + [("phone", p) for p in phones])
    db.run_many("touch_identifier_rows", [{"kind": k, "value": v, "version": 1} for k, v in identifiers])
    customers = BatchCustomers(lock_customer(db, emails, phones, protection=protection), protection)
    for email, phone in orders:
        plan = customers.identify(email, phone, clock.now())
        result.outcomes[plan.outcome] += 1
        result.left_out["limit"] += len(plan.refused)
    write_batch(db, customers)
    if erasures is not None and erasure_count(db) != erasures:
        # The settled orders were applied at the lock-free read, the others now. Only an
        # erasure can make a settled order unsettled; if one came in between, an order
        # before it in the file may have been applied after it: start the batch over.
        raise RetryTransaction("customer_erased")
    return result


def erasure_count(db: Database) -> int:
    """How many erasures have committed. A count, not the newest id: ids are taken at insert,
    so an erasure can commit after one with a larger id (and on Galera every node has its own)."""
    row = db.one("count_erasures")
    return int(row["n"]) if row else 0


def settled_read(db: Database, orders: list[tuple[str | None, str | None]]) -> tuple[int, list[bool]]:
    """`settled_orders`, with the erasure count read just before it (for import_batch's check)."""
    erasures = erasure_count(db)
    return erasures, settled_orders(db, orders)


def settled_orders(db: Database, orders: list[tuple[str | None, str | None]]) -> list[bool]:
    """For each order, True when identify would change nothing: every identifier it carries is
    stored, and all of them belong to one customer. One lock-free read for the batch.

    Only on a table known to be consistent (`trusts_fast_path`), where an identifier
    belongs to one customer and COALESCE(linkedId, id) is its primary. A settled order
    stays settled whatever the orders before it in the batch do (they only add rows
    and merge customers), so skipping it leaves exactly the state replaying it would.
    """
    emails = sorted({email for email, _ in orders if email is not None})
    phones = sorted({phone for _, phone in orders if phone is not None})
    owners: dict[tuple[str, str], set[int]] = defaultdict(set)
    for row in db.all("select_identifier_owners", emails=emails, phones=phones):
        if row["email"] is not None:
            owners["email", row["email"]].add(row["customerId"])
        if row["phoneNumber"] is not None:
            owners["phone", row["phoneNumber"]].add(row["customerId"])
    settled = []
    for email, phone in orders:
        customers: set[int] = set()
        stored = True
        for kind, value in (("email", email), ("phone", phone)):
            if value is not None:
                stored = stored and (kind, value) in owners
                customers |= owners.get((kind, value), set())
        settled.append(stored and len(customers) == 1)
    return settled


def write_batch(db: Database, customers: BatchCustomers) -> None:
    """Write what the batch changed: relinked rows, new primaries, then new secondaries; then
    its history, in real ids."""
    rows = customers.rows
    if customers.changed:
        # As write_plan: the identifiers of every existing row whose link changes, so a
        # racing request on another cluster node that linked to a demoted customer conflicts.
        db.run("touch_contact_identifiers", ids=sorted(customers.changed))
    db.run_many(
        "store_contact_rows", [stored_row_params(rows[row_id]) for row_id in sorted(customers.changed)]
    )
    new = [rows[row_id] for row_id in customers.inserted]
    if customers.grown:
        # As write_plan: a customer that grows touches its lock row, so on a multi-primary
        # cluster a concurrent growth of it elsewhere conflicts (the limit holds).
        db.run_many("touch_customer_locks", [{"customer_id": i} for i in sorted(customers.grown)])
    real_ids: dict[int, int] = {}
    primaries = [row for row in new if row["linkPrecedence"] == "primary"]
    if primaries:
        real_ids.update(insert_rows(db, primaries, {}, "select_primaries_after_id"))
    secondaries = [row for row in new if row["linkPrecedence"] == "secondary"]
    if secondaries:
        real_ids.update(insert_rows(db, secondaries, real_ids, "select_secondaries_after_id"))
    record_batch_events(db, customers, real_ids)


def insert_rows(db: Database, new: list[Row], real_ids: dict[int, int], read_back: str) -> dict[int, int]:
    """Insert rows the batch created (one statement) and read their ids back by their
    identifiers, which no concurrent request can insert while the batch holds them: the
    in-memory id -> the real id."""
    top = db.one("select_max_contact_id")
    db.run_many(
        "insert_contact", [insert_params(row, real_ids.get(row["linkedId"], row["linkedId"])) for row in new]
    )
    ids = {
        (r["email"], r["phoneNumber"]): r["id"]
        for r in db.all(read_back, after=int(top["top"]) if top else 0)
    }
    return {row["id"]: ids[(row["email"], row["phoneNumber"])] for row in new}


def record_batch_events(db: Database, customers: BatchCustomers, real_ids: dict[int, int]) -> None:
    """History for what a batch changed, in its transaction, in real ids: one `imported` event
    per customer, naming the rows the batch re-pointed and the rows it inserted, then each
    merge and refusal as identify records it (`merged` with its evidence and demoted primary,
    `refused` with the identifier's kind and the customers it would have joined). The
    `imported` events come first and are stamped with the batch's first order, so whatever
    reads history in time order (the changes feed) meets a batch's rows before its merges."""

    def real(row_id: int) -> int:
        return real_ids.get(row_id, row_id)

    touched: dict[int, set[int]] = defaultdict(set)
    for row_id in [*customers.changed, *customers.inserted]:
        row = customers.rows[row_id]
        touched[real(row["linkedId"] or row_id)].add(real(row_id))
    first = min((event.at for event in customers.events), default=utcnow())
    record_imported(db, {customer_id: sorted(ids) for customer_id, ids in sorted(touched.items())}, first)
    events = []
    for event in customers.events:
        detail: dict[str, Any]
        if event.kind == "merged":
            detail = {"evidence": {k: None if v is None else real(v) for k, v in event.evidence.items()}}
        else:
            detail = {**event.refused, "customerIds": [real(i) for i in event.refused["customerIds"]]}
        former = None if event.former_customer_id is None else real(event.former_customer_id)
        contact_ids = [real(i) for i in event.contact_ids]
        events.append(
            history_event(event.kind, real(event.customer_id), contact_ids, event.at, former, detail)
        )
    db.run_many("insert_history_event", events)


def insert_params(row: Row, linked_id: int | None) -> dict[str, Any]:
    """insert_contact's parameters for a row the batch created."""
    return {
        "email": row["email"],
        "phone": row["phoneNumber"],
        "linked_id": linked_id,
        "link_precedence": row["linkPrecedence"],
        "created_at": row["createdAt"],
    }
