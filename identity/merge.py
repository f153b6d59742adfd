"""The merge protocol (SPEC, "POST /identify" and "Concurrency"; README, "Concurrency").

A customer is a connected component of live rows. Identify, repair, import and erasure
all change one the same way: touch the request's identifier rows, lock the component's
rows (`lock_customer`), decide in memory (`plan_identify`, pure), write (`write_plan`).
Each caller records what it did in history itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from identity.component import Component, CustomerRows, connected_rows, first_step, oldest_first
from identity.database import Database, Row, utcnow
from identity.errors import RetryTransaction
from identity.protection import FIELDS, UNPROTECTED, Protection


def primaries_of(rows: Iterable[Row]) -> list[Row]:
    """The rows marked primary, in the given order."""
    return [row for row in rows if row["linkPrecedence"] == "primary"]


def is_one_customer(rows: list[Row]) -> bool:
    """True when select_customer's rows are one customer that every matching row leads to:
    one primary, and each row's largest matching customer id is that primary's."""
    primaries = primaries_of(rows)
    return len(primaries) == 1 and all(row["lastCustomerId"] == primaries[0]["id"] for row in rows)


def is_settled(rows: list[Row], email: str | None, phone: str | None) -> bool:
    """True when the request would change nothing: one customer that has every identifier.

    `rows` is one customer's rows (select_customer), each with the largest
    customer id any matching row points to: all matches must lead to this one
    customer. Each identifier belongs to at most one customer, so if this one
    has them all, no other customer does.
    Only trusted on a table known to be consistent (see `trusts_fast_path`).
    """
    return (
        is_one_customer(rows)
        and (email is None or any(row["email"] == email for row in rows))
        and (phone is None or any(row["phoneNumber"] == phone for row in rows))
    )


def seen_customers(rows: list[Row], protection: Protection) -> list[Row]:
    """The rows select_customer read, as lock_customer's `seen`, when they are one customer
    whole (fewer rows than it may read, `is_one_customer`); else none, and lock_customer
    walks. The caller has checked the identifier limit (identify). Of two customers (a
    merge) the read holds one: locking it first and the other after would take row locks
    out of id order, and merges of the same two customers would deadlock (twice the retries
    on Galera)."""
    if not rows or len(rows) > protection.max_rows or not is_one_customer(rows):
        return []
    return [{k: v for k, v in row.items() if k != "lastCustomerId"} for row in rows]


# How often a thread reads ServiceState again: a `repair` that starts marks the
# table not consistent, one that finishes marks it consistent.
CONSISTENCY_RECHECK_S = 5


def trusts_fast_path(db: Database) -> bool:
    """True when every customer in the table is known to satisfy the rules (ServiceState).

    Only then can a repeat order be answered from one lock-free read: on data the
    service did not write (not yet repaired), a customer read by its primary may
    be only part of the connected component.
    """
    if time.monotonic() - db.state_read_at > CONSISTENCY_RECHECK_S:
        db.read_state()
    return db.state.get("consistent") == "1"


def touch_identifiers(db: Database, email: str | None, phone: str | None) -> None:
    """Step 1 of the protocol: write the request's identifier rows (ContactIdentifier), email
    first. Every request that could link to or merge the same customer writes one of them,
    so such requests conflict here, on a multi-primary cluster too. Deferred: it travels
    with the locking read that follows (one round trip)."""
    db.defer("touch_identifiers", email=email, phone=phone)


# A customer that keeps growing while we lock it is being merged into by
# concurrent requests: after this many rounds, start the transaction over.
MAX_LOCK_ROUNDS = 8


def lock_customer(
    db: Database,
    emails: set[str],
    phones: set[str],
    ids: Iterable[int] = (),
    protection: Protection = UNPROTECTED,
    seen: list[Row] | None = None,
) -> Component:
    """Lock and return every live row of the customers owning these identifiers (or rows `ids`).

    Reads the component without locks, locks its rows in id order (`lock_contacts`, which
    answers them as they are once locked), then checks that nothing outside the locked set
    connects to it; if something does (a concurrent request linked or merged meanwhile),
    locks that too. Once all rows are locked nobody can link to or merge them until we
    commit. A customer past the limit is not locked: its rows come back read, marked
    (Component.past_limit), and must not be written. Raises RetryTransaction("customer_moved")
    when the customer keeps changing.

    Each lock travels with its check, in one round trip: the check is the step from the rows
    as they were read; when the locked rows are not what was read, it is made again from them.
    `seen`: the customer's rows as a read just before the transaction found them (identify's
    select_customer), whole and within the limit: when one read shows them unchanged, they
    stand for the unlocked walk (`still_whole`).
    """
    locked: dict[int, Row] = {}
    found = still_whole(db, emails, phones, seen, protection) if seen else None
    if found is None:
        found = connected_rows(db, emails, phones, ids=ids, protection=protection)
    for _ in range(MAX_LOCK_ROUNDS):
        wanted = sorted(found.keys() - locked.keys() - found.past_limit)
        if not wanted:
            return Component({**{i: found[i] for i in found.past_limit}, **locked}, found.past_limit)
        expected = {**locked, **{i: found[i] for i in wanted}}
        check = first_step(emails, phones, expected, ids, protection)
        results = db.all_together(
            ("lock_contacts", {"ids": wanted}), *([("select_connected", check)] if check else [])
        )
        locked.update((row["id"], row) for row in results[0])
        # One step from the locked rows as they now are: anything new connects to them.
        answered = (check, results[1]) if check else None
        found = connected_rows(db, emails, phones, locked, ids, protection, answered)
    raise RetryTransaction("customer_moved")


def still_whole(
    db: Database, emails: set[str], phones: set[str], seen: list[Row], protection: Protection
) -> Component | None:
    """`seen` as a Component when one read, made now, finds those rows unchanged and nothing
    else connected to them; else None (walk). Made after the identifier touch, which waits for
    any request changing the customer through these identifiers: a merge that committed
    meanwhile is seen here, and the rows are then locked in one batch in id order, as the walk
    would lock them (locking stale rows first, then what they now connect to, would take
    locks out of order: three times the deadlocks in the merge-heavy Galera test)."""
    known = {row["id"]: row for row in seen}
    step = first_step(emails, phones, known, protection=protection)
    if step is None:
        return Component(known)
    now = {row["id"]: row for row in db.all("select_connected", **{**step, "known": []})}
    return Component(known) if now == known else None


@dataclass
class Refusal:
    """An identifier the limit kept out of a request (SPEC, "Merge protection", Limits): its
    kind, the rows it matched, and the customers (primary ids) it would have joined."""

    kind: str  # "email" or "phone"
    contact_ids: list[int]
    customer_ids: list[int]


@dataclass
class IdentifyPlan:
    """What identify will change, decided in memory from the customer's locked rows."""

    rows: list[Row]  # the customer's live rows afterwards, oldest first
    outcome: str  # created, linked, merged, repaired or unchanged
    promoted: Row | None = None  # the oldest row, when it was not marked primary yet
    relinked: list[int] = field(default_factory=list)  # rows re-pointed at the primary
    demoted: list[int] = field(default_factory=list)  # of those, the former primaries
    inserted: Row | None = None  # the new row (its id is set once it is written)
    # Merge protection (SPEC): request fields left out, as (field, reason "blocked" | "limit");
    # the answer is part of a customer past the limit; a merge's evidence (the rows the
    # request matched by email and by phone); what the limit refused, for history.
    ignored: list[tuple[str, str]] = field(default_factory=list)
    partial: bool = False
    evidence: dict[str, int | None] = field(default_factory=dict)
    refused: list[Refusal] = field(default_factory=list)


def plan_identify(rows: list[Row], email: str | None, phone: str | None, now: datetime) -> IdentifyPlan:
    """The SPEC's identify rules applied to the live rows of the request's customer(s); pure.

    `rows` is the whole connected component (any shape: several primaries,
    chains, a deleted primary). The oldest row becomes or stays the primary,
    every other row points straight at it, and a secondary carrying the
    request's identifiers is added when the customer lacks one of them.
    Nothing here touches the database: import applies the same function.
    """
    if not rows:
        new = new_contact(email, phone, None, now)
        return IdentifyPlan(rows=[new], outcome="created", inserted=new)
    primary, *others = oldest_first(rows)
    plan = IdentifyPlan(rows=[], outcome="unchanged")
    if primary["linkPrecedence"] != "primary" or primary["linkedId"] is not None:
        primary = plan.promoted = {**primary, "linkPrecedence": "primary", "linkedId": None}
    plan.rows.append(primary)
    for row in others:
        if row["linkPrecedence"] != "secondary" or row["linkedId"] != primary["id"]:
            plan.relinked.append(row["id"])
            if row["linkPrecedence"] == "primary":
                plan.demoted.append(row["id"])
            row = {**row, "linkPrecedence": "secondary", "linkedId": primary["id"]}
        plan.rows.append(row)
    if (email is not None and all(row["email"] != email for row in rows)) or (
        phone is not None and all(row["phoneNumber"] != phone for row in rows)
    ):
        # Never older than its primary, even if this host's clock is behind the one that made it.
        created_at = max(now, primary["createdAt"] + timedelta(microseconds=1))
        plan.inserted = new_contact(email, phone, primary["id"], created_at)
        plan.rows.append(plan.inserted)
    if plan.demoted:
        plan.outcome = "merged"
    elif plan.inserted:
        plan.outcome = "linked"
    elif plan.relinked or plan.promoted:
        plan.outcome = "repaired"
    return plan


def new_contact(email: str | None, phone: str | None, linked_id: int | None, created_at: datetime) -> Row:
    """A row to insert: a primary (no linked_id) or a secondary; its id is set when written."""
    return {
        "id": None,
        "email": email,
        "phoneNumber": phone,
        "linkedId": linked_id,
        "linkPrecedence": "primary" if linked_id is None else "secondary",
        "createdAt": created_at,
    }


def stored_row_params(row: Row) -> dict[str, Any]:
    """store_contact_rows' parameters: an existing row as it is to be stored (repair, import)."""
    return {
        "id": row["id"],
        "phone": row["phoneNumber"],
        "email": row["email"],
        "linked_id": row["linkedId"],
        "link_precedence": row["linkPrecedence"],
        "created_at": row["createdAt"],
        "updated_at": row["updatedAt"],
    }


def touch_customer_locks(db: Database, customer_ids: Iterable[int]) -> None:
    """Write the growth lock (CustomerLock) of each customer a plan grows or merges, ids sorted.
    On a multi-primary cluster a concurrent growth of one of them on another node then writes
    the same row and one of the two is retried: together they could pass the limit."""
    db.run_many("touch_customer_locks", [{"customer_id": i} for i in sorted(set(customer_ids))])


def check_not_grown(db: Database, plan: IdentifyPlan, protection: Protection) -> None:
    """After the growth lock is written: the customers the plan grows hold no row it did not see,
    else RetryTransaction("customer_moved"). On a multi-primary cluster row locks are node-local:
    a growth committed on another node and applied here after this transaction read the customer
    is seen now (READ COMMITTED), so the limit is planned again from the customer as it is; one
    applied later conflicts with the growth lock this transaction now holds."""
    seen = {row["id"] for row in plan.rows if row["id"] is not None}
    now = connected_rows(db, set(), set(), ids=[plan.rows[0]["id"], *plan.demoted], protection=protection)
    if now.keys() - seen or now.past_limit:
        raise RetryTransaction("customer_moved")


def write_plan(db: Database, plan: IdentifyPlan, protection: Protection = UNPROTECTED) -> None:
    """Apply an IdentifyPlan inside the caller's transaction; sets the inserted row's id.
    Writes whose answer is not needed are deferred (Database.defer): they travel with the
    insert, or with COMMIT.

    Every row the plan changes is locked (lock_customer), which on one server is all it takes.
    On a multi-primary cluster (Database.multi_primary) row locks are local to a node, so two
    more writes make concurrent transactions on two nodes conflict: the identifiers of every
    row whose link changes are touched, so a request that linked a row to a demoted customer
    conflicts with this one (README, "Concurrency"); and when the customer grows, its growth
    lock is written and the customer re-read (check_not_grown), under `protection`.
    """
    now = utcnow()
    primary_id = plan.rows[0]["id"]
    if plan.promoted or plan.relinked:
        if db.multi_primary:
            # Only the rows whose link changes: a request that linked to a demoted
            # customer found it through one of these rows and wrote its identifier.
            # Touching the whole customer would also deadlock with every request
            # that is linking a new row to the survivor (identifier, then rows).
            changed = plan.relinked + ([primary_id] if plan.promoted else [])
            db.defer("touch_contact_identifiers", ids=changed)
        if plan.promoted:
            db.defer("promote_contact", id=primary_id, updated_at=now)
        if plan.relinked:
            db.defer("relink_contacts", ids=plan.relinked, primary_id=primary_id, updated_at=now)
    grows = plan.demoted or (plan.inserted is not None and plan.inserted["linkedId"] is not None)
    if grows and db.multi_primary:
        touch_customer_locks(db, [primary_id, *plan.demoted])
        check_not_grown(db, plan, protection)
    new = plan.inserted
    if new is not None:
        new["id"] = db.run(
            "insert_contact",
            email=new["email"],
            phone=new["phoneNumber"],
            linked_id=new["linkedId"],
            link_precedence=new["linkPrecedence"],
            created_at=new["createdAt"],
        )


def candidates(email: str | None, phone: str | None) -> list[tuple[str | None, str | None]]:
    """The request, then the request without its lowest-priority identifier, and so on: the
    phone number goes first, then the email (SPEC, "Merge protection", Limits)."""
    tried = [(email, phone)]
    if email is not None and phone is not None:
        tried.append((email, None))
    tried.append((None, None))
    return tried


def plan_within_limits(
    found: Component, email: str | None, phone: str | None, now: datetime, protection: Protection
) -> IdentifyPlan:
    """plan_identify under merge protection (SPEC, "Merge protection", Limits); pure.

    `found` holds the rows of every customer the request's identifiers belong to, locked
    (lock_customer), and the bounded, unlocked part of any customer past the limit. The
    request is planned as it came; when its customer would end past the limit, or it would
    grow or merge a customer already past it, it is planned again without its phone number,
    then without its email too, until it fits. What was left out is in `ignored` (reason
    "limit") and `refused`; a customer past the limit is answered as far as it was read.
    """
    return plan_in_customers(CustomerRows(protection, found.values(), found.past_limit), email, phone, now)


def plan_in_customers(
    graph: CustomerRows, email: str | None, phone: str | None, now: datetime
) -> IdentifyPlan:
    """plan_within_limits over customers already held in memory (the import keeps one
    CustomerRows for a whole batch and applies each plan to it); pure, `graph` unchanged."""
    plan: IdentifyPlan | None = None
    for kept_email, kept_phone in candidates(email, phone):
        if kept_email is None and kept_phone is None:
            plan = plan_nothing(graph, email, phone)
        else:
            plan = plan_candidate(graph, kept_email, kept_phone, now)
        if plan is not None:
            break
    assert plan is not None  # the last candidate always plans
    for kind, value, kept in (("phone", phone, kept_phone), ("email", email, kept_email)):
        if value is not None and kept is None:
            plan.ignored.append((FIELDS[kind], "limit"))
            plan.refused.append(refusal(graph, kind, value))
    return plan


def plan_candidate(
    graph: CustomerRows, email: str | None, phone: str | None, now: datetime
) -> IdentifyPlan | None:
    """The plan for these identifiers (at least one), or None when it would take a customer
    past the limit or change one that already is."""
    rows = graph.component(email, phone)
    if any(graph.is_past_limit(row["id"]) for row in rows):
        # Never grown, never merged: acceptable only when it is one customer that already
        # carries every identifier (the request changes nothing).
        known = (email is None or ("email", email) in graph.owner) and (
            phone is None or ("phone", phone) in graph.owner
        )
        if known and len(graph.roots_of(email, phone)) == 1:
            return IdentifyPlan(rows=oldest_first(rows), outcome="unchanged", partial=True)
        return None
    plan = plan_identify(rows, email, phone, now)
    # The identifiers the customer would hold: its customers' (kept by the graph) and the new row's.
    held = set().union(*(graph.identifiers[root] for root in graph.roots_of(email, phone)))
    if plan.inserted is not None:
        held.update(graph.protection.identifiers(plan.inserted))
    if len(held) > graph.protection.max_identifiers:
        return None
    if plan.demoted:
        plan.evidence = {
            "email": first_carrying(rows, "email", email),
            "phone": first_carrying(rows, "phoneNumber", phone),
        }
    return plan


def plan_nothing(graph: CustomerRows, email: str | None, phone: str | None) -> IdentifyPlan:
    """When neither identifier fits: nothing is written; the answer is the customer of the
    email (else of the phone) as it is. (Two identifiers that no row carries always fit.)"""
    for identifier in (("email", email), ("phone", phone)):
        if identifier in graph.owner:
            owner = graph.owner[identifier]
            return IdentifyPlan(
                rows=oldest_first(graph.customer_of(owner)),
                outcome="unchanged",
                partial=graph.is_past_limit(owner),
            )
    raise AssertionError("a request whose identifiers no row carries always fits")


def first_carrying(rows: list[Row], column: str, value: str | None) -> int | None:
    """The oldest row carrying this value: the row a request matched by it (merge evidence)."""
    if value is None:
        return None
    return next((row["id"] for row in oldest_first(rows) if row[column] == value), None)


def refusal(graph: CustomerRows, kind: str, value: str) -> Refusal:
    """What the limit refused: the identifier's kind, the rows carrying it, their customers."""
    column = "email" if kind == "email" else "phoneNumber"
    identifiers = (value, None) if kind == "email" else (None, value)
    matched = sorted(row["id"] for row in graph.component(*identifiers) if row[column] == value)
    customers = sorted(
        oldest_first(graph.customer_of(root))[0]["id"] for root in {graph.root(i) for i in matched}
    )
    return Refusal(kind, matched, customers)
