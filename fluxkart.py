"""FluxKart Identity: links a shop's orders to one customer by email and phone.

The microservice of the design card: the app factory, the API's routes (thin: parse, call,
answer JSON), its JSON errors, and identify's transaction. Everything else lives beside it
in identity/, one concern per module (README, "Code"); nothing there imports this file.

Routes
    GET  /                 status
    GET  /health/live      liveness: the process answers
    GET  /health/ready     readiness: the database answers (503 when it does not)
    POST /identify         {"email", "phoneNumber"} -> the consolidated customer
    GET  /customers        read-only lookup by ?email= and/or ?phoneNumber=
    GET  /contacts         contact rows, ?limit= ?after= ?email= ?phoneNumber=
    GET  /contacts/<id>    one contact row
    GET  /customers/<id>/history   a customer's history (ids only), oldest first
    DELETE /customers      erase a customer: ?email= ?phoneNumber= ?dryRun=true
    GET  /changes          the feed of changes (ids only): ?after= ?limit= ?wait= (docs/changes.md)
    GET  /metrics          Prometheus metrics;  GET /openapi.json  this API's description
    /console               support staff's pages (identity/console; docs/console.md)

Commands (python3 dev.py flask <command>, which is flask --app fluxkart <command>)
    init-db [--create-database]   create the schema (and on MySQL the database) if missing
    migrate [--dry-run]    bring an existing Contact table (or a previous release's) to this schema
    repair [--dry-run]     normalize stored identifiers, split what blocked values joined, make
                           every customer follow the rules
    import FILE|-          historical orders (CSV or JSON Lines), as if sent to /identify
    block add|remove|list  the blocked values (docs/merge-protection.md)

Configuration: the environment or a .env file (identity/settings.py; README, "Configuration").
The contract is docs/api.md (with openapi.json).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, url_for
from flask.cli import with_appcontext
from werkzeug.exceptions import HTTPException

from identity import console, observability, pool
from identity.block import block_command
from identity.changes import MAX_WAIT_S, follow_changes
from identity.component import oldest_first
from identity.database import Database, Row, utcnow
from identity.erasure import ERASURES, erase_customer
from identity.errors import (
    ApiError,
    DatabaseMisconfigured,
    DatabaseUnavailable,
    RetryTransaction,
    database_problem,
)
from identity.history import HISTORY_READS, customer_history, record_plan_events
from identity.http import json_body, query_bool, query_identifiers, query_int, require_token
from identity.import_orders import import_orders
from identity.merge import (
    IdentifyPlan,
    is_settled,
    lock_customer,
    plan_within_limits,
    seen_customers,
    touch_identifiers,
    trusts_fast_path,
    write_plan,
)
from identity.migrate import migrate_command
from identity.normalize import MAX_CONTACT_ID, normalize_email, normalize_phone
from identity.observability import IGNORED_IDENTIFIERS, PAST_LIMIT_ANSWERS, metrics_page
from identity.pool import get_db, new_database
from identity.protection import Protection, screen_blocked
from identity.protection_in_force import current_protection
from identity.reads import (
    answer_rows,
    check_ready,
    contact_by_id,
    contact_to_json,
    customer_answer,
    list_contact_rows,
    lookup_customer,
)
from identity.repair import repair_command
from identity.settings import database_location, load_settings
from identity.transactions import in_transaction, reconnect_once

log = logging.getLogger("fluxkart")

# --------------------------------------------------------------------------
# identify: the handler's transaction (SPEC, "POST /identify"; README, "Concurrency")
# --------------------------------------------------------------------------


def identify(db: Database, email: str | None, phone: str | None) -> tuple[dict[str, Any], str]:
    """Link this order's canonical identifiers to their customer (SPEC, "POST /identify").

    Returns (answer, outcome), outcome one of created, linked, merged, repaired,
    unchanged. Blocked identifiers are left out first (422 when nothing is left). A repeat
    customer whose identifiers are all known is answered from one consistent read, with no
    transaction and no lock. Anything else runs the locked merge in `apply_identify`.
    Raises DatabaseUnavailable when retries run out.
    """
    db.connect()
    protection = current_protection(db)
    email, phone, ignored = screen_blocked(protection, email, phone)
    seen: list[Row] = []
    if trusts_fast_path(db):
        rows = db.all("select_customer", email=email, phone=phone, limit=protection.max_rows + 1)
        if protection.count(rows) <= protection.max_identifiers:
            if is_settled(rows, email, phone):
                return customer_answer(rows, ignored, protection=protection), "unchanged"
            seen = seen_customers(rows, protection)
    plan = in_transaction(db, lambda db: apply_identify(db, email, phone, protection, seen), "identify")
    ignored += plan.ignored
    for name, reason in ignored:
        IGNORED_IDENTIFIERS.labels(name, reason).inc()
    if plan.partial:
        PAST_LIMIT_ANSWERS.inc()
        rows = oldest_first(plan.rows)[: protection.max_identifiers]
        return customer_answer(rows, ignored, True, protection), plan.outcome
    return customer_answer(plan.rows, ignored, protection=protection), plan.outcome


def apply_identify(
    db: Database, email: str | None, phone: str | None, protection: Protection, seen: Sequence[Row] = ()
) -> IdentifyPlan:
    """The SPEC's identify rules inside one transaction, healing whatever the customer looks like.

    The merge protocol (identity/merge.py): 1. touch the request's identifier rows;
    2. lock every live row of the customers they belong to; 3. decide in memory, within the
    identifier limit; 4. write; 5. record in history what was written, in the same
    transaction. `seen`: the customer's rows as the read before the transaction found them
    (one read confirms them instead of walking the customer again: merge.still_whole).
    """
    touch_identifiers(db, email, phone)
    emails, phones = {email} - {None}, {phone} - {None}
    found = lock_customer(db, emails, phones, protection=protection, seen=list(seen))  # type: ignore[arg-type]
    now = utcnow()
    plan = plan_within_limits(found, email, phone, now, protection)
    write_plan(db, plan, protection)
    record_plan_events(db, list(found.values()), plan, now)
    return plan


# --------------------------------------------------------------------------
# Errors: one JSON shape for every failure
# --------------------------------------------------------------------------

HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """The SPEC's error body `{"error": {"code", "message"}}` with this status and headers."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.headers)


def http_error(exc: HTTPException) -> Response:
    """werkzeug's status and headers (Allow on 405), with our JSON body."""
    response = exc.get_response()
    status = exc.code or 500
    message = exc.description or exc.name
    if status == 413:
        message = f"request body is larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes"
    body = error_response(status, HTTP_ERROR_CODES.get(status, "http_error"), message)
    for name, value in response.headers.items():
        if name.lower() not in ("content-type", "content-length"):
            body.headers[name] = value
    return body


def database_unavailable(exc: DatabaseUnavailable) -> Response:
    log.error("database unavailable: %s", exc)
    message = "the database is unavailable or busy; retry shortly"
    return error_response(503, "database_unavailable", message, {"Retry-After": "1"})


def database_misconfigured(exc: DatabaseMisconfigured) -> Response:
    """Not a 503: retrying cannot help until an operator changes a setting (SPEC, "Errors")."""
    log.error("database misconfigured: %s", exc)
    return error_response(
        500,
        "server_misconfigured",
        "the service's database is misconfigured; the operator must fix a setting (see /health/ready)",
    )


def unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(500, "internal_error", "internal error; it has been logged")


def register_error_handlers(app: Flask) -> None:
    """One app-wide handler per kind of failure."""
    app.register_error_handler(ApiError, api_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(DatabaseUnavailable, database_unavailable)
    app.register_error_handler(DatabaseMisconfigured, database_misconfigured)
    app.register_error_handler(Exception, unexpected)


# --------------------------------------------------------------------------
# Routes: parse, call the domain, answer JSON
# --------------------------------------------------------------------------

api = Blueprint("api", __name__)

OPENAPI_PATH = Path(__file__).with_name("openapi.json")
MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_FEED_POSITION = 2**63 - 1  # a BIGINT


@api.get("/")
def status() -> Response:
    """Who is answering, and where to start."""
    return jsonify(status="ok", message="FluxKart Identity is running: POST /identify")


@api.get("/health/live")
def live() -> Response:
    """Liveness: the process answers. Never touches the database."""
    return jsonify(status="ok")


@api.get("/health/ready")
def ready() -> Response:
    """Readiness: 200 when the database answers and its schema is usable; else 503 with the reason."""
    db = get_db()
    try:
        check_ready(db)
    except (RetryTransaction, DatabaseUnavailable) as exc:
        db.close()
        raise DatabaseUnavailable(str(exc)) from exc
    except DatabaseMisconfigured as exc:
        log.error("not ready: %s", exc)
        return error_response(503, "server_misconfigured", str(exc), {"Retry-After": "10"})
    return jsonify(status="ok", database=db.dialect)


@api.post("/identify")
def identify_contact() -> Response:
    """Link an order's email and/or phone to its customer and answer the customer (SPEC, "POST /identify")."""
    body = json_body()
    email = normalize_email(body.get("email"))
    phone = normalize_phone(body.get("phoneNumber"), current_app.config["FLUXKART_PHONE_REGION"])
    if email is None and phone is None:
        raise ApiError(400, "missing_identifier", "send an email, a phoneNumber, or both")
    answer, g.identify_outcome = reconnect_once(lambda db: identify(db, email, phone))
    return jsonify(answer)


@api.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics: requests and latency by route and status, identify outcomes, retries."""
    return metrics_page()


@api.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 description of this API."""
    return Response(OPENAPI_PATH.read_bytes(), content_type="application/json")


@api.get("/customers")
def find_customer() -> Response:
    """Support staff's read-only lookup: the identify answer, writing nothing (SPEC, "Reads")."""
    email, phone = query_identifiers()
    if email is None and phone is None:
        raise ApiError(400, "missing_identifier", "give ?email= and/or ?phoneNumber=")

    def lookup(db: Database) -> dict[str, Any]:
        protection = current_protection(db)
        kept_email, kept_phone, ignored = screen_blocked(protection, email, phone)
        rows = lookup_customer(db, kept_email, kept_phone, protection)
        if not rows.complete:
            PAST_LIMIT_ANSWERS.inc()
        return customer_answer(answer_rows(rows, protection), ignored, not rows.complete, protection)

    return jsonify(reconnect_once(lookup))


@api.get("/contacts")
def list_contacts() -> Response:
    """Contact rows by id, paginated (?limit, ?after) and filtered (?email, ?phoneNumber)."""
    limit = query_int("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    after = query_int("after", 0, 0, MAX_CONTACT_ID)
    email, phone = query_identifiers()

    def contacts(db: Database) -> list[Row]:
        _, _, blocked = screen_blocked(current_protection(db), email, phone)
        if blocked:  # a blocked value is matched by nothing (SPEC, "Merge protection")
            raise ApiError(422, "blocked_identifier", f"the {blocked[0][0]} filter is a blocked value")
        return list_contact_rows(db, after, limit + 1, email, phone)

    rows = reconnect_once(contacts)
    page = rows[:limit]
    response = jsonify([contact_to_json(row) for row in page])
    if len(rows) > limit:
        args = {k: v for k, v in request.args.items() if k != "after"}
        next_url = url_for("api.list_contacts", **{**args, "limit": limit, "after": page[-1]["id"]})
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return response


@api.get("/contacts/<int:contact_id>")
def get_contact(contact_id: int) -> Response:
    """One live contact row, or 404."""
    row = reconnect_once(lambda db: contact_by_id(db, contact_id))
    if row is None:
        raise ApiError(404, "not_found", f"no contact with id {contact_id}")
    return jsonify(contact_to_json(row))


@api.get("/customers/<int:primaryId>/history")
def get_customer_history(primaryId: int) -> Response:
    """GET /customers/<primaryId>/history: the customer's events, oldest first, paginated.

    Any id of the customer works; a demoted primary's id answers its survivor's
    history, named by "customerId" and a Link rel="canonical".
    """
    primary_id = primaryId  # the path's name for it is the API's (camelCase)
    limit = query_int("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    after = query_int("after", 0, 0, MAX_CONTACT_ID)
    if primary_id > MAX_CONTACT_ID:
        raise ApiError(404, "not_found", f"no customer with id {primary_id}")
    history = reconnect_once(lambda db: customer_history(db, primary_id, after, limit))
    HISTORY_READS.inc()
    response = jsonify(history)
    survivor = history["customerId"]
    links = []
    if survivor != primary_id:
        links.append(f'<{url_for("api.get_customer_history", primaryId=survivor)}>; rel="canonical"')
    if history["nextAfter"] is not None:
        next_url = url_for(
            "api.get_customer_history", primaryId=survivor, limit=limit, after=history["nextAfter"]
        )
        links.append(f'<{next_url}>; rel="next"')
    if links:
        response.headers["Link"] = ", ".join(links)
    return response


@api.delete("/customers")
def delete_customer() -> Response:
    """DELETE /customers?email=&phoneNumber=[&dryRun=true]: erase a whole customer (privacy request).

    Refused (403) while no API token is configured. The access log line carries
    the counts, never the identifiers.
    """
    if not current_app.config["FLUXKART_API_TOKEN"]:
        raise ApiError(
            403,
            "erasure_disabled",
            "erasure is refused while FLUXKART_API_TOKEN is not set: nobody erases customers on an "
            "open service; set the token and send it as 'Authorization: Bearer <token>'",
        )
    email, phone = query_identifiers()
    if email is None and phone is None:
        raise ApiError(400, "missing_identifier", "give ?email= and/or ?phoneNumber=")
    dry_run = query_bool("dryRun")
    result = reconnect_once(lambda db: erase_customer(db, email, phone, dry_run))
    ERASURES.labels("true" if dry_run else "false").inc()
    counts = {name: result[name] for name in ("dryRun", "contacts", "identifiers", "historyEvents")}
    g.log_fields = {"erasure": counts}
    log.info("erasure previewed" if dry_run else "customer erased", extra={"fields": counts})
    return jsonify(result)


@api.get("/changes")
def list_changes() -> Response:
    """GET /changes?after=&limit=&wait=: the changes committed after the cursor, oldest first (ids only).

    Each change's kind, customer ids, time and request id; the answer's `cursor` is the next
    `after`. `wait` (seconds) holds the request open until a change arrives. 410 when the
    cursor is older than the feed keeps (docs/changes.md says how to resync).
    """
    after = query_int("after", 0, 0, MAX_FEED_POSITION) if "after" in request.args else None
    limit = query_int("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    wait = query_int("wait", 0, 0, MAX_WAIT_S)
    retention = current_app.config["FLUXKART_CHANGES_RETENTION_DAYS"]
    return jsonify(follow_changes(after, limit, wait, retention))


# --------------------------------------------------------------------------
# Commands and the app factory
# --------------------------------------------------------------------------


@click.command("init-db")
@click.option(
    "--create-database",
    is_flag=True,
    help="Also create the MySQL database when it does not exist (no other command or start does).",
)
@with_appcontext
def init_db_command(create_database: bool) -> None:
    """Create the tables if they do not exist (never drops anything); with --create-database,
    the MySQL database too."""
    db = new_database(create_database=True if create_database else None)
    try:
        db.connect()
    except (DatabaseMisconfigured, DatabaseUnavailable, RetryTransaction) as exc:
        raise click.ClickException(
            f"init-db on {database_location(current_app.config)}: {database_problem(exc)}"
        ) from exc
    finally:
        db.close()
    click.echo(f"schema ready on {database_location(current_app.config)}")


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the app from the settings (defaults < environment/.env < overrides).

    No connection is opened here: the first request opens one per thread.
    Raises ConfigurationError for a setting the service cannot run with.
    """
    settings = load_settings(overrides)
    app = Flask(__name__, static_folder=None)
    app.config.update(settings)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    observability.init_app(app)
    pool.init_app(app)
    app.before_request(require_token)
    register_error_handlers(app)
    app.register_blueprint(api)
    console.init_app(app)
    for command in (init_db_command, migrate_command, repair_command, import_orders, block_command):
        app.cli.add_command(command)
    return app
