"""Stored identifiers brought to canonical form: repair's first step and migrate's last
(SPEC, "Commands"), in short transactions under identify's locks."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from identity.database import Database, Row, utcnow
from identity.errors import ApiError
from identity.merge import stored_row_params
from identity.normalize import normalize_email, normalize_phone
from identity.progress import Progress
from identity.transactions import in_transaction

# The table is read a page at a time and changed a few rows at a time, so the
# transactions stay short while the service serves.
REPAIR_PAGE = 1000
REPAIR_BATCH = 200
# At most this many invalid values are listed one by one; the rest are counted.
MAX_LISTED = 50


@dataclass
class NormalizeReport:
    """What normalizing the stored identifiers read, changed and left as it was."""

    rows_read: int = 0
    normalized: int = 0
    invalid: list[str] = field(default_factory=list)  # "row 12: email ..." (the first MAX_LISTED)
    invalid_count: int = 0
    without_identifier: list[int] = field(default_factory=list)  # row ids (the first MAX_LISTED)
    without_identifier_count: int = 0


def canonical_identifiers(row: Row, region: str, report: NormalizeReport) -> tuple[str | None, str | None]:
    """A stored row's identifiers in canonical form; an invalid value is kept as it is and reported."""
    values: list[str | None] = []
    for column, normalize in (("email", normalize_email), ("phoneNumber", normalize_phone)):
        stored = row[column]
        try:
            values.append(normalize(stored) if column == "email" else normalize(stored, region))
        except ApiError as exc:
            values.append(stored)
            report.invalid_count += 1
            if len(report.invalid) < MAX_LISTED:
                report.invalid.append(f"row {row['id']}: {exc.message} (left as it is)")
    email, phone = values
    if email is None and phone is None:
        report.without_identifier_count += 1
        if len(report.without_identifier) < MAX_LISTED:
            report.without_identifier.append(row["id"])
    return email, phone


def store_canonical(db: Database, changes: list[tuple[Row, str | None, str | None]]) -> int:
    """Write canonical identifiers into rows, under identify's locks; returns how many rows changed.

    The rows are locked first, as identify locks a customer's rows, so a
    concurrent order sees each row before or after, never half; then one
    statement touches the new identifiers of every changed row (ContactIdentifier:
    a concurrent order for one of them conflicts, on Galera too). A row changed
    or deleted since it was read is left for the next run.
    """
    locked = {row["id"]: row for row in db.all("lock_contacts", ids=[row["id"] for row, _, _ in changes])}
    now, changed = utcnow(), []
    for row, email, phone in changes:
        current = locked.get(row["id"])
        if current is not None and (current["email"], current["phoneNumber"]) == (
            row["email"],
            row["phoneNumber"],
        ):
            changed.append({**current, "email": email, "phoneNumber": phone, "updatedAt": now})
    db.run_many("store_contact_rows", [stored_row_params(row) for row in changed])  # one statement on MySQL
    if changed:
        db.run("touch_contact_identifiers", ids=[row["id"] for row in changed])
    return len(changed)


def normalize_stored_identifiers(db: Database, region: str, report: NormalizeReport, dry_run: bool) -> None:
    """Repair's first step (also migrate's last): every live row's identifiers in canonical form.

    Reads the table a page at a time (bounded memory), writes in short
    transactions, and fills ContactIdentifier for every identifier it reads.
    """
    progress = Progress("normalizing identifiers", db.one("count_live_contacts")["n"])  # type: ignore[index]
    after = 0
    while page := db.all("select_live_page", after=after, limit=REPAIR_PAGE):
        after = page[-1]["id"]
        report.rows_read += len(page)
        changes = []
        for row in page:
            email, phone = canonical_identifiers(row, region, report)
            if (email, phone) != (row["email"], row["phoneNumber"]):
                changes.append((row, email, phone))
        for start in range(0, len(changes), REPAIR_BATCH):
            batch = changes[start : start + REPAIR_BATCH]
            if dry_run:
                report.normalized += len(batch)
            else:
                report.normalized += in_transaction(db, partial(store_canonical, changes=batch), "repair")
        if not dry_run:
            db.run("fill_identifiers", ids=[row["id"] for row in page])
        progress.advance(len(page))
    progress.close()
