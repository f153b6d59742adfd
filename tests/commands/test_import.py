"""`flask --app fluxkart import`: historical orders, equal to replaying them through POST /identify.

Every test runs on both backends. The command runs in-process through Flask's CLI runner,
except where a real process is the point: the import killed half way (SIGKILL) and the
import racing gunicorn workers that serve live identify traffic.

- equivalence (Hypothesis): random order files over a tiny alphabet (three emails, three
  phones, in several spellings), imported into one database and sent line by line to
  POST /identify of an app on another; the customers, their primaries and their rows
  are equal (ids and timestamps are not compared);
- every kind of bad line is reported with its line number and skipped, and the --rejects
  file imports again (and cleanly once fixed);
- refused files write nothing; empty and header-only files import nothing;
- importing the same file twice creates nothing the second time; an import killed half way
  and run again equals one full import;
- an import racing live identify traffic leaves a table that satisfies tests/harness/checker.py.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fluxkart
from fluxkart import create_app
from identity import import_batch, import_orders, transactions
from identity.database import Database
from identity.erasure import erase_customer
from identity.errors import RetryTransaction
from identity.pool import get_db
from identity.protection import UNPROTECTED
from identity.settings import SETTINGS
from tests.harness.checker import check_invariants
from tests.harness.database import blank_settings, read_contacts, run_sql
from tests.harness.gunicorn import Gunicorn
from tests.harness.processes import child_pids
from tests.harness.servers import Api, LiveServer

REPO = Path(fluxkart.__file__).resolve().parent
database_numbers = itertools.count(1)
Pair = tuple[str | None, str | None]


# --------------------------------------------------------------------------
# Helpers: fresh databases, running the command, the table in canonical form
# --------------------------------------------------------------------------


def new_database(backend: str, folder: Path, mysql_server: Any) -> dict[str, Any]:
    """Settings for a brand-new, empty database on the backend."""
    config = blank_settings()
    name = f"fluxkart_import_{os.getpid()}_{next(database_numbers)}"
    if backend == "mysql":
        with mysql_server.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        config.update(mysql_server.settings(name))
    else:
        config["FLUXKART_SQLITE_PATH"] = str(folder / f"{name}.db")
    return config


@pytest.fixture
def fresh_database(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[], dict[str, Any]]:
    """A function returning settings for one more empty database on the test's backend."""
    server = request.getfixturevalue("mysql_server") if backend == "mysql" else None
    return lambda: new_database(backend, tmp_path, server)


def run_import(config: dict[str, Any], *args: str, input: bytes | None = None) -> Any:
    """`flask import ARGS` on an app for `config`, in-process; returns click's Result."""
    app = create_app(config)
    result = app.test_cli_runner().invoke(args=["import", *args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def import_env(config: dict[str, Any]) -> dict[str, str]:
    """The environment of an import run as its own process: only this test's settings."""
    env = {name: value for name, value in os.environ.items() if name not in SETTINGS}
    env.update({name: str(value) for name, value in config.items() if name in SETTINGS})
    return env


def canonical(rows: list[dict[str, Any]]) -> list[tuple[Pair, list[Pair]]]:
    """Customers as (primary's (email, phone), sorted secondaries' pairs), sorted; ids and times dropped.

    Asserts the structure that makes this a faithful picture: every secondary links
    straight to a live primary, and no two live rows carry the same pair.
    """
    live = [row for row in rows if row["deletedAt"] is None]
    by_id = {row["id"]: row for row in live}
    pairs = [(row["email"], row["phoneNumber"]) for row in live]
    assert len(pairs) == len(set(pairs)), "two live rows carry the same (email, phone)"
    customers: dict[int, list[Pair]] = {row["id"]: [] for row in live if row["linkPrecedence"] == "primary"}
    for row in live:
        if row["linkPrecedence"] == "secondary":
            assert row["linkedId"] in customers, f"row {row['id']} does not link to a live primary"
            customers[row["linkedId"]].append((row["email"], row["phoneNumber"]))
    shape = [
        ((by_id[primary]["email"], by_id[primary]["phoneNumber"]), sorted(secondaries, key=str))
        for primary, secondaries in customers.items()
    ]
    return sorted(shape, key=str)


def table(config: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        return read_contacts(config)
    except Exception:  # the schema was never created (nothing was imported)
        return []


def csv_file(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("".join(",".join(row) + "\n" for row in rows))
    return path


# --------------------------------------------------------------------------
# Equivalence with POST /identify (property test)
# --------------------------------------------------------------------------

# test@test.com and 0000000 are blocked by default (SPEC, "Merge protection"): an order
# carrying one is applied without it, an order with nothing else is rejected.
EMAILS = ["a@x.io", "b@x.io", "c@x.io", "test@test.com"]
PHONES = ["111", "222", "333", "0000000"]
BLOCKED = {"test@test.com", "0000000", "0000000000"}
emails = st.one_of(
    st.none(),
    st.just(""),
    st.sampled_from(EMAILS),
    st.sampled_from(EMAILS).map(lambda email: f" {email.upper()} "),
)
phones = st.one_of(
    st.none(),
    st.sampled_from(PHONES),
    st.sampled_from(PHONES).map(int),
    st.sampled_from(PHONES).map(lambda phone: f"{phone[0]}-{phone[1:]}"),
)
order_files = st.tuples(
    st.lists(st.tuples(emails, phones), min_size=1, max_size=14),
    st.sampled_from(["csv", "jsonl"]),
    st.integers(min_value=1, max_value=5),
    st.sampled_from([2, 3, 50]),  # FLUXKART_MAX_CUSTOMER_IDENTIFIERS: 2 and 3 are reached often
)


class Replay:
    """One HTTP server whose app is swapped for each Hypothesis example (a new database each)."""

    def __init__(self) -> None:
        self.app: Any = None
        self.server = LiveServer(lambda environ, start_response: self.app(environ, start_response))

    def send(self, config: dict[str, Any], orders: list[tuple[Any, Any]]) -> None:
        self.app = create_app(config)
        api = Api(self.server.url)
        try:
            for email, phone in orders:
                response = api.post("/identify", json={"email": email, "phoneNumber": phone})
                assert response.status_code in (200, 400, 422), response.text
        finally:
            api.session.close()


@pytest.fixture(scope="module")
def replay() -> Iterator[Replay]:
    service = Replay()
    yield service
    service.server.close()


def order_text(orders: list[tuple[Any, Any]], fmt: str) -> str:
    """The orders as an export file: CSV (a header, other columns) or JSON Lines."""
    if fmt == "jsonl":
        return "".join(json.dumps({"phoneNumber": phone, "email": email}) + "\n" for email, phone in orders)
    lines = ["orderId,phoneNumber,email\n"]
    for number, (email, phone) in enumerate(orders, start=1):
        lines.append(f"{number},{'' if phone is None else phone},{'' if email is None else email}\n")
    return "".join(lines)


def merge_history(config: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The `merged` and `refused` events (SPEC, "Merge protection"), ids replaced by the
    (email, phone) of the rows they name (unique among live rows, see `canonical`), sorted:
    comparable between an import and a replay, whose ids differ."""
    pairs: dict[int | None, Pair | None] = {
        row["id"]: (row["email"], row["phoneNumber"]) for row in table(config)
    }
    pairs[None] = None
    try:
        events = run_sql(
            config,
            "SELECT kind, customerId, formerCustomerId, contactIds, detail FROM CustomerHistory "
            "WHERE kind IN ('merged', 'refused')",
        )
    except Exception:  # the schema was never created
        return []
    shape: list[tuple[Any, ...]] = []
    for event in events:
        detail = json.loads(event["detail"])
        contacts = sorted((pairs[i] for i in json.loads(event["contactIds"])), key=str)
        customer = pairs[event["customerId"]]
        if event["kind"] == "merged":
            evidence = {kind: pairs[row_id] for kind, row_id in sorted(detail["evidence"].items())}
            shape.append(("merged", customer, pairs[event["formerCustomerId"]], contacts, evidence))
        else:
            customers = sorted((pairs[i] for i in detail["customerIds"]), key=str)
            shape.append(("refused", customer, contacts, detail["identifier"], detail["reason"], customers))
    return sorted(shape, key=str)


def past_limit(rows: list[dict[str, Any]], limit: int) -> list[tuple[int, int]]:
    """(primary id, identifiers) of every customer holding more than `limit` distinct
    identifiers that are not blocked (BLOCKED); [] when merge protection held."""
    identifiers: dict[int, set[tuple[str, str]]] = {}
    for row in rows:
        if row["deletedAt"] is None:
            found = identifiers.setdefault(row["linkedId"] or row["id"], set())
            for kind, value in (("email", row["email"]), ("phone", row["phoneNumber"])):
                if value is not None and value not in BLOCKED:
                    found.add((kind, value))
    return sorted((primary, len(ids)) for primary, ids in identifiers.items() if len(ids) > limit)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(example=order_files)
def test_import_equals_replaying_the_file_through_identify(
    example: tuple[list[tuple[Any, Any]], str, int, int],
    fresh_database: Callable[[], dict[str, Any]],
    replay: Replay,
    tmp_path: Path,
) -> None:
    """Same customers, same primaries, same rows as sending every line to POST /identify in
    order, with merge protection: blocked values left out (a line with nothing else
    rejected), the identifier limit with its fallbacks; and the same merges (with their
    evidence) and refusals in the history."""
    orders, fmt, batch_size, limit = example
    imported, replayed = fresh_database(), fresh_database()
    for config in (imported, replayed):
        config["FLUXKART_MAX_CUSTOMER_IDENTIFIERS"] = str(limit)
    path = tmp_path / f"orders.{fmt}"
    path.write_text(order_text(orders, fmt))
    result = run_import(imported, str(path), "--batch-size", str(batch_size))
    assert result.exit_code in (0, 3), result.output
    replay.send(replayed, orders)
    assert canonical(table(imported)) == canonical(table(replayed))
    assert merge_history(imported) == merge_history(replayed)
    assert not past_limit(table(imported), limit)


# --------------------------------------------------------------------------
# Bad lines, rejects, refused and empty files
# --------------------------------------------------------------------------


def test_bad_lines_are_reported_by_line_and_skipped(
    fresh_database: Callable[[], dict[str, Any]], tmp_path: Path
) -> None:
    """Every kind of bad CSV line: reported on stderr with its line number and reason, the rest imported."""
    config = fresh_database()
    path = tmp_path / "orders.csv"
    path.write_bytes(
        b"orderId,email,phoneNumber\n"  # line 1
        b"1,ana@x.io,111\n"  # 2: good
        b"2,not-an-email,222\n"  # 3: bad email
        b"3,ben@x.io,12ab\n"  # 4: bad phone
        b"4,,\n"  # 5: neither identifier
        b"5,cy@x.io\n"  # 6: wrong column count
        b"6,d\xffd@x.io,444\n"  # 7: invalid UTF-8
        b"\n"  # 8: blank: skipped, not an order
        b'7,"eve@x.io",222\n'  # 9: good (quoted)
        b"8,fay@x.io,9.87654E+09\n"  # 10: a spreadsheet number that lost its digits
    )
    rejects = tmp_path / "rejects.csv"
    result = run_import(config, str(path), "--rejects", str(rejects))
    assert result.exit_code == 3, result.output
    errors = result.stderr.splitlines()
    expected = {
        "line 3:": "email",
        "line 4:": "phoneNumber",
        "line 5:": "neither an email nor a phoneNumber",
        "line 6:": "has 2 columns, the header has 3",
        "line 7:": "not valid UTF-8 (byte 0xFF",
        "line 10:": "scientific notation",
    }
    for prefix, reason in expected.items():
        assert any(line.startswith(prefix) and reason in line for line in errors), (prefix, errors)
    assert "lines read 8, imported 2" in result.stdout and "rejected 6" in result.stdout
    assert sorted((r["email"], r["phoneNumber"]) for r in table(config)) == [
        ("ana@x.io", "111"),
        ("eve@x.io", "222"),
    ]
    # The rejects file is the header and the bad lines as they were, byte for byte.
    assert rejects.read_bytes() == (
        b"orderId,email,phoneNumber\n"
        b"2,not-an-email,222\n3,ben@x.io,12ab\n4,,\n5,cy@x.io\n6,d\xffd@x.io,444\n8,fay@x.io,9.87654E+09\n"
    )
    # It imports as it is (the same lines rejected again, nothing else) ...
    again = run_import(config, str(rejects))
    assert (
        again.exit_code == 3 and "lines read 6, imported 0" in again.stdout and "rejected 6" in again.stdout
    )
    # ... and cleanly once fixed.
    fixed = tmp_path / "fixed.csv"
    fixed.write_bytes(
        rejects.read_bytes()
        .replace(b"not-an-email", b"gus@x.io")
        .replace(b"12ab", b"12")
        .replace(b"4,,", b"4,hal@x.io,")
        .replace(b"5,cy@x.io", b"5,cy@x.io,")
        .replace(b"d\xffd", b"dd")
        .replace(b"9.87654E+09", b"9876543210")
    )
    clean = run_import(config, str(fixed))
    assert clean.exit_code == 0, clean.output
    assert "imported 6" in clean.stdout and "rejected 0" in clean.stdout
    assert len(table(config)) == 8


def test_bad_json_lines_and_spreadsheet_numbers(
    fresh_database: Callable[[], dict[str, Any]], tmp_path: Path
) -> None:
    """JSON Lines: invalid JSON, a non-object, fractions; a whole number with a zero fraction is accepted."""
    config = fresh_database()
    path = tmp_path / "orders.jsonl"
    path.write_bytes(
        b'{"email": "ana@x.io", "phoneNumber": 9876543210.0}\n'  # 1: good, spreadsheet number
        b'{"email": "ben@x.io"\n'  # 2: invalid JSON
        b'["ben@x.io"]\n'  # 3: not an object
        b'{"email": "cy@x.io", "phoneNumber": 98.5}\n'  # 4: a fraction
        b'{"email": "dan@x.io", "phoneNumber": true}\n'  # 5: wrong type
        b'{"email": "eve@x.io", "phoneNumber": "98 76-54", "extra": [1.5]}\n'  # 6: good
    )
    rejects = tmp_path / "rejects.jsonl"
    result = run_import(config, str(path), "--rejects", str(rejects))
    assert result.exit_code == 3, result.output
    for number in (2, 3, 4, 5):
        assert f"line {number}:" in result.stderr
    assert sorted((r["email"], r["phoneNumber"]) for r in table(config)) == [
        ("ana@x.io", "9876543210"),
        ("eve@x.io", "987654"),
    ]
    assert rejects.read_bytes().count(b"\n") == 4
    assert run_import(config, str(rejects)).stdout.startswith("lines read 4, imported 0")


def test_csv_columns_in_any_order_with_a_bom_and_spreadsheet_phones(
    fresh_database: Callable[[], dict[str, Any]], tmp_path: Path
) -> None:
    """UTF-8 with a byte-order mark, CRLF, columns in any order and any case, other columns ignored."""
    config = fresh_database()
    path = tmp_path / "orders.csv"
    path.write_bytes(
        "\ufeffTotal,PhoneNumber,note,EMAIL\r\n"
        '10.5,9876543210.0,"multi\r\nline",Zoë@X.io\r\n'
        "3,98765 43210,,\r\n".encode()
    )
    result = run_import(config, str(path))
    assert result.exit_code == 0, result.output
    assert [(r["email"], r["phoneNumber"], r["linkPrecedence"]) for r in table(config)] == [
        ("zoë@x.io", "9876543210", "primary")
    ]


def test_a_file_without_identifier_columns_is_refused_before_writing(
    fresh_database: Callable[[], dict[str, Any]], tmp_path: Path
) -> None:
    config = fresh_database()
    path = csv_file(tmp_path / "orders.csv", [["orderId", "mail", "phone"], ["1", "ana@x.io", "111"]])
    result = run_import(config, str(path))
    assert result.exit_code == 1
    assert "neither an 'email' nor a 'phoneNumber' column" in result.stderr
    assert table(config) == []


def test_a_semicolon_export_and_a_gzip_file_are_refused_with_what_to_do(
    fresh_database: Callable[[], dict[str, Any]], tmp_path: Path
) -> None:
    config = fresh_database()
    path = tmp_path / "orders.csv"
    path.write_text("orderId;email;phoneNumber\n1;ana@x.io;111\n")
    result = run_import(config, str(path))
    assert result.exit_code == 1
    assert "its columns look separated by ';': export with commas" in result.stderr
    path = tmp_path / "orders.csv.gz"
    path.write_bytes(gzip.compress(b"email,phoneNumber\nana@x.io,111\n"))
    result = run_import(config, str(path))
    assert result.exit_code == 1
    assert "the file is gzip-compressed" in result.stderr and "zcat" in result.stderr
    assert table(config) == []


@pytest.mark.parametrize("content", [b"", b"\n\n", b"email,phoneNumber\n", b"\xef\xbb\xbfphoneNumber\r\n"])
def test_empty_and_header_only_files_import_nothing(
    content: bytes, fresh_database: Callable[[], dict[str, Any]], tmp_path: Path
) -> None:
    config = fresh_database()
    path = tmp_path / "orders.csv"
    path.write_bytes(content)
    result = run_import(config, str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("lines read 0, imported 0")
    assert table(config) == []


def test_standard_input(fresh_database: Callable[[], dict[str, Any]]) -> None:
    config = fresh_database()
    result = run_import(
        config, "-", input=b'{"email": "ana@x.io"}\n{"phoneNumber": "111", "email": "ana@x.io"}\n'
    )
    assert result.exit_code == 0, result.output
    assert canonical(table(config)) == [(("ana@x.io", None), [("ana@x.io", "111")])]


# --------------------------------------------------------------------------
# Merge protection: one value shared by a few hundred orders
# --------------------------------------------------------------------------

SHOPPERS = 300
LIMIT = 50  # FLUXKART_MAX_CUSTOMER_IDENTIFIERS' default


def shared_value_orders(phone: str) -> list[tuple[Any, Any]]:
    """Orders of SHOPPERS people that all carry `phone` (a checkout form's default, a shop's
    own number), every tenth followed by an order with that phone alone; then pairs of
    shoppers bridged by a new number (a merge, when both are customers of their own; a
    refusal, when they are rows of the shared number's customer, full)."""
    orders: list[tuple[Any, Any]] = []
    for i in range(SHOPPERS):
        orders.append((f"user{i}@shop.example", phone))
        if i % 10 == 9:
            orders.append((None, phone))
    for k in range(0, SHOPPERS, 25):
        orders += [(f"user{k}@shop.example", f"98{k:05d}"), (f"user{k + 1}@shop.example", f"98{k:05d}")]
    return orders


def import_shared_value(
    config: dict[str, Any],
    tmp_path: Path,
    orders: list[tuple[Any, Any]],
    replayed: dict[str, Any],
    replay: Replay,
    *options: str,
) -> Any:
    """Import the orders (batches of 64: the shared customer reaches the limit in the first
    and is read back from the table by the next ones) and replay them through POST /identify
    into `replayed`; returns the import's result."""
    for settings_ in (config, replayed):
        settings_["FLUXKART_MAX_CUSTOMER_IDENTIFIERS"] = str(LIMIT)
    path = tmp_path / "orders.csv"
    path.write_text(order_text(orders, "csv"))
    result = run_import(config, str(path), "--batch-size", "64", *options)
    replay.send(replayed, orders)
    return result


def test_a_default_blocked_phone_shared_by_hundreds_of_orders_joins_nobody(
    fresh_database: Callable[[], dict[str, Any]], replay: Replay, tmp_path: Path
) -> None:
    """0000000000 on every order (blocked by default): each shopper is a customer of their own,
    the number is stored nowhere, a line with only that number is rejected by line number
    (naming the field), and the table and the merges equal a replay through POST /identify."""
    imported, replayed = fresh_database(), fresh_database()
    orders = shared_value_orders("0000000000")
    rejects = tmp_path / "rejects.csv"
    result = import_shared_value(imported, tmp_path, orders, replayed, replay, "--rejects", str(rejects))
    assert result.exit_code == 3, result.output
    alone = [number for number, (email, _) in enumerate(orders, start=2) if email is None]  # line 1: header
    errors = result.stderr.splitlines()
    for number in alone:
        assert any(line.startswith(f"line {number}: the phoneNumber sent is blocked") for line in errors), (
            number
        )
    assert f"rejected {len(alone)};" in result.stdout
    # The rejected lines as they were, in file order (order_text numbers the orders from 1).
    assert rejects.read_text() == "orderId,phoneNumber,email\n" + "".join(
        f"{n - 1},0000000000,\n" for n in alone
    )
    assert f"identifiers left out: {SHOPPERS} blocked, 0 over the customer limit" in result.stdout
    rows = table(imported)
    assert not [row for row in rows if row["phoneNumber"] == "0000000000"]
    assert not past_limit(rows, LIMIT)
    assert canonical(rows) == canonical(table(replayed))
    history = merge_history(imported)
    assert history == merge_history(replayed)
    merges = [event for event in history if event[0] == "merged"]
    assert len(merges) == SHOPPERS // 25  # every bridge joins two customers of one row each
    for _, _, _, _, evidence in merges:
        assert evidence["email"] is not None and evidence["phone"] is not None


def test_a_phone_shared_by_hundreds_of_orders_stops_at_the_limit(
    fresh_database: Callable[[], dict[str, Any]], replay: Replay, tmp_path: Path
) -> None:
    """A number not blocked, on every order: its customer grows to the limit (49 shoppers and
    the number), then every other order is applied without the number (a customer of its own,
    a `refused` event naming the full customer); nobody is past the limit, and the table,
    the merges and the refusals equal a replay through POST /identify."""
    imported, replayed = fresh_database(), fresh_database()
    orders = shared_value_orders("9876501234")
    result = import_shared_value(imported, tmp_path, orders, replayed, replay)
    assert result.exit_code == 0, result.output
    rows = table(imported)
    assert not past_limit(rows, LIMIT)
    assert canonical(rows) == canonical(table(replayed))
    history = merge_history(imported)
    assert history == merge_history(replayed)
    shared = [row for row in rows if row["phoneNumber"] == "9876501234"]
    primary = shared[0]["linkedId"] or shared[0]["id"]
    members = [row for row in rows if primary in (row["id"], row["linkedId"])]
    assert (
        len({row["email"] for row in members} | ({row["phoneNumber"] for row in members} - {None})) == LIMIT
    )
    full = ("user0@shop.example", "9876501234")
    refusals = [event for event in history if event[0] == "refused"]
    # Shoppers 49 to 299 are refused the number; the bridges of shoppers 0, 1, 25 and 26 their
    # new number (their customer is full); every other bridge is a merge with its evidence.
    assert len([event for event in refusals if event[2] and event[2][0][1] == "9876501234"]) == SHOPPERS - 49
    assert all(event[3:5] == ("phone", "limit") for event in refusals)
    assert all(event[5] == [full] for event in refusals if event[2])
    assert len(refusals) == SHOPPERS - 49 + 4
    assert f"identifiers left out: 0 blocked, {len(refusals)} over the customer limit" in result.stdout
    merges = [event for event in history if event[0] == "merged"]
    assert len(merges) == SHOPPERS // 25 - 2
    for _, _, _, _, evidence in merges:
        assert evidence["email"] is not None and evidence["phone"] is not None


def test_control_without_merge_protection_the_shared_phone_makes_one_blob(
    fresh_database: Callable[[], dict[str, Any]],
    replay: Replay,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control: the same file imported with merge protection taken out of the import (nothing
    blocked, no limit) makes the blob the tests above would catch."""
    monkeypatch.setattr(import_batch, "current_protection", lambda db: UNPROTECTED)
    imported, replayed = fresh_database(), fresh_database()
    result = import_shared_value(imported, tmp_path, shared_value_orders("9876501234"), replayed, replay)
    assert result.exit_code == 0, result.output
    assert past_limit(table(imported), LIMIT)
    assert canonical(table(imported)) != canonical(table(replayed))
    assert merge_history(imported) != merge_history(replayed)


# --------------------------------------------------------------------------
# Re-import, interruption
# --------------------------------------------------------------------------


def shop_orders(count: int, seed: int, customers: int) -> list[Pair]:
    """Orders of `customers` shoppers: repeats (both identifiers or one), new phone numbers, and
    bridges that merge two customers; customers stay small, as a shop's do (pairs of
    neighbours are the only ones ever bridged)."""
    rng = random.Random(seed)
    orders: list[Pair] = []
    for _ in range(count):
        k = rng.randrange(customers)
        email, phone = f"c{k}@shop.example", f"9{k:06d}"
        r = rng.random()
        if r < 0.2:
            phone = None
        elif r < 0.35:
            email = None
        elif r < 0.5:
            phone = f"8{k:06d}{rng.randrange(3)}"  # a second or third number
        elif r < 0.6:
            email = f"c{k ^ 1}@shop.example"  # the neighbour's email: a merge
        orders.append((email, phone))
    return orders


def test_importing_the_same_file_again_creates_nothing(
    fresh_database: Callable[[], dict[str, Any]], tmp_path: Path
) -> None:
    config = fresh_database()
    path = tmp_path / "orders.jsonl"
    path.write_text(order_text(shop_orders(400, seed=1, customers=150), "jsonl"))
    first = run_import(config, str(path), "--batch-size", "37")
    assert first.exit_code == 0, first.output
    before = table(config)
    second = run_import(config, str(path), "--batch-size", "37")
    assert second.exit_code == 0, second.output
    assert "customers created 0, rows linked 0, merges 0, repaired 0, unchanged 400" in second.stdout
    assert table(config) == before  # not even updatedAt moved


def losing_batches(monkeypatch: pytest.MonkeyPatch, largest: int) -> None:
    """Every transaction of a batch of more than `largest` orders loses its lock conflict, as a
    batch beside live traffic on a multi-primary cluster nearly always does; two attempts each."""
    real = import_orders.import_batch

    def losing(db: Database, batch: Any, clock: Any) -> Any:
        if len(batch.orders) > largest:
            raise RetryTransaction("deadlock")
        return real(db, batch, clock)

    monkeypatch.setattr(import_orders, "import_batch", losing)
    monkeypatch.setattr(transactions, "MAX_ATTEMPTS", 2)


def test_a_batch_that_keeps_losing_its_conflicts_is_imported_in_halves(
    fresh_database: Callable[[], dict[str, Any]],
    replay: Replay,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    orders = shop_orders(60, seed=3, customers=20)
    imported, replayed = fresh_database(), fresh_database()
    path = tmp_path / "orders.jsonl"
    path.write_text(order_text(orders, "jsonl"))
    losing_batches(monkeypatch, largest=4)
    result = run_import(imported, str(path), "--batch-size", "25")
    assert result.exit_code == 0, result.output
    assert "imported 60" in result.stdout, result.stdout
    replay.send(replayed, orders)
    assert canonical(table(imported)) == canonical(table(replayed))


def test_control_without_halving_such_a_batch_stops_the_import(
    fresh_database: Callable[[], dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = fresh_database()
    path = tmp_path / "orders.jsonl"
    path.write_text(order_text(shop_orders(60, seed=3, customers=20), "jsonl"))
    losing_batches(monkeypatch, largest=4)
    monkeypatch.setattr(
        import_orders,
        "apply_batch",
        lambda db, batch, clock: transactions.in_transaction(
            db, lambda db: import_orders.import_batch(db, batch, clock), "import"
        ),
    )
    result = run_import(config, str(path), "--batch-size", "25")
    assert result.exit_code == 1
    assert "gave up after 2 attempts: deadlock" in result.output


@pytest.mark.parametrize("backend", ["mysql"])  # SQLite's batch holds the write lock from its first read
@pytest.mark.parametrize("erasure_id", ["newest", "below_the_newest"])
def test_an_erasure_after_the_settled_read_starts_the_batch_over(
    fresh_database: Callable[[], dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    erasure_id: str,
) -> None:
    """An order settled by a customer that is erased before the batch commits is applied
    after the erasure, as a replay in file order would apply it.

    The file: {e, 200} (links to the stored customer {e, 100}), then {e, 100} (settled by
    it). Right after the batch's lock-free read, another connection erases the customer.
    Replayed in file order after the erasure, the two orders make one new customer of two
    rows; an import that kept its settled count would leave {e, 100} out.
    `below_the_newest`: the erasure's record has a smaller id than one already there, as
    when it took its id before another erasure that committed first (or on another Galera
    node): a check of the newest id would miss it.
    """
    config = fresh_database()
    assert run_import(config, "-", input=b"email,phoneNumber\ne@x.io,100\n").exit_code == 0
    if erasure_id == "below_the_newest":
        run_sql(
            config,
            "INSERT INTO CustomerErasure (id, erasedAt, requestId, contacts, identifiers, historyEvents) "
            "VALUES (1000, '2026-01-01 00:00:00', 'earlier', 1, 1, 0)",
        )
    real = import_batch.settled_orders
    # The settled read runs in the import's reading process: a file says the erasure is done.
    erased = tmp_path / "erased"

    def erase_in_another_connection() -> None:
        with create_app(config).app_context():
            erase_customer(get_db(), "e@x.io", None, dry_run=False)
        if erasure_id == "below_the_newest":
            run_sql(config, "UPDATE CustomerErasure SET id = 5 WHERE id > 1000")
        erased.touch()

    def settled_then_erased(db: Database, orders: list[Pair]) -> list[bool]:
        settled = real(db, orders)
        if not erased.exists():
            worker = threading.Thread(target=erase_in_another_connection)
            worker.start()
            worker.join(30)
            assert erased.exists(), "the erasure did not finish"
        return settled

    monkeypatch.setattr(import_batch, "settled_orders", settled_then_erased)
    result = run_import(config, "-", input=b"email,phoneNumber\ne@x.io,200\ne@x.io,100\n")
    assert result.exit_code == 0, result.output
    assert "customers created 1, rows linked 1" in result.stdout
    assert canonical(table(config)) == [(("e@x.io", "200"), [("e@x.io", "100")])]


def test_the_import_records_what_it_changed_in_the_history(
    fresh_database: Callable[[], dict[str, Any]], tmp_path: Path
) -> None:
    """Every row the import inserted or re-pointed is named by an `imported` event of its customer,
    every merge by a `merged` event with its evidence (the rows matched by email and by phone,
    SPEC "Merge protection"), and a second import of the same file records nothing."""
    config = fresh_database()
    path = tmp_path / "orders.jsonl"
    path.write_text(order_text(shop_orders(300, seed=3, customers=80), "jsonl"))
    assert run_import(config, str(path), "--batch-size", "25").exit_code == 0
    events = run_sql(
        config, "SELECT kind, customerId, formerCustomerId, contactIds, detail FROM CustomerHistory"
    )
    assert {event["kind"] for event in events} == {"imported", "merged"}  # the file bridges neighbours
    imported = [event for event in events if event["kind"] == "imported"]
    named = {contact_id for event in imported for contact_id in json.loads(event["contactIds"])}
    assert named == {row["id"] for row in table(config)}
    rows = {row["id"]: row for row in table(config)}
    for event in events:
        if event["kind"] == "merged":
            evidence = json.loads(event["detail"])["evidence"]
            # A merge joins the customer of an email and that of a phone: both rows are named
            # and are rows of one customer now; the demoted primary moved first, with its rows.
            email_row, phone_row = rows[evidence["email"]], rows[evidence["phone"]]
            assert (email_row["linkedId"] or email_row["id"]) == (phone_row["linkedId"] or phone_row["id"])
            assert json.loads(event["contactIds"])[0] == event["formerCustomerId"]
    assert run_import(config, str(path), "--batch-size", "25").exit_code == 0
    assert len(run_sql(config, "SELECT id FROM CustomerHistory")) == len(events)


def has_ended(pid: int) -> bool:
    """True when the process is gone, or a zombie nobody reaped (it ran its last line)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# How the import is stopped half way: Ctrl-C (SIGINT to the terminal's process group),
# SIGTERM (a service manager), SIGKILL (a crash), or the death of its reading process.
# `flask` as a terminal starts it: a shell without job control (CI's may be one) starts a
# background command with SIGINT ignored, and a child inherits that; a terminal's
# foreground command has Python's own SIGINT handler.
AS_A_TERMINAL_STARTS_IT = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from flask.cli import main; main()"
)
STOPS = {
    "ctrl_c": 130,
    "sigterm": 130,
    "sigkill": -signal.SIGKILL,
    "reader_killed": 1,
}


@pytest.mark.parametrize("stop", list(STOPS))
def test_an_import_stopped_half_way_and_run_again_equals_one_full_import(
    fresh_database: Callable[[], dict[str, Any]], tmp_path: Path, stop: str
) -> None:
    """Stopped after some batches (the open one rolls back), then the same command: same
    result. The reading process never outlives the import; the import reports how far it
    got and exits with its status."""
    stopped, whole = fresh_database(), fresh_database()
    orders = shop_orders(6000, seed=2, customers=2000)
    path = tmp_path / "orders.csv"
    path.write_text(order_text(orders, "csv"))
    command = [sys.executable, "-c", AS_A_TERMINAL_STARTS_IT, "--app", "fluxkart", "import", str(path)]
    process = subprocess.Popen(
        [*command, "--batch-size", "10"],
        cwd=REPO,
        env=import_env(stopped),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal gives a command
    )
    readers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None and not readers:
            readers = child_pids(process.pid)  # forked before the first batch, lives to the end
            time.sleep(0.005)
        while time.monotonic() < deadline and process.poll() is None and len(table(stopped)) < 300:
            time.sleep(0.02)
        assert process.poll() is None, "the import finished before it could be stopped"
        assert len(readers) == 1, readers
        if stop == "ctrl_c":
            os.killpg(process.pid, signal.SIGINT)
        elif stop == "reader_killed":
            os.kill(readers[0], signal.SIGKILL)
        else:
            process.send_signal(signal.SIGTERM if stop == "sigterm" else signal.SIGKILL)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == STOPS[stop], err
    deadline = time.monotonic() + 30
    while not has_ended(readers[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert has_ended(readers[0]), "the reading process outlived the import"
    if stop in ("ctrl_c", "sigterm"):
        assert b"interrupted. Imported every order up to line " in err, err
    if stop == "reader_killed":
        assert b"stopped: the process reading the file ended (killed by signal 9)" in err, err
    partial = len(table(stopped))
    resumed = run_import(stopped, str(path), "--batch-size", "10")
    assert resumed.exit_code == 0, resumed.output
    assert run_import(whole, str(path)).exit_code == 0
    full = table(whole)
    assert 300 <= partial < len(full)
    assert canonical(table(stopped)) == canonical(full)
    assert not check_invariants(table(stopped), orders)


# --------------------------------------------------------------------------
# Racing live traffic
# --------------------------------------------------------------------------


def test_an_import_racing_live_identify_traffic_keeps_the_invariants(
    fresh_database: Callable[[], dict[str, Any]], tmp_path: Path
) -> None:
    """gunicorn workers serve identify requests on the same customers while the import runs."""
    config = fresh_database()
    orders = shop_orders(3000, seed=3, customers=400)
    live_orders = shop_orders(600, seed=4, customers=400)
    path = tmp_path / "orders.jsonl"
    path.write_text(order_text(orders, "jsonl"))
    env = {name: str(config.get(name, "")) for name in SETTINGS}
    env.update(WEB_CONCURRENCY="4", GUNICORN_THREADS="1", GUNICORN_WORKER_CLASS="sync")
    server = Gunicorn(env, tmp_path, REPO)
    answered: list[Pair] = []
    failures: list[str] = []
    started = threading.Event()

    def client(share: list[Pair]) -> None:
        with requests.Session() as session:
            started.wait(30)
            for email, phone in share:
                response = session.post(
                    server.url + "/identify", json={"email": email, "phoneNumber": phone}, timeout=65
                )
                if response.status_code == 200:
                    answered.append((email, phone))
                else:
                    failures.append(f"{response.status_code} {response.text}")

    server.start(ready_path="/health/ready")
    try:
        threads = [threading.Thread(target=client, args=(live_orders[i::8],)) for i in range(8)]
        for thread in threads:
            thread.start()
        started.set()
        result = run_import(config, str(path), "--batch-size", "25")
        for thread in threads:
            thread.join(120)
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    assert not failures, failures[:5]
    assert len(answered) == len(live_orders)
    violations = check_invariants(table(config), [*orders, *answered])
    assert not violations, "\n".join(violations[:20])
