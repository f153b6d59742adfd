"""openapi.json: a valid OpenAPI document that says what the service really answers.

Two kinds of test:

- the document itself: valid OpenAPI 3.1 (openapi-spec-validator), served
  unchanged at GET /openapi.json, and listing exactly the app's routes;
- conformance: representative requests for every endpoint and every status it
  can answer (successes and errors, on SQLite and MySQL, through real HTTP),
  each answer checked against the document: the status is documented, the
  Content-Type matches, the documented headers are present and valid, and the
  JSON body validates against the response schema (jsonschema, draft 2020-12,
  $refs resolved inside openapi.json).

`tests/harness/openapi_check.py` holds the check, `check_answer(response)`; the `Api`
client of conftest.py runs it on every answer the app gives any test, and the
`answers_match_openapi` fixture here also records which responses were seen.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
from openapi_spec_validator import validate as validate_openapi

from tests.harness.openapi_check import SPEC, AnswerLog, check_answer, resolve
from tests.harness.processes import free_port
from tests.harness.servers import Api

TOKEN = "s3cret-token"


@pytest.fixture
def answers_match_openapi(api: Api) -> Iterator[AnswerLog]:
    """Validate every answer the `api` client gets against openapi.json (fails the request call)."""
    log = AnswerLog()
    api.session.hooks["response"].append(log.hook)
    yield log
    api.session.hooks["response"].remove(log.hook)


# --------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------


def test_document_is_valid_openapi() -> None:
    validate_openapi(SPEC)  # raises with the first problem
    assert SPEC["openapi"].startswith("3.1")


def test_every_schema_in_the_document_is_a_valid_json_schema() -> None:
    for name in SPEC["components"]["schemas"]:
        jsonschema.Draft202012Validator.check_schema(SPEC["components"]["schemas"][name])
    for name in ("EmailQuery", "PhoneQuery"):
        pattern = SPEC["components"]["parameters"][name]["schema"]["pattern"]
        re.compile(pattern)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_document_lists_exactly_the_apps_routes(app: Any) -> None:
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("console."):
            continue  # the support console's HTML pages are not part of the JSON API (docs/console.md)
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule).replace("{contact_id}", "{id}")
        routes.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    documented = {path: set(item) - {"parameters", "summary"} for path, item in SPEC["paths"].items()}
    assert documented == routes


def test_document_is_served_unchanged(api: Api) -> None:
    response = api.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == SPEC


def fake_answer(method: str, path: str, status: int, body: Any, headers: dict[str, str]) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response.headers.update({"Content-Type": "application/json", **headers})
    response.request = requests.Request(method, f"http://127.0.0.1{path}").prepare()
    return response


RID = {"X-Request-ID": "abc"}
CUSTOMER = {
    "contact": {
        "primaryContactId": 1,
        "primaryContatctId": 1,
        "emails": ["a@b.c"],
        "phoneNumbers": [],
        "secondaryContactIds": [],
    }
}
UNAVAILABLE = {"error": {"code": "database_unavailable", "message": "retry"}}


@pytest.mark.parametrize(
    "answer",
    [
        ("POST", "/identify", 500, {"error": {"code": "database_unavailable", "message": "x"}}, RID),
        ("GET", "/", 500, {"error": {"code": "internal_error", "message": "x"}}, RID),
        ("POST", "/identify", 200, CUSTOMER, {}),
        ("POST", "/identify", 200, {"contact": {**CUSTOMER["contact"], "emails": None}}, RID),
        ("POST", "/identify", 200, {"contact": {**CUSTOMER["contact"], "extra": 1}}, RID),
        ("POST", "/identify", 503, UNAVAILABLE, RID),
        ("POST", "/identify", 400, {"error": {"code": "oops", "message": "x"}}, RID),
        ("POST", "/identify", 400, {"error": "bad"}, RID),
        ("GET", "/contacts/1", 404, b"<html>not found</html>", {**RID, "Content-Type": "text/html"}),
        ("GET", "/contacts", 200, [{"id": 1}], RID),
        ("GET", "/contacts", 200, [], {**RID, "Link": "</elsewhere>"}),
        ("POST", "/", 405, {"error": {"code": "method_not_allowed", "message": "x"}}, RID),
        ("GET", "/nowhere", 400, {"error": {"code": "bad_request", "message": "x"}}, RID),
    ],
)
def test_the_checker_rejects_answers_outside_the_document(answer: tuple[Any, ...]) -> None:
    """The conformance check is not vacuous: each of these answers breaks the document somewhere."""
    with pytest.raises(AssertionError):
        check_answer(fake_answer(*answer))


def test_the_checker_accepts_documented_answers() -> None:
    check_answer(fake_answer("POST", "/identify", 200, CUSTOMER, RID))
    check_answer(fake_answer("POST", "/identify", 503, UNAVAILABLE, {**RID, "Retry-After": "1"}))
    check_answer(fake_answer("GET", "/contacts", 200, [], {**RID, "Link": '</contacts?after=5>; rel="next"'}))
    allow = {**RID, "Allow": "GET, HEAD, OPTIONS"}
    check_answer(
        fake_answer("POST", "/", 405, {"error": {"code": "method_not_allowed", "message": "x"}}, allow)
    )


def test_patterns_agree_with_the_service_on_sample_values() -> None:
    """The documented input patterns accept what the service accepts, on hand-picked values."""
    from identity.errors import ApiError
    from identity.normalize import normalize_email, normalize_phone

    email_pattern = re.compile(resolve("/components/schemas/Email")[1]["oneOf"][0]["pattern"])
    phone_pattern = re.compile(resolve("/components/schemas/PhoneNumber")[1]["oneOf"][0]["pattern"])
    emails = [
        "",
        "  ",
        "a@b",
        " A@B.com ",
        "a b@c",
        "a@b@c",
        "@b",
        "a@",
        "x\x00@y",
        "é@x.io",
        "a\t@b",
        "\u200ba@b",
    ]
    phones = [
        "",
        " ",
        "-",
        "1",
        "+1",
        " (12) 34-5.6 ",
        "+",
        "()",
        "1+",
        "1a",
        "+" + "9" * 20,
        "9" * 21,
        "١٢٣",
        "1\t2",
    ]

    def accepted(normalize: Any, value: str) -> bool:
        try:
            normalize(value)  # None (blank: absent) or the canonical value
        except ApiError:
            return False
        return True

    for value in emails:
        assert bool(email_pattern.match(value)) == accepted(normalize_email, value), value
    for value in phones:
        assert bool(phone_pattern.match(value)) == accepted(normalize_phone, value), value


# --------------------------------------------------------------------------
# Conformance: every endpoint and status, both backends
# --------------------------------------------------------------------------


def seed(api: Api) -> dict[str, Any]:
    """Two customers and a merge; returns the ids the requests below use."""
    first = api.identify("lorraine@hillvalley.edu", "123456")
    api.identify("mcfly@hillvalley.edu", "123456")  # linked
    other = api.identify("biff@hillvalley.edu", "999999")
    return {"first": first["primaryContactId"], "other": other["primaryContactId"]}


def test_successful_answers_conform(api: Api, answers_match_openapi: AnswerLog) -> None:
    ids = seed(api)
    assert api.get("/").status_code == 200
    assert api.get("/health/live").status_code == 200
    assert api.get("/health/ready").status_code == 200
    # identify: created, linked, merged, unchanged; phone as an integer; unknown keys
    assert api.post("/identify", json={"email": "doc@hillvalley.edu"}).status_code == 200
    assert api.post("/identify", json={"email": "doc@hillvalley.edu", "phoneNumber": 5551}).status_code == 200
    merged = api.post("/identify", json={"email": "lorraine@hillvalley.edu", "phoneNumber": "999999"})
    assert merged.status_code == 200
    assert merged.json()["contact"]["primaryContactId"] == ids["first"]
    again = api.post("/identify", json={"email": "lorraine@hillvalley.edu", "phoneNumber": "999999", "x": 1})
    assert again.json() == merged.json()
    assert api.post("/identify", json={"email": None, "phoneNumber": "123456"}).status_code == 200
    # reads
    assert api.get("/customers", params={"email": "MCFLY@hillvalley.edu"}).status_code == 200
    assert api.get("/customers", params={"phoneNumber": "999999"}).status_code == 200
    both = api.get("/customers", params={"email": "biff@hillvalley.edu", "phoneNumber": "123456"})
    assert both.status_code == 200
    page = api.get("/contacts", params={"limit": 2})
    assert page.status_code == 200 and len(page.json()) == 2
    assert 'rel="next"' in page.headers["Link"]
    next_url = page.headers["Link"].split(";")[0].strip("<>")
    rest = api.get(next_url)
    assert rest.status_code == 200 and rest.json()[0]["id"] > page.json()[-1]["id"]
    assert api.get("/contacts", params={"email": "biff@hillvalley.edu", "after": 0}).status_code == 200
    assert api.get("/contacts", params={"phoneNumber": "(12) 3456"}).json()
    assert api.get(f"/contacts/{ids['other']}").json()["linkPrecedence"] == "secondary"
    assert api.get("/metrics").status_code == 200
    assert api.get("/openapi.json").status_code == 200
    correlated = api.get("/", headers={"X-Request-ID": "abc-123"})
    assert correlated.headers["X-Client-Request-ID"] == "abc-123"  # kept beside the service's own id
    assert correlated.headers["X-Request-ID"] != "abc-123"
    assert len(answers_match_openapi.checked) >= 20


BAD_IDENTIFY_BODIES: list[tuple[bytes | str, str]] = [
    (b"{not json", "invalid_json"),
    (b"", "invalid_json"),
    (b"\xff\xfe{", "invalid_json"),
    (b"[1, 2]", "invalid_body"),
    (b'"a@b.c"', "invalid_body"),
    (b"null", "invalid_body"),
    (b"{}", "missing_identifier"),
    (b'{"email": null, "phoneNumber": null}', "missing_identifier"),
    (b'{"email": "  ", "phoneNumber": ""}', "missing_identifier"),
    (b'{"email": 42}', "invalid_email"),
    (b'{"email": ["a@b.c"]}', "invalid_email"),
    (b'{"email": "no-at-sign"}', "invalid_email"),
    (b'{"email": "two@at@signs"}', "invalid_email"),
    (b'{"email": "with space@b.c"}', "invalid_email"),
    ('{"email": "' + "a" * 250 + '@b.cd"}', "invalid_email"),
    (b'{"phoneNumber": true}', "invalid_phone_number"),
    (b'{"phoneNumber": 1.5}', "invalid_phone_number"),
    (b'{"phoneNumber": -5}', "invalid_phone_number"),
    (b'{"phoneNumber": "12ab"}', "invalid_phone_number"),
    (b'{"phoneNumber": "123456789012345678901"}', "invalid_phone_number"),
    (b'{"phoneNumber": {"n": 1}}', "invalid_phone_number"),
]


def test_error_answers_conform(api: Api, answers_match_openapi: AnswerLog) -> None:
    ids = seed(api)
    for body, code in BAD_IDENTIFY_BODIES:
        response = api.post("/identify", data=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["code"] == code, (body, response.text)
    too_big = api.post("/identify", data=b'{"email": "' + b"a" * 70_000 + b'@b.c"}')
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "payload_too_large"

    expectations: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("GET", "/customers", {}, 400, "missing_identifier"),
        ("GET", "/customers", {"email": "bad"}, 400, "invalid_email"),
        ("GET", "/customers", {"phoneNumber": "12x"}, 400, "invalid_phone_number"),
        ("GET", "/customers", {"email": "nobody@nowhere.org"}, 404, "not_found"),
        ("GET", "/customers", {"email": "lorraine@hillvalley.edu", "phoneNumber": "999999"}, 409, ""),
        ("GET", "/contacts", {"limit": "0"}, 400, "invalid_parameter"),
        ("GET", "/contacts", {"limit": "1001"}, 400, "invalid_parameter"),
        ("GET", "/contacts", {"limit": "ten"}, 400, "invalid_parameter"),
        ("GET", "/contacts", {"after": "-1"}, 400, "invalid_parameter"),
        ("GET", "/contacts", {"after": str(2**63)}, 400, "invalid_parameter"),
        ("GET", "/contacts", {"email": "a b@c"}, 400, "invalid_email"),
        ("GET", "/contacts", {"phoneNumber": "+"}, 400, "invalid_phone_number"),
        ("GET", f"/contacts/{ids['other'] + 1000}", {}, 404, "not_found"),
        ("GET", "/contacts/abc", {}, 404, "not_found"),
        ("GET", "/contacts/-1", {}, 404, "not_found"),
        ("GET", f"/contacts/{2**70}", {}, 404, "not_found"),
        ("GET", "/no/such/path", {}, 404, "not_found"),
        ("POST", "/", {}, 405, "method_not_allowed"),
        ("GET", "/identify", {}, 405, "method_not_allowed"),
        ("PUT", "/contacts", {}, 405, "method_not_allowed"),
        ("DELETE", "/contacts/1", {}, 405, "method_not_allowed"),
        ("POST", "/metrics", {}, 405, "method_not_allowed"),
        ("PATCH", "/health/ready", {}, 405, "method_not_allowed"),
    ]
    for method, path, params, status, code in expectations:
        response = api.request(method, path, params=params)
        assert response.status_code == status, (method, path, params, response.text)
        assert response.json()["error"]["code"] == (code or "several_customers")
        if status == 405:
            allowed = {name.strip() for name in response.headers["Allow"].split(",")}
            assert method not in allowed and allowed & {"GET", "POST"}, response.headers["Allow"]


PROTECTED = [
    ("POST", "/identify"),
    ("GET", "/customers"),
    ("GET", "/contacts"),
    ("GET", "/contacts/1"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
]


@pytest.mark.parametrize("settings", [{"FLUXKART_API_TOKEN": TOKEN}], indirect=True)
def test_unauthorized_answers_conform(api: Api, answers_match_openapi: AnswerLog) -> None:
    for method, path in PROTECTED:
        response = api.request(method, path, json={"email": "a@b.c"})
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for method, path in [("GET", "/"), ("GET", "/health/live"), ("GET", "/health/ready")]:
        assert api.request(method, path).status_code == 200
    authorized = {"Authorization": f"Bearer {TOKEN}"}
    assert api.post("/identify", json={"email": "a@b.c"}, headers=authorized).status_code == 200
    assert api.get("/contacts/1", headers=authorized).status_code == 200


@pytest.fixture
def unreachable(backend: str, tmp_path: Path) -> dict[str, Any]:
    """Settings whose database cannot be reached: a closed port, or an SQLite file that cannot be opened."""
    if backend == "mysql":
        return {"MYSQL_HOST": "127.0.0.1", "MYSQL_PORT": str(free_port()), "MYSQL_DATABASE": "nowhere"}
    return {"FLUXKART_SQLITE_PATH": str(tmp_path / "missing-dir" / "fluxkart.db")}


@pytest.fixture
def down_api(settings: dict[str, Any], unreachable: dict[str, Any]) -> Iterator[Api]:
    """The app over HTTP with its database unreachable from the start."""
    from fluxkart import create_app
    from tests.harness.servers import LiveServer

    live = LiveServer(create_app({**settings, **unreachable}))
    client = Api(live.url)
    client.session.hooks["response"].append(AnswerLog().hook)
    yield client
    client.session.close()
    live.close()


def test_unavailable_answers_conform(down_api: Api) -> None:
    """Database unreachable: 503, Retry-After, the JSON error (never 500) wherever the database is used."""
    requests_needing_the_database = [
        ("GET", "/health/ready", {}),
        ("POST", "/identify", {"json": {"email": "a@b.c"}}),
        ("GET", "/customers", {"params": {"email": "a@b.c"}}),
        ("GET", "/contacts", {}),
        ("GET", "/contacts/1", {}),
    ]
    answers = {}
    for method, path, kwargs in requests_needing_the_database:
        try:
            response = down_api.request(method, path, **kwargs)
        except AssertionError as exc:  # the hook found an undocumented answer
            answers[f"{method} {path}"] = str(exc).splitlines()[0]
            continue
        answers[f"{method} {path}"] = f"{response.status_code} {response.json()['error']['code']}"
    assert answers == {
        f"{method} {path}": "503 database_unavailable" for method, path, _ in requests_needing_the_database
    }
    for path in ("/", "/health/live", "/metrics", "/openapi.json"):
        assert down_api.get(path).status_code == 200
