"""Concurrent bursts of requests from client threads, bounded in count and in time.

A burst follows a plan, a list of Rounds. `run_burst(rounds, send, clients, limit_s)`
starts `clients` threads that go through the rounds together:

- a barrier round: every client waits at a threading.Barrier, then client i sends
  requests[i] (clients beyond the list send nothing), so they all fire at once;
- a stream round: the clients take the requests from one shared queue.

`send(session, request) -> Exchange` sends one request (usually through
`post_identify`) and says where it goes, so a request may be a bare (email, phone)
pair or carry a node to send it to. The Burst returned holds every Exchange, each
with its answer checked against openapi.json (tests/harness/openapi_check.py).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import requests

from tests.harness.openapi_check import check_answer

# The merge protocol's stress runs (tests/merge/test_concurrency.py, tests/cluster/test_galera.py)
# serve with no practical identifier limit: their merge-heavy workloads build customers of more
# than 50 identifiers, which merge protection would rightly refuse, and their invariant check
# models the protocol without it. The limit under concurrency has its own runs
# (tests/merge/test_limit_concurrency.py, test_galera's limit tests).
WITHOUT_LIMIT = {"FLUXKART_MAX_CUSTOMER_IDENTIFIERS": "10000"}
REQUEST_TIMEOUT = (5, 65)  # connect, read: above the service's worst case of bounded retries

Pair = tuple[str | None, str | None]  # (email, phoneNumber) of one POST /identify
Request = TypeVar("Request")


@dataclass(frozen=True)
class Round(Generic[Request]):
    """With a barrier, client i sends requests[i] when all clients are ready; else a shared queue."""

    requests: list[Request]
    barrier: bool


@dataclass
class Exchange:
    """One request (to node `node`'s instance) and what came back: a status and "contact", or an error."""

    request: Pair
    node: int = 0
    status: int | None = None
    contact: dict[str, Any] | None = None
    error: str | None = None
    contract: str = ""  # how the answer disagrees with openapi.json ("" when it agrees)
    seconds: float = 0.0
    sent_at: float = 0.0  # time.monotonic() when it was sent
    # Merge protection: the answer's "ignored" ([{"field", "reason"}]) and "partial".
    ignored: list[dict[str, str]] = field(default_factory=list)
    partial: bool = False
    size: int = 0  # the answer's body, in bytes

    def sent(self) -> dict[str, Any]:
        """The request with its answer's "ignored", as tests/harness/checker.py takes requests."""
        return {"email": self.request[0], "phoneNumber": self.request[1], "ignored": self.ignored}


def post_identify(session: requests.Session, url: str, pair: Pair, node: int = 0) -> Exchange:
    """POST /identify with `pair` to the service at `url`; never raises."""
    exchange = Exchange(pair, node, sent_at=time.monotonic())
    started = time.perf_counter()
    try:
        # Connection: close spreads requests over all workers (keep-alive can
        # pile every client onto one gthread worker); localhost handshakes are cheap.
        response = session.post(
            url + "/identify",
            json={"email": pair[0], "phoneNumber": pair[1]},
            headers={"Connection": "close"},
            timeout=REQUEST_TIMEOUT,
        )
        exchange.status = response.status_code
        try:
            check_answer(response)
        except AssertionError as exc:
            exchange.contract = str(exc)
        exchange.size = len(response.content)
        if response.status_code == 200:
            body = response.json()
            exchange.contact = body["contact"]
            exchange.ignored = list(body.get("ignored", []))
            exchange.partial = bool(body.get("partial", False))
    except (requests.RequestException, ValueError, KeyError) as exc:
        exchange.error = f"{type(exc).__name__}: {exc}"
    exchange.seconds = time.perf_counter() - started
    return exchange


@dataclass
class Burst:
    """What a burst sent: `planned` requests, the exchanges made, and whether it ran out of time."""

    planned: int
    exchanges: list[Exchange] = field(default_factory=list)
    seconds: float = 0.0
    timed_out: bool = False

    def statuses(self) -> Counter[int | str]:
        return Counter(x.status if x.status is not None else "transport error" for x in self.exchanges)

    def answered(self) -> list[Exchange]:
        return [x for x in self.exchanges if x.status == 200 and x.contact is not None]

    def five_xx(self) -> int:
        return sum(1 for x in self.exchanges if x.status is not None and x.status >= 500)


def run_burst(
    rounds: list[Round[Request]],
    send: Callable[[requests.Session, Request], Exchange],
    clients: int,
    limit_s: float,
) -> Burst:
    """Send the plan from `clients` threads through `send`; bounded by the plan's size and by `limit_s`."""
    burst = Burst(planned=sum(len(r.requests) for r in rounds))
    barrier = threading.Barrier(clients)
    stop = threading.Event()
    deadline = time.monotonic() + limit_s
    cursors = [itertools.count() for _ in rounds]  # the stream rounds' shared queues
    lock = threading.Lock()

    def send_one(session: requests.Session, request: Request) -> None:
        exchange = send(session, request)
        with lock:
            burst.exchanges.append(exchange)

    def client(index: int) -> None:
        finished = False
        try:
            with requests.Session() as session:
                for number, round_ in enumerate(rounds):
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                    if round_.barrier:
                        barrier.wait(timeout=max(0.0, deadline - time.monotonic()))
                        if index < len(round_.requests):
                            send_one(session, round_.requests[index])
                        continue
                    while (position := next(cursors[number])) < len(round_.requests):
                        if stop.is_set() or time.monotonic() > deadline:
                            return
                        send_one(session, round_.requests[position])
            finished = True
        except threading.BrokenBarrierError:
            pass
        finally:
            if not finished:
                # Out of time (or broken): nobody may be left waiting at the next barrier.
                burst.timed_out = True
                stop.set()
                barrier.abort()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        # A request in flight at the deadline may still take its read timeout.
        thread.join(max(1.0, deadline + REQUEST_TIMEOUT[1] - time.monotonic()))
    burst.seconds = time.monotonic() - started
    if any(thread.is_alive() for thread in threads):
        burst.timed_out = True
    return burst


def limit_rounds(number: int, clients: int, limit: int) -> list[Round[Pair]]:
    """Customer `number` seeded with limit - 2 identifiers (a stream round: emails e0.. and phones
    p0.. linked in a chain), then a barrier round in which each client sends one request that
    would grow it by one: a new phone with one of its emails, or a new email with one of its
    phones. Each fits alone; together they would take it far past the limit. The requests
    reach it through different identifiers, so only its rows and its growth lock (CustomerLock)
    keep them apart (tests/merge/test_limit_concurrency.py, tests/cluster/test_galera.py)."""
    seeded = (limit - 2) // 2
    emails = [f"e{i}@lim{number}.test" for i in range(seeded)]
    phones = [f"6{number:03d}5{i:03d}" for i in range(seeded)]
    seed: list[Pair] = [(emails[0], phones[0])]
    for i in range(1, seeded):
        seed += [(emails[i - 1], phones[i]), (emails[i], phones[i])]
    grow: list[Pair] = []
    for client in range(clients):
        if client % 2:
            grow.append((emails[client % seeded], f"6{number:03d}7{client:03d}"))
        else:
            grow.append((f"new{client}@lim{number}.test", phones[client % seeded]))
    return [Round(seed, barrier=False), Round(grow, barrier=True)]
