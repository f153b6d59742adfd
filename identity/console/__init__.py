"""The support console at /console (docs/console.md): server-rendered pages, no script.

A blueprint that guards itself: a signed session cookie instead of the API's bearer header
(a browser cannot send one from a form), a CSRF token on every form, strict headers on every
answer. Sign in with the API token; search; a customer's masked rows, link graph and
history (paged, bounded by the merge protection's limit whatever the table holds); reveal;
erasure with a preview; merge protection's pages (refused links, customers past the limit,
blocked values).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    g,
    has_request_context,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from werkzeug.wrappers import Response as WerkzeugResponse

from identity.component import Component, connected_rows, oldest_first
from identity.console.graph import link_graph, mask_email, mask_phone
from identity.console.operator import (
    OPERATOR_PAGE,
    BlockRule,
    add_blocked,
    block_rule,
    blocked_rules,
    customers_past_limit,
    is_blocked,
    joined_customers,
    listed_rule,
    refused_events,
    remove_blocked,
)
from identity.database import Database, Row
from identity.erasure import erase_customer
from identity.errors import ApiError, DatabaseUnavailable
from identity.history import customer_history, resolve_customer
from identity.normalize import MAX_CONTACT_ID, normalize_email, normalize_phone
from identity.pool import app_state
from identity.protection import screen_blocked
from identity.protection_in_force import current_protection
from identity.reads import lookup_customer
from identity.sessions import end_session, forgive, open_session, record_failure, session_alive, throttled_for
from identity.transactions import reconnect_once

log = logging.getLogger("fluxkart")

# Its own Blueprint: templates in templates/console/, the stylesheet in static/
# (served at /console/static/), every view behind a signed session cookie
# instead of the API's bearer header (a browser cannot send one from a form).
console = Blueprint(
    "console", __name__, url_prefix="/console", template_folder="templates", static_folder="static"
)

# No script at all, styles only from our own stylesheet (no inline style), forms
# post only to us, never framed (clickjacking on the erase button).
CONSOLE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
# A support shift: a signed cookie older than this is refused even if the browser kept it.
CONSOLE_SESSION_HOURS = 8
# Views anyone may reach: the sign-in form and the stylesheet it needs.
CONSOLE_OPEN_ENDPOINTS = {"console.sign_in_form", "console.sign_in", "console.static"}
SEARCH_KINDS = {"email": "Email", "phone": "Phone number", "id": "Contact id"}
HISTORY_PAGE = 50
# Rows per page of a customer's rows table and graph (a customer within the limit has up to
# Protection.max_rows rows; one past it, as many as were read, a bounded number).
ROWS_PAGE = 50


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the request came over HTTPS.

    gunicorn sets the scheme from X-Forwarded-Proto when the proxy is trusted
    (forwarded_allow_ips), so a TLS-terminating load balancer counts as HTTPS.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        """Secure when configured so, or when this request arrived over HTTPS."""
        return bool(app.config["SESSION_COOKIE_SECURE"]) or (has_request_context() and request.is_secure)


def init_app(app: Flask) -> None:
    """Register the console: its blueprint, its session cookie (signed with
    FLUXKART_SECRET_KEY), and that it checks its own sign-in instead of the bearer token."""
    app.secret_key = app.config["FLUXKART_SECRET_KEY"] or None
    app.session_interface = ConsoleSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME="fluxkart_console",
        SESSION_COOKIE_PATH="/console",  # never sent to the JSON API
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=CONSOLE_SESSION_HOURS),
    )
    app.register_blueprint(console)
    app_state(app).own_sign_in.add(console.name)


def console_page(template: str, status: int = 200, **context: Any) -> Response:
    """Render templates/console/<template> with the given status."""
    response = current_app.make_response(render_template(f"console/{template}", **context))
    response.status_code = status
    return response


def console_message(status: int, title: str, message: str, back: bool = True) -> Response:
    """A page that says what went wrong and what to do about it (and, when it helps, a way back)."""
    return console_page("message.html", status, title=title, message=message, back=back)


def session_fingerprint() -> str:
    """Ties a session to the API token it was opened with: changing the token signs everyone out."""
    token: str = current_app.config["FLUXKART_API_TOKEN"]
    key: str = current_app.config["FLUXKART_SECRET_KEY"]
    return hmac.new(key.encode(), token.encode(), "sha256").hexdigest()


def signed_in() -> bool:
    """True when this session signed in with the API token that is configured now, and the
    server still holds it (not signed out, not idle: identity/sessions.py). Asked once a request."""
    if "console_signed_in" not in g:
        g.console_signed_in = hmac.compare_digest(
            str(session.get("auth", "")), session_fingerprint()
        ) and reconnect_once(lambda db: session_alive(db, str(session.get("sid", ""))))
    return bool(g.console_signed_in)


def client_address() -> str:
    """The address the sign-in throttle counts by: the connection's peer (behind a proxy,
    the proxy's, unless the deployment rewrites REMOTE_ADDR: docs/console.md)."""
    return request.remote_addr or "unknown"


def csrf_token() -> str:
    """This session's token for every form (made on first use); templates call it."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


@console.context_processor
def console_context() -> dict[str, Any]:
    """What every console template may call: csrf_token() and signed_in()."""
    return {"csrf_token": csrf_token, "signed_in": signed_in}


@console.before_request
def console_gate() -> WerkzeugResponse | None:
    """Refuse the console without a token or signing key, demand sign-in, check CSRF on every POST."""
    if request.endpoint == "console.static":
        return None
    if not current_app.config["FLUXKART_API_TOKEN"]:
        return console_message(
            403,
            "The console is off",
            "No API token is configured (FLUXKART_API_TOKEN). The console shows and erases customers' "
            "personal data, so it stays off until the service has a token to sign in with. "
            "Set FLUXKART_API_TOKEN and FLUXKART_SECRET_KEY, then restart the service.",
            back=False,
        )
    if not current_app.config["FLUXKART_SECRET_KEY"]:
        return console_message(
            403,
            "The console is off",
            "No session signing key is configured (FLUXKART_SECRET_KEY), so a sign-in could not be "
            "kept safely. Set it (docs/console.md says how) and restart the service.",
            back=False,
        )
    if request.endpoint not in CONSOLE_OPEN_ENDPOINTS and not signed_in():
        return redirect(url_for("console.sign_in_form"), 303)
    if request.method == "POST":
        expected = str(session.get("csrf", ""))
        given = request.form.get("csrf_token", "")
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            log.warning("console form refused: missing or wrong CSRF token")
            return console_message(
                400,
                "This form has expired",
                "The form did not carry this session's security token (it was opened before a "
                "sign-in or sign-out, or sent from another site). Open the page again and resend it.",
            )
    return None


@console.after_app_request
def console_headers(response: Response) -> Response:
    """The console's security headers on every answer in its URL space, errors included.

    App-wide only because Flask gives an unknown page or a wrong method under /console
    to no blueprint; the console's own prefix is the only path it looks at.
    """
    prefix = console.url_prefix or ""
    if request.path == prefix or request.path.startswith(prefix + "/"):
        response.headers.update(CONSOLE_HEADERS)
    return response


@console.errorhandler(ApiError)
def console_api_error(exc: ApiError) -> Response:
    """A domain error (400/404/409...) as a page with the same status and message."""
    return console_message(exc.status, "That did not work", exc.message)


@console.errorhandler(DatabaseUnavailable)
def console_database_unavailable(exc: DatabaseUnavailable) -> Response:
    """The API's 503 with Retry-After, as a page."""
    log.error("database unavailable: %s", exc)
    response = console_message(
        503, "The database is busy", "The database is unavailable or busy; retry shortly."
    )
    response.headers["Retry-After"] = "1"
    return response


@console.get("/sign-in")
def sign_in_form() -> WerkzeugResponse:
    """The sign-in form (the API token is the password)."""
    if signed_in():
        return redirect(url_for("console.search_form"), 303)
    return console_page("sign_in.html")


@console.post("/sign-in")
def sign_in() -> WerkzeugResponse:
    """Check the token in constant time; on success start a fresh session (new CSRF token),
    kept on the server. Failed attempts are throttled per client address across workers."""
    token: str = current_app.config["FLUXKART_API_TOKEN"]
    address = client_address()
    wait = reconnect_once(lambda db: throttled_for(db, address))
    if wait:
        log.warning(
            "console sign-in throttled",
            extra={"fields": {"event": "console_sign_in_throttled", "address": address}},
        )
        response = console_page(
            "sign_in.html",
            429,
            error=f"Too many wrong tokens from this address. Try again in {wait} minute(s).",
        )
        response.headers["Retry-After"] = str(wait * 60)
        return response
    given = request.form.get("token", "").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        reconnect_once(lambda db: record_failure(db, address))
        log.warning(
            "console sign-in refused: wrong token",
            extra={"fields": {"event": "console_sign_in_failed", "address": address}},
        )
        return console_page("sign_in.html", 401, error="That is not this service's API token.")
    reconnect_once(lambda db: forgive(db, address))
    session.clear()  # nothing from before the sign-in survives it (session fixation)
    session["auth"] = session_fingerprint()
    session["sid"] = reconnect_once(open_session)
    session["csrf"] = secrets.token_urlsafe(32)
    log.info("console sign-in", extra={"fields": {"event": "console_sign_in", "address": address}})
    return redirect(url_for("console.search_form"), 303)


@console.post("/sign-out")
def sign_out() -> WerkzeugResponse:
    """End the session on the server (a copy of the cookie opens nothing), then forget it."""
    sid = str(session.get("sid", ""))
    reconnect_once(lambda db: end_session(db, sid))
    session.clear()
    g.console_signed_in = False
    flash("You are signed out.")
    return redirect(url_for("console.sign_in_form"), 303)


@console.get("")
def search_form() -> Response:
    """Look a customer up by email, phone number or contact id."""
    return console_page("search.html", kind="email")


@console.post("/search")
def search() -> WerkzeugResponse:
    """Find the customer and redirect to its page, addressed by its primary id only.

    The identifier travels in the POST body alone, so it lands in no URL, log
    line or browser history; the primary id the page is addressed by is the
    service's own row id (the one GET /customers/<id>/history takes), not a
    customer's personal data. Redirecting makes reload and Back safe.
    """
    kind = request.form.get("kind", "")
    value = request.form.get("identifier", "")
    if kind not in SEARCH_KINDS:
        return console_page("search.html", 400, kind="email", error="Choose what to search by.")
    try:
        primary_id = reconnect_once(lambda db: find_primary_id(db, kind, value))
    except ApiError as exc:
        return console_page("search.html", exc.status, kind=kind, value=value, error=exc.message)
    return redirect(url_for("console.customer_page", primary_id=primary_id), 303)


def customer_id_of(db: Database, contact_id: int) -> int:
    """The id a customer's page is addressed by, from any of its contact ids; ApiError 404/409.

    That is the customer's oldest live row: its primary whenever the rows keep
    the SPEC's rules, and the row identify or repair would make primary when
    they do not (data the service did not write). A demoted primary that was
    since deleted or erased leads, through the history, to the survivor.
    A customer past the limit is read only in part, so its oldest row is not known: its page
    is addressed by the id asked for (no redirect, which could otherwise go round).
    """
    if contact_id > MAX_CONTACT_ID:  # beyond BIGINT (SQLite cannot even bind it)
        raise ApiError(404, "not_found", f"no customer with id {contact_id}")
    rows = connected_rows(db, set(), set(), ids=[contact_id], protection=current_protection(db))
    if rows and not rows.complete:
        return contact_id
    if rows:
        return int(oldest_first(rows.values())[0]["id"])
    return resolve_customer(db, contact_id)


def find_primary_id(db: Database, kind: str, value: str) -> int:
    """The page id (customer_id_of) of the customer with this email, phone number or contact id.

    ApiError 400 for a value that is not one, 422 for a blocked value (it identifies
    nobody), 404 when no customer has it.
    """
    if kind == "id":
        text = value.strip().lstrip("#")
        if not text.isascii() or not text.isdigit() or not 0 < int(text) <= MAX_CONTACT_ID:
            raise ApiError(400, "invalid_contact_id", "A contact id is a whole number, such as 42.")
        return customer_id_of(db, int(text))
    region = current_app.config["FLUXKART_PHONE_REGION"]
    email = normalize_email(value, "the email") if kind == "email" else None
    phone = normalize_phone(value, region, "the phone number") if kind == "phone" else None
    if email is None and phone is None:
        raise ApiError(400, "missing_identifier", f"Type the {SEARCH_KINDS[kind].lower()} to look for.")
    protection = current_protection(db)
    email, phone, _ = screen_blocked(protection, email, phone)
    # Past the limit: the oldest row read, whose page shows the part read from it.
    return int(oldest_first(lookup_customer(db, email, phone, protection).values())[0]["id"])


def customer_rows(db: Database, customer_id: int) -> tuple[list[Row], bool]:
    """The live rows of the customer whose page id is customer_id, oldest first, and whether
    it is past the limit (then only the bounded part read from customer_id: connected_rows
    with the protection in force, so the work is bounded whatever the table holds);
    ApiError 404/409."""
    if customer_id > MAX_CONTACT_ID:
        raise ApiError(404, "not_found", f"no customer with id {customer_id}")
    found: Component = connected_rows(db, set(), set(), ids=[customer_id], protection=current_protection(db))
    rows = oldest_first(found.values())
    if not rows:
        raise ApiError(404, "not_found", f"no customer with id {customer_id}")
    if found.complete and rows[0]["id"] != customer_id:
        raise ApiError(
            409,
            "customer_moved",
            f"contact {customer_id} is now part of customer {rows[0]['id']}: open that one",
        )
    return rows, not found.complete


def keeps_the_rules(rows: list[Row]) -> bool:
    """True when the oldest row is the only primary and every other row links straight to it."""
    primary, *others = rows
    return primary["linkPrecedence"] == "primary" and all(
        row["linkPrecedence"] == "secondary" and row["linkedId"] == primary["id"] for row in others
    )


def number_arg(name: str, default: int = 0) -> int:
    """A whole-number query parameter (a page number, a cursor), else `default`."""
    text = request.args.get(name, "")
    if text.isascii() and text.isdigit() and int(text) <= MAX_CONTACT_ID:
        return int(text)
    return default


def show_customer(customer_id: int, reveal: bool) -> Response:
    """The customer page: rows, link graph, history; identifiers masked unless revealed.

    Paged so it stays bounded for any customer: ROWS_PAGE rows per page (`?page=`), the graph
    of that page's rows (and the customer's oldest row, which the links point at), the
    history HISTORY_PAGE events at a time (`?after=`)."""
    after_id = number_arg("after")
    rows, partial = reconnect_once(lambda db: customer_rows(db, customer_id))
    protection = reconnect_once(current_protection)
    pages = -(-len(rows) // ROWS_PAGE)
    page = min(max(number_arg("page", 1), 1), pages)
    page_rows = rows[(page - 1) * ROWS_PAGE : page * ROWS_PAGE]
    graph_rows = page_rows if page_rows[0] is rows[0] else [rows[0], *page_rows]
    try:
        history = reconnect_once(lambda db: customer_history(db, customer_id, after_id, HISTORY_PAGE))
        history_error = None
    except ApiError as exc:  # e.g. rows with no primary yet: the rest of the page still helps
        history, history_error = {"events": [], "nextAfter": None}, exc.message
    email_of: Callable[[str], str] = (lambda e: e) if reveal else mask_email
    phone_of: Callable[[str], str] = (lambda p: p) if reveal else mask_phone
    shown = [
        {
            **row,
            "email": None if row["email"] is None else email_of(row["email"]),
            "phoneNumber": None if row["phoneNumber"] is None else phone_of(row["phoneNumber"]),
        }
        for row in page_rows
    ]
    return console_page(
        "customer.html",
        primary_id=customer_id,
        rows=shown,
        row_count=len(rows),
        page=page,
        pages=pages,
        first_row=(page - 1) * ROWS_PAGE + 1,
        after=after_id,
        partial=partial,
        protection=protection,
        graph=link_graph(graph_rows, protection),
        consistent=partial or keeps_the_rules(rows),
        revealed=reveal,
        events=history["events"],
        next_after=history["nextAfter"],
        history_error=history_error,
    )


@console.get("/customers/<int:primary_id>")
def customer_page(primary_id: int) -> WerkzeugResponse:
    """One customer, identifiers masked; any other contact id of it redirects here."""
    customer_id = reconnect_once(lambda db: customer_id_of(db, primary_id))
    if customer_id != primary_id:
        return redirect(url_for("console.customer_page", primary_id=customer_id), 303)
    return show_customer(primary_id, reveal=False)


@console.post("/customers/<int:primary_id>/reveal")
def reveal(primary_id: int) -> Response:
    """The same page with identifiers in full; the log records who asked (request id), not what was
    shown, and only once the page revealed something (an unknown customer writes no audit line)."""
    page = show_customer(primary_id, reveal=True)
    log.info("console reveal", extra={"fields": {"event": "console_reveal", "customerId": primary_id}})
    return page


def erasure_of(db: Database, primary_id: int, dry_run: bool) -> dict[str, Any]:
    """erase_customer for the customer with this primary, named by one of its identifiers.

    One unblocked identifier is enough to name the customer (a blocked one identifies
    nobody); erase_customer takes identify's locks on it, and refuses a customer past the
    limit with its own 409 (customer_past_limit)."""
    rows, _ = customer_rows(db, primary_id)
    protection = current_protection(db)
    identifier = next((found for row in rows for found in protection.identifiers(row)), None)
    if identifier is None:
        raise ApiError(
            422,
            "blocked_identifier",
            f"every email and phone number of customer {primary_id} is a blocked value, which identifies "
            "nobody, so an erasure cannot name this customer (docs/merge-protection.md)",
        )
    kind, value = identifier
    email, phone = (value, None) if kind == "email" else (None, value)
    result: dict[str, Any] = erase_customer(db, email, phone, dry_run)
    return result


def erasure_fingerprint(preview: dict[str, Any]) -> str:
    """What the confirmation form carries instead of every contact id (a large customer's ids
    overran the 64 KiB body limit): a digest of the previewed customer, its primary, its
    count and its sorted contact ids. Any change to the customer changes it."""
    ids = ",".join(str(i) for i in sorted(preview["contactIds"]))
    text = f"{preview['primaryContactId']}:{preview['contacts']}:{ids}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@console.get("/customers/<int:primary_id>/erase")
def erase_preview(primary_id: int) -> Response:
    """What erasing this customer would remove (the dry run), and the form that confirms it."""
    preview = reconnect_once(lambda db: erasure_of(db, primary_id, True))
    return console_page(
        "erase.html", primary_id=primary_id, preview=preview, fingerprint=erasure_fingerprint(preview)
    )


@console.post("/customers/<int:primary_id>/erase")
def erase(primary_id: int) -> Response:
    """Erase the customer, but only if it is still the one the preview showed.

    A merge between preview and confirmation would otherwise erase rows the
    support agent never saw: then the new preview is shown instead.
    """
    seen = request.form.get("fingerprint", "")
    preview = reconnect_once(lambda db: erasure_of(db, primary_id, True))
    fingerprint = erasure_fingerprint(preview)
    if not hmac.compare_digest(seen.encode(), fingerprint.encode()):
        notice = "This customer changed since the preview (an order merged rows into it). Check again."
        return console_page(
            "erase.html", 409, primary_id=primary_id, preview=preview, fingerprint=fingerprint, notice=notice
        )
    result = reconnect_once(lambda db: erasure_of(db, primary_id, False))
    log.info("console erasure", extra={"fields": {"event": "console_erasure", "customerId": primary_id}})
    return console_page("erased.html", result=result)


# --------------------------------------------------------------------------
# Merge protection (docs/merge-protection.md): refused links, customers past
# the limit, blocked values
# --------------------------------------------------------------------------


@console.get("/refused")
def refused_page() -> Response:
    """The latest `refused` history events, newest first, OPERATOR_PAGE a page (`?before=`)."""
    before = number_arg("before")
    events, next_before = reconnect_once(lambda db: refused_events(db, before, OPERATOR_PAGE))
    return console_page("refused.html", events=events, next_before=next_before, before=before)


@console.get("/past-limit")
def past_limit_page() -> Response:
    """Customers holding more identifiers (or rows) than the limit, by primary id (`?after=`)."""
    after = number_arg("after")
    customers, next_after, protection = reconnect_once(
        lambda db: customers_past_limit(db, after, OPERATOR_PAGE)
    )
    return console_page(
        "past_limit.html",
        customers=customers,
        next_after=next_after,
        after=after,
        protection=protection,
        page_size=OPERATOR_PAGE,
    )


def blocked_page(status: int = 200, **context: Any) -> Response:
    """The blocked values in force, the preview and block form, and whatever `context` adds."""
    rules = reconnect_once(blocked_rules)
    context.setdefault("kind", "phone")
    context.setdefault("form", "value")
    return console_page("blocked.html", status, rules=rules, **context)


def rule_from_form() -> BlockRule:
    """The rule the posted form names (kind, form, text), checked; ApiError 400."""
    region = current_app.config["FLUXKART_PHONE_REGION"]
    return block_rule(
        request.form.get("kind", ""), request.form.get("form", ""), request.form.get("text", ""), region
    )


@console.get("/blocked")
def blocked_values() -> Response:
    """The list in force, defaults included; the form to preview and block a value."""
    return blocked_page()


@console.post("/blocked/preview")
def block_preview() -> Response:
    """Which customers a value joins (customers with more than one row carrying it): what
    blocking it, then `repair`, would split. Changes nothing."""
    fields = {key: request.form.get(key, "") for key in ("kind", "form", "text")}
    try:
        rule = rule_from_form()
    except ApiError as exc:
        return blocked_page(exc.status, error=exc.message, **fields)
    customers, more = reconnect_once(lambda db: joined_customers(db, rule))
    blocked = reconnect_once(lambda db: is_blocked(db, rule))
    return blocked_page(
        preview=rule,
        customers=customers,
        more=more,
        already=blocked,
        kind=rule.kind,
        form=rule.form,
        text=rule.text,
    )


@console.post("/blocked/add")
def block_add() -> Response:
    """Block the value or pattern (insert_blocked_value): this worker applies it at once, every
    worker and host within seconds. The customers it joins stay joined until `repair`."""
    try:
        rule = rule_from_form()
    except ApiError as exc:
        return blocked_page(exc.status, error=exc.message)
    customers, more = reconnect_once(lambda db: joined_customers(db, rule))
    reconnect_once(lambda db: add_blocked(db, rule))
    log.info(
        "console block add",
        extra={"fields": {"event": "console_block_add", "kind": rule.kind, "form": rule.form}},
    )
    return blocked_page(added=rule, customers=customers, more=more)


@console.post("/blocked/remove")
def block_remove() -> Response:
    """Take a value or pattern off the list (delete_blocked_value), exactly as listed."""
    try:
        form = request.form
        rule = listed_rule(form.get("kind", ""), form.get("form", ""), form.get("text", ""))
    except ApiError as exc:
        return blocked_page(exc.status, error=exc.message)
    removed = reconnect_once(lambda db: remove_blocked(db, rule))
    log.info(
        "console block remove",
        extra={"fields": {"event": "console_block_remove", "kind": rule.kind, "form": rule.form}},
    )
    return blocked_page(removed=rule, was_listed=bool(removed))
