"""The support console without a browser: headers, session cookie, CSRF, refusals, no identifier leaks.

Real HTTP against the live app (tests/conftest.py's server, both backends)
with a plain requests session, which follows the console's redirects as a
browser would. The browser journey is in test_console_browser.py.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from fluxkart import create_app
from identity.console.graph import link_edges, link_graph, mask_email, mask_phone
from identity.observability import JsonFormatter
from identity.protection import DEFAULT_BLOCKED, BlockList, Protection
from tests.harness.database import read_contacts, run_sql
from tests.harness.servers import LiveServer

TOKEN = "console-token_Zx81"
SECRET_KEY = "console-signing-key-for-tests-0123456789"
CONSOLE = pytest.mark.parametrize(
    "settings", [{"FLUXKART_API_TOKEN": TOKEN, "FLUXKART_SECRET_KEY": SECRET_KEY}], indirect=True
)
ORDERS = [
    ("dana@example.com", "+919876543210"),
    ("lee@example.org", "+14155550123"),
    ("dana@example.com", "+14155550123"),
]
IDENTIFIERS = {value for order in ORDERS for value in order}
# Every console route (method, path); test_every_console_route_is_listed keeps this complete.
ROUTES = [
    ("GET", "/console"),
    ("GET", "/console/sign-in"),
    ("POST", "/console/sign-in"),
    ("POST", "/console/sign-out"),
    ("POST", "/console/search"),
    ("GET", "/console/customers/1"),
    ("POST", "/console/customers/1/reveal"),
    ("GET", "/console/customers/1/erase"),
    ("POST", "/console/customers/1/erase"),
    ("GET", "/console/refused"),
    ("GET", "/console/past-limit"),
    ("GET", "/console/blocked"),
    ("POST", "/console/blocked/preview"),
    ("POST", "/console/blocked/add"),
    ("POST", "/console/blocked/remove"),
    ("GET", "/console/static/console.css"),
]
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


class Console:
    """A browser-like client: cookies kept, redirects followed, every URL it saw recorded."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.session = requests.Session()
        self.urls: list[str] = []
        self.csrf = ""

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        response = self.session.request(method, self.base_url + path, **kwargs)
        self.urls += [r.url for r in response.history] + [response.url]
        self.urls += [r.headers["Location"] for r in response.history if "Location" in r.headers]
        found = CSRF_FIELD.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, data: dict[str, str] | None = None, csrf: bool = True) -> requests.Response:
        form = dict(data or {})
        if csrf:
            form["csrf_token"] = self.csrf
        return self.request("POST", path, data=form)

    def sign_in(self, token: str = TOKEN) -> requests.Response:
        self.get("/console/sign-in")
        return self.post("/console/sign-in", {"token": token})


@pytest.fixture
def console(server: LiveServer) -> Iterator[Console]:
    client = Console(server.url)
    yield client
    client.session.close()


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every line the service logs during the test, formatted as it writes them."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("fluxkart")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def place_orders(console: Console) -> None:
    for email, phone in ORDERS:
        response = console.session.post(
            console.base_url + "/identify",
            json={"email": email, "phoneNumber": phone},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text


def assert_console_headers(response: requests.Response) -> None:
    csp = response.headers["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["default-src"] == "'none'"  # so no script from anywhere
    assert "script-src" not in directives
    assert directives["style-src"] == "'self'"  # no inline style either
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"


# --------------------------------------------------------------------------
# Headers and cookie
# --------------------------------------------------------------------------


@CONSOLE
def test_every_console_route_is_listed(app: Any) -> None:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("console."):
            path = rule.rule.replace("<int:primary_id>", "1").replace("<path:filename>", "console.css")
            routes |= {(method, path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == set(ROUTES)


@CONSOLE
@pytest.mark.parametrize("signed_in", [False, True], ids=["signed-out", "signed-in"])
def test_every_console_route_sends_the_security_headers(console: Console, signed_in: bool) -> None:
    place_orders(console)
    if signed_in:
        console.sign_in()
    else:
        console.get("/console/sign-in")  # a CSRF token for the anonymous session
    for method, path in ROUTES:
        data = {"kind": "email", "identifier": "dana@example.com", "fingerprint": ""}
        response = console.request(
            method, path, data={**data, "csrf_token": console.csrf}, allow_redirects=False
        )
        assert response.status_code < 500, (method, path)
        assert_console_headers(response)
    # Errors under /console too: an unknown page, a wrong method, an expired form.
    for method, path in [("GET", "/console/nowhere"), ("PUT", "/console"), ("POST", "/console/search")]:
        response = console.request(method, path, allow_redirects=False)
        assert response.status_code in (303, 400, 401, 404, 405)
        assert_console_headers(response)


@pytest.mark.parametrize(
    "settings, missing",
    [
        ({"FLUXKART_SECRET_KEY": SECRET_KEY}, "FLUXKART_API_TOKEN"),
        ({"FLUXKART_API_TOKEN": TOKEN}, "FLUXKART_SECRET_KEY"),
    ],
    indirect=["settings"],
)
def test_console_is_refused_without_token_or_signing_key(console: Console, missing: str) -> None:
    for method, path in ROUTES:
        if "static" in path:
            continue  # the refusal page's own stylesheet
        response = console.request(method, path, allow_redirects=False)
        assert response.status_code == 403, (method, path)
        assert missing in response.text
        assert response.headers["Content-Type"].startswith("text/html")
        assert_console_headers(response)


@CONSOLE
def test_session_cookie_is_httponly_samesite_strict_and_scoped_to_the_console(console: Console) -> None:
    response = console.sign_in()
    cookie = response.history[0].headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP on 127.0.0.1: a Secure cookie would never come back


def test_session_cookie_is_secure_over_https(tmp_path: Any) -> None:
    app = create_app(
        {
            "FLUXKART_SQLITE_PATH": str(tmp_path / "x.db"),
            "FLUXKART_API_TOKEN": TOKEN,
            "FLUXKART_SECRET_KEY": "k",
        }
    )
    client = app.test_client()
    page = client.get("/console/sign-in", base_url="https://console.example")
    assert "; Secure" in page.headers["Set-Cookie"]
    csrf = CSRF_FIELD.search(page.text)
    assert csrf is not None
    response = client.post(
        "/console/sign-in",
        data={"csrf_token": csrf.group(1), "token": TOKEN},
        base_url="https://console.example",
    )
    assert response.status_code == 303
    assert "; Secure" in response.headers["Set-Cookie"]


# --------------------------------------------------------------------------
# Sign-in, CSRF
# --------------------------------------------------------------------------


@CONSOLE
def test_sign_in_refuses_a_wrong_token_and_accepts_the_right_one(console: Console) -> None:
    for wrong in ["", "nope", TOKEN[:-1], TOKEN + "x", TOKEN.upper()]:
        response = console.sign_in(wrong)
        assert response.status_code in (400, 401)  # an empty field is refused before it is compared
        assert console.get("/console", allow_redirects=False).status_code == 303
    response = console.sign_in()
    assert response.status_code == 200
    assert response.url.endswith("/console")
    assert "Find a customer" in response.text


@CONSOLE
def test_a_session_ends_when_the_api_token_changes(settings: dict[str, Any], console: Console) -> None:
    console.sign_in()
    cookie = console.session.cookies.get("fluxkart_console")
    rotated = LiveServer(create_app({**settings, "FLUXKART_API_TOKEN": "a-new-token"}))
    try:
        response = requests.get(
            rotated.url + "/console", cookies={"fluxkart_console": cookie}, allow_redirects=False, timeout=30
        )
        assert response.status_code == 303
        assert response.headers["Location"].endswith("/console/sign-in")
    finally:
        rotated.close()


@CONSOLE
def test_forms_without_this_sessions_csrf_token_are_refused(
    console: Console, settings: dict[str, Any]
) -> None:
    place_orders(console)
    console.sign_in()
    for csrf in [None, "", "forged-token"]:
        for path, data in [
            ("/console/search", {"kind": "email", "identifier": "dana@example.com"}),
            ("/console/customers/1/reveal", {}),
            ("/console/customers/1/erase", {"fingerprint": "x"}),
            ("/console/blocked/add", {"kind": "email", "form": "value", "text": "dana@example.com"}),
            ("/console/blocked/remove", {"kind": "phone", "form": "value", "text": "1234567890"}),
            ("/console/blocked/preview", {"kind": "email", "form": "value", "text": "dana@example.com"}),
            ("/console/sign-out", {}),
        ]:
            form = dict(data) if csrf is None else {**data, "csrf_token": csrf}
            response = console.request("POST", path, data=form, allow_redirects=False)
            assert response.status_code == 400, path
            assert "This form has expired" in response.text
            assert "dana@example.com" not in response.text and "+919876543210" not in response.text
    assert len(read_contacts(settings)) == 2  # the erasure did not happen
    blocked = run_sql(settings, "SELECT kind, form, text FROM BlockedValue")
    assert ("email", "value", "dana@example.com") not in {tuple(row.values()) for row in blocked}
    assert ("phone", "value", "1234567890") in {tuple(row.values()) for row in blocked}  # not removed
    assert console.get("/console", allow_redirects=False).status_code == 200  # still signed in

    # A sign-in form from another session is refused as well (login CSRF).
    other = Console(console.base_url)
    other.get("/console/sign-in")
    response = other.request(
        "POST", "/console/sign-in", data={"token": TOKEN, "csrf_token": console.csrf}, allow_redirects=False
    )
    assert response.status_code == 400


# --------------------------------------------------------------------------
# Search, reveal, erasure: what lands in URLs and logs
# --------------------------------------------------------------------------


@CONSOLE
def test_no_identifier_in_any_url_or_log_line(console: Console, log_lines: list[str]) -> None:
    place_orders(console)
    console.sign_in()
    searches = [("email", "DANA@example.com"), ("phone", "+1 (415) 555-0123"), ("id", "2")]
    for kind, value in searches:
        response = console.post("/console/search", {"kind": kind, "identifier": value})
        assert response.status_code == 200
        assert response.url == console.base_url + "/console/customers/1"
        assert "d***@example.com" in response.text and "+91 ******3210" in response.text
        assert not [v for v in IDENTIFIERS if v in response.text]
    for kind, value in [("email", "nobody@example.com"), ("phone", "12345"), ("email", "not an email")]:
        response = console.post("/console/search", {"kind": kind, "identifier": value})
        assert response.status_code in (400, 404)
    revealed = console.post("/console/customers/1/reveal")
    assert revealed.status_code == 200
    assert all(value in revealed.text for value in IDENTIFIERS)
    reveal_lines = [json.loads(line) for line in log_lines if "console_reveal" in line]
    assert len(reveal_lines) == 1
    assert reveal_lines[0]["request_id"] == revealed.headers["X-Request-ID"]
    assert reveal_lines[0]["customerId"] == 1

    values = IDENTIFIERS | {value for _, value in searches} | {"nobody@example.com", "12345"}
    values |= {v.lower() for v in values} | {v.lstrip("+") for v in values}
    assert console.urls
    assert not [url for url in console.urls if any(v.lower() in url.lower() for v in values if len(v) > 2)]
    assert log_lines
    assert not [line for line in log_lines if any(v in line.lower() for v in values if len(v) > 2)]


@CONSOLE
def test_erasure_is_refused_when_the_customer_changed_since_the_preview(
    console: Console, settings: dict[str, Any]
) -> None:
    place_orders(console)
    console.sign_in()
    preview = console.get("/console/customers/1/erase")
    assert preview.status_code == 200
    assert 'name="contact_ids"' not in preview.text  # a digest of the customer, not its ids
    seen = re.search(r'name="fingerprint" value="([0-9a-f]{32})"', preview.text)
    assert seen is not None
    # An order merges a new row into the customer after the preview.
    response = console.session.post(
        console.base_url + "/identify",
        json={"email": "dana.new@example.com", "phoneNumber": "+919876543210"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert response.status_code == 200
    stale = console.post("/console/customers/1/erase", {"fingerprint": seen.group(1)})
    assert stale.status_code == 409
    assert "changed since the preview" in stale.text
    assert len(read_contacts(settings)) == 3
    assert re.search(r'id="preview-contacts">3<', stale.text)
    fresh = re.search(r'name="fingerprint" value="([0-9a-f]{32})"', stale.text)
    assert fresh is not None and fresh.group(1) != seen.group(1)
    done = console.post("/console/customers/1/erase", {"fingerprint": fresh.group(1)})
    assert done.status_code == 200
    assert "Customer 1 erased" in done.text
    assert read_contacts(settings) == []


@CONSOLE
def test_a_secondarys_id_leads_to_its_primary_and_unknown_ids_say_so(console: Console) -> None:
    place_orders(console)
    console.sign_in()
    response = console.get("/console/customers/2")
    assert response.url == console.base_url + "/console/customers/1"
    missing = console.get("/console/customers/999")
    assert missing.status_code == 404
    assert "no customer with id 999" in missing.text
    huge = 2**64
    for path in [f"/console/customers/{huge}", f"/console/customers/{huge}/erase"]:
        assert console.get(path).status_code == 404
    assert console.post(f"/console/customers/{huge}/reveal").status_code == 404
    assert console.post(f"/console/customers/{huge}/erase", {"fingerprint": ""}).status_code == 404


@CONSOLE
def test_rows_written_behind_the_services_back_are_shown_as_stored(
    console: Console, settings: dict[str, Any]
) -> None:
    assert console.get("/health/ready").status_code == 200  # the schema exists
    run_sql(
        settings,
        "INSERT INTO Contact (id, email, phoneNumber, linkedId, linkPrecedence, createdAt, updatedAt) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        [
            (7, "old@x.com", "111", None, "primary", "2020-01-01 00:00:00", "2020-01-01 00:00:00"),
            (8, "old@x.com", "222", None, "primary", "2020-01-02 00:00:00", "2020-01-02 00:00:00"),
            (9, "new@x.com", "222", 8, "secondary", "2020-01-03 00:00:00", "2020-01-03 00:00:00"),
        ],
        many=True,
    )
    console.sign_in()
    # Any of its ids, and its identifiers, lead to the page of its oldest row.
    for path in ["/console/customers/9", "/console/customers/8"]:
        assert console.get(path).url == console.base_url + "/console/customers/7"
    page = console.post("/console/search", {"kind": "email", "identifier": "new@x.com"})
    assert page.status_code == 200
    assert page.url == console.base_url + "/console/customers/7"
    assert 'id="inconsistent"' in page.text
    assert page.text.count('class="node node-primary"') == 2  # as stored: two primaries
    assert len(re.findall(r'<tr data-id="\d+">', page.text)) == 3
    # The consistent customer of the other tests has no such notice.
    place_orders(console)
    assert 'id="inconsistent"' not in console.get("/console/customers/10").text


# --------------------------------------------------------------------------
# Masks and the graph (pure functions)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "email, masked",
    [("dana@example.com", "d***@example.com"), ("d@x.io", "d***@x.io"), ("Ünal@bücher.de", "Ü***@bücher.de")],
)
def test_mask_email(email: str, masked: str) -> None:
    assert mask_email(email) == masked


@pytest.mark.parametrize(
    "phone, masked",
    [
        ("+919876543210", "+91 ******3210"),
        ("+14155550123", "+1 ******0123"),
        ("9876543210", "******3210"),
        ("5550001", "*****01"),
        ("123", "***"),
        ("+999123456789", "+********6789"),  # no such country code: nothing but the + is shown up front
    ],
)
def test_mask_phone(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked


def test_graph_edges_and_layout() -> None:
    def row(id: int, email: str | None, phone: str | None, linked: int | None) -> dict[str, Any]:
        precedence = "primary" if linked is None else "secondary"
        return {
            "id": id,
            "email": email,
            "phoneNumber": phone,
            "linkedId": linked,
            "linkPrecedence": precedence,
            "createdAt": id,
        }

    rows = [row(1, "a", "1", None), row(2, "b", "2", 1), row(3, "a", "2", 1), row(4, "a", None, 1)]
    edges = {(e["kind"], e["source"], e["target"]) for e in link_edges(rows)}
    assert edges == {
        ("link", 2, 1), ("link", 3, 1), ("link", 4, 1),
        ("email", 1, 3), ("email", 3, 4),  # three rows share "a": a chain of two edges, not a triangle
        ("phone", 2, 3),
    }  # fmt: skip
    graph = link_graph(rows)
    positions = {(node["x"], node["y"]) for node in graph["nodes"]}
    assert len(positions) == 4  # no two nodes on one spot
    assert graph["nodes"][0] == {**graph["nodes"][0], "id": 1, "primary": True}
    top = min(graph["nodes"], key=lambda node: node["y"])
    assert top["id"] == 1  # the primary at the top
    assert all(0 < x < graph["size"] and 0 < y < graph["size"] for x, y in positions)
    assert len(graph["edges"]) == 6
    single = link_graph([row(7, "a", None, None)])
    assert single["edges"] == [] and len(single["nodes"]) == 1


def test_graph_draws_no_edge_through_a_blocked_value() -> None:
    rows = [
        {"id": 1, "email": "a@x.com", "phoneNumber": "0000000000", "linkedId": None},
        {"id": 2, "email": "b@x.com", "phoneNumber": "0000000000", "linkedId": 1},
        {"id": 3, "email": "test@test.com", "phoneNumber": "555", "linkedId": 1},
        {"id": 4, "email": "test@test.com", "phoneNumber": "555", "linkedId": 1},
    ]
    for row in rows:
        row.update(linkPrecedence="primary" if row["linkedId"] is None else "secondary", createdAt=row["id"])
    blocked = Protection(50, BlockList(DEFAULT_BLOCKED))
    edges = {(e["kind"], e["source"], e["target"]) for e in link_edges(rows, blocked)}
    assert edges == {("link", 2, 1), ("link", 3, 1), ("link", 4, 1), ("phone", 3, 4)}
    # Control: without the block list the placeholders draw edges.
    unprotected = {(e["kind"], e["source"], e["target"]) for e in link_edges(rows)}
    assert {("phone", 1, 2), ("email", 3, 4)} <= unprotected


@CONSOLE
def test_a_reveal_is_audited_under_the_services_id_and_only_when_it_reveals(
    console: Console, log_lines: list[str]
) -> None:
    """Issue 22: the client's X-Request-ID never becomes the audit id, and a reveal of a customer
    that does not exist writes no audit line (before, both did)."""
    place_orders(console)
    console.sign_in()
    forged = {"X-Request-ID": "someone-elses-request"}
    missing = console.request(
        "POST", "/console/customers/999/reveal", data={"csrf_token": console.csrf}, headers=forged
    )
    assert missing.status_code == 404
    assert not [line for line in log_lines if "console_reveal" in line]
    revealed = console.request(
        "POST", "/console/customers/1/reveal", data={"csrf_token": console.csrf}, headers=forged
    )
    assert revealed.status_code == 200
    (audit,) = [json.loads(line) for line in log_lines if "console_reveal" in line]
    assert audit["request_id"] == revealed.headers["X-Request-ID"] != forged["X-Request-ID"]
