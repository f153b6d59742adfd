"""What any sequential order of identify requests guarantees about the Contact table.

    violations = check_invariants(rows, requests_sent)      # stored state
    violations += check_answers(rows, exchanges)             # what clients were told
    assert not violations, "\\n".join(violations)

Plain functions over plain data, so the concurrency tests and the benchmark
(bench/) judge a final state the same way. `rows` are Contact rows as dicts
(`id`, `email`, `phoneNumber`, `linkedId`, `linkPrecedence`, `createdAt`, and
optionally `deletedAt`; rows with `deletedAt` set are ignored, as the service
ignores them). `createdAt` values only need to sort correctly among themselves
(datetimes, or SQLite's fixed-width text). A request is an `(email, phone)`
pair or a mapping with "email"/"phoneNumber", holding the canonical values the
service stores (None when absent). Pass every request the service applied, i.e.
answered 200, and nothing else; seed rows count as requests too.

Merge protection (SPEC, "Merge protection"): `blocked(kind, value)` says which canonical
values are blocked (kind "email" or "phone"; None: nothing is): a blocked identifier in a
request is treated as absent, a blocked value connects no rows, and no row carries one.
A request given as a mapping may carry the answer's "ignored" list ([{"field", "reason"}]):
a field ignored for the "limit" was not applied, so it is left out of the request too.
`limit` (FLUXKART_MAX_CUSTOMER_IDENTIFIERS; None: no limit) is checked both ways: no
customer holds more distinct identifiers than the limit, and a refusal was needed (the
customers the refused identifier would have joined hold more than the limit in the final
state; customers only grow, so they did when it was refused too).

Each violation is one human-readable line starting with its kind in brackets,
e.g. "[chain] ..."; `violation_kinds` counts them.

What sequential execution guarantees (SPEC, "POST /identify" and "Concurrency"),
and therefore what is checked:

- every customer has exactly one primary, it is the customer's oldest row by
  (createdAt, id), its linkedId is NULL, and every other row is a secondary whose
  linkedId is that primary's id (no chains). A customer is a connected component
  of live rows joined by a shared email or phone AND by linkedId: sharing alone
  is not enough, because a request whose identifiers are both known merges two
  customers without inserting a row ((a, 1), (b, 2), then (a, 2) leaves rows
  (a, 1) and (b, 2) that share nothing but the link);
- every identifier sent is stored, and the components are exactly those the
  requests form (union-find over each request's email and phone): nothing is
  merged that no chain of requests links, nothing linked is left apart;
- every row carries exactly the identifiers of some request (rows are only ever
  inserted with a request's (email, phone));
- no redundant rows: a request inserts a row only when one of its identifiers is
  stored nowhere yet (if either identifier were stored, its customer would be part
  of the merge and the identifier "known"), so every row, in (createdAt, id)
  order, carries an identifier that no older row carries. In particular no two
  live rows have the same (email, phoneNumber).

What it does NOT assert, because sequential execution does not fix it: which
request created which row, how many rows a component has beyond the bound
above, or the ids and timestamps themselves.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Identifier = tuple[str, str]  # ("email", value) or ("phone", value)
Node = tuple[str, Any]  # an Identifier, or ("row", id)
Request = tuple[str | None, str | None] | Mapping[str, Any]
Blocked = Callable[[str, str], bool]  # (kind "email" | "phone", canonical value) -> blocked
FIELDS = {"email": "email", "phoneNumber": "phone"}  # an answer's field -> the identifier's kind


def nothing_blocked(kind: str, value: str) -> bool:
    return False


class UnionFind:
    """Disjoint sets of identifiers and rows, with path halving."""

    def __init__(self) -> None:
        self.parent: dict[Node, Node] = {}

    def add(self, item: Node) -> None:
        self.parent.setdefault(item, item)

    def find(self, item: Node) -> Node:
        self.add(item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: Node, b: Node) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def request_pair(request: Request, blocked: Blocked = nothing_blocked) -> tuple[str | None, str | None]:
    """(email, phone) as applied, from a pair or a {"email", "phoneNumber"[, "ignored"]} mapping:
    without blocked identifiers and without the fields its answer says the limit left out."""
    if isinstance(request, Mapping):
        email, phone = request.get("email"), request.get("phoneNumber")
        left_out = {
            FIELDS[item["field"]] for item in request.get("ignored") or [] if item["reason"] == "limit"
        }
    else:
        email, phone = request
        left_out = set()
    if email is not None and ("email" in left_out or blocked("email", email)):
        email = None
    if phone is not None and ("phone" in left_out or blocked("phone", phone)):
        phone = None
    return email, phone


def refused_identifiers(request: Request, blocked: Blocked = nothing_blocked) -> list[Identifier]:
    """The request's identifiers its answer says the limit left out (blocked ones never count)."""
    if not isinstance(request, Mapping):
        return []
    refused = []
    for item in request.get("ignored") or []:
        field = item["field"]
        value = request.get(field)
        if item["reason"] == "limit" and value is not None and not blocked(FIELDS[field], value):
            refused.append((FIELDS[field], value))
    return refused


def identifiers(email: str | None, phone: str | None, blocked: Blocked = nothing_blocked) -> list[Identifier]:
    """The identifiers (kind, value) of an email and a phone, blocked values left out."""
    found: list[Identifier] = []
    if email is not None and not blocked("email", email):
        found.append(("email", email))
    if phone is not None and not blocked("phone", phone):
        found.append(("phone", phone))
    return found


def show(identifier: Identifier) -> str:
    return f"{identifier[0]} {identifier[1]!r}"


def describe(row: Mapping[str, Any]) -> str:
    return (
        f"row {row['id']} ({row['email']!r}, {row['phoneNumber']!r}, "
        f"{row['linkPrecedence']}, linkedId={row['linkedId']})"
    )


def oldest_first(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(rows, key=lambda row: (row["createdAt"], row["id"]))


def live_rows(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [row for row in rows if row.get("deletedAt") is None]


def components(
    rows: list[Mapping[str, Any]], blocked: Blocked = nothing_blocked
) -> tuple[UnionFind, dict[Node, list[Mapping[str, Any]]]]:
    """The customers: union-find over identifiers and rows, and each customer's rows by root.

    A row is joined to its unblocked identifiers and to the live row its linkedId names.
    """
    uf = UnionFind()
    live = {row["id"] for row in rows}
    for row in rows:
        node = ("row", row["id"])
        uf.add(node)
        for identifier in identifiers(row["email"], row["phoneNumber"], blocked):
            uf.union(node, identifier)
        if row["linkedId"] is not None and row["linkedId"] in live:
            uf.union(node, ("row", row["linkedId"]))
    groups: dict[Node, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[uf.find(("row", row["id"]))].append(row)
    return uf, groups


def check_structure(group: list[Mapping[str, Any]], by_id: dict[Any, Mapping[str, Any]]) -> list[str]:
    """One primary, the oldest row; every other row a secondary linked straight to a primary.

    Together: exactly one primary, the oldest, and everything else pointing at it.
    Each fault is reported once, at its cause: with two primaries, rows linked to
    either are not reported again.
    """
    violations = []
    ordered = oldest_first(group)
    oldest = ordered[0]
    primaries = [row for row in ordered if row["linkPrecedence"] == "primary"]
    names = ", ".join(str(row["id"]) for row in ordered)
    if not primaries:
        violations.append(f"[no-primary] customer of rows {names} has no primary")
    if len(primaries) > 1:
        ids = ", ".join(str(row["id"]) for row in primaries)
        violations.append(f"[several-primaries] customer of rows {names} has primaries {ids}")
    if primaries and oldest["linkPrecedence"] != "primary":
        violations.append(
            f"[primary-not-oldest] customer of rows {names}: its oldest row {oldest['id']} is not its primary"
        )
    for row in ordered:
        precedence, linked = row["linkPrecedence"], row["linkedId"]
        if precedence == "primary":
            if linked is not None:
                violations.append(f"[primary-linked] {describe(row)}: a primary must have linkedId NULL")
            continue
        if precedence != "secondary":
            violations.append(f"[bad-precedence] {describe(row)}")
            continue
        # A link to a primary of its own customer is right (several primaries are reported above).
        target = by_id.get(linked)
        if target is None:
            violations.append(f"[wrong-link] {describe(row)} points at {linked}, which is no live row")
        elif target["linkPrecedence"] != "primary":
            violations.append(f"[chain] {describe(row)} points at secondary {linked}, not at the primary")
    return violations


def check_invariants(
    rows: Iterable[Mapping[str, Any]],
    requests_sent: Iterable[Request],
    blocked: Blocked | None = None,
    limit: int | None = None,
) -> list[str]:
    """Every way the stored rows differ from what some sequential order of the requests produces
    (with merge protection: `blocked` values and the identifier `limit`, module docstring)."""
    blocked = blocked or nothing_blocked
    rows = live_rows(rows)
    sent_list = list(requests_sent)
    requests = [request_pair(request, blocked) for request in sent_list]
    requests = [pair for pair in requests if pair != (None, None)]
    violations: list[str] = []
    by_id = {row["id"]: row for row in rows}

    for row in rows:
        if row["email"] is None and row["phoneNumber"] is None:
            violations.append(f"[no-identifier] {describe(row)} has neither email nor phone")
        for kind, value in (("email", row["email"]), ("phone", row["phoneNumber"])):
            if value is not None and blocked(kind, value):
                violations.append(f"[blocked-stored] {describe(row)} stores the blocked {kind} {value!r}")

    stored, groups = components(rows, blocked)
    for group in groups.values():
        violations.extend(check_structure(group, by_id))
    if limit is not None:
        violations.extend(check_limit(stored, groups, sent_list, blocked, limit))

    # Identifiers: all stored, and grouped exactly as the requests group them.
    sent = UnionFind()
    for email, phone in requests:
        ids = identifiers(email, phone)
        for identifier in ids:
            sent.add(identifier)
        if len(ids) == 2:
            sent.union(ids[0], ids[1])
    stored_ids = {node for node in stored.parent if node[0] != "row"}
    sent_ids: list[Identifier] = sorted(sent.parent)
    for identifier in sent_ids:
        if identifier not in stored_ids:
            violations.append(f"[lost-identifier] {show(identifier)} was sent but no live row carries it")
    stored_roots: dict[Node, set[Node]] = defaultdict(set)  # request component -> stored ones
    sent_roots: dict[Node, set[Node]] = defaultdict(set)  # stored component -> request ones
    members: dict[Node, list[Identifier]] = defaultdict(list)
    for identifier in sent_ids:
        if identifier in stored_ids:
            stored_roots[sent.find(identifier)].add(stored.find(identifier))
            sent_roots[stored.find(identifier)].add(sent.find(identifier))
            members[sent.find(identifier)].append(identifier)
    for root, stored_set in stored_roots.items():
        if len(stored_set) > 1:
            listed = ", ".join(show(identifier) for identifier in members[root])
            violations.append(
                f"[split] {listed} are linked by the requests but stored as {len(stored_set)} customers"
            )
    for root, sent_set in sent_roots.items():
        if len(sent_set) > 1:
            row_ids = ", ".join(str(row["id"]) for row in oldest_first(groups[root]))
            violations.append(
                f"[over-merged] customer of rows {row_ids} joins {len(sent_set)} groups of "
                "identifiers that no chain of requests links"
            )

    # Rows: each is some request's pair and brings an identifier no older row has.
    pairs = set(requests)
    seen: set[Identifier] = set()
    first_with_pair: dict[tuple[Any, Any], Mapping[str, Any]] = {}
    for row in oldest_first(rows):
        pair = (row["email"], row["phoneNumber"])
        ids = identifiers(*pair, blocked)
        if pair not in pairs:
            violations.append(f"[foreign-row] {describe(row)} does not carry any request's (email, phone)")
        if pair in first_with_pair:
            violations.append(
                f"[duplicate] {describe(row)} repeats the (email, phone) of row {first_with_pair[pair]['id']}"
            )
        elif ids and all(identifier in seen for identifier in ids):
            violations.append(
                f"[redundant] {describe(row)} brings nothing new: older rows already carry its identifiers"
            )
        first_with_pair.setdefault(pair, row)
        seen.update(ids)
    return violations


def check_limit(
    stored: UnionFind,
    groups: dict[Node, list[Mapping[str, Any]]],
    requests_sent: list[Request],
    blocked: Blocked,
    limit: int,
) -> list[str]:
    """No customer holds more than `limit` distinct identifiers, and every refusal was needed:
    the final customers of the request's applied identifiers and of the refused one hold more
    than `limit` together (they only grew since the refusal, so they did then too)."""
    violations = []
    held: dict[Node, set[Identifier]] = {}
    for root, group in groups.items():
        held[root] = {i for row in group for i in identifiers(row["email"], row["phoneNumber"], blocked)}
        if len(held[root]) > limit:
            names = ", ".join(str(row["id"]) for row in oldest_first(group)[:10])
            violations.append(
                f"[past-limit] customer of rows {names}... holds {len(held[root])} identifiers, "
                f"more than the limit of {limit}"
            )
    for request in requests_sent:
        refused = refused_identifiers(request, blocked)
        if not refused:
            continue
        joined: set[Identifier] = set()
        for identifier in [*identifiers(*request_pair(request, blocked)), *refused]:
            if identifier in stored.parent:
                joined |= held.get(stored.find(identifier), set())
            joined.add(identifier)
        if len(joined) <= limit:
            email, phone = request_pair(request)
            violations.append(
                f"[needless-refusal] the answer to ({email!r}, {phone!r}) left out "
                f"{', '.join(show(i) for i in refused)}, but with it the customer holds "
                f"{len(joined)} identifiers, within the limit of {limit}"
            )
    return violations


def check_answer_contents(
    label: str, contact: Mapping[str, Any], primary: Mapping[str, Any], listed_rows: list[Mapping[str, Any]]
) -> list[str]:
    """An answer's emails, phone numbers and secondaries are exactly those of the rows it lists, in order.

    SPEC "POST /identify" 4: emails and phoneNumbers are distinct, the primary's
    own value first, the rest in the order of the rows that carry them, oldest
    first; secondaryContactIds are the secondaries, oldest first. A row's
    identifiers never change once written, so the rows an answer listed still
    carry what they carried when it was given.
    """
    violations = []
    secondaries = oldest_first(row for row in listed_rows if row["id"] != primary["id"])
    ordered = [primary, *secondaries]
    for field, column in (("emails", "email"), ("phoneNumbers", "phoneNumber")):
        values = list(contact.get(field, []))
        expected = list(dict.fromkeys(row[column] for row in ordered if row[column] is not None))
        if len(set(values)) != len(values):
            violations.append(f"[answer-duplicate] {label} lists a value of {field} twice: {values}")
        if set(values) != set(expected):
            violations.append(
                f"[answer-contents] {label}: {field} {values} are not those of the rows it lists, {expected}"
            )
        elif list(dict.fromkeys(values)) != expected:
            violations.append(f"[answer-order] {label}: {field} {values}, not in the SPEC's order {expected}")
    if list(contact.get("secondaryContactIds", [])) != [row["id"] for row in secondaries]:
        violations.append(f"[answer-order] {label}: secondaryContactIds are not oldest first")
    return violations


def check_answers(
    rows: Iterable[Mapping[str, Any]],
    exchanges: Iterable[tuple[Request, Mapping[str, Any]]],
    blocked: Blocked | None = None,
) -> list[str]:
    """Every 200 answer names rows of the customer its request belongs to (in the final state).

    `exchanges` are (request, answer) with the answer's "contact" object. Customers
    only ever grow, so each answer's primary and secondaries must lie in the final
    component of the request's identifiers, its primary must be the oldest row it
    lists, its emails and phone numbers must include the request's, and they must
    be exactly those of the rows it lists, distinct and in the SPEC's order
    (check_answer_contents).
    """
    blocked = blocked or nothing_blocked
    rows = live_rows(rows)
    by_id = {row["id"]: row for row in rows}
    stored, _ = components(rows, blocked)
    violations: list[str] = []
    for request, contact in exchanges:
        email, phone = request_pair(request, blocked)
        ids = [identifier for identifier in identifiers(email, phone) if identifier in stored.parent]
        label = f"answer to ({email!r}, {phone!r})"
        if not ids:
            violations.append(f"[answer-unknown-customer] {label}: no live row carries its identifiers")
            continue
        root = stored.find(ids[0])
        primary_id = contact.get("primaryContactId")
        if contact.get("primaryContatctId") != primary_id:
            violations.append(
                f"[answer-inconsistent] {label}: primaryContatctId differs from primaryContactId"
            )
        listed = [primary_id, *contact.get("secondaryContactIds", [])]
        for row_id in listed:
            row = by_id.get(row_id)
            if row is None:
                violations.append(f"[answer-wrong-customer] {label} names {row_id}, which is no live row")
            elif stored.find(("row", row_id)) != root:
                violations.append(
                    f"[answer-wrong-customer] {label} names {describe(row)} of another customer"
                )
        listed_rows = [by_id[row_id] for row_id in listed if row_id in by_id]
        if listed_rows and primary_id in by_id and oldest_first(listed_rows)[0]["id"] != primary_id:
            violations.append(
                f"[answer-primary-not-oldest] {label}: primary {primary_id} is not its oldest row"
            )
        if len(set(listed)) != len(listed):
            violations.append(f"[answer-inconsistent] {label} lists a contact id twice")
        if len(listed_rows) == len(listed) and primary_id in by_id:
            violations.extend(check_answer_contents(label, contact, by_id[primary_id], listed_rows))
        if email is not None and email not in contact.get("emails", []):
            violations.append(f"[answer-missing-identifier] {label} does not list its email")
        if phone is not None and phone not in contact.get("phoneNumbers", []):
            violations.append(f"[answer-missing-identifier] {label} does not list its phone number")
        answered: list[Identifier] = [("email", value) for value in contact.get("emails", [])]
        answered += [("phone", value) for value in contact.get("phoneNumbers", [])]
        for identifier in answered:
            if identifier not in stored.parent or stored.find(identifier) != root:
                violations.append(
                    f"[answer-wrong-customer] {label} lists {show(identifier)} of another customer"
                )
    return violations


KIND = re.compile(r"^\[([\w-]+)\]")


def violation_kinds(violations: Iterable[str]) -> Counter[str]:
    """How many violations of each kind, e.g. Counter({"duplicate": 3, "chain": 1})."""
    return Counter(match.group(1) if (match := KIND.match(v)) else "other" for v in violations)
