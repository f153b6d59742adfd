"""`flask --app fluxkart repair` (SPEC, "Commands"): every stored identifier in canonical form,
then every customer made to satisfy the rules, then what a blocked value joined split (SPEC,
"Merge protection"), in short transactions under identify's locks, so it runs while the
service serves. Customers past the limit that nothing splits are listed for an operator."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from identity.canonical import MAX_LISTED, REPAIR_PAGE, NormalizeReport, normalize_stored_identifiers
from identity.database import Database, Row, utcnow
from identity.errors import DatabaseMisconfigured, DatabaseUnavailable, database_problem
from identity.history import record_plan_events, start_command_run
from identity.merge import IdentifyPlan, first_carrying, lock_customer, plan_identify, write_plan
from identity.pool import app_state, get_db
from identity.progress import Progress, peak_rss_mib
from identity.protection import Protection
from identity.protection_in_force import BLOCKS_TTL_S, current_protection
from identity.settings import database_location
from identity.split import (
    MAX_READS,
    CustomerMoved,
    SplitPlan,
    read_customer,
    read_split_plan,
    split_batches,
    write_split,
)
from identity.transactions import in_transaction

log = logging.getLogger("fluxkart")

# Repair looks for customers that break the rules again after each pass (a
# merge can make new ones); this many passes at most.
MAX_REPAIR_PASSES = 5


@dataclass
class RepairReport(NormalizeReport):
    """What repair read, changed and could not change."""

    customers_repaired: int = 0
    rows_repointed: int = 0
    primaries_demoted: int = 0
    merged_by_identifier: int = 0
    primaries_promoted: int = 0
    failed: int = 0  # customers whose transaction ran out of retries
    # Splitting what blocked values joined: customers split, parts that left them, rows moved.
    customers_split: int = 0
    parts_split_off: int = 0
    rows_moved: int = 0
    split_failed: int = 0  # customers that kept changing while repair split them
    kept_links: list[tuple[int, int]] = field(default_factory=list)  # (row, linkedId), first MAX_LISTED
    kept_links_count: int = 0
    # Customers past the limit that no blocked value joins: (primary id, identifiers, rows).
    past_limit: list[tuple[int, int, int]] = field(default_factory=list)
    past_limit_unchecked: int = 0  # more candidates than were read to be listed

    def changed(self) -> bool:
        return bool(self.normalized or self.customers_repaired or self.customers_split)


def unsettled_seeds(db: Database) -> Iterable[tuple[str, Any]]:
    """("id", row id) or ("email"/"phone", value) for every place the rules are broken, page by page.

    Keyset pagination: the table may change while we read; a customer repaired
    meanwhile simply no longer shows up.
    """
    after: Any = 0
    while page := db.all("select_unsettled_contacts", after=after, limit=REPAIR_PAGE):
        after = page[-1]["id"]
        yield from (("id", row["id"]) for row in page)
    for kind, statement in (("email", "select_shared_emails"), ("phone", "select_shared_phones")):
        after = ""
        while page := db.all(statement, after=after, limit=REPAIR_PAGE):
            after = page[-1]["value"]
            yield from ((kind, row["value"]) for row in page)


def repair_customer(
    db: Database, seed: tuple[str, Any], dry_run: bool, protection: Protection
) -> IdentifyPlan:
    """Lock the customer around one seed and make it satisfy the rules (one transaction).

    The customer is the SPEC's, under merge protection: blocked values connect nothing. One
    past the limit is not locked and not changed here (the split, or an operator, deals with it).
    """
    kind, value = seed
    emails = {value} if kind == "email" else set()
    phones = {value} if kind == "phone" else set()
    ids = [value] if kind == "id" else []
    found = lock_customer(db, emails, phones, ids, protection)
    if found.past_limit:
        return IdentifyPlan(rows=[], outcome="unchanged", partial=True)
    rows = list(found.values())
    now = utcnow()
    plan = plan_identify(rows, None, None, now) if rows else IdentifyPlan(rows=[], outcome="unchanged")
    if plan.demoted and kind in ("email", "phone"):
        # The evidence of a merge by a shared value: the oldest row carrying it (SPEC, "Merge
        # protection": every merge, repair's too, records which row it matched by what).
        column = "email" if kind == "email" else "phoneNumber"
        plan.evidence = {kind: first_carrying(rows, column, value)}
    if not dry_run and rows:
        write_plan(db, plan)
        record_plan_events(db, rows, plan, now)
    return plan


def repair_customers(db: Database, report: RepairReport, dry_run: bool, protection: Protection) -> None:
    """Repair's second step: every customer that breaks the rules, one short transaction each."""
    counted: set[int] = set()  # dry run: rows of customers already counted (nothing changes)
    blocked = protection.blocked
    for _ in range(MAX_REPAIR_PASSES):
        before = report.customers_repaired
        progress = Progress("repairing customers", None)
        for seed in unsettled_seeds(db):
            if seed[0] != "id" and blocked.blocks(seed[0], seed[1]):
                continue  # a blocked value joins nobody: rows sharing it are not one customer
            work = partial(repair_customer, seed=seed, dry_run=dry_run, protection=protection)
            try:
                plan = in_transaction(db, work, "repair")
            except DatabaseUnavailable as exc:
                report.failed += 1
                log.error("could not repair the customer of %s %s: %s", seed[0], seed[1], exc)
                continue
            finally:
                progress.advance(1)
            if dry_run:
                # A customer broken in several ways is found from each of them; a real
                # run repairs it at the first, a dry run must count it once.
                if counted & {row["id"] for row in plan.rows}:
                    continue
                counted.update(row["id"] for row in plan.rows)
            if plan.outcome != "unchanged":
                report.customers_repaired += 1
                report.rows_repointed += len(plan.relinked)
                report.primaries_promoted += plan.promoted is not None
                if seed[0] == "id":
                    report.primaries_demoted += len(plan.demoted)
                else:
                    report.merged_by_identifier += len(plan.demoted)
        progress.close()
        if dry_run or report.customers_repaired == before:
            return


def carries_blocked(row: Row, protection: Protection) -> bool:
    """True when the row's email or phone number is blocked."""
    blocked = protection.blocked
    return blocked.blocks("email", row["email"]) or blocked.blocks("phone", row["phoneNumber"])


def wait_for_workers(db: Database) -> None:
    """Wait until every worker applies the newest blocked value (BLOCKS_TTL_S after it was
    added, and a second for clocks): a worker still matching it would join again what the
    split separates."""
    newest = db.one("select_newest_block")
    if newest is None:
        return
    wait = (newest["createdAt"] - utcnow()).total_seconds() + BLOCKS_TTL_S + 1
    if wait > 0:
        click.echo(f"waiting {wait:.1f} s until every worker applies the newest blocked value", err=True)
        time.sleep(min(wait, BLOCKS_TTL_S + 1))


def split_customers(db: Database, report: RepairReport, dry_run: bool, protection: Protection) -> set[int]:
    """Repair's third step: every customer that carries a blocked value, recomputed from the
    evidence that remains (identity/split.py) and split, a batch of parts per transaction.

    Pages through the live rows for those carrying a blocked value; each customer is read
    once. Returns the ids of the rows of the customers split (or that a dry run would split).
    """
    examined: set[int] = set()
    split: set[int] = set()
    progress = Progress("splitting what blocked values joined", None)
    after = 0
    while page := db.all("select_live_page", after=after, limit=REPAIR_PAGE):
        after = page[-1]["id"]
        for row in page:
            if row["id"] not in examined and carries_blocked(row, protection):
                plan = split_customer(db, row["id"], report, dry_run, protection)
                if plan is not None:
                    examined.update(plan.rows)
                    if len(plan.parts) > 1:
                        split.update(plan.rows)
        progress.advance(len(page))
    progress.close()
    return split


def split_customer(
    db: Database, row_id: int, report: RepairReport, dry_run: bool, protection: Protection
) -> SplitPlan | None:
    """Split the customer of one row (a dry run: count what would be split); the plan read first.

    Each batch of parts is its own transaction; when the customer changed since it was read
    (an order, an erasure), it is read again and what is left of it split.
    """
    first: SplitPlan | None = None
    counted = False
    for _ in range(MAX_READS):
        try:
            plan = read_split_plan(db, row_id, protection)
            if plan is None:
                return first
            if first is None:
                first = plan
                report.kept_links_count += len(plan.kept_links)
                report.kept_links += plan.kept_links[: MAX_LISTED - len(report.kept_links)]
            if len(plan.parts) == 1:
                return first
            if dry_run:
                report.customers_split += 1
                report.parts_split_off += len(plan.leaving)
                report.rows_moved += sum(len(part) for part in plan.leaving)
                return first
            for batch in split_batches(plan):
                work = partial(write_batch, plan=plan, parts=batch)
                in_transaction(db, work, "repair")
                if not counted:
                    report.customers_split += 1
                    counted = True
                report.parts_split_off += len(batch)
                report.rows_moved += sum(len(part) for part in batch)
            return first
        except CustomerMoved:
            continue
        except DatabaseUnavailable as exc:
            log.error("could not split the customer of row %s: %s", row_id, exc)
            break
    report.split_failed += 1
    return first


def write_batch(db: Database, plan: SplitPlan, parts: list[list[Row]]) -> None:
    """One transaction of a split (write_split), stamped with its own time."""
    write_split(db, plan, parts, utcnow())


def list_past_limit(db: Database, report: RepairReport, protection: Protection, skip: set[int]) -> None:
    """The customers still past the limit that no blocked value joins (repair cannot split
    them): listed for an operator, each read whole to count its identifiers without blocked
    values. `skip`: rows of customers a dry run would split."""
    candidates = db.all(
        "select_large_customers",
        max_rows=protection.max_rows,
        max_identifiers=protection.max_identifiers,
        limit=10 * MAX_LISTED,
    )
    for candidate in candidates:
        customer_id = candidate["customerId"]
        if customer_id in skip:
            continue
        if len(report.past_limit) >= MAX_LISTED:
            report.past_limit_unchecked += 1
            continue
        rows = read_customer(db, [customer_id], protection).values()
        identifiers = protection.count(rows)
        if identifiers > protection.max_identifiers or len(rows) > protection.max_rows:
            report.past_limit.append((customer_id, identifiers, len(rows)))


@click.command("repair")
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@with_appcontext
def repair_command(dry_run: bool) -> None:
    """Normalize every stored identifier, then make every customer satisfy the rules (SPEC, "Commands").

    Works in short transactions that take identify's locks, so it runs while
    the service serves. Exits 1 when something could not be repaired (invalid
    values are reported and left as they are).
    """
    started = time.monotonic()
    start_command_run()  # the request id of this run's history events
    click.echo(f"repair: {database_location(current_app.config)}")
    db = get_db()
    region = current_app.config["FLUXKART_PHONE_REGION"]
    report = RepairReport()
    try:
        db.connect()
        app_state().protection = None  # the list as it is now, not as this app last read it
        protection = current_protection(db)
        if not dry_run:
            # Until the pass is over, identify must not trust a lock-free read.
            db.run("upsert_service_state", key="consistent", value="0")
        normalize_stored_identifiers(db, region, report, dry_run)
        repair_customers(db, report, dry_run, protection)
        if not dry_run:
            wait_for_workers(db)
        split = split_customers(db, report, dry_run, protection)
        if report.customers_split and not dry_run:
            # A part's own rows may break the rules left as they were (data from elsewhere).
            repair_customers(db, report, dry_run, protection)
        list_past_limit(db, report, protection, split)
        if not dry_run and not report.failed:
            db.run("upsert_service_state", key="phone_region", value=region)
            db.run("upsert_service_state", key="consistent", value="1")
    except (DatabaseUnavailable, DatabaseMisconfigured) as exc:
        # What was repaired is committed; a second run goes on with what is still broken.
        raise click.ClickException(f"repair stopped: {database_problem(exc)}") from exc
    verb = "would be" if dry_run else "were"
    lines = [
        f"rows read: {report.rows_read}",
        f"identifiers that {verb} normalized: {report.normalized} rows",
        f"customers that {verb} repaired: {report.customers_repaired}"
        f" (rows re-pointed {report.rows_repointed}, primaries demoted {report.primaries_demoted},"
        f" merged because they share a canonical identifier {report.merged_by_identifier},"
        f" primaries promoted {report.primaries_promoted})",
        f"invalid values left as they are: {report.invalid_count}",
        *(f"  {line}" for line in report.invalid),
        f"rows with neither identifier (never matched): {report.without_identifier_count}"
        + (f" (ids {', '.join(map(str, report.without_identifier))})" if report.without_identifier else ""),
        f"customers that could not be repaired (retries ran out): {report.failed}",
        f"customers that {verb} split because a blocked value joined them: {report.customers_split}"
        + (
            f" into {report.customers_split + report.parts_split_off} parts ({report.rows_moved} rows"
            " moved to customers of their own, a split event each)"
            if report.customers_split
            else ""
        ),
        *(
            [f"customers that kept changing while split (run repair again): {report.split_failed}"]
            * bool(report.split_failed)
        ),
        f"links kept without recorded evidence (data the service did not write): {report.kept_links_count}",
        *(f"  row {row} -> row {linked}" for row, linked in report.kept_links),
        f"customers past the limit (FLUXKART_MAX_CUSTOMER_IDENTIFIERS={protection.max_identifiers}) that"
        " repair could not split (no blocked value joins them), listed for an operator:"
        f" {len(report.past_limit)}"
        + (f" (and {report.past_limit_unchecked} more not counted)" if report.past_limit_unchecked else ""),
        *(f"  customer {c}: {n} identifiers, {rows} rows" for c, n, rows in report.past_limit),
        f"duration: {time.monotonic() - started:.1f} s; peak memory: {peak_rss_mib():.0f} MiB",
    ]
    if dry_run:
        lines.append(
            "dry run: nothing was changed (merges that only normalization would reveal are not counted)"
        )
    elif not report.changed():
        lines.append("nothing to repair: the table already satisfies the rules")
    click.echo("\n".join(lines))
    if report.failed or report.split_failed or report.invalid_count:
        raise SystemExit(1)
