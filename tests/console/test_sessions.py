"""Console sessions kept on the server, and the sign-in throttle (issue 22; identity/sessions.py).

- Sign-out ends the session on the server: a copy of the cookie opens nothing afterwards,
  and another agent's session is untouched. Control: before this, a copied cookie kept
  opening customer pages for up to 8 hours after sign-out.
- A session left idle past the limit ends (the test ages its row; no clock is waited on).
- Wrong tokens are throttled per client address, with a 429 page saying how long to wait and
  a log line carrying the address; the count lives in the database, so it holds across
  gunicorn workers. Control: before this, 200 wrong tokens were all answered 401.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import requests

from identity.sessions import THROTTLE_FAILURES
from tests.console.test_console import CONSOLE, SECRET_KEY, TOKEN, Console, log_lines  # noqa: F401
from tests.harness.database import run_sql
from tests.harness.gunicorn import Gunicorn
from tests.harness.servers import LiveServer


def is_signed_in(client: Console) -> bool:
    """The search page answers (a signed-out client is sent to the sign-in form)."""
    response = client.get("/console")
    return response.status_code == 200 and response.url.endswith("/console")


@CONSOLE
def test_sign_out_revokes_the_session_everywhere_but_not_other_staff(server: LiveServer) -> None:
    alice, bob, thief = Console(server.url), Console(server.url), Console(server.url)
    assert alice.sign_in().status_code == 200 and bob.sign_in().status_code == 200
    thief.session.cookies.update(alice.session.cookies)  # the cookie copied before sign-out
    assert is_signed_in(thief)
    assert alice.post("/console/sign-out").status_code == 200
    assert not is_signed_in(alice)
    assert not is_signed_in(thief)
    assert thief.get("/console/customers/1").url.endswith("/console/sign-in")
    assert is_signed_in(bob)


@CONSOLE
def test_an_idle_session_ends(server: LiveServer, settings: dict[str, Any]) -> None:
    agent = Console(server.url)
    agent.sign_in()
    assert is_signed_in(agent)
    run_sql(settings, "UPDATE ConsoleSession SET lastSeenAt = %s", ("2000-01-01 00:00:00",))
    assert not is_signed_in(agent)


def wrong_sign_in(url: str) -> requests.Response:
    """One wrong token on a new connection (so gunicorn hands it to whichever worker)."""
    client = Console(url)
    try:
        client.get("/console/sign-in", headers={"Connection": "close"})
        return client.request(
            "POST",
            "/console/sign-in",
            data={"token": "guess", "csrf_token": client.csrf},
            headers={"Connection": "close"},
        )
    finally:
        client.session.close()


@CONSOLE
def test_sign_in_is_throttled_per_address_across_workers(
    settings: dict[str, Any], gunicorn: Callable[..., Gunicorn]
) -> None:
    service = gunicorn(settings, workers=2, threads=1, worker_class="sync")
    statuses = [wrong_sign_in(service.url).status_code for _ in range(3 * THROTTLE_FAILURES)]
    assert statuses == [401] * THROTTLE_FAILURES + [429] * (2 * THROTTLE_FAILURES), statuses
    throttled = wrong_sign_in(service.url)
    assert "Try again in 15 minute(s)" in throttled.text
    assert int(throttled.headers["Retry-After"]) > 0
    # Even the right token waits: the address is throttled, not the guess.
    agent = Console(service.url)
    assert agent.sign_in().status_code == 429
    lines = [json.loads(line) for line in service.logs().splitlines() if line.startswith("{")]
    failed = [line for line in lines if line.get("event") == "console_sign_in_failed"]
    refused = [line for line in lines if line.get("event") == "console_sign_in_throttled"]
    assert len(failed) == THROTTLE_FAILURES and {line["address"] for line in failed} == {"127.0.0.1"}
    assert refused and {line["address"] for line in refused} == {"127.0.0.1"}


@CONSOLE
def test_a_right_token_forgives_earlier_typos(server: LiveServer) -> None:
    for _ in range(THROTTLE_FAILURES - 1):
        assert wrong_sign_in(server.url).status_code == 401
    agent = Console(server.url)
    assert agent.sign_in().status_code == 200
    for _ in range(THROTTLE_FAILURES - 1):
        assert wrong_sign_in(server.url).status_code == 401
