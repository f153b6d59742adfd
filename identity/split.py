"""Splitting what a blocked value joined (SPEC, "Merge protection", "Evidence, and splitting").

A customer that carries a blocked value is recomputed from the links that remain evidence of
one person: rows sharing a value that is not blocked, and `merged` history events whose
evidence (the row the request matched by email, the row it matched by phone) holds no
blocked value. A link that nothing recorded explains (rows that share no value, blocked or
not, and no merge event joins: data the service did not write) is kept, and reported. Each
resulting part keeps its own oldest row as primary, every other row pointing straight at it.

`read_customer` reads a customer whole, however large (a blob of thousands of rows), in
statements of bounded size; `plan_split` is pure; `write_split` detaches some parts in one
short transaction that takes identify's locks and checks the customer has not changed since
it was read, so every state it commits keeps every rule. repair and `block add` use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from identity.component import oldest_first
from identity.database import Database, Row
from identity.history import history_event
from identity.protection import Protection

# How many values each list of one statement holds (SQLite binds one parameter per value).
READ_CHUNK = 250
# The most rows one transaction re-points: parts are detached a batch at a time.
SPLIT_BATCH = 200
# The columns a split compares between its read and its locked rows.
COMPARED = ("email", "phoneNumber", "linkedId", "linkPrecedence", "createdAt")


class CustomerMoved(Exception):
    """The customer changed since it was read (an order, an erasure, a deletion): read it again."""


def chunks(values: Iterable[object], size: int = READ_CHUNK) -> list[list[object]]:
    """The values sorted, in lists of at most `size`."""
    items = sorted(values)  # type: ignore[type-var]
    return [items[i : i + size] for i in range(0, len(items), size)]


def read_customer(db: Database, ids: Iterable[int], protection: Protection) -> dict[int, Row]:
    """Every live row connected to the rows `ids` by links and by values that are not blocked,
    read without locks and without a bound (repair must see a customer past the limit whole),
    a few hundred values per statement."""
    rows: dict[int, Row] = {}
    searched: set[tuple[str, str]] = set()
    lists: dict[str, set[Any]] = {"emails": set(), "phones": set(), "parents": set(ids), "children": set()}
    while any(lists.values()):
        found: list[Row] = []
        for name, values in lists.items():
            for chunk in chunks(values):
                params = {"emails": [], "phones": [], "parents": [], "children": [], name: chunk}
                found += db.all("select_connected", **params, known=[], limit=2**31 - 1)
        new = {row["id"]: row for row in found if row["id"] not in rows}
        rows.update(new)
        lists = {"emails": set(), "phones": set(), "parents": set(), "children": set(new)}
        for row in new.values():
            for kind, value in protection.identifiers(row):
                if (kind, value) not in searched:
                    searched.add((kind, value))
                    lists["emails" if kind == "email" else "phones"].add(value)
            if row["linkedId"] is not None and row["linkedId"] not in rows:
                lists["parents"].add(row["linkedId"])
    return rows


def read_merge_evidence(db: Database, ids: Iterable[int]) -> list[dict[str, int | None]]:
    """The evidence of every `merged` event recorded for these customers (ids of their rows)."""
    evidence = []
    for chunk in chunks(ids, 500):
        for row in db.all("select_merge_evidence", ids=chunk):
            recorded = json.loads(row["detail"]).get("evidence") or {}
            if isinstance(recorded, dict):
                evidence.append(recorded)
    return evidence


class UnionFind:
    """Disjoint sets of row ids."""

    def __init__(self, ids: Iterable[int]):
        self.parent = {i: i for i in ids}

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(b)] = self.find(a)


@dataclass
class SplitPlan:
    """A customer as read, and the parts the evidence leaves of it."""

    rows: dict[int, Row]
    primary_id: int  # the customer's oldest row: its part stays, the others leave
    parts: list[list[Row]] = field(default_factory=list)  # oldest first, each oldest row first
    # Per part that leaves (by its oldest row's id): the kinds of blocked value that joined it.
    blocked_kinds: dict[int, list[str]] = field(default_factory=dict)
    kept_links: list[tuple[int, int]] = field(default_factory=list)  # (row, the row it links to)
    lock_version: int | None = None  # CustomerLock of the primary when read

    @property
    def leaving(self) -> list[list[Row]]:
        """The parts that become customers of their own (all but the primary's)."""
        return [part for part in self.parts if part[0]["id"] != self.primary_id]


def plan_split(
    rows: dict[int, Row], evidence: list[dict[str, int | None]], protection: Protection
) -> SplitPlan:
    """The parts of one customer (SPEC, "Evidence, and splitting"); pure.

    Two graphs over the rows: `explained` joins rows by every shared value and every recorded
    merge (blocked or not), `evidence` only by what a blocked value did not make. A link
    between rows that `explained` leaves apart is a link without recorded evidence: kept (it
    joins `evidence` too) and reported. The parts are the components of `evidence`.
    """
    blocked = protection.blocked
    explained, kept = UnionFind(rows), UnionFind(rows)
    owners: dict[tuple[str, str], int] = {}
    for row in oldest_first(rows.values()):
        for kind, value in (("email", row["email"]), ("phone", row["phoneNumber"])):
            if value is None:
                continue
            owner = owners.setdefault((kind, value), row["id"])
            explained.union(owner, row["id"])
            if not blocked.blocks(kind, value):
                kept.union(owner, row["id"])
    blocked_merges: list[tuple[int, int, list[str]]] = []  # (row, row, blocked kinds)
    for recorded in evidence:
        by_email, by_phone = recorded.get("email"), recorded.get("phone")
        if by_email in rows and by_phone in rows:
            assert by_email is not None and by_phone is not None
            explained.union(by_email, by_phone)
            kinds = [
                kind
                for kind, row_id, column in (("email", by_email, "email"), ("phone", by_phone, "phoneNumber"))
                if blocked.blocks(kind, rows[row_id][column])
            ]
            if kinds:
                blocked_merges.append((by_email, by_phone, kinds))
            else:
                kept.union(by_email, by_phone)
    plan = SplitPlan(rows, oldest_first(rows.values())[0]["id"])
    for row in oldest_first(rows.values()):
        linked = row["linkedId"]
        if linked in rows and explained.find(row["id"]) != explained.find(linked):
            plan.kept_links.append((row["id"], linked))
            kept.union(linked, row["id"])
    groups: dict[int, list[Row]] = {}
    for row in oldest_first(rows.values()):
        groups.setdefault(kept.find(row["id"]), []).append(row)
    plan.parts = list(groups.values())
    if len(plan.parts) > 1:
        part_of = {row["id"]: part[0]["id"] for part in plan.parts for row in part}
        joins: list[tuple[str, set[int]]] = []  # (kind, the parts a blocked value joined)
        carriers: dict[tuple[str, str], set[int]] = {}
        for row in rows.values():
            for kind, value in (("email", row["email"]), ("phone", row["phoneNumber"])):
                if value is not None and blocked.blocks(kind, value):
                    carriers.setdefault((kind, value), set()).add(part_of[row["id"]])
        joins += [(kind, parts) for (kind, _), parts in carriers.items()]
        joins += [(kind, {part_of[a], part_of[b]}) for a, b, kinds in blocked_merges for kind in kinds]
        for kind, parts in joins:
            if len(parts) > 1:
                for part_id in parts:
                    named = plan.blocked_kinds.setdefault(part_id, [])
                    if kind not in named:
                        named.append(kind)
    return plan


# How often a customer is read again when its primary changed while it was read.
MAX_READS = 5


def read_split_plan(db: Database, row_id: int, protection: Protection) -> SplitPlan | None:
    """The customer of the live row `row_id`, read whole with its merge evidence, and its parts;
    None when the row is gone. The primary's CustomerLock version is read before the rows, so
    write_split sees any growth since. Raises CustomerMoved when the primary keeps changing."""
    link = db.one("select_contact_link", id=row_id)
    if link is None or link["deletedAt"] is not None:
        return None
    guess = link["linkedId"] if link["linkedId"] is not None else row_id
    for _ in range(MAX_READS):
        version = db.one("select_customer_lock_version", customer_id=guess)
        rows = read_customer(db, [row_id], protection)
        if not rows:
            return None
        plan = plan_split(rows, read_merge_evidence(db, rows), protection)
        if plan.primary_id == guess:
            plan.lock_version = version["version"] if version else None
            return plan
        guess = plan.primary_id
    raise CustomerMoved(row_id)


def split_batches(plan: SplitPlan) -> list[list[list[Row]]]:
    """The leaving parts in groups of at most SPLIT_BATCH rows (a larger part alone)."""
    batches: list[list[list[Row]]] = [[]]
    size = 0
    for part in plan.leaving:
        if batches[-1] and size + len(part) > SPLIT_BATCH:
            batches.append([])
            size = 0
        batches[-1].append(part)
        size += len(part)
    return [batch for batch in batches if batch]


def write_split(db: Database, plan: SplitPlan, parts: list[list[Row]], now: datetime) -> None:
    """Detach these parts of the customer, in the caller's transaction, under identify's locks.

    Locks the parts' rows and the customer's primary in id order (as identify locks a
    customer), then checks that they are as read and that the customer has not grown since
    (CustomerLock, which every identify that grows it bumps after locking its rows):
    otherwise raises CustomerMoved. Each part's oldest row becomes a primary, its other rows
    point at it, and a `split` event names the part, the customer it left and why.
    """
    ids = sorted({plan.primary_id, *(row["id"] for part in parts for row in part)})
    locked = {row["id"]: row for row in db.all("lock_contacts", ids=ids)}
    for row_id in ids:
        current, read = locked.get(row_id), plan.rows[row_id]
        if current is None or any(current[column] != read[column] for column in COMPARED):
            raise CustomerMoved(row_id)
    version = db.one("select_customer_lock_version", customer_id=plan.primary_id)
    if (version["version"] if version else None) != plan.lock_version:
        raise CustomerMoved(plan.primary_id)
    moved = [row["id"] for part in parts for row in part]
    db.run("touch_contact_identifiers", ids=moved)  # as write_plan: conflicts on a cluster too
    db.run("promote_contacts", ids=[part[0]["id"] for part in parts], updated_at=now)
    events = []
    for part in parts:
        primary_id, others = part[0]["id"], [row["id"] for row in part[1:]]
        if others:
            db.run("relink_contacts", ids=others, primary_id=primary_id, updated_at=now)
        # The kind of blocked value that joined the part (openapi.json's `identifier`), ids only.
        kinds = plan.blocked_kinds.get(primary_id, [])
        detail = {"identifier": sorted(kinds)[-1]} if kinds else None
        events.append(history_event("split", primary_id, [primary_id, *others], now, plan.primary_id, detail))
    db.run_many("insert_history_event", events)
