"""Erasure (SPEC, "History and erasure"): a whole customer deleted for a privacy request,
under identify's own locks, leaving one erasure record with counts and no identifier."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import prometheus_client

from identity.component import Component, connected_rows, oldest_first
from identity.database import Database, Row, utcnow
from identity.errors import ApiError
from identity.history import current_request_id
from identity.merge import touch_identifiers
from identity.protection import Protection, screen_blocked
from identity.protection_in_force import current_protection
from identity.scrub import scrub_after_erasure
from identity.transactions import in_transaction

ERASURES = prometheus_client.Counter(
    "fluxkart_erasures",
    "customer erasures answered (dry_run=true: previews that changed nothing)",
    ["dry_run"],
)


DELETE_IDENTIFIER = {
    "email": "delete_email_identifier_if_unused",
    "phone": "delete_phone_identifier_if_unused",
}
# How many links a history request follows from the id it was given to its customer.


class DryRunFinished(Exception):
    """Carries a dry-run erasure's answer out of its transaction, which is then rolled back."""

    def __init__(self, result: dict[str, Any]):
        super().__init__("dry run")
        self.result = result


def erase_customer(db: Database, email: str | None, phone: str | None, dry_run: bool) -> dict[str, Any]:
    """Erase a whole customer with hard DELETEs: rows, identifier rows, history; leave one erasure record.

    In: canonical identifiers (at least one). Out: {"dryRun", "primaryContactId",
    "contactIds", "contacts", "identifiers", "historyEvents"}. With dry_run the
    same transaction runs and is rolled back: the answer is what would be
    erased, and nothing changes. ApiError 404 when no customer has these
    identifiers, 409 when the email and the phone belong to two customers.
    Takes identify's locks (SPEC "Concurrency"): a racing identify for the
    customer commits wholly before (and is erased) or after (a new customer).
    """

    db.connect()
    protection = current_protection(db)
    email, phone, _ = screen_blocked(protection, email, phone)

    def work(db: Database) -> dict[str, Any]:
        result = apply_erasure(db, email, phone, dry_run, protection)
        if dry_run:
            raise DryRunFinished(result)
        return result

    try:
        result = in_transaction(db, work, "erasure")
    except DryRunFinished as finished:
        return finished.result
    scrub_after_erasure(db)  # SQLite: no byte of it left in the file or the WAL
    return result


def identifiers_of(rows: Iterable[Row]) -> set[tuple[str, str]]:
    """The (kind, value) identifiers rows carry: ('email', ...) and ('phone', ...)."""
    found = set()
    for row in rows:
        if row["email"] is not None:
            found.add(("email", row["email"]))
        if row["phoneNumber"] is not None:
            found.add(("phone", row["phoneNumber"]))
    return found


def rows_by_key(db: Database, key: tuple[str, Any]) -> list[Row]:
    """Every row (live or deleted) carrying an identifier, or linked to/from an id: ("link", id)."""
    kind, value = key
    if kind == "email":
        return db.all("select_rows_by_email", email=value)
    if kind == "phone":
        return db.all("select_rows_by_phone", phone=value)
    return db.all("select_rows_by_link", id=value)


def keys_of(row: Row, protection: Protection) -> list[tuple[str, Any]]:
    """What connects a row to others: its unblocked identifiers, its id, and the id it links to."""
    keys: list[tuple[str, Any]] = [("link", row["id"])]
    if row["linkedId"] is not None:
        keys.append(("link", row["linkedId"]))
    keys += protection.identifiers(row)
    return keys


def deleted_rows_of(db: Database, live: dict[int, Row], protection: Protection) -> dict[int, Row]:
    """The soft-deleted rows erased with a customer.

    A deleted row is the customer's when a link or a shared identifier
    connects it to the customer's rows, directly or through other deleted
    rows, but never through a link or an identifier that a live row of
    another customer holds (that row's deleted neighbours are its own).
    """
    erased = dict(live)
    queue = [key for row in live.values() for key in keys_of(row, protection)]
    done: set[tuple[str, Any]] = set()
    while queue:
        key = queue.pop()
        if key in done:
            continue
        done.add(key)
        rows = rows_by_key(db, key)
        if any(row["deletedAt"] is None and row["id"] not in live for row in rows):
            continue  # another customer's link or identifier
        for row in rows:
            if row["id"] not in erased:
                erased[row["id"]] = row
                queue.extend(keys_of(row, protection))
    return erased


def customer_to_erase(
    db: Database, email: str | None, phone: str | None, protection: Protection
) -> dict[int, Row]:
    """The live rows of the one customer with this email and/or phone; ApiError 404, or 409
    when they are two customers or the customer is past the limit (SPEC, "Merge protection":
    erasure erases one customer within the limit; a blob must be split first)."""
    by_email = connected_rows(db, {email}, set(), protection=protection) if email is not None else Component()
    by_phone = connected_rows(db, set(), {phone}, protection=protection) if phone is not None else Component()
    for found in (by_email, by_phone):
        if not found.complete:
            raise ApiError(
                409,
                "customer_past_limit",
                f"this customer holds more than {protection.max_identifiers} identifiers or "
                f"{protection.max_rows} rows, so it joins people who are not one person: block the value "
                "that joins them and run repair to split it, then erase the part that is this person "
                "(docs/merge-protection.md)",
            )
    if by_email and by_phone and by_email.keys() != by_phone.keys():
        ids = ", ".join(str(oldest_first(rows.values())[0]["id"]) for rows in (by_email, by_phone))
        raise ApiError(
            409,
            "several_customers",
            f"the email and phone number belong to different customers ({ids}); erase them one at a time",
        )
    customer = by_email or by_phone
    if not customer:
        raise ApiError(404, "not_found", "no customer has this email or phone number")
    return customer


def touch_identifier(db: Database, kind: str, value: str) -> None:
    """Write one identifier row ("email" or "phone") the erased customer carries: an identify
    that would add to or merge the customer writes it too, so the two conflict."""
    db.run("touch_identifier", kind=kind, value=value)


def lock_rows(db: Database, ids: list[int]) -> None:
    """Lock the rows to erase FOR UPDATE, in id order."""
    for contact_id in ids:
        db.one("lock_contact_by_id", id=contact_id)


def apply_erasure(
    db: Database, email: str | None, phone: str | None, dry_run: bool, protection: Protection
) -> dict[str, Any]:
    """The erasure, inside one transaction (erase_customer runs it and retries it).

    Lock protocol, identify's own: 1. touch the request's identifier rows; 2.
    find the customer and touch every identifier it carries, again until a
    fresh read finds none untouched (then no identify can add to or merge the
    customer: each would first touch one of them); 3. lock the rows FOR UPDATE;
    4. delete history, rows and identifier rows; 5. write the erasure record.
    """
    touch_identifiers(db, email, phone)
    touched = {(kind, value) for kind, value in (("email", email), ("phone", phone)) if value is not None}
    while True:
        live = customer_to_erase(db, email, phone, protection)
        rows = deleted_rows_of(db, live, protection)
        untouched = identifiers_of(rows.values()) - touched
        if not untouched:
            break
        for kind, value in sorted(untouched):
            touch_identifier(db, kind, value)
        touched |= untouched
    ids = sorted(rows)
    lock_rows(db, ids)

    # History: events keyed by any of the rows, and by every former customer they name.
    keyed, queue = set(), list(ids)
    while queue:
        customer_id = queue.pop()
        if customer_id in keyed:
            continue
        keyed.add(customer_id)
        queue.extend(
            event["formerCustomerId"]
            for event in db.all("select_history_by_customer", customer_id=customer_id)
            if event["formerCustomerId"] is not None
        )
    history_events = sum(
        db.execute("delete_history_by_customer", {"customer_id": customer_id}).rowcount
        for customer_id in sorted(keyed)
    )
    for contact_id in ids:
        db.run("delete_contact_by_id", id=contact_id)
    identifiers = sum(
        db.execute(DELETE_IDENTIFIER[kind], {"value": value}).rowcount for kind, value in sorted(touched)
    )
    # The oldest live row: the primary, or the one identify would make primary (SPEC).
    primary_id = oldest_first(live.values())[0]["id"]
    result = {
        "dryRun": dry_run,
        "primaryContactId": primary_id,
        "contactIds": ids,
        "contacts": len(ids),
        "identifiers": identifiers,
        "historyEvents": history_events,
    }
    db.run(
        "insert_erasure",
        erased_at=utcnow(),
        request_id=current_request_id(),
        contacts=len(ids),
        identifiers=identifiers,
        history_events=history_events,
        # The feed's `erased` change (docs/changes.md): the primary first, then every id erased.
        customer_ids=json.dumps([primary_id, *(i for i in ids if i != primary_id)], separators=(",", ":")),
    )
    return result
