"""`flask --app fluxkart block add|remove|list` (SPEC, "Merge protection", "Commands"): the
blocked values and patterns, stored in the database (BlockedValue), so every worker and host
applies the same list within BLOCKS_TTL_S of a change. `add` says which customers the value
joins, which `repair` then splits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from identity.canonical import MAX_LISTED, REPAIR_PAGE
from identity.database import Database, utcnow
from identity.errors import ApiError, DatabaseMisconfigured, DatabaseUnavailable, database_problem
from identity.normalize import normalize_email, normalize_phone
from identity.pool import get_db
from identity.protection import DEFAULT_BLOCKED, BlockList, Protection, compile_pattern
from identity.protection_in_force import BLOCKS_TTL_S, current_protection
from identity.settings import database_location
from identity.split import CustomerMoved, read_split_plan

# BlockedValue.text holds at most this many characters (VARCHAR(255) on MySQL).
MAX_TEXT = 255

Rule = tuple[str, str, str]  # (kind, form, text)


def parse_rule(value: str | None, pattern: str | None, kind: str | None) -> Rule:
    """The (kind, form, text) a command line names. A value is validated and normalized as an
    identifier (its kind: '@' means email, else phone, unless --kind says); a pattern must
    compile and name its kind. Raises ClickException with one line saying what is wrong."""
    if (value is None) == (pattern is None):
        raise click.ClickException("give one VALUE or --pattern REGEX")
    if pattern is not None:
        if kind is None:
            raise click.ClickException("a pattern needs --kind email or --kind phone")
        try:
            compile_pattern(pattern)
        except ApiError as exc:
            raise click.ClickException(f"refused: {exc.message}") from exc
        if len(pattern) > MAX_TEXT:
            raise click.ClickException(f"refused: a pattern has at most {MAX_TEXT} characters")
        return kind, "pattern", pattern
    assert value is not None
    kind = kind or ("email" if "@" in value else "phone")
    try:
        if kind == "email":
            text = normalize_email(value)
        else:
            text = normalize_phone(value, current_app.config["FLUXKART_PHONE_REGION"])
    except ApiError as exc:
        raise click.ClickException(f"refused: {value!r} is not a valid {kind}: {exc.message}") from exc
    if text is None:
        raise click.ClickException(f"refused: an empty {kind} identifies nobody already")
    return kind, "value", text


def describe(rule: Rule) -> str:
    """'phone 0000000000' or 'email pattern no-?reply@.+'."""
    kind, form, text = rule
    return f"{kind} {text}" if form == "value" else f"{kind} pattern {text}"


def on_database(work: Callable[[Database], None]) -> None:
    """Run a subcommand on the configured database; a database problem is one line, exit 1."""
    click.echo(f"block: {database_location(current_app.config)}")
    db = get_db()
    try:
        db.connect()
        current_protection(db)  # the shipped defaults are written first, once: a removal then lasts
        work(db)
    except (DatabaseUnavailable, DatabaseMisconfigured) as exc:
        raise click.ClickException(f"block stopped: {database_problem(exc)}") from exc


def stored_rules(db: Database) -> list[Rule]:
    """The blocked values and patterns now in the database."""
    return [(row["kind"], row["form"], row["text"]) for row in db.all("select_blocked_values")]


def customers_joined(db: Database, rule: Rule, protection: Protection) -> dict[str, Any]:
    """What a block of `rule` does to the table: the rows carrying it, their customers, and the
    customers it joins (repair splits them: read_split_plan under `protection`, which blocks it).

    Pages through the live rows (a pattern, or a phone's other forms, cannot be looked up by
    index); each customer is read once.
    """
    only = BlockList([rule])
    kind, column = rule[0], "email" if rule[0] == "email" else "phoneNumber"
    found: dict[str, Any] = {"rows": 0, "customers": 0, "joined": [], "shared": 0}
    examined: set[int] = set()
    after = 0
    while page := db.all("select_live_page", after=after, limit=REPAIR_PAGE):
        after = page[-1]["id"]
        for row in page:
            if not only.blocks(kind, row[column]):
                continue
            found["rows"] += 1
            if row["id"] in examined:
                continue
            try:
                plan = read_split_plan(db, row["id"], protection)
            except CustomerMoved:
                continue
            if plan is None:
                continue
            examined.update(plan.rows)
            found["customers"] += 1
            carrying = sum(1 for r in plan.rows.values() if only.blocks(kind, r[column]))
            if len(plan.parts) > 1:
                found["joined"].append((plan.primary_id, len(plan.rows), len(plan.parts)))
            elif carrying > 1:
                found["shared"] += 1
    return found


@click.group("block")
def block_command() -> None:
    """Blocked values: identifiers shared by people who are not one person (SPEC, "Merge protection")."""


KIND = click.option("--kind", type=click.Choice(["email", "phone"]), help="The identifier's kind.")
PATTERN = click.option("--pattern", help="A regular expression matched against the whole canonical value.")


@block_command.command("add")
@click.argument("value", required=False)
@PATTERN
@KIND
@with_appcontext
def add_command(value: str | None, pattern: str | None, kind: str | None) -> None:
    """Block a value or a pattern; say which customers it joins (repair splits them)."""
    rule = parse_rule(value, pattern, kind)

    def work(db: Database) -> None:
        rules = stored_rules(db)
        if rule in rules:
            click.echo(f"already blocked: {describe(rule)}")
        else:
            db.run("insert_blocked_value", kind=rule[0], form=rule[1], text=rule[2], created_at=utcnow())
            click.echo(f"blocked: {describe(rule)} (every worker applies it within {BLOCKS_TTL_S:.0f} s)")
        limit = int(current_app.config["FLUXKART_MAX_CUSTOMER_IDENTIFIERS"])
        found = customers_joined(db, rule, Protection(limit, BlockList([*rules, rule])))
        click.echo(f"rows carrying it: {found['rows']}, in {found['customers']} customers")
        joined = found["joined"]
        if joined:
            parts = sum(count for _, _, count in joined)
            click.echo(
                f"customers it joins: {len(joined)}; `flask --app fluxkart repair` will split them"
                f" into {parts} parts, each with its own oldest row as primary:"
            )
            for primary, rows, count in joined[:MAX_LISTED]:
                click.echo(f"  customer {primary}: {rows} rows -> {count} parts")
            if len(joined) > MAX_LISTED:
                click.echo(f"  ... and {len(joined) - MAX_LISTED} more")
        else:
            click.echo("customers it joins: 0 (repair has nothing to split)")
        if found["shared"]:
            click.echo(
                "customers holding it on several rows, joined by other evidence too (kept):"
                f" {found['shared']}"
            )

    on_database(work)


@block_command.command("remove")
@click.argument("value", required=False)
@PATTERN
@KIND
@with_appcontext
def remove_command(value: str | None, pattern: str | None, kind: str | None) -> None:
    """Stop blocking a value or a pattern (a shipped default stays removed)."""
    rule = parse_rule(value, pattern, kind)

    def work(db: Database) -> None:
        removed = db.execute("delete_blocked_value", {"kind": rule[0], "form": rule[1], "text": rule[2]})
        if not removed.rowcount:
            raise click.ClickException(f"nothing matched: {describe(rule)} is not blocked (see `block list`)")
        click.echo(
            f"removed: {describe(rule)} (every worker applies it within {BLOCKS_TTL_S:.0f} s); rows carrying "
            "it connect again: identify merges the customers it touches, `repair` all of them"
        )

    on_database(work)


@block_command.command("list")
@with_appcontext
def list_command() -> None:
    """The blocked values and patterns in force, with their kind; shipped defaults marked."""

    def work(db: Database) -> None:
        rules = stored_rules(db)
        if not rules:
            click.echo("nothing is blocked")
        for rule in rules:
            default = "  (shipped default)" if rule in DEFAULT_BLOCKED else ""
            click.echo(f"{rule[0]:<6}{rule[1]:<9}{rule[2]}{default}")

    on_database(work)
