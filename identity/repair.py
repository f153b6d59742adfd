"""`flask --app fluxkart repair` (SPEC, "Commands"): every stored identifier in canonical form,
then every customer made to satisfy the rules, in short transactions under identify's locks,
so it runs while the service serves."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from identity.canonical import REPAIR_PAGE, NormalizeReport, normalize_stored_identifiers
from identity.database import Database, utcnow
from identity.errors import DatabaseMisconfigured, DatabaseUnavailable, database_problem
from identity.history import record_plan_events, start_command_run
from identity.merge import IdentifyPlan, lock_customer, plan_identify, write_plan
from identity.pool import get_db
from identity.progress import Progress, peak_rss_mib
from identity.settings import database_location
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

    def changed(self) -> bool:
        return bool(self.normalized or self.customers_repaired)


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


def repair_customer(db: Database, seed: tuple[str, Any], dry_run: bool) -> IdentifyPlan:
    """Lock the customer around one seed and make it satisfy the rules (one transaction)."""
    kind, value = seed
    emails = {value} if kind == "email" else set()
    phones = {value} if kind == "phone" else set()
    ids = [value] if kind == "id" else []
    rows = list(lock_customer(db, emails, phones, ids).values())
    now = utcnow()
    plan = plan_identify(rows, None, None, now) if rows else IdentifyPlan(rows=[], outcome="unchanged")
    if not dry_run and rows:
        write_plan(db, plan)
        record_plan_events(db, rows, plan, now)
    return plan


def repair_customers(db: Database, report: RepairReport, dry_run: bool) -> None:
    """Repair's second step: every customer that breaks the rules, one short transaction each."""
    counted: set[int] = set()  # dry run: rows of customers already counted (nothing changes)
    for _ in range(MAX_REPAIR_PASSES):
        before = report.customers_repaired
        progress = Progress("repairing customers", None)
        for seed in unsettled_seeds(db):
            try:
                plan = in_transaction(db, partial(repair_customer, seed=seed, dry_run=dry_run), "repair")
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
        if not dry_run:
            # Until the pass is over, identify must not trust a lock-free read.
            db.run("upsert_service_state", key="consistent", value="0")
        normalize_stored_identifiers(db, region, report, dry_run)
        repair_customers(db, report, dry_run)
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
        f"duration: {time.monotonic() - started:.1f} s; peak memory: {peak_rss_mib():.0f} MiB",
    ]
    if dry_run:
        lines.append(
            "dry run: nothing was changed (merges that only normalization would reveal are not counted)"
        )
    elif not report.changed():
        lines.append("nothing to repair: the table already satisfies the rules")
    click.echo("\n".join(lines))
    if report.failed or report.invalid_count:
        raise SystemExit(1)
