"""Seeded data for the benchmark: the stored customers, and the requests sent to the service.

Everything here is pure Python and deterministic for a given seed, so two runs of the
benchmark send the same requests in the same order (the service's answers may still
differ in ids and timing, never in which customers exist).

- `Identifiers` hands out canonical emails and phone numbers never used before.
- `CustomerModel` is what the benchmark believes is stored: customers (union-find over
  merges) with their identifiers and row counts. Workloads draw repeat customers and
  bridges from it; `commit` applies only the requests wrk actually sent.
- `seed_customers` makes the preloaded rows (valid state: primary oldest, secondaries
  linked straight to it, each secondary bringing one new identifier).
- `shop_batch` and `hot_batch` make request bodies; each body comes with its canonical
  (email, phone) pair, so the invariant checker knows every request that was sent.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

FIRST = (
    "ana ben chen dara eli fatima gita hugo ines jon kavya leo maya nikhil omar priya quinn ravi sara".split()
)
LAST = (
    "shah kim garcia okafor rossi nair smith ivanova tanaka brown costa iyer mehta novak singh walker".split()
)
# Reserved example domains (RFC 2606): realistic shape, never anyone's address.
DOMAINS = ("example.com", "example.net", "example.org", "mail.example", "shop.example")
# A prime coprime with 10**9, so n -> 9xxxxxxxxx is one-to-one for every n below 10**9
# while consecutive customers get unrelated-looking numbers (as real ones are).
PHONE_MULTIPLIER = 48271

# Customers whose merged size would exceed this many rows are never bridged: without a
# cap, 2% random bridges over a long run grow one giant customer (a random graph past
# its percolation threshold), which no shop has and which would measure the wrong thing.
BRIDGE_MAX_ROWS = 30

Pair = tuple[str | None, str | None]


class Identifiers:
    """Fresh canonical identifiers: each call returns one never returned before."""

    def __init__(self) -> None:
        self.emails = 0
        self.phones = 0

    def email(self) -> str:
        """A lower-case ASCII email, unique by its embedded counter."""
        n = self.emails
        self.emails += 1
        first, last = FIRST[n % len(FIRST)], LAST[(n // len(FIRST)) % len(LAST)]
        return f"{first}.{last}{n}@{DOMAINS[n % len(DOMAINS)]}"

    def phone(self) -> str:
        """A 10-digit number starting with 9 (digits only: the canonical form with no region)."""
        n = self.phones
        self.phones += 1
        return f"9{(n * PHONE_MULTIPLIER + 12345) % 10**9:09d}"


@dataclass
class CustomerModel:
    """What the benchmark believes is stored, one entry per customer ever created.

    Union-find over customer numbers (not database ids): a bridge merges two entries.
    The identifier lists and row counts are kept on each component's root.
    """

    parent: list[int] = field(default_factory=list)
    emails: list[list[str]] = field(default_factory=list)
    phones: list[list[str]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.parent)

    def add(self, emails: list[str], phones: list[str], rows: int) -> int:
        """Register a new customer; returns its number."""
        number = len(self.parent)
        self.parent.append(number)
        self.emails.append(emails)
        self.phones.append(phones)
        self.rows.append(rows)
        return number

    def find(self, number: int) -> int:
        """The root of a customer's component (path halving keeps chains short)."""
        parent = self.parent
        while parent[number] != number:
            parent[number] = parent[parent[number]]
            number = parent[number]
        return number

    def union(self, a: int, b: int) -> None:
        """Merge two customers (no-op when already one)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        self.emails[ra] += self.emails[rb]
        self.phones[ra] += self.phones[rb]
        self.rows[ra] += self.rows[rb]
        self.emails[rb], self.phones[rb] = [], []

    def random_root(self, rng: random.Random) -> int:
        """A customer's component, weighted by how many customers it absorbed."""
        return self.find(rng.randrange(len(self.parent)))


# --------------------------------------------------------------------------
# Preloaded rows
# --------------------------------------------------------------------------


@dataclass
class SeedBatch:
    """Rows for one bulk INSERT of each table, and the (email, phone) pair of each contact."""

    contacts: list[tuple[Any, ...]] = field(default_factory=list)
    identifiers: list[tuple[str, str, int]] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)


def cluster_size(rng: random.Random) -> int:
    """Rows of one stored customer: most have one order's worth, some a few, a few many."""
    r = rng.random()
    if r < 0.80:
        return 1
    if r < 0.97:
        return rng.randint(2, 5)
    if r < 0.997:
        return rng.randint(6, 20)
    return rng.randint(21, 60)


def stamp(moment: datetime) -> str:
    """DATETIME(6) text; bound as a string it skips the driver's datetime conversion."""
    return moment.isoformat(sep=" ", timespec="microseconds")


def customer_rows(rng: random.Random, ids: Identifiers, size: int) -> tuple[list[Pair], list[str], list[str]]:
    """(email, phone) of each row of one customer, oldest first, plus its identifiers.

    The primary usually has both identifiers; every secondary pairs one identifier the
    customer already has with a new one, exactly what identify's rule 3 inserts.
    """
    r = rng.random()
    email = ids.email() if r < 0.95 else None
    phone = ids.phone() if r >= 0.05 else None
    emails = [email] if email else []
    phones = [phone] if phone else []
    pairs: list[Pair] = [(email, phone)]
    for _ in range(size - 1):
        if phones and (not emails or rng.random() < 0.5):
            new_email = ids.email()
            pairs.append((new_email, rng.choice(phones)))
            emails.append(new_email)
        else:
            new_phone = ids.phone()
            pairs.append((rng.choice(emails), new_phone))
            phones.append(new_phone)
    return pairs, emails, phones


def seed_customers(
    model: CustomerModel,
    ids: Identifiers,
    rng: random.Random,
    contacts: int,
    first_id: int,
    start: datetime,
    span: timedelta,
    batch_rows: int = 20_000,
) -> Iterator[SeedBatch]:
    """Yield batches of valid rows until `contacts` rows exist, registering each customer.

    Ids are explicit (first_id, first_id + 1, ...) so secondaries can name their primary
    without a round trip. A customer's primary is created at a time spread evenly over
    `span` from `start`; its secondaries follow within a few days.
    """
    batch = SeedBatch()
    made = 0
    next_id = first_id
    while made < contacts:
        size = min(cluster_size(rng), contacts - made)
        pairs, emails, phones = customer_rows(rng, ids, size)
        created = start + span * (made / contacts)
        primary_id = next_id
        moment = created
        for k, (email, phone) in enumerate(pairs):
            # Each row strictly after the previous one: row k may use an identifier row k-1 brought.
            moment += timedelta(seconds=rng.uniform(60, 86_400)) if k else timedelta(0)
            when = stamp(moment)
            linked, precedence = (None, "primary") if k == 0 else (primary_id, "secondary")
            batch.contacts.append((next_id, phone, email, linked, precedence, when, when))
            batch.pairs.append((email, phone))
            next_id += 1
        batch.identifiers.extend(("email", value, 1) for value in emails)
        batch.identifiers.extend(("phone", value, 1) for value in phones)
        model.add(emails, phones, size)
        made += size
        if len(batch.contacts) >= batch_rows:
            yield batch
            batch = SeedBatch()
    if batch.contacts:
        yield batch


# --------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------


@dataclass
class Batch:
    """Bodies to send in order, the canonical pair of each, and what each changes in the model."""

    bodies: list[str] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    events: list[tuple[Any, ...] | None] = field(default_factory=list)


def encode_body(rng: random.Random, email: str | None, phone: str | None) -> str:
    """The JSON a shop client sends for these canonical identifiers.

    Mostly canonical strings; some phones as JSON numbers (clients that store them as
    integers), some formatted, some emails in another case with spaces, and an absent
    identifier sometimes sent as null: all normalize to the same pair.
    """
    body: dict[str, Any] = {}
    if email is not None:
        body["email"] = f" {email.upper()} " if rng.random() < 0.05 else email
    elif rng.random() < 0.3:
        body["email"] = None
    if phone is not None:
        r = rng.random()
        if r < 0.15 and phone.isdigit() and not phone.startswith("0"):
            body["phoneNumber"] = int(phone)
        elif r < 0.20:
            body["phoneNumber"] = f"{phone[:3]}-{phone[3:6]} {phone[6:]}"
        else:
            body["phoneNumber"] = phone
    elif rng.random() < 0.3:
        body["phoneNumber"] = None
    return json.dumps(body)


@dataclass
class ShopMix:
    """Shares of each kind of order; the rest are repeat customers."""

    new_customer: float = 0.12
    new_identifier: float = 0.11
    bridge: float = 0.02


def repeat_pair(rng: random.Random, model: CustomerModel) -> Pair:
    """Identifiers a known customer has already used: email and phone, or one of them."""
    root = model.random_root(rng)
    emails, phones = model.emails[root], model.phones[root]
    email = rng.choice(emails) if emails else None
    phone = rng.choice(phones) if phones else None
    r = rng.random()
    if r < 0.35 and email and phone:
        return email, None
    if r < 0.65 and email and phone:
        return None, phone
    return email, phone


def new_identifier_pair(rng: random.Random, model: CustomerModel, ids: Identifiers) -> tuple[Pair, int]:
    """A known customer ordering with a new email or a new phone; returns (pair, root)."""
    root = model.random_root(rng)
    emails, phones = model.emails[root], model.phones[root]
    if emails and (not phones or rng.random() < 0.5):
        return (rng.choice(emails), ids.phone()), root
    return (ids.email(), rng.choice(phones)), root


def bridge_pair(rng: random.Random, model: CustomerModel, bridged: set[int]) -> tuple[Pair, int, int] | None:
    """Email of one customer with the phone of another: the order that proves they are one.

    Each customer is bridged at most once per batch, and only while the merged customer
    stays under BRIDGE_MAX_ROWS; None when no such pair turned up.
    """
    for _ in range(50):
        a, b = model.random_root(rng), model.random_root(rng)
        if a == b or a in bridged or b in bridged:
            continue
        if model.rows[a] + model.rows[b] > BRIDGE_MAX_ROWS or not model.emails[a] or not model.phones[b]:
            continue
        bridged.update((a, b))
        return (rng.choice(model.emails[a]), rng.choice(model.phones[b])), a, b
    return None


def shop_batch(
    rng: random.Random, model: CustomerModel, ids: Identifiers, count: int, mix: ShopMix | None = None
) -> Batch:
    """`count` shop orders drawn from the model as it is now (the model is not changed)."""
    mix = mix or ShopMix()
    batch = Batch()
    bridged: set[int] = set()
    for _ in range(count):
        r = rng.random()
        event: tuple[Any, ...] | None = None
        kind = "repeat"
        pair = None
        if r < mix.bridge:
            found = bridge_pair(rng, model, bridged)
            if found:
                pair, a, b = found
                kind, event = "bridge", ("bridge", a, b)
        elif r < mix.bridge + mix.new_customer:
            u = rng.random()
            email = ids.email() if u < 0.9 else None
            phone = ids.phone() if u >= 0.1 else None
            pair, kind, event = (email, phone), "new", ("new", email, phone)
        elif r < mix.bridge + mix.new_customer + mix.new_identifier:
            pair, root = new_identifier_pair(rng, model, ids)
            kind, event = "link", ("link", root, *pair)
        if pair is None:
            pair = repeat_pair(rng, model)
        batch.bodies.append(encode_body(rng, *pair))
        batch.pairs.append(pair)
        batch.kinds.append(kind)
        batch.events.append(event)
    return batch


def hot_batch(rng: random.Random, ids: Identifiers, count: int, group: int = 16, width: int = 2) -> Batch:
    """Everyone on a few identifiers: each run of `group` requests shares `width` emails and phones.

    Within a group, requests create, link and merge the same customer while concurrent
    requests of the same group wait on its rows. A fresh set per group keeps the customer
    small (at most width * width rows), so the run measures contention, not answer size.
    """
    batch = Batch()
    emails: list[str] = []
    phones: list[str] = []
    for i in range(count):
        if i % group == 0:
            emails = [ids.email() for _ in range(width)]
            phones = [ids.phone() for _ in range(width)]
        r = rng.random()
        email = rng.choice(emails) if r < 0.8 else None
        phone = rng.choice(phones) if r >= 0.2 else None
        batch.bodies.append(encode_body(rng, email, phone))
        batch.pairs.append((email, phone))
        batch.kinds.append("hot")
        batch.events.append(None)  # hot customers are not offered to later workloads
    return batch


def commit(model: CustomerModel, batch: Batch, sent: int) -> None:
    """Apply to the model what the first `sent` requests of `batch` did to the database.

    wrk stops mid-file, so only a prefix was sent; later bodies changed nothing. The
    model may then hold a little more than the database (requests in flight at the end
    that the server dropped), which only makes later bridges more conservative.
    """
    for event in batch.events[:sent]:
        if event is None:
            continue
        if event[0] == "new":
            _, email, phone = event
            model.add([email] if email else [], [phone] if phone else [], 1)
        elif event[0] == "link":
            _, root, email, phone = event
            root = model.find(root)
            known_email = email in model.emails[root]
            if not known_email:
                model.emails[root].append(email)
            else:
                model.phones[root].append(phone)
            model.rows[root] += 1
        elif event[0] == "bridge":
            model.union(event[1], event[2])
