"""Statements per identify, by request kind: the server's `Questions` counter around each request.

bench/compare.py's statements phase sends one stream of shop requests to each side, one
request at a time on one keep-alive connection, with nothing else running. Around each
request it reads MariaDB's global `Questions` status counter (every statement a client
sent, BEGIN and COMMIT included); the difference, less what the status query itself adds
(measured at the start by reading twice with nothing in between), is what that request
made the side send.

Each request's kind is decided before it is sent, from the benchmark's model of what is
stored (`KnownIdentifiers`, an index over bench/workload.py's `CustomerModel`): a repeat
(email and phone known, one customer), one identifier sent and known, a new customer
(nothing sent is known), a new email or a new phone for a known customer, or a bridge
(the email and the phone known, in two customers: a merge). The request is then folded
into that side's model, so the next one is classified against what is stored by then.

The counter is global: a statement another client sends during a request is counted
against it. Nothing else runs in this phase, and the counter is read over an idle pause
to measure (and report) what the server receives with no request in flight. The service
re-reads its blocked values (every 2 s) and its ServiceState (every 5 s) lazily, inside
the next request: those are its own statements, in the mean, while the median per kind
shows the usual request without them.
"""

from __future__ import annotations

import http.client
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import pymysql

from bench.measure import log
from bench.workload import Batch, CustomerModel, Pair, commit

# Kinds in report order, with their labels.
KINDS = {
    "repeat": "repeat (email and phone known, one customer)",
    "one known": "email only / phone only (known)",
    "new customer": "new customer (nothing sent is known)",
    "new email": "new email for a known customer",
    "new phone": "new phone for a known customer",
    "bridge": "bridge (email and phone of two customers: a merge)",
}


class KnownIdentifiers:
    """Which customer each identifier belongs to, by the benchmark's model (union-find roots).

    The model keeps identifier lists on each component's root; this keeps the reverse:
    identifier -> a customer number, resolved to its root by `model.find` when asked.
    """

    def __init__(self, model: CustomerModel):
        self.model = model
        self.owner: dict[tuple[str, str], int] = {}
        for number in range(len(model)):
            self.index(number)

    def index(self, number: int) -> None:
        """Record the identifiers a customer (a root) holds now."""
        for email in self.model.emails[number]:
            self.owner[("email", email)] = number
        for phone in self.model.phones[number]:
            self.owner[("phone", phone)] = number

    def customer(self, field: str, value: str | None) -> int | None:
        """The root of the customer holding this identifier, or None (unknown or not sent)."""
        if value is None:
            return None
        number = self.owner.get((field, value))
        return None if number is None else self.model.find(number)

    def kind(self, pair: Pair) -> str:
        """The request's kind against what the model says is stored now (one of KINDS)."""
        email, phone = pair
        by_email, by_phone = self.customer("email", email), self.customer("phone", phone)
        if by_email is None and by_phone is None:
            return "new customer"
        if email is None or phone is None:
            return "one known"
        if by_email is None:
            return "new email"
        if by_phone is None:
            return "new phone"
        return "repeat" if by_email == by_phone else "bridge"

    def sent(self, batch: Batch, position: int) -> None:
        """Fold one sent request of `batch` into the model (workload.commit), then index
        the customer it touched: the newest customer when the model grew, else the root of
        an identifier the request carried that was already known."""
        customers_before = len(self.model)
        pair = batch.pairs[position]
        known = [
            c for c in (self.customer("email", pair[0]), self.customer("phone", pair[1])) if c is not None
        ]
        one = Batch(pairs=[pair], bodies=[batch.bodies[position]], events=[batch.events[position]])
        commit(self.model, one, 1)
        for number in range(customers_before, len(self.model)):
            self.index(number)
        if known:
            self.index(self.model.find(known[0]))


def read_questions(cur: Any) -> int:
    """The server's global Questions counter (statements received from every client)."""
    cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
    return int(cur.fetchone()[1])


@dataclass
class QuestionsCounter:
    """Reads of the Questions counter on one connection, and what one read adds to it."""

    conn: pymysql.connections.Connection
    own: int = 0  # statements one read adds to the counter (calibrated)
    back_to_back: list[int] = field(default_factory=list)

    def read(self) -> int:
        with self.conn.cursor() as cur:
            return read_questions(cur)

    def calibrate(self, reads: int = 20) -> None:
        """`own`: the smallest difference of back-to-back reads (a statement from another
        client can only add to one)."""
        values = [self.read() for _ in range(reads)]
        self.back_to_back = [b - a for a, b in zip(values, values[1:], strict=False)]
        self.own = min(self.back_to_back)

    def idle_rate(self, seconds: float = 2.0) -> float:
        """Statements per second the server receives from other clients while none is sent."""
        start = self.read()
        time.sleep(seconds)
        return max(self.read() - start - self.own, 0) / seconds


@dataclass
class Sent:
    """One request of the phase: its kind, the statements it caused, status and seconds."""

    kind: str
    statements: int
    status: int
    seconds: float


def send_counted(
    port: int,
    batch: Batch,
    counter: QuestionsCounter,
    known: KnownIdentifiers,
    warm_up: list[str],
    label: str,
) -> list[Sent]:
    """Send `warm_up` (uncounted), then every body of `batch` one at a time on one keep-alive
    connection, classifying each before it is sent and reading the counter around it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}

    def post(body: str) -> int:
        conn.request("POST", "/identify", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.getheader("Connection", "").lower() == "close":
            conn.close()  # sync workers close after every answer; reconnect next time
        return response.status

    out: list[Sent] = []
    try:
        for body in warm_up:  # opens the connections (HTTP and database) outside the counts
            post(body)
        for position, body in enumerate(batch.bodies):
            kind = known.kind(batch.pairs[position])
            before = counter.read()
            started = time.perf_counter()
            status = post(body)
            elapsed = time.perf_counter() - started
            statements = counter.read() - before - counter.own
            known.sent(batch, position)
            out.append(Sent(kind, statements, status, elapsed))
            if (position + 1) % 250 == 0:
                log(f"  {label}: {position + 1:,}/{len(batch.bodies):,}")
    finally:
        conn.close()
    return out


def summarize(sent: list[Sent]) -> dict[str, Any]:
    """Per kind and for all: requests, mean, median, min, max statements, non-2xx, p50 ms."""

    def figures(items: list[Sent]) -> dict[str, Any]:
        counts = [s.statements for s in items]
        return {
            "requests": len(items),
            "mean": round(statistics.fmean(counts), 3),
            "median": statistics.median(counts),
            "min": min(counts),
            "max": max(counts),
            "non_2xx": sum(1 for s in items if s.status >= 400),
            "p50_ms": round(statistics.median(s.seconds for s in items) * 1000, 2),
        }

    by_kind: dict[str, list[Sent]] = {}
    for s in sent:
        by_kind.setdefault(s.kind, []).append(s)
    summary = {kind: figures(by_kind[kind]) for kind in KINDS if kind in by_kind}
    if sent:
        summary["all"] = figures(sent)
    return summary


def kinds_differ(a: list[Sent], b: list[Sent]) -> int:
    """How many requests two sides classified differently (0: both models agreed throughout)."""
    return sum(1 for x, y in zip(a, b, strict=False) if x.kind != y.kind) + abs(len(a) - len(b))
