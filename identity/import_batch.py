"""One import transaction: a batch of orders applied with identify's own rules and locks
(merge.py's protocol for many requests at once), written with multi-row statements."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from identity.database import Database, Row, utcnow
from identity.errors import RetryTransaction
from identity.history import record_imported
from identity.merge import lock_customer, plan_identify, stored_row_params, trusts_fast_path
from identity.order_file import OrderBatch

# In-memory ids of rows a batch inserts: above every real id, in creation
# order, until the rows are written and get their real ids.
TEMP_ID_BASE = 2**62
ONE_MICROSECOND = timedelta(microseconds=1)


# -- identify's rules over the batch's customers, in memory ------------------


class BatchCustomers:
    """The customers one import batch touches, in memory: every live row of the connected
    components of the batch's identifiers (locked), indexed by email, phone and link.

    `identify` applies one order with identify's own pure `plan_identify`, so the import
    and the API cannot decide differently.
    """

    def __init__(self, rows: Iterable[Row]):
        self.rows: dict[int, Row] = {}
        self.by_email: dict[str, set[int]] = defaultdict(set)
        self.by_phone: dict[str, set[int]] = defaultdict(set)
        self.linked: dict[int, set[int]] = defaultdict(set)  # id -> rows whose linkedId is id
        self.changed: set[int] = set()  # existing rows whose link or precedence changed
        self.inserted: list[int] = []  # temporary ids, in creation order
        for row in rows:
            self.add(dict(row))

    def add(self, row: Row) -> None:
        self.rows[row["id"]] = row
        if row["email"] is not None:
            self.by_email[row["email"]].add(row["id"])
        if row["phoneNumber"] is not None:
            self.by_phone[row["phoneNumber"]].add(row["id"])
        if row["linkedId"] is not None:
            self.linked[row["linkedId"]].add(row["id"])

    def component(self, email: str | None, phone: str | None) -> list[Row]:
        """Every row connected to the request's identifiers (shared email, shared phone, link)."""
        seen: set[int] = set()
        todo = [*(self.by_email.get(email, ()) if email is not None else ())]
        todo += self.by_phone.get(phone, ()) if phone is not None else ()
        while todo:
            row_id = todo.pop()
            if row_id in seen:
                continue
            seen.add(row_id)
            row = self.rows[row_id]
            todo.extend(self.by_email.get(row["email"], ()) if row["email"] is not None else ())
            todo.extend(self.by_phone.get(row["phoneNumber"], ()) if row["phoneNumber"] is not None else ())
            if row["linkedId"] in self.rows:
                todo.append(row["linkedId"])
            todo.extend(self.linked.get(row_id, ()))
        return [self.rows[row_id] for row_id in seen]

    def relink(self, row_id: int, precedence: str, linked_id: int | None, now: datetime) -> None:
        row = self.rows[row_id]
        if row["linkedId"] is not None:
            self.linked[row["linkedId"]].discard(row_id)
        row["linkPrecedence"], row["linkedId"], row["updatedAt"] = precedence, linked_id, now
        if linked_id is not None:
            self.linked[linked_id].add(row_id)
        if row_id < TEMP_ID_BASE:
            self.changed.add(row_id)

    def identify(self, email: str | None, phone: str | None, now: datetime) -> str:
        """Apply one order to the rows in memory, as identify would; returns its outcome."""
        rows = self.component(email, phone)
        plan = plan_identify(rows, email, phone, now)
        primary_id = plan.rows[0]["id"]
        if plan.promoted is not None:
            self.relink(plan.promoted["id"], "primary", None, now)
        for row_id in plan.relinked:
            self.relink(row_id, "secondary", primary_id, now)
        if plan.inserted is not None:
            new = plan.inserted
            new["id"] = TEMP_ID_BASE + len(self.inserted)
            new["updatedAt"] = new["createdAt"]
            self.inserted.append(new["id"])
            self.add(new)
        return plan.outcome


# -- the batch's transaction ------------------------------------------------


class OrderClock:
    """Each order's `now`: the wall clock, but strictly after the previous order's, so the
    file's order is the rows' (createdAt) order even when lines are microseconds apart."""

    def __init__(self) -> None:
        self.last = datetime.min

    def now(self) -> datetime:
        self.last = max(utcnow(), self.last + ONE_MICROSECOND)
        return self.last


def import_batch(db: Database, batch: OrderBatch, clock: OrderClock) -> Counter[str]:
    """Apply a batch of orders in file order inside the caller's transaction; returns the
    outcome counts (created, linked, merged, repaired, unchanged).

    identify's protocol (apply_identify) for many requests at once: 0. on a
    consistent table, count the settled orders as unchanged (`settled_orders`,
    identify's fast path, read ahead by `ReadAhead` or now) and go on with the
    others; 1. touch every identifier of those (one statement, sorted: one lock
    order); 2. lock every live row of their customers (`lock_customer`); 3.
    decide line by line in memory with `plan_identify`; 4. write the final
    state with multi-row statements, touching the identifiers of every existing
    row whose link changes (as write_plan does). Raises
    RetryTransaction("customer_erased") when an erasure committed between the
    settled read and the end (docs/import.md).
    """
    orders = batch.pairs()
    outcomes: Counter[str] = Counter()
    erasures = None
    if trusts_fast_path(db):
        # identify's fast path for the whole batch: a repeat customer's order changes nothing.
        erasures, settled = batch.take_settled_read() or settled_read(db, orders)
        outcomes["unchanged"] = sum(settled)
        orders = [order for order, done in zip(orders, settled, strict=True) if not done]
        if not orders:
            return outcomes
    emails = {email for email, _ in orders if email is not None}
    phones = {phone for _, phone in orders if phone is not None}
    identifiers = sorted([("email", e) for e in emails] + [("phone", p) for p in phones])
    db.run_many("touch_identifier_rows", [{"kind": k, "value": v, "version": 1} for k, v in identifiers])
    customers = BatchCustomers(lock_customer(db, emails, phones).values())
    for email, phone in orders:
        outcomes[customers.identify(email, phone, clock.now())] += 1
    write_batch(db, customers)
    if erasures is not None and erasure_count(db) != erasures:
        # The settled orders were applied at the lock-free read, the others now. Only an
        # erasure can make a settled order unsettled; if one came in between, an order
        # before it in the file may have been applied after it: start the batch over.
        raise RetryTransaction("customer_erased")
    return outcomes


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
    """Write what the batch changed: relinked rows, new primaries, then new secondaries."""
    rows = customers.rows
    if customers.changed:
        # As write_plan: the identifiers of every existing row whose link changes, so a
        # racing request on another cluster node that linked to a demoted customer conflicts.
        db.run("touch_contact_identifiers", ids=sorted(customers.changed))
    db.run_many(
        "store_contact_rows", [stored_row_params(rows[row_id]) for row_id in sorted(customers.changed)]
    )
    new = [rows[row_id] for row_id in customers.inserted]
    real_ids: dict[int, int] = {}
    primaries = [row for row in new if row["linkPrecedence"] == "primary"]
    if primaries:
        top = db.one("select_max_contact_id")
        db.run_many("insert_contact", [insert_params(row, None) for row in primaries])
        after = int(top["top"]) if top else 0
        ids = {
            (r["email"], r["phoneNumber"]): r["id"] for r in db.all("select_primaries_after_id", after=after)
        }
        for row in primaries:
            real_ids[row["id"]] = ids[(row["email"], row["phoneNumber"])]
    secondaries = [
        insert_params(row, real_ids.get(row["linkedId"], row["linkedId"]))
        for row in new
        if row["linkPrecedence"] == "secondary"
    ]
    top = db.one("select_max_contact_id")
    db.run_many("insert_contact", secondaries)
    record_batch_events(db, customers, real_ids, int(top["top"]) if top and secondaries else None)


def record_batch_events(
    db: Database, customers: BatchCustomers, real_ids: dict[int, int], secondaries_after: int | None
) -> None:
    """History for what a batch changed, in its transaction: one `imported` event per customer,
    naming its new primary, the rows the batch re-pointed and the rows it inserted."""
    touched: dict[int, set[int]] = defaultdict(set)
    for row_id in real_ids.values():
        touched[row_id].add(row_id)
    for row_id in customers.changed:
        row = customers.rows[row_id]
        touched[row["linkedId"] or row_id].add(row_id)
    if secondaries_after is not None:
        batch_primaries = {row["linkedId"] for row in customers.rows.values() if row["linkedId"]}
        batch_primaries |= set(real_ids.values()) | {i for i in customers.rows if i < TEMP_ID_BASE}
        for row in db.all("select_secondaries_after_id", after=secondaries_after):
            if row["linkedId"] in batch_primaries:
                touched[row["linkedId"]].add(row["id"])
    record_imported(db, {customer_id: sorted(ids) for customer_id, ids in sorted(touched.items())}, utcnow())


def insert_params(row: Row, linked_id: int | None) -> dict[str, Any]:
    """insert_contact's parameters for a row the batch created."""
    return {
        "email": row["email"],
        "phone": row["phoneNumber"],
        "linked_id": linked_id,
        "link_precedence": row["linkPrecedence"],
        "created_at": row["createdAt"],
    }
