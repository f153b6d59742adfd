"""Fuzzing the live service: schemathesis against openapi.json, and a corpus of nasty inputs.

1. Property-based fuzzing (schemathesis + Hypothesis) of every operation in
   openapi.json, through real HTTP, on SQLite and MySQL, with a token
   configured (so the authentication checks run too): schemathesis' coverage
   cases (boundary and near-boundary values, missing and wrong-typed
   parameters, undeclared methods), then Hypothesis-generated schema-valid
   (positive) and schema-violating (negative) requests. Every answer goes
   through schemathesis' checks: no 5xx, status, Content-Type, headers and
   body as documented, schema-valid requests accepted, invalid ones rejected,
   authentication enforced. Bounded: at most MAX_EXAMPLES generated requests
   per operation and mode.

2. A hand-written corpus of hostile inputs (SQL injection, NUL bytes, invalid
   UTF-8, Unicode normalization forms, invisible characters, huge and
   negative numbers, NaN, deep nesting, 10 MB bodies, wrong content types,
   duplicate keys, lone surrogates, very long headers). Each case is either
   rejected with the SPEC's 4xx and error code, or stored as the canonical
   identifier the SPEC's normalization gives; after each the service still
   answers.

Run with -s to see how many cases each test tried.
"""

from __future__ import annotations

import json
import logging
import tomllib
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.specs.openapi.checks import positive_data_acceptance

from identity.errors import ApiError
from identity.normalize import normalize_email, normalize_phone
from identity.protection import DEFAULT_BLOCKED, BlockList
from tests.harness.openapi_check import OPENAPI_PATH, check_answer
from tests.harness.servers import Api

TOKEN = "fuzz-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_EXAMPLES = 50
REQUEST_TIMEOUT_S = 15

# Every test here runs with the API token configured, on both backends.
pytestmark = pytest.mark.parametrize("settings", [{"FLUXKART_API_TOKEN": TOKEN}], indirect=True)


@pytest.fixture(autouse=True)
def quiet_werkzeug() -> Iterator[None]:
    """The test server's own request log would print thousands of lines."""
    logger = logging.getLogger("werkzeug")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture
def authorized_api(api: Api) -> Api:
    api.session.headers.update(AUTH)
    return api


def seed(api: Api) -> None:
    """A few customers, so that reads and /contacts/{id} find rows."""
    for email, phone in [("doc@hillvalley.edu", "555"), ("marty@hillvalley.edu", "555"), ("biff@x.org", "1")]:
        assert api.post("/identify", json={"email": email, "phoneNumber": phone}).status_code == 200


# --------------------------------------------------------------------------
# 1. schemathesis
# --------------------------------------------------------------------------


def load_schema() -> Any:
    """openapi.json for schemathesis, with the repository's schemathesis.toml (what `st run`
    reads too). It makes no Authorization header: we send the real token."""
    settings = tomllib.loads((OPENAPI_PATH.parent / "schemathesis.toml").read_text())
    settings["generation"] = {**settings.get("generation", {}), "with-security-parameters": False}
    return schemathesis.openapi.from_path(OPENAPI_PATH, config=schemathesis.Config.from_dict(settings))


# Every check schemathesis has, as `st run --checks all` runs them (issue 22): conformance of
# status, content type, headers and body; schema-violating data rejected and valid data
# accepted; missing required headers, undeclared methods and their Allow header; the token
# not ignored; the stateful ones where a single answer can show something.
load_all_checks()
ALL_CHECKS = list(CHECKS.get_all())


OPERATION_LABELS = [result.ok().label for result in load_schema().get_all_operations()]
# Operations whose only input is the optional X-Request-ID header have no schema-violating request.
WITHOUT_INPUTS = {"GET /", "GET /health/live", "GET /health/ready", "GET /metrics", "GET /openapi.json"}


# The shipped blocked values: the suite's databases are new, so these are the list in force.
DEFAULTS = BlockList(DEFAULT_BLOCKED)


def prose_only_rejection(case: schemathesis.Case) -> tuple[int, str] | None:
    """The status and error code for a schema-valid request that the document rejects in prose only.

    JSON Schema cannot say these, so openapi.json says them in descriptions, and the
    server must answer them with exactly this status and code (asserted in send):
    - 400: the 254-character limit on emails applies after NFC and lower-casing,
      which can lengthen a string;
    - 422: every identifier is a blocked value (SPEC, "Merge protection": the list
      lives in the database, so the document names the defaults in prose).
    (That /customers needs at least one non-empty identifier the document says
    itself: one exploded query object with an anyOf.)
    """
    body = case.body if isinstance(case.body, dict) else {}
    query = case.query or {}
    email = body.get("email") if case.operation.path == "/identify" else query.get("email")
    if isinstance(email, str) and len(unicodedata.normalize("NFC", email.strip()).lower()) > 254:
        return 400, "invalid_email"
    source = body if case.operation.path == "/identify" else query
    try:
        identifiers = [
            ("email", normalize_email(source.get("email"))),
            ("phone", normalize_phone(source.get("phoneNumber"))),
        ]
    except ApiError:
        return None  # invalid: the schema's own business
    blocked = [DEFAULTS.blocks(kind, value) for kind, value in identifiers if value is not None]
    # All of them blocked: nothing is left. A /contacts filter is refused when any is blocked.
    if blocked and (all(blocked) or (case.operation.path == "/contacts" and any(blocked))):
        return 422, "blocked_identifier"
    return None


@dataclass
class FuzzRun:
    """Sends schemathesis cases to the live server and validates every answer."""

    base_url: str
    schema: Any
    session: requests.Session = field(default_factory=requests.Session)
    statuses: Counter[str] = field(default_factory=Counter)

    def send(self, case: schemathesis.Case, phase: str) -> None:
        query = case.query if isinstance(case.query, dict) else {}
        if case.operation.path == "/changes" and isinstance(query.get("wait"), int) and query["wait"] > 1:
            # A valid long poll holds the request up to 30 s on a quiet feed; one second shows the
            # same answer (tests/api/test_changes.py times the long poll itself).
            query["wait"] = 1
        response = case.call(
            base_url=self.base_url, session=self.session, headers=dict(AUTH), timeout=REQUEST_TIMEOUT_S
        )
        mode = case.meta.generation.mode if case.meta is not None else GenerationMode.POSITIVE
        self.statuses[f"{phase}:{mode.value}:{response.status_code}"] += 1
        expected = prose_only_rejection(case) if mode is GenerationMode.POSITIVE else None
        if expected is None:
            case.validate_response(response, checks=ALL_CHECKS)
            return
        assert (response.status_code, response.json()["error"]["code"]) == expected, response.text
        case.validate_response(response, checks=ALL_CHECKS, excluded_checks=[positive_data_acceptance])

    def coverage(self, operation: Any) -> None:
        """Schemathesis' deterministic coverage cases for one operation, both modes."""
        config = self.schema.config.generation_for(operation=operation, phase="coverage")
        modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        for case in self.schema.iter_coverage_cases(
            operation, generation_modes=modes, generation_config=config
        ):
            self.send(case, "coverage")

    def fuzz(self, operation: Any, mode: GenerationMode) -> None:
        """Up to MAX_EXAMPLES Hypothesis-generated cases for one operation in one mode."""

        @hypothesis_settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            self.send(case, "fuzz")

        run()

    def total(self) -> int:
        return sum(self.statuses.values())


@pytest.mark.parametrize("label", OPERATION_LABELS)
def test_schemathesis(label: str, authorized_api: Api, server: Any, backend: str) -> None:
    """Coverage, positive and negative cases for one operation: all answers as documented, no 5xx."""
    seed(authorized_api)
    # A fresh schema per test: schemathesis sends each undeclared method once per schema.
    schema = load_schema()
    operation = next(result.ok() for result in schema.get_all_operations() if result.ok().label == label)
    run = FuzzRun(server.url, schema)
    try:
        run.coverage(operation)
        run.fuzz(operation, GenerationMode.POSITIVE)
        if label not in WITHOUT_INPUTS:
            run.fuzz(operation, GenerationMode.NEGATIVE)
    finally:
        run.session.close()
        print(f"\n[fuzz {backend}] {label}: {run.total()} requests; " + ", ".join(sorted(run.statuses)))
    # Still alive, and the database still answers.
    assert authorized_api.get("/health/ready").status_code == 200
    assert not any(key.endswith((":500", ":502", ":503", ":504")) for key in run.statuses)


# --------------------------------------------------------------------------
# 2. The corpus
# --------------------------------------------------------------------------


def canonical_email(value: str) -> str:
    """The SPEC's normalization, written out independently of the service."""
    return unicodedata.normalize("NFC", value.strip()).lower()


def canonical_phone(value: str | int) -> str:
    text = str(value).strip()
    for ch in " -.()":
        text = text.replace(ch, "")
    return text


@dataclass
class Case:
    """One hostile request and what the SPEC says about it.

    `rejected`: the 4xx status and the error codes it may carry. `stored`: the
    request is valid and these canonical identifiers must be stored and
    answered. `either`: the SPEC leaves it open; the answer must be one of
    these outcomes (and still conform to openapi.json when it comes from the app).
    """

    name: str
    method: str = "POST"
    path: str = "/identify"
    body: Any = None  # JSON-encoded unless bytes or str
    raw: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    rejected: tuple[int, set[str]] | None = None
    stored: dict[str, str] | None = None
    either: bool = False
    server_level: bool = False  # may be refused by the HTTP server before the app (not JSON)


def bad(status: int, *codes: str) -> tuple[int, set[str]]:
    return status, set(codes)


INVALID_JSON = bad(400, "invalid_json")
INVALID_EMAIL = bad(400, "invalid_email")
INVALID_PHONE = bad(400, "invalid_phone_number")
INVALID_PARAM = bad(400, "invalid_parameter")
NOT_FOUND = bad(404, "not_found")


def email_case(name: str, email: Any, **kwargs: Any) -> Case:
    return Case(name, body={"email": email}, **kwargs)


def phone_case(name: str, phone: Any, **kwargs: Any) -> Case:
    return Case(name, body={"phoneNumber": phone}, **kwargs)


def raw_case(name: str, raw: bytes | str, **kwargs: Any) -> Case:
    kwargs.setdefault("headers", {"Content-Type": "application/json"})
    return Case(name, raw=raw, **kwargs)


def get_case(name: str, path: str, params: dict[str, str] | None = None, **kwargs: Any) -> Case:
    return Case(name, method="GET", path=path, params=params, **kwargs)


def stored(email: str | None = None, phone: str | None = None) -> dict[str, str]:
    return {k: v for k, v in (("email", email), ("phone", phone)) if v is not None}


def padded(body: bytes, size: int) -> bytes:
    """A JSON body padded with trailing whitespace to exactly `size` bytes."""
    return body + b" " * (size - len(body))


class Chunked:
    """A body requests sends with Transfer-Encoding: chunked (an iterable without a length).

    Iterable again for every send: each backend's run gets the whole body.
    """

    def __init__(self, body: bytes):
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        return (self.body[i : i + 65536] for i in range(0, len(self.body), 65536))


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


CORPUS: list[Case] = [
    # SQL injection, in the body ...
    email_case("sqli quote or", "x'OR'1'='1@x.com", stored=stored(email="x'or'1'='1@x.com")),
    email_case("sqli comment", "admin'--@x.com", stored=stored(email="admin'--@x.com")),
    email_case(
        "sqli stacked",
        '";DELETE/**/FROM/**/Contact;--@x.com',
        stored=stored(email='";delete/**/from/**/contact;--@x.com'),
    ),
    email_case("sqli with spaces", "a@b.com'; DROP TABLE Contact; --", rejected=INVALID_EMAIL),
    email_case("sqli backslash", "x\\'@x.com", stored=stored(email="x\\'@x.com")),
    email_case("sqli like wildcards", "%_@x.com", stored=stored(email="%_@x.com")),
    phone_case("sqli phone or", "1 OR 1=1", rejected=INVALID_PHONE),
    phone_case("sqli phone drop", "123);DROP TABLE Contact;--", rejected=INVALID_PHONE),
    phone_case("sqli phone union", "1 UNION SELECT email FROM Contact", rejected=INVALID_PHONE),
    # ... and in query parameters and paths
    get_case("sqli query email", "/contacts", {"email": "' OR 1=1 --"}, rejected=INVALID_EMAIL),
    get_case(
        "sqli query email valid",
        "/contacts",
        {"email": "x'OR'1'='1@x.com"},
        stored=stored(email="x'or'1'='1@x.com"),
    ),
    get_case("sqli query phone", "/contacts", {"phoneNumber": "1' OR '1'='1"}, rejected=INVALID_PHONE),
    get_case("sqli limit", "/contacts", {"limit": "1;DROP TABLE Contact"}, rejected=INVALID_PARAM),
    get_case("sqli after", "/contacts", {"after": "0 OR 1=1"}, rejected=INVALID_PARAM),
    get_case("sqli limit union", "/contacts", {"limit": "10 UNION SELECT 1"}, rejected=INVALID_PARAM),
    get_case("sqli customers", "/customers", {"email": "%' OR 1=1 #"}, rejected=INVALID_EMAIL),
    get_case("sqli customers phone", "/customers", {"phoneNumber": "0 OR 1=1"}, rejected=INVALID_PHONE),
    get_case("sqli path", "/contacts/1 OR 1=1", rejected=NOT_FOUND),
    get_case("sqli path semicolon", "/contacts/1;DROP TABLE Contact", rejected=NOT_FOUND),
    # NUL bytes
    email_case("nul in email", "a\x00b@x.com", rejected=INVALID_EMAIL),
    phone_case("nul in phone", "123\x00456", rejected=INVALID_PHONE),
    raw_case("nul after body", b'{"email": "a@b.c"}\x00', rejected=INVALID_JSON),
    raw_case("nul before body", b'\x00{"email": "a@b.c"}', rejected=INVALID_JSON),
    get_case("nul in query email", "/contacts", {"email": "a\x00@x.com"}, rejected=INVALID_EMAIL),
    get_case("nul in query phone", "/customers", {"phoneNumber": "\x00"}, rejected=INVALID_PHONE),
    get_case("nul in path", "/contacts/1%00", rejected=NOT_FOUND),
    Case("nul in ignored key", body={"email": "nul@x.com", "note": "\x00"}, stored=stored(email="nul@x.com")),
    # Invalid UTF-8 (and other encodings)
    raw_case("invalid utf-8", b'{"email": "\xff\xfe@x.com"}', rejected=INVALID_JSON),
    raw_case("overlong utf-8", b'{"email": "\xc0\xaf@x.com"}', rejected=INVALID_JSON),
    raw_case("truncated utf-8", b'{"email": "\xe2\x82@x.com"}', rejected=INVALID_JSON),
    raw_case("latin-1 body", b'{"email": "jos\xe9@x.com"}', rejected=INVALID_JSON),
    raw_case("utf-8 encoded surrogate", b'{"email": "\xed\xa0\x80@x.com"}', rejected=INVALID_EMAIL),
    raw_case("utf-8 encoded surrogate phone", b'{"phoneNumber": "\xed\xa0\x80"}', rejected=INVALID_PHONE),
    get_case("invalid utf-8 in query", "/contacts?email=%FF%FE@x.com", either=True),
    raw_case("utf-16 body", '{"email": "utf16@x.com"}'.encode("utf-16"), either=True),
    raw_case("utf-8 bom", b'\xef\xbb\xbf{"email": "bom@x.com"}', either=True),
    # One email in several Unicode forms is one identifier
    email_case("nfc", "Jos\u00e9@X.com", stored=stored(email="jos\u00e9@x.com")),
    email_case("nfd", "Jose\u0301@x.com", stored=stored(email="jos\u00e9@x.com")),
    email_case("nfd upper", "JOSE\u0301@X.COM", stored=stored(email="jos\u00e9@x.com")),
    email_case("angstrom sign", "\u212bngstr\u00f6m@x.com", stored=stored(email="\u00e5ngstr\u00f6m@x.com")),
    email_case("a ring nfd", "A\u030angstro\u0308m@x.com", stored=stored(email="\u00e5ngstr\u00f6m@x.com")),
    email_case("fullwidth stays distinct", "\uff4a\uff4f@x.com", stored=stored(email="\uff4a\uff4f@x.com")),
    email_case(
        "dotted capital i", "\u0130zmir@x.com", stored=stored(email=canonical_email("\u0130zmir@x.com"))
    ),
    email_case("emoji (4-byte utf-8)", "\U0001f600@x.com", stored=stored(email="\U0001f600@x.com")),
    raw_case(
        "escaped surrogate pair",
        b'{"email": "\\ud83d\\ude00@y.com"}',
        stored=stored(email="\U0001f600@y.com"),
    ),
    # Invisible and bidirectional characters
    email_case("zero-width space", "zw\u200b@x.com", either=True),
    email_case("zero-width joiner", "zw\u200d@x.com", either=True),
    email_case("right-to-left override", "\u202eabc@x.com", either=True),
    email_case("bom inside", "\ufeffbom2@x.com", either=True),
    email_case("no-break space", "a\u00a0b@x.com", rejected=INVALID_EMAIL),
    email_case("line separator", "a\u2028b@x.com", rejected=INVALID_EMAIL),
    email_case("ideographic space trimmed", "  pad@x.com\u3000", stored=stored(email="pad@x.com")),
    email_case("tab inside", "a\tb@x.com", rejected=INVALID_EMAIL),
    phone_case("zero-width in phone", "\u200b123", rejected=INVALID_PHONE),
    phone_case("arabic-indic digits", "\u0661\u0662\u0663", rejected=INVALID_PHONE),
    phone_case("fullwidth digits", "\uff11\uff12\uff13", rejected=INVALID_PHONE),
    phone_case("rtl mark in phone", "123\u200f", rejected=INVALID_PHONE),
    # Numbers
    phone_case("10**40", 10**40, rejected=INVALID_PHONE),
    phone_case("negative", -1, rejected=INVALID_PHONE),
    phone_case("negative big", -(10**15), rejected=INVALID_PHONE),
    phone_case("zero", 0, stored=stored(phone="0")),
    phone_case("20 digits", 12345678901234567890, stored=stored(phone="12345678901234567890")),
    phone_case("21 digits", 123456789012345678901, rejected=INVALID_PHONE),
    phone_case("formatted", "  (+91) 98765-43210  ", stored=stored(phone="+919876543210")),
    phone_case("plus only", "+", rejected=INVALID_PHONE),
    phone_case("double plus", "++1", rejected=INVALID_PHONE),
    phone_case("letters", "1-800-FLOWERS", rejected=INVALID_PHONE),
    phone_case("true", True, rejected=INVALID_PHONE),
    phone_case("false", False, rejected=INVALID_PHONE),
    raw_case("minus zero", b'{"phoneNumber": -0}', either=True),
    raw_case("whole float", b'{"phoneNumber": 1.0}', stored=stored(phone="1")),
    raw_case("exponent", b'{"phoneNumber": 1e5}', stored=stored(phone="100000")),
    raw_case(
        "17 digits, all kept",
        b'{"phoneNumber": 98765432101234567.0}',
        stored=stored(phone="98765432101234567"),
    ),
    raw_case("fraction", b'{"phoneNumber": 1.5}', rejected=INVALID_PHONE),
    raw_case("huge exponent", b'{"phoneNumber": 1e1000000000}', rejected=INVALID_PHONE),
    raw_case("float overflow", b'{"phoneNumber": 1e400}', rejected=INVALID_PHONE),
    raw_case("negative float", b'{"phoneNumber": -1.5}', rejected=INVALID_PHONE),
    raw_case("NaN phone", b'{"phoneNumber": NaN}', rejected=bad(400, "invalid_phone_number", "invalid_json")),
    raw_case(
        "Infinity phone",
        b'{"phoneNumber": Infinity}',
        rejected=bad(400, "invalid_phone_number", "invalid_json"),
    ),
    raw_case(
        "-Infinity phone",
        b'{"phoneNumber": -Infinity}',
        rejected=bad(400, "invalid_phone_number", "invalid_json"),
    ),
    raw_case("NaN email", b'{"email": NaN}', rejected=bad(400, "invalid_email", "invalid_json")),
    raw_case(
        "5000-digit int",
        b'{"phoneNumber": ' + b"9" * 5000 + b"}",
        rejected=bad(400, "invalid_json", "invalid_phone_number"),
    ),
    # Deep nesting (kept under the 64 KiB limit, so the parser has to deal with it)
    raw_case("deep arrays", "[" * 30000 + "]" * 30000, rejected=bad(400, "invalid_json", "invalid_body")),
    raw_case("deep objects", nested(10000), rejected=bad(400, "invalid_json", "invalid_body")),
    Case(
        "moderately nested ignored key",
        body={"email": "deep@x.com", "x": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]},
        stored=stored(email="deep@x.com"),
    ),
    email_case("object as email", {"email": "x@y.z"}, rejected=INVALID_EMAIL),
    # Size
    raw_case(
        "10 MB body",
        b'{"email": "' + b"a" * (10 * 1024 * 1024) + b'@x.com"}',
        rejected=bad(413, "payload_too_large"),
    ),
    raw_case("64 KiB + 1", padded(b'{"email": "big@x.com"}', 65537), rejected=bad(413, "payload_too_large")),
    raw_case("64 KiB exactly", padded(b'{"email": "big@x.com"}', 65536), stored=stored(email="big@x.com")),
    Case(
        "10 MB chunked",
        kwargs={"data": Chunked(b'{"email": "' + b"a" * (10 << 20) + b'@x.com"}')},
        headers={"Content-Type": "application/json"},
        rejected=bad(413, "payload_too_large"),
    ),
    Case(
        "chunked valid JSON then 64 KiB of spaces",
        kwargs={"data": Chunked(padded(b'{"email": "chunk@x.com"}', 70_000))},
        headers={"Content-Type": "application/json"},
        rejected=bad(413, "payload_too_large"),
    ),
    # Content types: the body is read as JSON whatever the header says
    raw_case(
        "text/plain json",
        '{"email": "plain@x.com"}',
        headers={"Content-Type": "text/plain"},
        stored=stored(email="plain@x.com"),
    ),
    raw_case(
        "no content type", b'{"email": "nocontent@x.com"}', headers={}, stored=stored(email="nocontent@x.com")
    ),
    raw_case(
        "json with latin-1 charset",
        '{"email": "charset@x.com"}',
        headers={"Content-Type": "application/json; charset=latin-1"},
        stored=stored(email="charset@x.com"),
    ),
    raw_case(
        "form encoded",
        "email=form%40x.com",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        rejected=bad(400, "invalid_json"),
    ),
    Case(
        "multipart", kwargs={"files": {"email": ("e.txt", b"multi@x.com")}}, rejected=bad(400, "invalid_json")
    ),
    raw_case(
        "xml",
        "<email>xml@x.com</email>",
        headers={"Content-Type": "application/xml"},
        rejected=bad(400, "invalid_json"),
    ),
    # Duplicate keys: the last one counts (openapi.json says so)
    raw_case(
        "duplicate email",
        b'{"email": "first@x.com", "email": "second@x.com"}',
        stored=stored(email="second@x.com"),
    ),
    raw_case(
        "duplicate to null",
        b'{"phoneNumber": "42", "phoneNumber": null, "email": "dup@x.com"}',
        stored=stored(email="dup@x.com"),
    ),
    # Lone surrogates in JSON strings
    raw_case("lone high surrogate", b'{"email": "\\ud800@x.com"}', rejected=INVALID_EMAIL),
    raw_case("reversed pair", b'{"email": "\\udfff\\ud800@x.com"}', rejected=INVALID_EMAIL),
    raw_case("lone surrogate phone", b'{"phoneNumber": "\\ud800"}', rejected=INVALID_PHONE),
    raw_case(
        "lone surrogate ignored key",
        b'{"email": "sur@x.com", "note": "\\ud800"}',
        stored=stored(email="sur@x.com"),
    ),
    get_case("lone surrogate in query", "/contacts?email=%ED%A0%80@x.com", either=True),
    # Headers
    get_case("long X-Request-ID", "/", headers={"X-Request-ID": "r" * 10_000}),
    get_case("X-Request-ID with an email", "/", headers={"X-Request-ID": "who@x.com"}),
    get_case("60 KB User-Agent", "/contacts", headers={"User-Agent": "u" * 60_000}),
    get_case("100 KB header", "/contacts", headers={"X-Big": "b" * 100_000}, server_level=True),
    get_case("150 headers", "/contacts", headers={f"X-H{i}": "v" for i in range(150)}, server_level=True),
    get_case(
        "long wrong token",
        "/contacts",
        headers={"Authorization": "Bearer " + "t" * 10_000},
        rejected=bad(401, "unauthorized"),
    ),
    get_case(
        "token in wrong scheme",
        "/contacts",
        headers={"Authorization": f"Basic {TOKEN}"},
        rejected=bad(401, "unauthorized"),
    ),
    get_case("100 KB query string", "/contacts", {"email": "q" * 100_000 + "@x.com"}, server_level=True),
    # Bodies and parameters of the wrong shape
    raw_case("array body", b'[{"email": "a@b.c"}]', rejected=bad(400, "invalid_body")),
    raw_case("true body", b"true", rejected=bad(400, "invalid_body")),
    raw_case("empty object", b"{}", rejected=bad(400, "missing_identifier")),
    email_case("254 characters", "e" * 248 + "@x.com", stored=stored(email="e" * 248 + "@x.com")),
    email_case("255 characters", "e" * 249 + "@x.com", rejected=INVALID_EMAIL),
    email_case("two at signs", "a@b@c", rejected=INVALID_EMAIL),
    email_case("empty local part", "@x.com", rejected=INVALID_EMAIL),
    email_case("empty domain", "x@", rejected=INVALID_EMAIL),
    get_case("duplicate limit", "/contacts?limit=1&limit=5", either=True),
    get_case("arabic-indic limit", "/contacts", {"limit": "\u0663"}, rejected=INVALID_PARAM),
    get_case("plus limit", "/contacts", {"limit": "+5"}, rejected=INVALID_PARAM),
    get_case("huge after", "/contacts", {"after": "9" * 30}, rejected=INVALID_PARAM),
    get_case("zero id", "/contacts/0", rejected=NOT_FOUND),
    get_case("huge id", "/contacts/" + "9" * 40, rejected=NOT_FOUND),
    get_case("padded id", "/contacts/0001", either=True),
    get_case("arabic-indic id", "/contacts/\u0661", either=True),
    Case(
        "method override header",
        body={"email": "override@x.com"},
        headers={"X-HTTP-Method-Override": "DELETE"},
        stored=stored(email="override@x.com"),
    ),
]


def send(api: Api, case: Case) -> requests.Response:
    kwargs: dict[str, Any] = {"headers": case.headers, "params": case.params, **case.kwargs}
    if case.raw is not None:
        kwargs["data"] = case.raw
    elif case.body is not None:
        kwargs["data"] = json.dumps(case.body)
        kwargs["headers"] = {"Content-Type": "application/json", **case.headers}
    return api.request(case.method, case.path, **kwargs)


def stored_emails_and_phones(api: Api) -> tuple[set[str], set[str]]:
    rows: list[dict[str, Any]] = []
    after = 0
    while True:
        page = api.get("/contacts", params={"limit": 1000, "after": after}).json()
        rows += page
        if len(page) < 1000:
            break
        after = page[-1]["id"]
    return {r["email"] for r in rows if r["email"]}, {r["phoneNumber"] for r in rows if r["phoneNumber"]}


def judge(api: Api, case: Case, response: requests.Response) -> str:
    """Check one answer against the case's expectation; returns the outcome's name."""
    where = f"{case.name}: {case.method} {case.path} -> {response.status_code} {response.text[:300]!r}"
    from_app = response.headers.get("Content-Type", "").startswith(
        ("application/json", "text/plain; version")
    )
    if case.server_level and not from_app:
        # Refused by the HTTP server before the app ran (line or header limits): a 4xx, not JSON.
        assert 400 <= response.status_code < 500, where
        return f"server {response.status_code}"
    assert response.status_code < 500, where
    check_answer(response)  # whatever the app answered is documented
    if "X-Request-ID" in case.headers:
        given = case.headers["X-Request-ID"]
        echoed = response.headers["X-Request-ID"]
        assert echoed != given and len(echoed) <= 128, where  # not sane: a generated one instead
    if case.rejected is not None:
        status, codes = case.rejected
        assert response.status_code == status, where
        assert response.json()["error"]["code"] in codes, where
        return f"{status} {response.json()['error']['code']}"
    if case.stored is not None:
        assert response.status_code == 200, where
        if case.method == "POST":
            contact = response.json()["contact"]
            if "email" in case.stored:
                assert case.stored["email"] in contact["emails"], where
            if "phone" in case.stored:
                assert case.stored["phone"] in contact["phoneNumbers"], where
        emails, phones = stored_emails_and_phones(api)
        assert "email" not in case.stored or case.stored["email"] in emails, where
        assert "phone" not in case.stored or case.stored["phone"] in phones, where
        return "200 stored canonical"
    if case.either and response.status_code == 200 and case.path == "/identify":
        # Valid after all: stored exactly as the SPEC's normalization says.
        contact = response.json()["contact"]
        sent = case.body if isinstance(case.body, dict) else json.loads(case.raw or b"{}")
        if isinstance(sent.get("email"), str):
            assert canonical_email(sent["email"]) in contact["emails"], where
        if sent.get("phoneNumber") is not None:
            assert canonical_phone(sent["phoneNumber"]) in contact["phoneNumbers"], where
    assert response.status_code < 500, where
    return f"{response.status_code} {'accepted' if response.ok else response.json()['error']['code']}"


def test_corpus(authorized_api: Api, contacts: Callable[[], list[dict[str, Any]]], backend: str) -> None:
    """Every hostile input gets the SPEC's answer, and the service keeps answering."""
    seed(authorized_api)
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    for case in CORPUS:
        try:
            response = send(authorized_api, case)
            outcomes[judge(authorized_api, case, response)] += 1
        except (AssertionError, requests.RequestException) as exc:
            failures.append(f"{case.name}: {type(exc).__name__}: {str(exc)[:400]}")
        # The service still answers, on a fresh connection.
        assert requests.get(authorized_api.base_url + "/health/live", timeout=5).status_code == 200, case.name
    print(
        f"\n[corpus {backend}] {len(CORPUS)} cases: "
        + ", ".join(f"{k} x{v}" for k, v in sorted(outcomes.items()))
    )
    assert not failures, "\n".join(failures)
    # Nothing was dropped or rewritten by the injections: the seed's rows are all there.
    rows = contacts()
    assert {"doc@hillvalley.edu", "marty@hillvalley.edu", "biff@x.org"} <= {row["email"] for row in rows}
    assert authorized_api.get("/health/ready").status_code == 200


def test_case_and_form_variants_are_one_identifier(authorized_api: Api) -> None:
    """Upper/lower case and NFC/NFD spellings of one address are one customer.

    The SPEC normalizes with NFC then lower-casing; lower-casing can undo NFC
    (U+03AA + U+0301 lower-cases to U+03CA + U+0301, which NFC composes to
    U+0390), so the stored value must be NFC again for the variants to meet.
    """
    variants = [
        "\u0390@greek.gr",  # ΐ precomposed, already lower case
        "\u03b9\u0308\u0301@greek.gr",  # its NFD
        "\u03aa\u0301@GREEK.GR",  # Ϊ + acute: upper case, not fully composed
    ]
    first = authorized_api.identify(variants[0])
    for variant in variants[1:]:
        again = authorized_api.identify(variant)
        assert again["primaryContactId"] == first["primaryContactId"], (variant, again)
        assert again["emails"] == first["emails"], (variant, again)
        assert again["secondaryContactIds"] == [], (variant, again)
