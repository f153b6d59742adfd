"""Observability: request ids, the JSON access log (without identifiers), Prometheus metrics.

- Every request writes one JSON access log line (logger "fluxkart.access")
  with method, path, status, duration_ms and request_id.
- X-Request-ID: the service makes every id; a sane one the client sent is kept beside it
  (X-Client-Request-ID, client_request_id); an absent or
  malformed one is replaced by a generated id, which is echoed and logged.
- Emails and phone numbers never appear in the service's log output, in any
  form, whatever the request (query strings, bodies, errors).
- /metrics is Prometheus text with the request counter, the latency histogram
  and the identify outcomes, and under gunicorn with several workers its
  totals count every request, whichever worker answers /metrics.

The in-process tests read the "fluxkart" loggers through a handler of their
own with the service's JsonFormatter; the gunicorn test reads the process's
real stdout.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.gunicorn import Gunicorn
from tests.harness.servers import Api, LogLines

GENERATED_ID = re.compile(r"[0-9a-f]{32}")
ACCESS_FIELDS = {"method", "path", "status", "duration_ms", "request_id"}


def access_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("logger") == "fluxkart.access"]


def line_for(lines: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    matching = [line for line in access_lines(lines) if line.get("request_id") == request_id]
    assert len(matching) == 1, (request_id, lines)
    return matching[0]


# --------------------------------------------------------------------------
# The access log
# --------------------------------------------------------------------------


def test_one_json_access_line_per_request(api: Api, log_lines: LogLines) -> None:
    requests_sent = [
        ("GET", "/", {}, 200),
        ("POST", "/identify", {"json": {"email": "log@x.com"}}, 200),
        ("POST", "/identify", {"data": b"{oops"}, 400),
        ("GET", "/contacts/12345", {}, 404),
        ("GET", "/identify", {}, 405),
        ("GET", "/contacts", {"params": {"limit": 1}}, 200),
    ]
    for method, path, kwargs, status in requests_sent:
        response = api.request(method, path, **kwargs)
        assert response.status_code == status
        line = line_for(log_lines(), response.headers["X-Request-ID"])
        assert ACCESS_FIELDS <= set(line), line
        assert (line["method"], line["path"], line["status"]) == (method, path, status), line
        assert isinstance(line["duration_ms"], int | float) and 0 <= line["duration_ms"] < 10_000, line
        assert line["level"] == "INFO" and line["message"] == "request" and line["time"], line
    assert len(access_lines(log_lines())) == len(requests_sent)
    identify = [
        line for line in access_lines(log_lines()) if line["status"] == 200 and line["method"] == "POST"
    ]
    assert identify[0]["outcome"] == "created"


# --------------------------------------------------------------------------
# X-Request-ID
# --------------------------------------------------------------------------

SANE_IDS = [
    "abc",
    "A.b_c:d/e+f=g-h",
    "0" * 128,
    "4bf92f3577b34da6a3ce929d0e0e4736",
    "req-2024-01-01T00:00:00Z",
]
MALFORMED_IDS = [
    "",
    "has space",
    "x" * 129,
    "semi;colon",
    "caf\u00e9",
    "a@b.c",
    "<script>",
    "a,b",
    '"q"',
]


def test_a_sane_request_id_is_kept_beside_the_services_echoed_and_logged(
    api: Api, log_lines: LogLines
) -> None:
    """The service makes the request id; a client's sane X-Request-ID is kept beside it."""
    paths = [("GET", "/health/live"), ("POST", "/identify"), ("GET", "/nowhere"), ("POST", "/")]
    for number, given in enumerate(SANE_IDS):
        method, path = paths[number % len(paths)]
        response = api.request(method, path, headers={"X-Request-ID": given}, json={"email": "rid@x.com"})
        assert response.headers["X-Client-Request-ID"] == given, (given, path)
        made = response.headers["X-Request-ID"]
        assert GENERATED_ID.fullmatch(made), (given, made)
        line = line_for(log_lines(), made)
        assert line["client_request_id"] == given
        # A path that matches no route is not logged: it may carry an identifier.
        assert line["path"] == (None if path == "/nowhere" else path)


def test_a_missing_or_malformed_request_id_is_replaced_echoed_and_logged(
    api: Api, log_lines: LogLines
) -> None:
    seen: set[str] = set()
    for given in [None, *MALFORMED_IDS]:
        headers = {} if given is None else {"X-Request-ID": given}
        for path in ("/", "/contacts/999"):
            response = api.get(path, headers=headers)
            echoed = response.headers["X-Request-ID"]
            assert GENERATED_ID.fullmatch(echoed), (given, echoed)
            assert echoed not in seen, "generated ids repeat"
            seen.add(echoed)
            assert line_for(log_lines(), echoed)["path"] == path
    assert not any(line.get("request_id") in MALFORMED_IDS for line in log_lines())


# --------------------------------------------------------------------------
# No identifiers in the log
# --------------------------------------------------------------------------

EMAIL = "Lorraine.Baines+1955@HillValley.example"
PHONE = "+1 (555) 019-9777"
OTHER_EMAIL = "george.mcfly@hillvalley.example"
OTHER_PHONE = "5550142"


def forms(email: str, phone: str) -> list[str]:
    """Every spelling of the identifiers that must not reach the log."""
    digits = re.sub(r"[^0-9]", "", phone)
    local = email.split("@")[0]
    return [email, email.lower(), local, local.lower(), phone, digits, "+" + digits, digits[-7:]]


def identifier_traffic(api: Api) -> None:
    """Requests that carry the identifiers everywhere they can go, answered 2xx and 4xx."""
    assert api.post("/identify", json={"email": EMAIL, "phoneNumber": PHONE}).status_code == 200
    assert api.post("/identify", json={"email": OTHER_EMAIL, "phoneNumber": OTHER_PHONE}).status_code == 200
    assert api.post("/identify", json={"email": EMAIL}).status_code == 200
    for params in ({"email": EMAIL}, {"phoneNumber": PHONE}, {"email": EMAIL, "phoneNumber": PHONE}):
        assert api.get("/contacts", params=params).status_code == 200
        assert api.get("/customers", params=params).status_code == 200
    conflict = api.get("/customers", params={"email": EMAIL, "phoneNumber": OTHER_PHONE})
    assert conflict.status_code == 409
    assert api.get("/customers", params={"email": "nobody." + EMAIL}).status_code == 404
    bad_requests = [
        {"json": {"email": EMAIL.replace("@", " @ ")}},
        {"json": {"email": EMAIL + "@twice"}},
        {"json": {"phoneNumber": PHONE + " ext. 12"}},
        {"json": {"phoneNumber": PHONE.replace("555", "5x5")}},
        {"json": {"email": [EMAIL], "phoneNumber": {"n": PHONE}}},
        {"data": json.dumps({"email": EMAIL})[:-3]},
        {"data": json.dumps([EMAIL, PHONE])},
    ]
    for kwargs in bad_requests:
        assert api.post("/identify", **kwargs).status_code == 400
    too_big = json.dumps({"email": EMAIL, "phoneNumber": PHONE, "pad": "x" * 70_000})
    assert api.post("/identify", data=too_big).status_code == 413
    assert api.get("/contacts", params={"email": EMAIL.replace("@", "")}).status_code == 400
    assert api.get("/contacts", params={"phoneNumber": PHONE + "x", "limit": "0"}).status_code == 400
    assert api.request("PUT", "/identify", json={"email": EMAIL}).status_code in (401, 405)
    assert api.get("/contacts/1", params={"email": EMAIL}).status_code == 200


def assert_no_identifier_in(text: str) -> None:
    lowered = text.lower()
    for form in forms(EMAIL, PHONE) + forms(OTHER_EMAIL, OTHER_PHONE):
        assert form.lower() not in lowered, f"{form!r} appears in the log"


@pytest.mark.parametrize(
    "settings", [{}, {"FLUXKART_API_TOKEN": "tok"}], indirect=True, ids=["open", "with-token"]
)
def test_identifiers_never_reach_the_log(api: Api, log_lines: LogLines, settings: dict[str, Any]) -> None:
    if settings["FLUXKART_API_TOKEN"]:
        # Unauthorized requests first (logged as 401), then the same with the token.
        api.post("/identify", json={"email": EMAIL, "phoneNumber": PHONE})
        api.get("/contacts", params={"email": EMAIL})
        api.session.headers["Authorization"] = "Bearer tok"
    identifier_traffic(api)
    lines = log_lines()
    assert len(access_lines(lines)) >= 20
    assert_no_identifier_in("\n".join(json.dumps(line, ensure_ascii=False) for line in lines))


def test_an_identifier_in_an_unknown_path_does_not_reach_the_log(api: Api, log_lines: LogLines) -> None:
    """A client that guesses a REST-style lookup puts an email in the path; the log must not keep it."""
    for path in (f"/customers/{OTHER_EMAIL}", f"/contacts/{OTHER_EMAIL}", f"/identify/{OTHER_EMAIL}"):
        assert api.get(path).status_code == 404
    assert_no_identifier_in("\n".join(json.dumps(line, ensure_ascii=False) for line in log_lines()))


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """/metrics as {(sample name, labels): value}, parsed by prometheus_client's own parser."""
    response = requests.get(url + "/metrics", timeout=10, headers={"Connection": "close"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items() if sample == name and wanted <= have)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


# The four outcomes, in order: created, linked, created, merged, unchanged.
OUTCOME_REQUESTS = [
    ({"email": "a@m.test", "phoneNumber": "1"}, "created"),
    ({"email": "b@m.test", "phoneNumber": "1"}, "linked"),
    ({"email": "c@m.test", "phoneNumber": "2"}, "created"),
    ({"email": "a@m.test", "phoneNumber": "2"}, "merged"),
    ({"email": "b@m.test", "phoneNumber": "1"}, "unchanged"),
]


def test_metrics_count_requests_latency_and_outcomes(api: Api, server: Any) -> None:
    """In one process: the counters move by exactly what was sent (the registry is shared, so deltas)."""
    before = scrape(server.url)
    for body, _ in OUTCOME_REQUESTS:
        assert api.post("/identify", json=body).status_code == 200
    assert api.get("/contacts/999999").status_code == 404
    assert api.post("/identify", json={}).status_code == 400
    after = scrape(server.url)

    name = "fluxkart_http_requests_total"
    assert delta(before, after, name, method="POST", route="/identify", status="200") == 5
    assert delta(before, after, name, method="POST", route="/identify", status="400") == 1
    assert delta(before, after, name, method="GET", route="/contacts/<int:contact_id>", status="404") == 1
    assert delta(before, after, name, method="GET", route="/metrics", status="200") == 1  # the first scrape
    assert delta(before, after, name) == 8
    latency = "fluxkart_http_request_duration_seconds"
    assert delta(before, after, f"{latency}_count", method="POST", route="/identify") == 6
    assert delta(before, after, f"{latency}_bucket", method="POST", route="/identify", le="+Inf") == 6
    assert delta(before, after, f"{latency}_sum", method="POST", route="/identify") > 0
    outcomes = {
        o: delta(before, after, "fluxkart_identify_outcomes_total", outcome=o) for _, o in OUTCOME_REQUESTS
    }
    assert outcomes == {"created": 2, "linked": 1, "merged": 1, "unchanged": 1}


def counted_by(service: Gunicorn) -> set[str]:
    """The pids of the workers that have written metrics."""
    assert service.metrics_dir is not None
    return {path.stem.rsplit("_", 1)[-1] for path in service.metrics_dir.glob("counter_*.db")}


@pytest.fixture
def two_workers(settings: dict[str, Any], gunicorn: Callable[..., Gunicorn]) -> Gunicorn:
    """The service under gunicorn with 2 workers of 2 threads (conftest's fixture stops it)."""
    service = gunicorn(settings, workers=2, threads=2)
    deadline = time.monotonic() + 15
    while len(service.worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the second worker may still be booting
    return service


def test_metrics_add_up_across_gunicorn_workers(two_workers: Gunicorn) -> None:
    """2 workers: /metrics counts every request, whichever worker served it and whichever answers."""
    service = two_workers
    # The start-up probe was counted too; the baseline scrape is counted once it is answered.
    sent = int(total(scrape(service.url), "fluxkart_http_requests_total")) + 1
    close = {"Connection": "close"}  # a new connection each time, so both workers take requests
    for body, _ in OUTCOME_REQUESTS:
        assert (
            requests.post(service.url + "/identify", json=body, headers=close, timeout=10).status_code == 200
        )
        sent += 1
    statuses = {"/": 200, "/health/live": 200, "/contacts": 200, "/contacts/999": 404, "/nowhere": 404}

    def get(path: str) -> int:
        return requests.get(service.url + path, headers=close, timeout=10).status_code

    # Rounds of concurrent requests (one client alone tends to land on one worker) until both
    # workers have counted something: each worker writes its own counter_<pid>.db.
    rounds = 0
    with ThreadPoolExecutor(8) as pool:
        while rounds < 3 or (len(counted_by(service)) < 2 and rounds < 30):
            paths = list(statuses) * 4
            assert list(pool.map(get, paths)) == [statuses[path] for path in paths]
            sent += len(paths)
            rounds += 1
    workers_that_counted = counted_by(service)
    assert len(workers_that_counted) >= 2, workers_that_counted

    answers = []
    for scrape_number in range(6):  # each scrape is counted once it is answered: +1 for the next one
        samples = scrape(service.url)
        answers.append(total(samples, "fluxkart_http_requests_total"))
        assert answers[-1] == sent + scrape_number, (answers, sent)
        assert total(samples, "fluxkart_http_request_duration_seconds_count") == sent + scrape_number
        outcomes = {
            o: total(samples, "fluxkart_identify_outcomes_total", outcome=o) for _, o in OUTCOME_REQUESTS
        }
        assert outcomes == {"created": 2, "linked": 1, "merged": 1, "unchanged": 1}
        name = "fluxkart_http_requests_total"
        assert total(samples, name, method="GET", route="unmatched", status="404") == 4 * rounds
        assert (
            total(samples, name, method="GET", route="/contacts/<int:contact_id>", status="404") == 4 * rounds
        )
    print(
        f"\n[metrics] {sent} requests over workers {sorted(workers_that_counted)}; /metrics totals {answers}"
    )

    # The process's real log output: one JSON access line per request, no identifiers.
    time.sleep(0.2)
    logs = service.logs()
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "fluxkart.access"]
    assert len(access) == answers[-1] + 1, (len(access), answers)  # the last scrape is logged too
    assert all(ACCESS_FIELDS <= set(line) for line in access)
    assert {line["request_id"] for line in access} and len({line["request_id"] for line in access}) == len(
        access
    )
    for body, _ in OUTCOME_REQUESTS:
        assert body["email"] not in logs and body["email"].split("@")[0] + "@" not in logs
