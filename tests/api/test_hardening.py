"""What a client cannot do to the service's records (issue 22): choose the audit id, or grow
/metrics.

- The request id that history, the erasure record and the log lines carry is made by the
  service; a client's X-Request-ID is kept beside it (X-Client-Request-ID, and the access
  line's client_request_id), never in its place. Control: before this, a request sent with
  `X-Request-ID: forged-by-client` was recorded in history under that id.
- Metric label values are bounded: invented HTTP methods count as "other", unmatched paths as
  "unmatched". Control: before this, each invented method added about 16 series.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness.database import run_sql
from tests.harness.gunicorn import Gunicorn
from tests.harness.servers import Api, LogLines

TOKEN = "hardening-token"
FORGED = "forged-by-client"
WITH_TOKEN = pytest.mark.parametrize("settings", [{"FLUXKART_API_TOKEN": TOKEN}], indirect=True)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@WITH_TOKEN
def test_history_and_erasure_record_the_services_id_not_the_clients(
    api: Api, log_lines: LogLines, settings: dict[str, Any]
) -> None:
    sent = api.post(
        "/identify",
        json={"email": "rid@x.io", "phoneNumber": "5550101"},
        headers={**AUTH, "X-Request-ID": FORGED},
    )
    assert sent.status_code == 200
    service_id = sent.headers["X-Request-ID"]
    assert service_id != FORGED
    assert sent.headers["X-Client-Request-ID"] == FORGED  # kept beside it, for correlation
    primary = sent.json()["contact"]["primaryContactId"]
    events = api.get(f"/customers/{primary}/history", headers=AUTH).json()["events"]
    assert [event["requestId"] for event in events] == [service_id]
    access = [line for line in log_lines() if line.get("logger") == "fluxkart.access"]
    assert {(line["request_id"], line.get("client_request_id")) for line in access} >= {(service_id, FORGED)}
    assert not any(line.get("request_id") == FORGED for line in log_lines())

    erased = api.request(
        "DELETE", "/customers", params={"email": "rid@x.io"}, headers={**AUTH, "X-Request-ID": FORGED}
    )
    assert erased.status_code == 200
    records = run_sql(settings, "SELECT requestId FROM CustomerErasure")
    assert [row["requestId"] for row in records] == [erased.headers["X-Request-ID"]]
    assert erased.headers["X-Request-ID"] != FORGED


def series(text: str) -> list[str]:
    """The sample lines of a Prometheus text page."""
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def scrape(service: Gunicorn) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers=AUTH)
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def send(service: Gunicorn, method: str, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    try:
        conn.request(method, path)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize("backend", ["sqlite"])
@WITH_TOKEN
def test_clients_cannot_grow_the_metrics(settings: dict[str, Any], gunicorn: Callable[..., Gunicorn]) -> None:
    """Invented methods and unknown paths, without a token: the second round adds no series."""
    service = gunicorn(settings, workers=1, threads=2)

    def round_of(start: int) -> None:
        for number in range(start, start + 25):
            assert send(service, f"INVENTED{number}", "/identify") in (401, 405)
            assert send(service, "GET", f"/nowhere/{number}") == 401
            assert send(service, f"ODD{number}", f"/else/{number}") in (401, 405)

    scrape(service)  # /metrics counts itself once answered: its own series exist from here on
    round_of(0)
    first = series(scrape(service))
    round_of(100)
    second = series(scrape(service))
    assert "INVENTED" not in "\n".join(second) and "/nowhere" not in "\n".join(second)
    assert len(second) == len(first), set(second) ^ set(first)
    assert any('method="other"' in line for line in second)


def test_a_repeated_query_parameter_is_refused(api: Api) -> None:
    """`?email=a&email=b`: no answer could say which one it used (openapi.json says so).
    Control: before, the first was used and the second ignored (200)."""
    assert api.post("/identify", json={"email": "one@x.io"}).status_code == 200
    for method, path in [
        ("GET", "/customers?email=one@x.io&email=two@x.io"),
        ("GET", "/contacts?limit=1&limit=2"),
        ("GET", "/contacts?phoneNumber=1&phoneNumber=1"),
        ("GET", "/customers/1/history?after=0&after=1"),
    ]:
        response = api.request(method, path)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["code"] == "invalid_parameter"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_servers_own_414_and_431_are_documented(
    settings: dict[str, Any], gunicorn: Callable[..., Gunicorn]
) -> None:
    """gunicorn answers a request line or a header over its limits itself: openapi.json lists
    both answers (text/html) on every operation. Control: before, neither was documented."""
    import json

    from tests.harness.openapi_check import OPENAPI_PATH

    service = gunicorn(settings, workers=1, threads=1)
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    try:
        conn.request("GET", "/customers?email=" + "a" * 5000)
        long_line = conn.getresponse()
        long_line.read()
    finally:
        conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    try:
        conn.request("GET", "/contacts", headers={"X-Long": "b" * 9000})
        long_header = conn.getresponse()
        long_header.read()
    finally:
        conn.close()
    assert (long_line.status, long_header.status) == (414, 431)
    document = json.loads(OPENAPI_PATH.read_text())
    for item in document["paths"].values():
        for method, operation in item.items():
            if method in ("get", "post", "delete"):
                assert {"414", "431"} <= set(operation["responses"]), method
    for name in ("UriTooLong", "HeadersTooLarge"):
        assert "text/html" in document["components"]["responses"][name]["content"]
