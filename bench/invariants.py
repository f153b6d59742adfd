"""Judging the final table: the project's checker (tests/checker.py) and a second, independent one.

`tests/checker.py:check_invariants(rows, requests_sent)` is the project's judge; it is
called with every request the benchmark sent (seed rows count as requests), and its
findings are counted by kind. `linkage_violations` is the benchmark's own, smaller
implementation of the same SPEC invariants, written separately so that a bug in one
judge shows up as a disagreement in the report rather than as a silent pass.

Requests that failed (non-2xx) were rolled back, but the benchmark cannot tell which
ones they were: with failures, "lost identifier" and "split" findings may come from them.
A wrk run stops with requests in flight; those were fully written to the socket and
are processed by the server, so they count as sent.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from bench.workload import Pair


class UnionFind:
    """Disjoint sets over identifiers ("email", value) / ("phone", value)."""

    def __init__(self) -> None:
        self.parent: dict[Hashable, Hashable] = {}

    def find(self, item: Hashable) -> Hashable:
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: Hashable, b: Hashable) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def keys_of(email: str | None, phone: str | None) -> list[str]:
    """A request's or a row's identifiers as 'e:<email>' and 'p:<phone>'."""
    found = []
    if email is not None:
        found.append("e:" + email)
    if phone is not None:
        found.append("p:" + phone)
    return found


def structure_violations(rows: list[Mapping[str, Any]], by_id: dict[int, Mapping[str, Any]]) -> Counter[str]:
    """Primaries unlinked, secondaries straight to a live primary, each primary its customer's oldest."""
    kinds: Counter[str] = Counter()
    members: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["email"] is None and row["phoneNumber"] is None:
            kinds["no-identifier"] += 1
        if row["linkPrecedence"] == "primary":
            if row["linkedId"] is not None:
                kinds["primary-linked"] += 1
            members[row["id"]].append(row)
            continue
        target = by_id.get(row["linkedId"])
        if target is None:
            kinds["dangling-link"] += 1
        elif target["linkPrecedence"] != "primary":
            kinds["chain"] += 1
        else:
            members[target["id"]].append(row)
    for primary_id, group in members.items():
        oldest = min(group, key=lambda r: (r["createdAt"], r["id"]))
        if oldest["id"] != primary_id:
            kinds["primary-not-oldest"] += 1
    return kinds


def linkage_violations(
    rows: Iterable[Mapping[str, Any]], requests: Iterable[Pair], examples: dict[str, list[Any]] | None = None
) -> Counter[str]:
    """SPEC invariants with customers defined by links (primary + rows linked to it); kind -> count.

    `examples`, when given, receives a few offending requests' pairs per kind, so the
    caller can tell where in the run they were sent.
    """
    examples = {} if examples is None else examples
    live = [row for row in rows if row.get("deletedAt") is None]
    by_id = {row["id"]: row for row in live}
    kinds = structure_violations(live, by_id)

    def customer(row: Mapping[str, Any]) -> Any:
        return row["id"] if row["linkPrecedence"] == "primary" else row["linkedId"]

    # Identifiers as "e:..." / "p:..." strings: cheaper to hash than tuples at a million rows.
    owner: dict[str, Any] = {}
    shared: set[str] = set()
    pairs_seen: set[Pair] = set()
    for row in live:
        for identifier in keys_of(row["email"], row["phoneNumber"]):
            if owner.setdefault(identifier, customer(row)) != customer(row):
                shared.add(identifier)
        pair = (row["email"], row["phoneNumber"])
        if pair in pairs_seen:
            kinds["duplicate-row"] += 1
        pairs_seen.add(pair)
    # An identifier stored under two customers: a merge that did not happen.
    kinds["identifier-in-two-customers"] += len(shared)

    sent = UnionFind()
    for email, phone in set(requests):  # each distinct request once: repeats add nothing
        ids = keys_of(email, phone)
        for identifier in ids:
            sent.find(identifier)
        if any(identifier not in owner for identifier in ids):
            examples.setdefault("lost-identifier", []).append((email, phone))
        elif len(ids) == 2 and owner[ids[0]] != owner[ids[1]]:
            kinds["split"] += 1
            examples.setdefault("split", []).append((email, phone))
        if len(ids) == 2:
            sent.union(ids[0], ids[1])
    kinds["lost-identifier"] += sum(1 for identifier in sent.parent if identifier not in owner)
    # A customer holding identifiers that no chain of requests links: an over-merge.
    groups: dict[Any, set[Hashable]] = defaultdict(set)
    for identifier, one in owner.items():
        groups[one].add(sent.find(identifier))
    kinds["over-merged"] += sum(1 for roots in groups.values() if len(roots) > 1)
    return +kinds  # drop zero counts


def project_checker() -> Any:
    """tests/checker.py's check_invariants, or None while it does not exist yet."""
    try:
        from tests.checker import check_invariants
    except ImportError:
        return None
    return check_invariants


def project_violations(rows: Sequence[Mapping[str, Any]], requests: list[Pair]) -> Counter[str] | None:
    """Run tests/checker.py on the table (kind -> count), None when it is absent or incompatible."""
    check = project_checker()
    if check is None:
        return None
    params = list(inspect.signature(check).parameters)
    if params[:2] != ["rows", "requests_sent"]:
        return Counter({f"checker signature not understood: {params}": 1})
    violations = check(rows, requests)
    try:
        from tests.checker import violation_kinds

        return Counter(violation_kinds(violations))
    except ImportError:
        return Counter({"violation": len(violations)})


def judge(rows: Sequence[Mapping[str, Any]], requests: list[Pair]) -> dict[str, Any]:
    """Both judgements of the final table, with their running times."""
    started = time.perf_counter()
    examples: dict[str, list[Any]] = {}
    linkage = linkage_violations(rows, requests, examples)
    linkage_s = time.perf_counter() - started
    started = time.perf_counter()
    project = project_violations(rows, requests)
    project_s = time.perf_counter() - started
    return {
        "rows": len(rows),
        "requests": len(requests),
        "linkage": dict(linkage),
        "linkage_seconds": linkage_s,
        "examples": {kind: pairs[:10] for kind, pairs in examples.items()},
        "project": None if project is None else dict(project),
        "project_seconds": project_s,
    }
