"""The identifier limit holds under concurrent gunicorn workers (SPEC, "Merge protection",
"Concurrency": nothing is ever linked or merged past the limit, under any interleaving).

Each round seeds one customer with SEEDED identifiers (LIMIT - 2), then CLIENTS client threads
wait at a barrier and all at once send one request each that would grow it by one identifier,
reaching it through different identifiers it holds (a new phone with one of its emails, a new
email with one of its phones), so the requests touch different identifier rows and only the
customer's rows and its growth lock keep them apart. Alone, each fits; together they would take
the customer far past the limit. Afterwards the table must pass tests/harness/checker.py with
the limit (no customer past it, every refusal needed, the rest as some sequential order leaves
it), every answer as openapi.json describes it, no 5xx.

Control (MariaDB, marker `unlocked`): the same rounds against the copy of the service without
its locks (tests/harness/unlocked.py) take customers past the limit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.bursts import Burst, Pair, Round, limit_rounds, post_identify, run_burst
from tests.harness.checker import check_answers, check_invariants, violation_kinds
from tests.harness.database import read_contacts
from tests.harness.gunicorn import Gunicorn
from tests.harness.mariadb import MariaDBServer
from tests.harness.required import require_mariadb
from tests.harness.unlocked import build_unlocked_copy

LIMIT = 10
SEEDED = LIMIT - 2  # emails e0..e3 and phones p0..p3 of one customer
CLIENTS = 24
ROUNDS = 20
BURST_LIMIT_S = 120


def customer_round(number: int, clients: int = CLIENTS) -> list[Round[Pair]]:
    """Seed customer `number`, then one barrier round that would grow it (bursts.limit_rounds)."""
    return limit_rounds(number, clients, LIMIT)


def plan(rounds: int = ROUNDS, first: int = 0) -> list[Round[Pair]]:
    return [r for number in range(first, first + rounds) for r in customer_round(number)]


def burst(url: str, rounds: list[Round[Pair]]) -> Burst:
    return run_burst(rounds, lambda session, pair: post_identify(session, url, pair), CLIENTS, BURST_LIMIT_S)


def judge(burst_: Burst, settings: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    rows = read_contacts(settings)
    answered = burst_.answered()
    violations = check_invariants(rows, [x.sent() for x in answered], limit=LIMIT)
    violations += check_answers(rows, [(x.sent(), x.contact) for x in answered if x.contact is not None])
    return violations, rows


def summary(label: str, burst_: Burst, violations: list[str]) -> str:
    refused = sum(1 for x in burst_.exchanges if any(i["reason"] == "limit" for i in x.ignored))
    return (
        f"{label}: {len(burst_.exchanges)}/{burst_.planned} requests in {burst_.seconds:.1f}s; "
        f"statuses {dict(burst_.statuses())}; refused by the limit {refused}; "
        f"violations {dict(violation_kinds(violations)) or 'none'}"
    )


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    require_mariadb("the limit's concurrency tests")
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb-limit"), "READ-COMMITTED")
    server.start()
    yield server
    server.stop()


database_numbers = iter(range(1, 1000))


def database_settings(backend: str, mariadb: Callable[[], MariaDBServer], tmp_path: Path) -> dict[str, str]:
    settings = {"FLUXKART_MAX_CUSTOMER_IDENTIFIERS": str(LIMIT)}
    if backend == "sqlite":
        return {**settings, "FLUXKART_SQLITE_PATH": str(tmp_path / "limit.db")}
    server = mariadb()
    name = f"fluxkart_limit_{next(database_numbers)}"
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    return {**settings, **server.settings(name)}


@pytest.fixture
def lazy_mariadb(request: pytest.FixtureRequest) -> Callable[[], MariaDBServer]:
    return lambda: request.getfixturevalue("mariadb")


@pytest.mark.stress
@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_bursts_never_take_a_customer_past_the_limit(
    backend: str,
    lazy_mariadb: Callable[[], MariaDBServer],
    gunicorn: Callable[..., Gunicorn],
    tmp_path: Path,
) -> None:
    settings = database_settings(backend, lazy_mariadb, tmp_path)
    server = gunicorn(settings, 3, 8, "gthread", ready_path="/health/ready")
    try:
        result = burst(server.url, plan())
    finally:
        server.stop()
    violations, rows = judge(result, settings)
    print("\n" + summary(backend, result, violations))
    assert not result.timed_out and len(result.exchanges) == result.planned, summary(
        backend, result, violations
    )
    assert set(result.statuses()) == {200}, summary(backend, result, violations)
    contract = [x.contract for x in result.exchanges if x.contract]
    assert not contract, contract[:5]
    assert not violations, "\n".join(violations[:30])
    # Not vacuous: every customer reached the limit and the rest of its burst was refused.
    refused = sum(1 for x in result.exchanges if any(i["reason"] == "limit" for i in x.ignored))
    assert refused >= ROUNDS * (CLIENTS - 2), summary(backend, result, violations)
    at_limit = Counter(x.contact["primaryContactId"] for x in result.answered() if x.contact and x.ignored)
    assert len(at_limit) >= ROUNDS and len(rows) > ROUNDS * SEEDED // 2


@pytest.mark.unlocked
def test_control_without_the_locks_the_limit_breaks(
    mariadb: MariaDBServer, gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """The same rounds against the service minus FOR UPDATE and the identifier rows (its growth
    lock alone only queues the writers on one server): customers end past the limit."""
    app_dir = build_unlocked_copy(tmp_path / "unlocked")
    settings = database_settings("mysql", lambda: mariadb, tmp_path)
    server = gunicorn(settings, 3, 8, "gthread", app_dir=app_dir, ready_path="/health/ready")
    try:
        result = burst(server.url, plan(first=100))
    finally:
        server.stop()
    violations, _ = judge(result, settings)
    print("\n" + summary("unlocked copy", result, violations))
    assert violation_kinds(violations)["past-limit"] > 0, summary("unlocked copy", result, violations)


def test_the_plan_would_pass_the_limit_if_every_request_were_applied() -> None:
    """The rounds are built to break the limit: applied in full, each customer ends far past it."""
    rounds = customer_round(0)
    identifiers = {("email", e) for r in rounds for e, _ in r.requests if e} | {
        ("phone", p) for r in rounds for _, p in r.requests if p
    }
    assert len(identifiers) == SEEDED + CLIENTS > LIMIT
    assert len({e for e, _ in rounds[0].requests} | {p for _, p in rounds[0].requests}) == SEEDED
