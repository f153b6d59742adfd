"""History (SPEC, "History and erasure"): an append-only record, in ids only, of what every
change did and why, written in the change's own transaction, and read back per customer."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import prometheus_client
from flask import g, has_request_context

from identity.database import Database, Row
from identity.errors import ApiError
from identity.merge import IdentifyPlan, Refusal
from identity.protection_in_force import current_protection

HISTORY_READS = prometheus_client.Counter("fluxkart_history_reads", "customer history pages answered")


# A DATETIME(6) older than any event: the cursor of a history's first page (MySQL's minimum).
HISTORY_START = datetime(1000, 1, 1)


# How many links a history request follows from the id it was given to its customer.
MAX_HOPS = 64

_command_run = {"id": ""}
_command_run_lock = threading.Lock()


def start_command_run(run_id: str | None = None) -> str:
    """Name the unit of work of a CLI command (repair, import); returns the run id recorded in history."""
    with _command_run_lock:
        _command_run["id"] = run_id or f"run-{uuid.uuid4().hex}"
        return _command_run["id"]


def current_request_id() -> str:
    """The id history records for the current unit of work.

    Inside a request, the request's id (X-Request-ID); elsewhere (a CLI
    command), the process's command run id, made on first use.
    """
    if has_request_context() and "request_id" in g:
        return str(g.request_id)
    with _command_run_lock:
        if not _command_run["id"]:
            _command_run["id"] = f"run-{uuid.uuid4().hex}"
        return _command_run["id"]


@dataclass
class IdentifyChange:
    """What one identify transaction changed, in ids: the input of record_identify_events.

    survivor_id: the customer's primary after the change. created: the
    survivor is a row this request inserted (a new customer). inserted_id: a
    secondary this request inserted. demoted: each demoted primary -> the ids
    of its rows that now point at the survivor (itself first). repaired: each
    former primary (None when there was none, e.g. a missing one) -> the ids of
    the rows a heal re-pointed from it to the survivor. evidence: the rows the
    request matched by email and by phone (SPEC, "Merge protection"). refused: the
    identifiers the limit left out.
    """

    survivor_id: int
    created: bool = False
    inserted_id: int | None = None
    demoted: dict[int, list[int]] = field(default_factory=dict)
    repaired: dict[int | None, list[int]] = field(default_factory=dict)
    evidence: dict[str, int | None] = field(default_factory=dict)  # of the merges: matched rows
    refused: list[Refusal] = field(default_factory=list)  # what the identifier limit left out


def history_event(
    kind: str,
    customer_id: int,
    contact_ids: Iterable[int],
    at: datetime,
    former_customer_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """insert_history_event's parameters for one event (kind in EVENT_KINDS). Ids only: `detail`
    holds ids and kinds (a merge's evidence, what a refusal left out), never a value."""
    return {
        "kind": kind,
        "created_at": at,
        "request_id": current_request_id(),
        "customer_id": customer_id,
        "former_customer_id": former_customer_id,
        "contact_ids": json.dumps(list(contact_ids), separators=(",", ":")),
        "detail": json.dumps(detail, separators=(",", ":")) if detail else None,
    }


def record_event(
    db: Database,
    kind: str,
    customer_id: int,
    contact_ids: Iterable[int],
    at: datetime,
    former_customer_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one history event (kind in EVENT_KINDS) in the caller's transaction. Ids only."""
    event = history_event(kind, customer_id, contact_ids, at, former_customer_id, detail)
    db.defer("insert_history_event", **event)  # travels with the next statement, or COMMIT


def record_identify_events(db: Database, change: IdentifyChange, at: datetime) -> None:
    """Record what an identify changed, in its transaction: created | repaired, merged | linked.

    Called by apply_identify only when it wrote something: a request that
    changes nothing records nothing. `at` is the changed rows' updatedAt.
    """
    survivor = change.survivor_id
    if change.created:
        record_event(db, "created", survivor, [survivor], at)
    for former, moved in change.repaired.items():
        record_event(db, "repaired", survivor, moved, at, former)
    for demoted, moved in change.demoted.items():
        record_event(db, "merged", survivor, moved, at, demoted, {"evidence": change.evidence})
    if change.inserted_id is not None:
        record_event(db, "linked", survivor, [change.inserted_id], at)
    for refused in change.refused:
        detail = {"identifier": refused.kind, "reason": "limit", "customerIds": refused.customer_ids}
        record_event(db, "refused", survivor, refused.contact_ids, at, None, detail)


def record_plan_events(db: Database, rows: list[Row], plan: IdentifyPlan, at: datetime) -> None:
    """Record what write_plan just wrote (identify, repair), in the same transaction; nothing if unchanged.

    `rows` are the customer's locked rows before the plan. A demoted primary and
    the rows that pointed at it make one `merged` event; every other re-pointed
    (or promoted) row goes into a `repaired` event per row it pointed at before.
    """
    if plan.outcome == "unchanged" and not plan.refused:
        return
    before = {row["id"]: row for row in rows}
    change = IdentifyChange(plan.rows[0]["id"], evidence=plan.evidence, refused=plan.refused)
    if plan.outcome == "created":
        change.created = True
    elif plan.inserted is not None:
        change.inserted_id = plan.inserted["id"]
    if plan.promoted is not None:
        change.repaired[before[change.survivor_id]["linkedId"]] = [change.survivor_id]
    change.demoted = {primary_id: [primary_id] for primary_id in plan.demoted}
    for row_id in plan.relinked:  # oldest first
        if row_id in change.demoted:
            continue
        former = before[row_id]["linkedId"]
        if former in change.demoted:
            change.demoted[former].append(row_id)
        else:
            change.repaired.setdefault(former, []).append(row_id)
    record_identify_events(db, change, at)


def record_imported(db: Database, customers: dict[int, list[int]], at: datetime) -> None:
    """For the import command: customer id -> the rows a batch added to or re-pointed in it,
    one `imported` event each, in the batch's transaction (one statement on MySQL)."""
    events = [history_event("imported", customer_id, ids, at) for customer_id, ids in customers.items()]
    db.run_many("insert_history_event", events)


def event_to_json(row: Row) -> dict[str, Any]:
    """A history row as the API answers it: ids, kind, time (ISO 8601 UTC) and request id."""
    event: dict[str, Any] = {
        "id": row["id"],
        "kind": row["kind"],
        "at": row["createdAt"].isoformat(timespec="microseconds") + "Z",
        "requestId": row["requestId"],
        "customerId": row["customerId"],
        "contactIds": json.loads(row["contactIds"]),
    }
    if row["kind"] == "merged":
        event["demotedPrimaryId"] = row["formerCustomerId"]
    elif row["kind"] in ("repaired", "split"):
        event["formerPrimaryId"] = row["formerCustomerId"]
    if row.get("detail"):
        event.update(json.loads(row["detail"]))  # ids and kinds: evidence, identifier, reason
    return event


def resolve_customer(db: Database, contact_id: int) -> int:
    """The primary id of the customer a contact id now belongs to; ApiError 404/409.

    A live row leads to its primary. A row that is gone or deleted (a demoted
    and later erased or deleted primary) leads, through the history event that
    moved its rows, to the customer that absorbed it.
    """
    current, seen = contact_id, set()
    for _ in range(MAX_HOPS):
        seen.add(current)
        row = db.one("select_contact_link", id=current)
        if row is not None and row["deletedAt"] is None:
            if row["linkPrecedence"] == "primary":
                return current
            following = row["linkedId"]
        else:
            absorbing = db.one("select_absorbing_event", former_customer_id=current)
            following = absorbing["customerId"] if absorbing else None
        if following is None or following in seen:
            break
        current = following
    if current == contact_id:
        raise ApiError(404, "not_found", f"no customer with id {contact_id}")
    raise ApiError(
        409,
        "inconsistent_customer",
        f"contact {contact_id} leads to no primary; its rows were not written by this service",
    )


def customer_history(db: Database, customer_id: int, after: int, limit: int) -> dict[str, Any]:
    """A customer's events, oldest first by (time, id), including those of customers merged into it.

    In: any id of the customer (a demoted primary's id leads to its survivor),
    the id of the last event already read (0: from the start), a page size.
    Out: {"customerId": the survivor's primary id, "events": [...],
    "nextAfter": the cursor of the next page or None}. ApiError 404 for an
    unknown id or a cursor that names no event, 409 for rows with no primary.
    """
    survivor = resolve_customer(db, customer_id)
    after_at = HISTORY_START
    if after:
        cursor = db.one("select_history_event_by_id", id=after)
        if cursor is None:
            raise ApiError(404, "not_found", f"no history event {after}: give an id from a previous page")
        after_at = cursor["createdAt"]
    max_rows = current_protection(db).max_rows  # a customer past the limit: its first rows' events
    rows = db.all(
        "select_history_page",
        customer_id=survivor,
        after=after,
        after_at=after_at,
        limit=limit + 1,
        max_rows=max_rows,
    )
    page = rows[:limit]
    return {
        "customerId": survivor,
        "events": [event_to_json(row) for row in page],
        "nextAfter": page[-1]["id"] if len(rows) > limit else None,
    }
