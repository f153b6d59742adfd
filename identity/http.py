"""Reading a request: the bearer token (SPEC, "Access"), the JSON body and query parameters;
each refusal an ApiError that names the problem."""

from __future__ import annotations

import hmac
import json
from decimal import Decimal
from typing import Any

from flask import current_app, request

from identity.errors import ApiError
from identity.normalize import normalize_email, normalize_phone
from identity.pool import app_state

# Open to anyone: status and the load balancer's health checks.
PUBLIC_ENDPOINTS = {"api.status", "api.live", "api.ready"}


def require_token() -> None:
    """401 unless the bearer token is sent, when FLUXKART_API_TOKEN is set (SPEC, "Access")."""
    token: str = current_app.config["FLUXKART_API_TOKEN"]
    # A part that checks its own sign-in (the console: a form cannot send a header) is exempt.
    if not token or request.endpoint in PUBLIC_ENDPOINTS or request.blueprint in app_state().own_sign_in:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": 'Bearer realm="fluxkart"'},
        )


def json_body() -> dict[str, Any]:
    """The request body as a JSON object, whatever the Content-Type says; 400 otherwise."""
    # Read to the end: a chunked body (no Content-Length) over MAX_CONTENT_LENGTH
    # is refused (413) only when we try to read past the limit, not before.
    chunks = []
    while chunk := request.stream.read(16384):
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        # Numbers with a fraction or exponent as Decimal: 98765432101234567.0 keeps every digit
        # (a float would round it), and normalize_phone takes a whole one as the integer it is.
        body = json.loads(raw, parse_float=Decimal)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", "request body must be valid UTF-8 JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "request body must be a JSON object")
    return body


def query_value(name: str) -> str | None:
    """A query parameter given at most once (None when absent); 400 when repeated: with
    `?email=a&email=b` no answer could say which one it used (openapi.json says so)."""
    values = request.args.getlist(name)
    if len(values) > 1:
        raise ApiError(400, "invalid_parameter", f"give {name} once, not {len(values)} times")
    return values[0] if values else None


def query_identifiers() -> tuple[str | None, str | None]:
    """?email= and ?phoneNumber=, normalized like identify's input."""
    region = current_app.config["FLUXKART_PHONE_REGION"]
    email = normalize_email(query_value("email"))
    phone = normalize_phone(query_value("phoneNumber"), region)
    return email, phone


def query_int(name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high]; 400 otherwise."""
    raw = query_value(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, "invalid_parameter", f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def query_bool(name: str) -> bool:
    """A true/false query parameter, false when absent; 400 for anything else."""
    given = query_value(name)
    raw = "false" if given is None else given
    if raw not in ("true", "false"):
        raise ApiError(400, "invalid_parameter", f"{name} must be true or false")
    return raw == "true"
