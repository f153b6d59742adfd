"""A customer as the SPEC defines it: a connected component of live rows, two rows being
connected when they share an email or a phone number that is not blocked, or one links to
the other (SPEC, "POST /identify"; "Merge protection").

`connected_rows` reads components from the table, bounded: a customer past the limit (more
identifiers than FLUXKART_MAX_CUSTOMER_IDENTIFIERS, or more rows than Protection.max_rows)
is read only that far and marked. `CustomerRows` holds rows in memory as components
(union-find), for the plan and for the import.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from identity.database import Database, Row
from identity.protection import UNPROTECTED, Protection


def oldest_first(rows: Iterable[Row]) -> list[Row]:
    """Rows by (createdAt, id): "oldest" never means id alone (SPEC, "Data")."""
    return sorted(rows, key=lambda row: (row["createdAt"], row["id"]))


class CustomerRows:
    """Rows in memory, grouped into customers (connected components) as they are added.

    Union-find over row ids: a row joins the customers of the rows that share one of its
    unblocked identifiers and of the rows it links to or that link to it. A customer can
    be marked past the limit (its rows are a bounded part of it); `component(email,
    phone)` answers the rows of the customers carrying those identifiers.
    """

    def __init__(
        self, protection: Protection = UNPROTECTED, rows: Iterable[Row] = (), past: Iterable[int] = ()
    ):
        self.protection = protection
        self.rows: dict[int, Row] = {}
        self.parent: dict[int, int] = {}
        self.members: dict[int, list[int]] = {}
        self.identifiers: dict[int, set[tuple[str, str]]] = {}
        self.past: set[int] = set()  # roots of the customers past the limit
        self.owner: dict[tuple[str, str], int] = {}  # identifier -> a row carrying it
        self.children: dict[int, list[int]] = defaultdict(list)  # id -> rows linking to it
        for row in rows:
            self.add(row)
        for row_id in past:
            if row_id in self.rows:
                self.past.add(self.root(row_id))

    def root(self, row_id: int) -> int:
        """The id that stands for the row's customer."""
        parent = self.parent
        while parent[row_id] != row_id:
            parent[row_id] = parent[parent[row_id]]
            row_id = parent[row_id]
        return row_id

    def union(self, a: int, b: int) -> None:
        """Make the customers of rows a and b one."""
        a, b = self.root(a), self.root(b)
        if a == b:
            return
        if len(self.members[a]) < len(self.members[b]):
            a, b = b, a
        self.parent[b] = a
        self.members[a] += self.members.pop(b)
        self.identifiers[a] |= self.identifiers.pop(b)
        if b in self.past:
            self.past.discard(b)
            self.past.add(a)

    def add(self, row: Row) -> None:
        """Add a row (or replace one with the same id: its links and identifiers only ever add)."""
        row_id = row["id"]
        known = row_id in self.rows
        self.rows[row_id] = row
        if not known:
            self.parent[row_id] = row_id
            self.members[row_id] = [row_id]
            self.identifiers[row_id] = set()
            for child in self.children.pop(row_id, []):
                self.union(child, row_id)
        for identifier in self.protection.identifiers(row):
            self.identifiers[self.root(row_id)].add(identifier)
            owner = self.owner.setdefault(identifier, row_id)
            self.union(owner, row_id)
        linked = row["linkedId"]
        if linked is not None:
            if linked in self.rows:
                self.union(linked, row_id)
            else:
                self.children[linked].append(row_id)

    def customer_of(self, row_id: int) -> list[Row]:
        """The rows of the row's customer, in the order they were added."""
        return [self.rows[i] for i in self.members[self.root(row_id)]]

    def roots_of(self, email: str | None, phone: str | None) -> set[int]:
        """The customers (roots) carrying this email or phone; blocked values carry none."""
        roots = set()
        for identifier in (("email", email), ("phone", phone)):
            if identifier[1] is not None and identifier in self.owner:
                roots.add(self.root(self.owner[identifier]))
        return roots

    def component(self, email: str | None, phone: str | None) -> list[Row]:
        """Every row connected to the request's identifiers: the union of their customers."""
        return [self.rows[i] for root in self.roots_of(email, phone) for i in self.members[root]]

    def is_past_limit(self, row_id: int) -> bool:
        """True when the row's customer is past the limit (only part of it is known)."""
        return self.root(row_id) in self.past

    def check_limits(self) -> None:
        """Mark every customer past the limit: more identifiers or rows than Protection allows."""
        limit, max_rows = self.protection.max_identifiers, self.protection.max_rows
        for root, members in self.members.items():
            if len(members) > max_rows or len(self.identifiers[root]) > limit:
                self.past.add(root)

    def past_limit_ids(self) -> set[int]:
        """The ids of every row whose customer is past the limit."""
        return {i for root in self.past for i in self.members[root]}


class Component(dict[int, Row]):
    """Live rows read by connected_rows, by id. `past_limit`: the ids of the rows whose customer
    is past the limit, of which only a bounded part was read (never locked, never written)."""

    def __init__(self, rows: dict[int, Row] | None = None, past_limit: Iterable[int] = ()):
        super().__init__(rows or {})
        self.past_limit = set(past_limit)

    @property
    def complete(self) -> bool:
        """True when every customer found was read whole."""
        return not self.past_limit


class Exploration:
    """The walk connected_rows makes, one step at a time: `next_step` says what to read next
    (select_connected's parameters, None when done), `take` adds what that step found. A
    caller may send a step early, beside another statement, and hand its rows to `take`."""

    def __init__(
        self,
        emails: set[str],
        phones: set[str],
        known: dict[int, Row] | None = None,
        ids: Iterable[int] = (),
        protection: Protection = UNPROTECTED,
    ):
        self.protection = protection
        self.graph = CustomerRows(protection, (known or {}).values())
        blocked = protection.blocked
        self.new = list(self.graph.rows.values())
        self.emails = {e for e in emails if not blocked.blocks("email", e)}
        self.phones = {p for p in phones if not blocked.blocks("phone", p)}
        self.searched: set[tuple[str, str]] = set()
        self.parents = set(ids)
        self.step: dict[str, Any] | None = None

    def next_step(self) -> dict[str, Any] | None:
        """select_connected's parameters for the next step from what is new, or None when
        nothing is left to follow."""
        graph = self.graph
        frontier = [row for row in self.new if not graph.is_past_limit(row["id"])]
        for row in frontier:
            for kind, value in self.protection.identifiers(row):
                (self.emails if kind == "email" else self.phones).add(value)
        emails = {e for e in self.emails if ("email", e) not in self.searched}
        phones = {p for p in self.phones if ("phone", p) not in self.searched}
        parents = self.parents | {row["linkedId"] for row in frontier if row["linkedId"] is not None}
        parents -= graph.rows.keys()
        children = {row["id"] for row in frontier}
        self.emails, self.phones, self.parents, self.new = emails, phones, parents, []
        if not (emails or phones or parents or children):
            return None
        # A bound per step that no customer within the limit reaches.
        limit = (self.protection.max_rows + 1) * (len(emails) + len(phones) + len(parents) + len(children))
        self.step = {
            "emails": sorted(emails),
            "phones": sorted(phones),
            "parents": sorted(parents),
            "children": sorted(children),
            "known": sorted(graph.rows),  # found before: only what is new comes back
            "limit": min(limit, 2**31 - 1),
        }
        return self.step

    def take(self, found: list[Row]) -> None:
        """Add the rows the last step read; a step cut short by its limit marks what it
        reached past the limit."""
        assert self.step is not None
        graph = self.graph
        self.searched |= {("email", e) for e in self.emails} | {("phone", p) for p in self.phones}
        self.emails, self.phones, self.parents = set(), set(), set()
        found_by_id = {row["id"]: row for row in found}  # a row found twice comes once
        self.new = [row for row in found_by_id.values() if row["id"] not in graph.rows]
        for row in self.new:
            graph.add(row)
        if len(found) >= self.step["limit"]:  # cut short: whatever it reached is too large to follow
            graph.past |= {graph.root(row["id"]) for row in self.new}
        graph.check_limits()

    def component(self) -> Component:
        """The rows found so far."""
        return Component(self.graph.rows, self.graph.past_limit_ids())


def connected_rows(
    db: Database,
    emails: set[str],
    phones: set[str],
    known: dict[int, Row] | None = None,
    ids: Iterable[int] = (),
    protection: Protection = UNPROTECTED,
    answered: tuple[dict[str, Any], list[Row]] | None = None,
) -> Component:
    """Every live row connected to these identifiers, to the `known` rows or to the rows `ids`.

    Follows shared (unblocked) emails and phone numbers and links, one statement per step
    (`select_connected`), until a step finds nothing new, reading without locks. A customer
    that turns out past the limit is followed no further: the answer holds a bounded part of
    it, marked (Component.past_limit), and a step never reads more than max_rows rows per
    value it looks for, so the work is bounded by the limit whatever the table holds (SPEC,
    "Merge protection", "Bounded cost"). `answered`: a first step already sent (its
    parameters and rows); used only when the first step is exactly that one.
    """
    walk = Exploration(emails, phones, known, ids, protection)
    while (step := walk.next_step()) is not None:
        if answered is not None and answered[0] == step:
            walk.take(answered[1])
        else:
            walk.take(db.all("select_connected", **step))
        answered = None
    return walk.component()


def first_step(
    emails: set[str],
    phones: set[str],
    known: dict[int, Row],
    ids: Iterable[int] = (),
    protection: Protection = UNPROTECTED,
) -> dict[str, Any] | None:
    """connected_rows' first step from these rows, identifiers and ids (None when there is
    none), for a caller that sends it early, beside another statement (merge.lock_customer)."""
    return Exploration(emails, phones, known, ids, protection).next_step()
