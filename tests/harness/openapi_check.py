"""Checks one HTTP answer against openapi.json (used by conftest's Api for every answer).

`check_answer(response)` validates the status (documented for that path and
method), the Content-Type, the documented headers and the JSON body against
the response schema (jsonschema, draft 2020-12, $refs resolved inside
openapi.json).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import requests
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

OPENAPI_PATH = Path(__file__).resolve().parents[2] / "openapi.json"
SPEC: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())
SPEC_URI = "urn:fluxkart:openapi"
REGISTRY: Registry[Any] = Registry().with_resource(
    SPEC_URI, Resource.from_contents(SPEC, default_specification=DRAFT202012)
)

# Paths and the regexes that match them (a template's {param} is one segment).
TEMPLATES = {
    template: re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$")
    for template in SPEC["paths"]
}


# --------------------------------------------------------------------------
# The checker: one answer against the document
# --------------------------------------------------------------------------


def escape(segment: str) -> str:
    """A JSON pointer segment."""
    return segment.replace("~", "~0").replace("/", "~1")


def resolve(pointer: str) -> tuple[str, Any]:
    """Walk a JSON pointer into SPEC, following OpenAPI `$ref`s on the way; returns (pointer, node).

    The pointer returned is the canonical one (inside components when a $ref was followed).
    """
    node: Any = SPEC
    current = ""
    for part in pointer.lstrip("/").split("/") if pointer else []:
        node = node[part.replace("~1", "/").replace("~0", "~")]
        current = f"{current}/{part}"
        for _ in range(10):
            if not (isinstance(node, dict) and "$ref" in node):
                break
            current = node["$ref"].removeprefix("#")
            node = resolve(current)[1]
    return current, node


def match_template(path: str) -> str | None:
    """The documented path template a concrete path belongs to, if any."""
    for template, pattern in TEMPLATES.items():
        if pattern.match(path):
            return template
    return None


def response_pointer(method: str, path: str, status: int) -> str:
    """The pointer of the response object that documents this answer (AssertionError if none)."""
    template = match_template(path)
    if template is not None and method.lower() in SPEC["paths"][template]:
        responses = f"/paths/{escape(template)}/{method.lower()}/responses"
        _, documented = resolve(responses)
        for key in (str(status), f"{str(status)[0]}XX", "default"):
            if key in documented:
                return f"{responses}/{key}"
        raise AssertionError(f"{method} {path} answered {status}, which {template} does not document")
    # Answers for paths or methods the document does not list (see info.description).
    generic = {404: "NotFound", 405: "MethodNotAllowed", 401: "Unauthorized"}
    if status not in generic or (status == 404 and template is not None):
        raise AssertionError(f"{method} {path} is not documented, and answered {status}")
    return f"/components/responses/{generic[status]}"


def schema_validator(pointer: str) -> jsonschema.protocols.Validator:
    """A draft 2020-12 validator for the schema at `pointer`, with $refs resolved in SPEC."""
    return jsonschema.Draft202012Validator(
        {"$ref": f"{SPEC_URI}#{pointer}"},
        registry=REGISTRY,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


def check_header(name: str, value: str, pointer: str) -> None:
    """A header value against its schema (integers arrive as text)."""
    schema_pointer, schema = resolve(f"{pointer}/schema")
    instance: Any = value
    if schema.get("type") == "integer":
        assert re.fullmatch(r"-?[0-9]+", value), f"header {name}: {value!r} is not an integer"
        instance = int(value)
    errors = list(schema_validator(schema_pointer).iter_errors(instance))
    assert not errors, f"header {name}: {value!r}: {errors[0].message}"


def check_answer(response: requests.Response) -> str:
    """Validate one answer against openapi.json; returns the pointer of the response object used."""
    request = response.request
    method = str(request.method)
    path = urlsplit(str(request.url)).path
    where = f"{method} {path} -> {response.status_code}"
    pointer = response_pointer(method, path, response.status_code)
    pointer, documented = resolve(pointer)

    for name in documented.get("headers", {}):
        _, header_object = resolve(f"{pointer}/headers/{escape(name)}")
        value = response.headers.get(name)
        if value is None:
            assert not header_object.get("required"), f"{where}: no {name} header"
            continue
        check_header(name, value, f"{pointer}/headers/{escape(name)}")

    content = documented.get("content", {})
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    assert media_type in content, f"{where}: Content-Type {media_type!r} is not one of {sorted(content)}"
    if media_type == "application/json":
        try:
            body = response.json()
        except ValueError as exc:
            raise AssertionError(f"{where}: the body is not JSON: {response.text[:200]!r}") from exc
        schema_pointer = f"{pointer}/content/{escape(media_type)}/schema"
        errors = sorted(schema_validator(schema_pointer).iter_errors(body), key=lambda e: list(e.path))
        assert not errors, f"{where}: body {body!r} does not match the schema: " + "; ".join(
            f"{list(e.path)}: {e.message}" for e in errors[:3]
        )
    return pointer


def check_app_answer(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """A requests response hook: check every answer the app itself gave.

    HEAD and OPTIONS are answered by the framework, and an answer without an
    X-Request-ID came from the HTTP server before the app ran (e.g. 431 for an
    oversized header): neither is the app's to describe.
    """
    if response.request.method in ("HEAD", "OPTIONS") or "X-Request-ID" not in response.headers:
        return
    check_answer(response)


class AnswerLog:
    """Which documented responses the answers in a test exercised (conftest's Api checks them)."""

    def __init__(self) -> None:
        self.checked: list[tuple[str, str, int]] = []

    def hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        method = str(response.request.method)
        if method in ("HEAD", "OPTIONS"):
            return
        path = urlsplit(str(response.request.url)).path
        self.checked.append((method, match_template(path) or path, response.status_code))
