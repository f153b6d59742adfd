"""What the console's merge protection pages read and change (docs/merge-protection.md): the
refused links, the customers past the limit, and the blocked values with a preview of what
blocking one would split. Every read is one named statement with a bounded answer; the views
that render them are in identity/console/__init__.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from identity.database import Database, Row, utcnow
from identity.errors import ApiError
from identity.normalize import normalize_email, normalize_phone
from identity.pool import app_state
from identity.protection import DEFAULT_BLOCKED, FORMS, KINDS, compile_pattern
from identity.protection_in_force import current_protection

# Rows per page of the operator pages, and how many customers a block preview names.
OPERATOR_PAGE = 50
PREVIEW_CUSTOMERS = 100
KIND_NAMES = {"email": "email", "phone": "phone number"}


def refused_events(db: Database, before: int, limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """The latest `refused` history events with an id below `before` (0: the latest), newest
    first, and the cursor of the next page (None on the last). Ids and kinds only."""
    rows = db.all("select_refused_events", before=before or 2**63 - 1, limit=limit + 1)
    events = []
    for row in rows[:limit]:
        detail = json.loads(row["detail"]) if row["detail"] else {}
        events.append(
            {
                "id": row["id"],
                "at": row["createdAt"],
                "requestId": row["requestId"],
                "customerId": row["customerId"],
                "contactIds": json.loads(row["contactIds"]),
                "identifier": detail.get("identifier"),
                "reason": detail.get("reason"),
                "customerIds": detail.get("customerIds", []),
            }
        )
    return events, (events[-1]["id"] if len(rows) > limit else None)


def customers_past_limit(db: Database, after: int, limit: int) -> tuple[list[Row], int | None, Any]:
    """Customers (as stored: grouped by primary id) holding more identifiers than the limit or
    more rows than Protection.max_rows, by primary id above `after`; the next cursor; the
    protection in force. Scans the table: an operator's page, paged and bounded."""
    protection = current_protection(db)
    rows = db.all(
        "select_customers_past_limit",
        after=after,
        max_identifiers=protection.max_identifiers,
        max_rows=protection.max_rows,
        limit=limit + 1,
    )
    page = rows[:limit]
    return page, (page[-1]["customerId"] if len(rows) > limit else None), protection


@dataclass
class BlockRule:
    """One blocked value or pattern as the form gave it, checked and in canonical form."""

    kind: str  # "email" or "phone"
    form: str  # "value" or "pattern"
    text: str


def listed_rule(kind: str, form: str, text: str) -> BlockRule:
    """A rule as the list shows it (to remove it exactly as stored); ApiError 400 for an
    unknown kind or form."""
    if kind not in KINDS:
        raise ApiError(400, "invalid_parameter", "Choose whether the value is an email or a phone number.")
    if form not in FORMS:
        raise ApiError(400, "invalid_parameter", "Choose a single value or a pattern.")
    return BlockRule(kind, form, text)


def block_rule(kind: str, form: str, text: str, region: str) -> BlockRule:
    """A rule from the form's fields: a value normalized as identify normalizes it (so it
    matches what is stored), a pattern compiled once to check it. ApiError 400 otherwise."""
    listed_rule(kind, form, text)
    text = text.strip()
    if not text:
        raise ApiError(400, "missing_identifier", f"Type the {KIND_NAMES[kind]} or the pattern to block.")
    if form == "pattern":
        compile_pattern(text)
        return BlockRule(kind, form, text)
    canonical = (
        normalize_email(text, "the email")
        if kind == "email"
        else normalize_phone(text, region, "the phone number")
    )
    if canonical is None:
        raise ApiError(400, "missing_identifier", f"Type the {KIND_NAMES[kind]} to block.")
    return BlockRule(kind, form, canonical)


def blocked_rules(db: Database) -> list[dict[str, Any]]:
    """The list in force (the shipped defaults that were not removed, and the operators'
    additions), each marked whether it is a shipped default."""
    current_protection(db)  # seeds the defaults into a new database
    defaults = set(DEFAULT_BLOCKED)
    return [
        {**row, "default": (row["kind"], row["form"], row["text"]) in defaults}
        for row in db.all("select_blocked_values")
    ]


def joined_customers(db: Database, rule: BlockRule) -> tuple[list[Row], bool]:
    """What blocking a single value would split: the customers (primary ids, as stored) with
    more than one live row carrying it, most rows first, at most PREVIEW_CUSTOMERS; and
    whether there are more. A pattern is not previewed here (`block add` reports it)."""
    if rule.form != "value":
        return [], False
    statement = "select_customers_sharing_email" if rule.kind == "email" else "select_customers_sharing_phone"
    rows = db.all(statement, value=rule.text, limit=PREVIEW_CUSTOMERS + 1)
    return rows[:PREVIEW_CUSTOMERS], len(rows) > PREVIEW_CUSTOMERS


def is_blocked(db: Database, rule: BlockRule) -> bool:
    """True when the protection in force already blocks this value (or holds this pattern)."""
    protection = current_protection(db)
    if rule.form == "pattern":
        return any(
            (kind, form, text) == (rule.kind, rule.form, rule.text)
            for kind, form, text in protection.blocked.rules
        )
    return protection.blocked.blocks(rule.kind, rule.text)


def forget_cached_protection() -> None:
    """This worker applies a change at once; the others within BLOCKS_TTL_S (protection_in_force.py)."""
    app_state().protection = None


def add_blocked(db: Database, rule: BlockRule) -> None:
    """Store the rule in BlockedValue (insert_blocked_value: adding it again changes nothing)."""
    db.run("insert_blocked_value", kind=rule.kind, form=rule.form, text=rule.text, created_at=utcnow())
    forget_cached_protection()


def remove_blocked(db: Database, rule: BlockRule) -> int:
    """Delete the rule from BlockedValue; how many rows went (0: it was not in the list)."""
    removed = int(
        db.execute("delete_blocked_value", {"kind": rule.kind, "form": rule.form, "text": rule.text}).rowcount
    )
    forget_cached_protection()
    return removed
