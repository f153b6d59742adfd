"""Every error path (SPEC "Errors", "Access"): status, the JSON error shape, and nothing written.

Every error answers {"error": {"code", "message"}} with a stable code (the table in the
README) and never a 500, a stack trace or SQL text. Codes are pinned here because clients
branch on them.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from fluxkart import create_app
from tests.harness.servers import Api, LiveServer

SEED = {"email": "seed@hillvalley.edu", "phoneNumber": "555"}
CODE = re.compile(r"^[a-z][a-z0-9_]*$")


def assert_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    """The SPEC's error shape with this status and code; returns the error object."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"code", "message"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"].strip()
    return dict(error)


@pytest.fixture
def seeded(api: Api, contacts: Any) -> Iterator[list[dict[str, Any]]]:
    """One stored customer; after the test, the table must still be exactly that."""
    api.identify(SEED["email"], SEED["phoneNumber"])
    before = contacts()
    yield before
    assert contacts() == before, "an error path wrote to the Contact table"


def post_raw(
    api: Api, body: bytes | Iterator[bytes], content_type: str = "application/json"
) -> requests.Response:
    """POST /identify with exactly these bytes (a generator is sent chunked, without Content-Length)."""
    return api.post("/identify", data=body, headers={"Content-Type": content_type})


def nested(depth: int) -> bytes:
    """`depth` arrays inside each other: tiny on the wire, deep for a recursive parser."""
    return ("[" * depth + "]" * depth).encode()


# --------------------------------------------------------------------------
# POST /identify: bodies that are not a JSON object of identifiers
# --------------------------------------------------------------------------

BAD_BODIES: dict[str, tuple[bytes, str]] = {  # raw body -> code
    "empty body": (b"", "invalid_json"),
    "whitespace body": (b" \r\n\t", "invalid_json"),
    "truncated JSON": (b'{"email": ', "invalid_json"),
    "single quotes": (b"{'email': 'lorraine@hillvalley.edu'}", "invalid_json"),
    "trailing comma": (b'{"email": "lorraine@hillvalley.edu",}', "invalid_json"),
    "form encoding": (b"email=lorraine%40hillvalley.edu&phoneNumber=1", "invalid_json"),
    "two documents": (b'{"email": "a@b.c"} {"email": "d@e.f"}', "invalid_json"),
    "invalid UTF-8": (b'{"email": "lorr\xffaine@hillvalley.edu"}', "invalid_json"),
    "Latin-1 text": ('{"email": "élodie@exemple.fr"}'.encode("latin-1"), "invalid_json"),
    "30000 nested arrays": (nested(30_000), "invalid_json"),
    "10000 nested objects": (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "invalid_json"),
    "deeply nested email": (b'{"email": ' + nested(30_000) + b"}", "invalid_json"),
    "a JSON array": (b'[{"email": "lorraine@hillvalley.edu"}]', "invalid_body"),
    "an empty array": (b"[]", "invalid_body"),
    "a JSON string": (b'"lorraine@hillvalley.edu"', "invalid_body"),
    "a JSON number": (b"123456", "invalid_body"),
    "JSON null": (b"null", "invalid_body"),
    "JSON true": (b"true", "invalid_body"),
}


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize(("body", "code"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_body_that_is_not_a_json_object(api: Api, body: bytes, code: str) -> None:
    """Malformed JSON, bad encodings, absurd nesting and non-objects: 400, never 500."""
    assert len(body) < 64 * 1024  # these must reach the parser, not the size limit
    assert_error(post_raw(api, body), 400, code)


WRONG_FIELDS: dict[str, tuple[dict[str, Any], str]] = {  # body -> code
    "email as a number": ({**SEED, "email": 42}, "invalid_email"),
    "email as an object": ({**SEED, "email": {"address": "lorraine@hillvalley.edu"}}, "invalid_email"),
    "email as a list": ({**SEED, "email": ["lorraine@hillvalley.edu"]}, "invalid_email"),
    "email as true": ({**SEED, "email": True}, "invalid_email"),
    "email as false": ({**SEED, "email": False}, "invalid_email"),
    "email with NUL": ({**SEED, "email": "lorraine\x00@hillvalley.edu"}, "invalid_email"),
    "email with a lone surrogate": ({**SEED, "email": "lorraine\ud800@hillvalley.edu"}, "invalid_email"),
    "phone as true": ({**SEED, "phoneNumber": True}, "invalid_phone_number"),
    "phone as false": ({**SEED, "phoneNumber": False}, "invalid_phone_number"),
    "phone as a float": ({**SEED, "phoneNumber": 5.5}, "invalid_phone_number"),
    "phone as an object": ({**SEED, "phoneNumber": {"number": "555"}}, "invalid_phone_number"),
    "phone as a list": ({**SEED, "phoneNumber": ["555"]}, "invalid_phone_number"),
    "phone as a negative number": ({**SEED, "phoneNumber": -555}, "invalid_phone_number"),
    "phone with a tab inside": ({**SEED, "phoneNumber": "5\t55"}, "invalid_phone_number"),
    "phone with a NUL": ({**SEED, "phoneNumber": "55\x005"}, "invalid_phone_number"),
}


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize(("body", "code"), WRONG_FIELDS.values(), ids=WRONG_FIELDS.keys())
def test_field_of_the_wrong_type(api: Api, body: dict[str, Any], code: str) -> None:
    """A bad field fails the whole request, even when the other identifier is fine."""
    assert_error(api.post("/identify", json=body), 400, code)


ABSENT: dict[str, dict[str, Any]] = {
    "empty object": {},
    "both null": {"email": None, "phoneNumber": None},
    "both empty strings": {"email": "", "phoneNumber": ""},
    "both blank": {"email": "  ", "phoneNumber": " \t\n"},
    "email null, phone empty": {"email": None, "phoneNumber": ""},
    "only unknown keys": {"name": "Lorraine", "phone": "555", "mail": "seed@hillvalley.edu"},
}


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("body", ABSENT.values(), ids=ABSENT.keys())
def test_no_identifier(api: Api, body: dict[str, Any]) -> None:
    """SPEC: at least one identifier must be present after normalization; else 400."""
    assert_error(api.post("/identify", json=body), 400, "missing_identifier")


def test_content_type_is_not_required(api: Api) -> None:
    """README decision: the body is JSON whatever the Content-Type says."""
    response = post_raw(api, json.dumps(SEED).encode(), content_type="text/plain")
    assert response.status_code == 200
    assert response.json()["contact"]["emails"] == [SEED["email"]]


# --------------------------------------------------------------------------
# Body size
# --------------------------------------------------------------------------


def padded(size: int) -> bytes:
    """A valid identify body of exactly `size` bytes (an ignored key carries the padding)."""
    head = json.dumps({**SEED, "note": ""}).encode()
    return head[:-2] + b"x" * (size - len(head)) + head[-2:]


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("size", [64 * 1024 + 1, 100 * 1024, 256 * 1024])
def test_body_over_64_kib(api: Api, size: int) -> None:
    """SPEC: a body over 64 KiB is refused with 413 before it is parsed."""
    body = padded(size)
    assert len(body) == size
    assert_error(post_raw(api, body), 413, "payload_too_large")


CHUNKED = {
    "padding inside the object": padded(200 * 1024),
    # Cut at 64 KiB this is still a valid object: a server that truncates would accept it.
    "padding after the object": json.dumps({"email": "big@hillvalley.edu"}).encode() + b" " * 200 * 1024,
}


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("body", CHUNKED.values(), ids=CHUNKED.keys())
def test_chunked_body_over_64_kib(api: Api, body: bytes) -> None:
    """Without a Content-Length (Transfer-Encoding: chunked) the limit still holds: 413, nothing written."""
    chunks = (body[i : i + 8192] for i in range(0, len(body), 8192))
    assert_error(post_raw(api, chunks), 413, "payload_too_large")


def test_body_under_the_limit_is_accepted(api: Api) -> None:
    """The limit is not tighter than it says: a 60 KiB body with padding is served."""
    response = post_raw(api, padded(60 * 1024))
    assert response.status_code == 200
    assert response.json()["contact"]["emails"] == [SEED["email"]]


# --------------------------------------------------------------------------
# Unknown contacts and paths: 404
# --------------------------------------------------------------------------

NOT_FOUND = {
    "unknown id": "/contacts/999",
    "id zero": "/contacts/0",
    "negative id": "/contacts/-1",
    "non-numeric id": "/contacts/abc",
    "fractional id": "/contacts/1.5",
    "huge id": "/contacts/" + "9" * 30,
    "just over BIGINT": f"/contacts/{2**63}",
    "unknown path": "/nope",
    "path under identify": "/identify/1",
    "path under a contact": "/contacts/1/orders",
}


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("path", NOT_FOUND.values(), ids=NOT_FOUND.keys())
def test_not_found(api: Api, path: str) -> None:
    """An unknown contact or path is a JSON 404 (contact 1 exists; these are not it)."""
    assert_error(api.get(path), 404, "not_found")


# --------------------------------------------------------------------------
# Wrong method: 405 with Allow
# --------------------------------------------------------------------------

WRONG_METHODS = {  # (method, path) -> a method the Allow header must list
    "GET /identify": ("GET", "/identify", "POST"),
    "PUT /identify": ("PUT", "/identify", "POST"),
    "DELETE /contacts/1": ("DELETE", "/contacts/1", "GET"),
    "PATCH /contacts/1": ("PATCH", "/contacts/1", "GET"),
    "POST /contacts": ("POST", "/contacts", "GET"),
    "PUT /": ("PUT", "/", "GET"),
    "POST /customers": ("POST", "/customers", "GET"),
    "POST /health/ready": ("POST", "/health/ready", "GET"),
}


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize(("method", "path", "allowed"), WRONG_METHODS.values(), ids=WRONG_METHODS.keys())
def test_wrong_method(api: Api, method: str, path: str, allowed: str) -> None:
    """405 in the JSON shape, with an Allow header naming the methods the route has."""
    response = api.request(method, path, json=SEED)
    assert_error(response, 405, "method_not_allowed")
    allow = {name.strip() for name in response.headers["Allow"].split(",")}
    assert allowed in allow
    assert method not in allow


# --------------------------------------------------------------------------
# Query parameters
# --------------------------------------------------------------------------

BAD_QUERIES = {  # path -> code
    "limit 0": ("/contacts?limit=0", "invalid_parameter"),
    "limit over 1000": ("/contacts?limit=1001", "invalid_parameter"),
    "negative limit": ("/contacts?limit=-1", "invalid_parameter"),
    "word limit": ("/contacts?limit=ten", "invalid_parameter"),
    "fractional limit": ("/contacts?limit=1.5", "invalid_parameter"),
    "empty limit": ("/contacts?limit=", "invalid_parameter"),
    "limit with a space": ("/contacts?limit=%2010", "invalid_parameter"),
    "Arabic-Indic limit": ("/contacts?limit=%D9%A1%D9%A0", "invalid_parameter"),
    "huge limit": ("/contacts?limit=" + "9" * 40, "invalid_parameter"),
    "negative after": ("/contacts?after=-1", "invalid_parameter"),
    "word after": ("/contacts?after=first", "invalid_parameter"),
    "exponent after": ("/contacts?after=1e3", "invalid_parameter"),
    "after over BIGINT": (f"/contacts?after={2**63}", "invalid_parameter"),
    "invalid email filter": ("/contacts?email=not-an-email", "invalid_email"),
    "invalid phone filter": ("/contacts?phoneNumber=12ab", "invalid_phone_number"),
    "lookup with an invalid email": ("/customers?email=a@b@c", "invalid_email"),
    "lookup with an invalid phone": ("/customers?phoneNumber=%2B%2B1", "invalid_phone_number"),
    "lookup without identifiers": ("/customers", "missing_identifier"),
    "lookup with blank identifiers": ("/customers?email=%20&phoneNumber=", "missing_identifier"),
}


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize(("path", "code"), BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
def test_invalid_query_parameters(api: Api, path: str, code: str) -> None:
    """Bad paging or filter parameters are a 400 that names the problem."""
    assert_error(api.get(path), 400, code)


# --------------------------------------------------------------------------
# No stack traces, no SQL, no 500
# --------------------------------------------------------------------------

LEAKS = re.compile(
    r"Traceback|File \"|\bSELECT\b|\bINSERT\b|\bUPDATE\b|\bFROM Contact\b|pymysql|sqlite3|"
    r"OperationalError|ProgrammingError|Exception|werkzeug|fluxkart\.py|127\.0\.0\.1",
    re.IGNORECASE,
)


@pytest.mark.usefixtures("seeded")
def test_no_answer_leaks_internals(api: Api) -> None:
    """Across every error above and a few odder requests: JSON errors, no 5xx, no trace, no SQL."""
    requests_to_try: list[tuple[str, str, dict[str, Any]]] = [
        *(("POST", "/identify", {"data": body}) for body, _ in BAD_BODIES.values()),
        *(("POST", "/identify", {"json": body}) for body, _ in WRONG_FIELDS.values()),
        *(("POST", "/identify", {"json": body}) for body in ABSENT.values()),
        *(("GET", path, {}) for path in NOT_FOUND.values()),
        *((method, path, {}) for method, path, _ in WRONG_METHODS.values()),
        *(("GET", path, {}) for path, _ in BAD_QUERIES.values()),
        ("POST", "/identify", {"data": padded(70_000)}),
        ("POST", "/identify", {"json": {"email": "'; DROP TABLE Contact; --@x.io"}}),
        ("POST", "/identify", {"json": {"email": "x" * 10_000 + "@x.io"}}),
        ("POST", "/identify", {"json": {"email": "a@b.c", "phoneNumber": "9" * 10_000}}),
        ("POST", "/identify", {"json": {"phoneNumber": 10**4000}}),
        # Past Python's 4300-digit limit for int(str): the parser itself refuses it.
        ("POST", "/identify", {"data": b'{"phoneNumber": 1' + b"0" * 5000 + b"}"}),
        ("GET", "/contacts?email=%FF%FE", {}),
        ("GET", "/contacts?limit=%00", {}),
        ("GET", "/contacts/%00", {}),
        ("GET", "/customers?email=%27%20OR%201%3D1%20--%40x", {}),
        ("GET", "/" + "a" * 4000, {}),
    ]
    for method, path, kwargs in requests_to_try:
        response = api.request(method, path, **kwargs)
        assert response.status_code < 500, (method, path, response.text)
        if response.status_code >= 400:
            assert_error(response, response.status_code, response.json()["error"]["code"])
            assert CODE.match(response.json()["error"]["code"])
        assert not LEAKS.search(response.text), (method, path, response.text)


# --------------------------------------------------------------------------
# Access token (SPEC "Access")
# --------------------------------------------------------------------------

TOKEN = "s3cret-t0ken"
WITH_TOKEN = pytest.mark.parametrize("settings", [{"FLUXKART_API_TOKEN": TOKEN}], indirect=True)
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@WITH_TOKEN
@pytest.mark.parametrize("path", ["/", "/health/live", "/health/ready"])
def test_public_endpoints_need_no_token(api: Api, path: str) -> None:
    """GET / and the health endpoints answer a load balancer without credentials."""
    assert api.get(path).status_code == 200


PROTECTED = {
    "identify": ("POST", "/identify"),
    "contacts": ("GET", "/contacts"),
    "one contact": ("GET", "/contacts/1"),
    "lookup": ("GET", "/customers?email=seed@hillvalley.edu"),
}
BAD_CREDENTIALS = {
    "no header": {},
    "wrong token": {"Authorization": "Bearer wrong-token"},
    "token prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "token plus more": {"Authorization": f"Bearer {TOKEN}x"},
    "no scheme": {"Authorization": TOKEN},
    "basic scheme": {"Authorization": f"Basic {TOKEN}"},
    "empty bearer": {"Authorization": "Bearer "},
}


@WITH_TOKEN
@pytest.mark.parametrize(("method", "path"), PROTECTED.values(), ids=PROTECTED.keys())
def test_protected_endpoints_need_the_token(api: Api, contacts: Any, method: str, path: str) -> None:
    """With FLUXKART_API_TOKEN set: 401 JSON without the right bearer token, nothing written; 200 with it."""
    assert api.post("/identify", json=SEED, headers=BEARER).status_code == 200
    before = contacts()
    for name, headers in BAD_CREDENTIALS.items():
        response = api.request(method, path, json={"email": "new@hillvalley.edu"}, headers=headers)
        assert_error(response, 401, "unauthorized")
        assert TOKEN not in response.text, name
    assert contacts() == before
    assert api.request(method, path, json=SEED, headers=BEARER).status_code == 200


# --------------------------------------------------------------------------
# Database unreachable: 503 with Retry-After
# --------------------------------------------------------------------------


@pytest.fixture
def broken_api(settings: dict[str, Any], backend: str, tmp_path: Any) -> Iterator[Api]:
    """The app pointed at a database that cannot be reached: a closed port, an impossible path."""
    broken = dict(settings)
    # A port we hold bound but never listen on: connections are refused, and no other
    # process on this busy machine can start a server there meanwhile.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    if backend == "mysql":
        broken["MYSQL_PORT"] = str(closed.getsockname()[1])
    else:
        broken["FLUXKART_SQLITE_PATH"] = str(tmp_path / "no-such-dir" / "fluxkart.db")
    server = LiveServer(create_app(broken))
    client = Api(server.url)
    yield client
    client.session.close()
    server.close()
    closed.close()


def test_unreachable_database(broken_api: Api) -> None:
    """SPEC: database unreachable -> 503 with Retry-After, promptly; liveness and / still answer."""
    calls = [
        ("GET", "/health/ready", {}),
        ("POST", "/identify", {"json": SEED}),
        ("GET", "/contacts", {}),
        ("GET", "/contacts/1", {}),
        ("GET", "/customers?phoneNumber=555", {}),
    ]
    for method, path, kwargs in calls:
        response = broken_api.request(method, path, timeout=10, **kwargs)
        assert_error(response, 503, "database_unavailable")
        assert int(response.headers["Retry-After"]) >= 0
        assert not LEAKS.search(response.text), response.text
    assert broken_api.get("/health/live").status_code == 200
    assert broken_api.get("/").status_code == 200
