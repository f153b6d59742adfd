"""Access control: FLUXKART_API_TOKEN guards everything but GET / and the health endpoints.

With a token configured, every other endpoint answers 401 with the JSON error
{"error": {"code": "unauthorized", ...}} and a WWW-Authenticate header when
the request has no token, a wrong one, or the right one under another scheme,
and works with `Authorization: Bearer <token>`. Without a token configured,
everything is open. Every answer here is also checked against openapi.json.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.servers import Api

TOKEN = "k7Q-access-token_0123456789"
WITH_TOKEN = pytest.mark.parametrize("settings", [{"FLUXKART_API_TOKEN": TOKEN}], indirect=True)

# (method, path, request arguments, status with the right token); seed() makes contact 1.
PROTECTED: list[tuple[str, str, dict[str, Any], int]] = [
    ("POST", "/identify", {"json": {"email": "access@x.com", "phoneNumber": "42"}}, 200),
    ("GET", "/customers", {"params": {"email": "seed@x.com"}}, 200),
    ("GET", "/contacts", {"params": {"limit": 5}}, 200),
    ("GET", "/contacts/1", {}, 200),
    ("GET", "/contacts/999999", {}, 404),
    ("GET", "/metrics", {}, 200),
    ("GET", "/openapi.json", {}, 200),
]
PUBLIC = ["/", "/health/live", "/health/ready"]

WRONG_AUTHORIZATIONS: dict[str, str | None] = {
    "none": None,
    "empty": "",
    "scheme only": "Bearer",
    "empty token": "Bearer ",
    "wrong token": "Bearer not-the-token",
    "token prefix": f"Bearer {TOKEN[:-1]}",
    "token plus one": f"Bearer {TOKEN}x",
    "token in upper case": f"Bearer {TOKEN.upper()}",
    "basic scheme": f"Basic {TOKEN}",
    "token scheme": f"Token {TOKEN}",
    "no scheme": TOKEN,
    "scheme glued to token": f"Bearer{TOKEN}",
    "two tokens": f"Bearer {TOKEN} {TOKEN}",
    "non-ascii token": "Bearer t\u00f6k\u00e9n",
}


def seed(api: Api) -> None:
    response = api.post(
        "/identify", json={"email": "seed@x.com"}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["contact"]["primaryContactId"] == 1


def send(api: Api, method: str, path: str, kwargs: dict[str, Any], authorization: str | None) -> Any:
    headers = {} if authorization is None else {"Authorization": authorization}
    return api.request(method, path, headers=headers, **kwargs)


def assert_unauthorized(response: Any, label: str) -> None:
    assert response.status_code == 401, (label, response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json"), label
    error = response.json()["error"]
    assert error["code"] == "unauthorized" and error["message"], label
    assert response.headers["WWW-Authenticate"].startswith("Bearer"), label
    assert TOKEN not in response.text and TOKEN.lower() not in response.text.lower(), label


@WITH_TOKEN
@pytest.mark.parametrize("method,path,kwargs,status", PROTECTED, ids=[f"{m} {p}" for m, p, _, _ in PROTECTED])
def test_protected_endpoint_needs_the_token(
    api: Api, method: str, path: str, kwargs: Any, status: int
) -> None:
    seed(api)
    for label, authorization in WRONG_AUTHORIZATIONS.items():
        assert_unauthorized(send(api, method, path, kwargs, authorization), f"{method} {path}, {label}")
    for scheme in ("Bearer", "bearer", "BEARER"):  # auth schemes are case-insensitive (RFC 9110)
        response = send(api, method, path, kwargs, f"{scheme} {TOKEN}")
        assert response.status_code == status, (scheme, response.text)


@WITH_TOKEN
def test_nothing_is_written_without_the_token(api: Api, contacts: Any) -> None:
    assert api.get("/health/ready").status_code == 200  # the first connection creates the schema
    for label, authorization in WRONG_AUTHORIZATIONS.items():
        response = send(api, "POST", "/identify", {"json": {"email": f"{len(label)}@x.com"}}, authorization)
        assert_unauthorized(response, label)
    assert contacts() == []


@WITH_TOKEN
@pytest.mark.parametrize("path", PUBLIC)
def test_public_endpoints_need_no_token(api: Api, path: str) -> None:
    for authorization in (None, "Bearer wrong", f"Bearer {TOKEN}"):
        response = send(api, "GET", path, {}, authorization)
        assert response.status_code == 200, (path, authorization, response.text)


@WITH_TOKEN
def test_unknown_paths_and_methods_do_not_tell_without_the_token(api: Api) -> None:
    """Without the token, an unknown path or method is 401 too: nothing about the API is revealed."""
    for method, path, status in [
        ("GET", "/nowhere", 404),
        ("GET", "/identify", 405),
        ("DELETE", "/contacts", 405),
    ]:
        assert_unauthorized(send(api, method, path, {}, None), f"{method} {path}")
        assert send(api, method, path, {}, f"Bearer {TOKEN}").status_code == status


@pytest.mark.parametrize("method,path,kwargs,status", PROTECTED, ids=[f"{m} {p}" for m, p, _, _ in PROTECTED])
def test_without_a_configured_token_everything_is_open(
    api: Api, method: str, path: str, kwargs: Any, status: int
) -> None:
    response = api.post("/identify", json={"email": "seed@x.com"})
    assert response.status_code == 200
    for authorization in (None, "Bearer anything", "Basic dXNlcjpwYXNz"):
        response = send(api, method, path, kwargs, authorization)
        assert response.status_code == status, (authorization, response.text)
    for path in PUBLIC:
        assert api.get(path).status_code == 200
