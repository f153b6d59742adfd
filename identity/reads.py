"""Read-only answers: the identify answer's shape, the customer lookup, contact rows, readiness."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from identity.component import Component, connected_rows, oldest_first
from identity.database import Database, Row
from identity.errors import ApiError
from identity.normalize import MAX_CONTACT_ID
from identity.protection import UNPROTECTED, Protection


def customer_answer(
    rows: list[Row],
    ignored: list[tuple[str, str]] | None = None,
    partial: bool = False,
    protection: Protection = UNPROTECTED,
) -> dict[str, Any]:
    """The identify answer for one customer's live rows, in any order (SPEC, "POST /identify" 4).

    The oldest row is the primary: identify makes it so, and the read-only
    lookup answers data it has not repaired yet as identify would leave it.
    Merge protection adds, only when they apply, "ignored" (the request fields left out,
    with the reason: "blocked" or "limit") and "partial" (a customer past the limit,
    answered as far as it was read). A blocked value a row still carries (written before it
    was blocked) identifies nobody, so the answer does not list it.
    """
    blocks = protection.blocked.blocks
    ordered = oldest_first(rows)
    primary = ordered[0]
    answer: dict[str, Any] = {
        "contact": {
            "primaryContactId": primary["id"],
            # The original Bitespeed specification's spelling, kept for its clients.
            "primaryContatctId": primary["id"],
            "emails": list(
                dict.fromkeys(
                    r["email"] for r in ordered if r["email"] is not None and not blocks("email", r["email"])
                )
            ),
            "phoneNumbers": list(
                dict.fromkeys(
                    r["phoneNumber"]
                    for r in ordered
                    if r["phoneNumber"] is not None and not blocks("phone", r["phoneNumber"])
                )
            ),
            "secondaryContactIds": [row["id"] for row in ordered[1:]],
        }
    }
    if ignored:
        answer["ignored"] = [{"field": name, "reason": reason} for name, reason in ignored]
    if partial:
        answer["partial"] = True
    return answer


def lookup_customer(
    db: Database, email: str | None, phone: str | None, protection: Protection = UNPROTECTED
) -> Component:
    """The live rows of the customer owning this email and/or phone, writing nothing (SPEC, "Reads").

    The whole connected component, as identify would see it (data the service
    did not write is answered as identify would repair it); for a customer past the limit,
    the bounded part read (Component.past_limit). The identifiers must not be blocked
    (screen_blocked first). Raises ApiError 404 when no customer has either identifier,
    409 when the two belong to different customers (identify would merge them; a
    read-only lookup must not pretend it did).
    """
    by_email = connected_rows(db, {email}, set(), protection=protection) if email is not None else Component()
    if phone is None or any(row["phoneNumber"] == phone for row in by_email.values()):
        rows = by_email
    else:
        by_phone = connected_rows(db, set(), {phone}, protection=protection)
        if by_email.keys() & by_phone.keys():  # one customer past the limit, read from two ends
            return Component({**by_email, **by_phone}, by_email.past_limit | by_phone.past_limit)
        if by_email and by_phone:
            ids = ", ".join(
                str(oldest_first(rows)[0]["id"]) for rows in (by_email.values(), by_phone.values())
            )
            raise ApiError(
                409,
                "several_customers",
                f"the email and phone number belong to different customers ({ids}); "
                "look them up one at a time",
            )
        rows = by_email or by_phone
    if not rows:
        raise ApiError(404, "not_found", "no customer has this email or phone number")
    return rows


def answer_rows(rows: Component, protection: Protection) -> list[Row]:
    """The rows an answer lists: all of a complete customer; of a customer past the limit, the
    oldest read, as many as the limit (its answer is bounded and says it is partial)."""
    if rows.complete:
        return list(rows.values())
    return oldest_first(rows.values())[: protection.max_identifiers]


def list_contact_rows(
    db: Database, after: int, limit: int, email: str | None, phone: str | None
) -> list[Row]:
    """Up to `limit` live contact rows with id > after, by id; a None identifier filters nothing."""
    return db.all("select_contacts", after=after, limit=limit, email=email, phone=phone)


def contact_by_id(db: Database, contact_id: int) -> Row | None:
    """The live contact row with this id, or None (ids beyond the column's range included)."""
    if contact_id > MAX_CONTACT_ID:
        return None
    return db.one("select_contact_by_id", id=contact_id)


def check_ready(db: Database) -> None:
    """Raise unless the database answers a query (readiness, SPEC "Reads")."""
    db.one("select_one")


def contact_to_json(row: Row) -> dict[str, Any]:
    """A Contact row as JSON: all columns, timestamps ISO 8601 UTC."""

    def stamp(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat(timespec="microseconds") + "Z"

    return {
        "id": row["id"],
        "phoneNumber": row["phoneNumber"],
        "email": row["email"],
        "linkedId": row["linkedId"],
        "linkPrecedence": row["linkPrecedence"],
        "createdAt": stamp(row["createdAt"]),
        "updatedAt": stamp(row["updatedAt"]),
        "deletedAt": stamp(row["deletedAt"]),
    }
