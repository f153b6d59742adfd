"""Data the service did not write (SPEC, "Data the service did not write"), on both backends.

Rows of every shape the replaced implementation, support tools and privacy
processes leave behind are written straight into the table, which is then
marked as `migrate` leaves an adopted table (not known to be consistent).
identify, hit directly with no repair run first, answers 200 with the whole
customer and repairs it in the same transaction; the lookup answers it without
writing; `repair` makes the whole table follow the rules and a second run
changes nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from fluxkart import create_app
from tests.harness.checker import check_invariants
from tests.harness.database import read_contacts, run_sql
from tests.harness.legacy import Seed, seed_rows
from tests.harness.servers import Api


def seed(settings: dict[str, Any], api: Api, rows: list[Seed]) -> None:
    """The service creates its schema, then the rows are written behind its back."""
    assert api.get("/health/ready").status_code == 200
    seed_rows(settings, rows)


# The checker's kinds that do not depend on which requests were sent.
STRUCTURAL = (
    "[no-primary]",
    "[several-primaries]",
    "[primary-not-oldest]",
    "[primary-linked]",
    "[chain]",
    "[wrong-link]",
    "[bad-precedence]",
    "[split]",
)


def rule_violations(rows: list[dict[str, Any]]) -> list[str]:
    """What breaks the SPEC's rules in these rows, whatever requests made them."""
    return [v for v in check_invariants(rows, []) if v.startswith(STRUCTURAL)]


def links(settings: dict[str, Any]) -> dict[int, tuple[str, int | None]]:
    """{id: (linkPrecedence, linkedId)} of every row, deleted ones included."""
    return {row["id"]: (row["linkPrecedence"], row["linkedId"]) for row in read_contacts(settings)}


def live(settings: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for row in read_contacts(settings) if row["deletedAt"] is None]


def test_a_chain_is_followed_and_flattened(api: Api, settings: dict[str, Any]) -> None:
    seed(
        settings,
        api,
        [
            (1, "a@x", "300001", None, "primary", 1, False),
            (2, "b@x", "300002", 1, "secondary", 2, False),
            (3, "b@x", "300003", 2, "secondary", 3, False),
        ],
    )
    answer = api.identify(None, "300003")
    assert answer["primaryContactId"] == 1
    assert answer["secondaryContactIds"] == [2, 3]
    assert answer["phoneNumbers"] == ["300001", "300002", "300003"]
    assert links(settings) == {1: ("primary", None), 2: ("secondary", 1), 3: ("secondary", 1)}


def test_three_identical_primaries_become_one_customer(api: Api, settings: dict[str, Any]) -> None:
    seed(settings, api, [(n, "n@x", "400001", None, "primary", n, False) for n in (1, 2, 3)])
    answer = api.identify("n@x", "400001")
    assert (answer["primaryContactId"], answer["secondaryContactIds"]) == (1, [2, 3])
    assert answer["emails"] == ["n@x"] and answer["phoneNumbers"] == ["400001"]
    assert links(settings) == {1: ("primary", None), 2: ("secondary", 1), 3: ("secondary", 1)}
    assert len(read_contacts(settings)) == 3  # nothing added: every identifier was known


def test_a_primary_reachable_only_through_a_secondarys_identifier_is_merged(
    api: Api, settings: dict[str, Any]
) -> None:
    seed(
        settings,
        api,
        [
            (1, "doc@x", "100003", None, "primary", 1, False),
            (2, "jose@x", "777001", None, "primary", 2, False),
            (3, "jose@x", "100003", 2, "secondary", 3, False),
        ],
    )
    answer = api.identify("jose@x", "777002")
    assert answer["primaryContactId"] == 1
    assert answer["secondaryContactIds"][:2] == [2, 3] and len(answer["secondaryContactIds"]) == 3
    assert answer["emails"] == ["doc@x", "jose@x"]
    assert answer["phoneNumbers"] == ["100003", "777001", "777002"]
    assert all(link == ("secondary", 1) for rid, link in links(settings).items() if rid != 1)


def test_a_deleted_primary_is_replaced_by_the_oldest_live_row(api: Api, settings: dict[str, Any]) -> None:
    """{mira@x, 5550001}, {mira.work@x, 5550001}, then row 1 soft-deleted: the customer lives on."""
    seed(
        settings,
        api,
        [
            (1, "mira@x", "5550001", None, "primary", 1, True),
            (2, "mira.work@x", "5550001", 1, "secondary", 2, False),
        ],
    )
    assert api.get("/customers", params={"phoneNumber": "5550001"}).json()["contact"]["primaryContactId"] == 2
    # by email, by phone, with new information (the deleted row's email is new: never matched)
    for request in [("mira.work@x", None), (None, "5550001"), ("mira@x", "5550001"), ("mira@x", "5550002")]:
        answer = api.identify(*request)
        assert answer["primaryContactId"] == 2, (request, answer)
    rows = links(settings)
    assert rows[1] == ("primary", None)  # deleted rows are never changed
    assert rows[2] == ("primary", None)
    assert all(link == ("secondary", 2) for rid, link in rows.items() if rid > 2)


def test_a_merge_leaves_deleted_rows_untouched(api: Api, settings: dict[str, Any]) -> None:
    """{b1@x, 111}, {a1@x, 222}, {a2@x, 222}, row 3 soft-deleted, then {b1@x, 222} merges the two."""
    seed(
        settings,
        api,
        [
            (1, "b1@x", "111", None, "primary", 1, False),
            (2, "a1@x", "222", None, "primary", 2, False),
            (3, "a2@x", "222", 2, "secondary", 3, True),
        ],
    )
    before = {row["id"]: row for row in read_contacts(settings)}[3]
    answer = api.identify("b1@x", "222")
    assert (answer["primaryContactId"], answer["secondaryContactIds"]) == (1, [2])
    assert {row["id"]: row for row in read_contacts(settings)}[3] == before


def test_a_link_to_a_missing_row_and_rows_without_identifiers(api: Api, settings: dict[str, Any]) -> None:
    seed(
        settings,
        api,
        [(5, "orphan@x", "900", 99, "secondary", 1, False), (6, None, None, None, "primary", 2, False)],
    )
    answer = api.identify("orphan@x", None)
    assert (answer["primaryContactId"], answer["secondaryContactIds"]) == (5, [])
    assert links(settings)[5] == ("primary", None)
    assert links(settings)[6] == ("primary", None)  # never matched, left alone


def test_the_lookup_answers_the_whole_customer_and_writes_nothing(api: Api, settings: dict[str, Any]) -> None:
    seed(
        settings,
        api,
        [
            (1, "a@x", "1", None, "primary", 1, False),
            (2, "b@x", "2", 1, "secondary", 2, False),
            (3, "c@x", "2", 2, "secondary", 3, False),
            (4, "d@x", "4", None, "primary", 4, False),
            (5, "d@x", "1", None, "primary", 5, False),
        ],
    )
    before = read_contacts(settings)
    answer = api.get("/customers", params={"email": "c@x"}).json()["contact"]
    assert (answer["primaryContactId"], answer["secondaryContactIds"]) == (1, [2, 3, 4, 5])
    assert read_contacts(settings) == before


LEGACY: list[Seed] = [
    # stored as sent: case and formatting
    (1, "Doc@Example.com", "555 0101", None, "primary", 1, False),
    (2, "doc@example.com", "5550101", None, "primary", 2, False),
    # a chain of three
    (3, "a@x", "300001", None, "primary", 3, False),
    (4, "b@x", "300002", 3, "secondary", 4, False),
    (5, "c@x", "300003", 4, "secondary", 5, False),
    # three identical primaries
    (6, "n@x", "400001", None, "primary", 6, False),
    (7, "n@x", "400001", None, "primary", 7, False),
    (8, "n@x", "400001", None, "primary", 8, False),
    # a deleted primary with a live secondary, and a secondary of a missing row
    (9, "gone@x", "600001", None, "primary", 9, True),
    (10, "left@x", "600001", 9, "secondary", 10, False),
    (11, "orphan@x", "700001", 999, "secondary", 11, False),
    # neither identifier; an invalid value
    (12, None, None, None, "primary", 12, False),
    (13, "not-an-email", "800001", None, "primary", 13, False),
]


def run_repair(settings: dict[str, Any], *args: str) -> Any:
    return create_app(settings).test_cli_runner().invoke(args=["repair", *args])


def test_repair_makes_every_customer_follow_the_rules(api: Api, settings: dict[str, Any]) -> None:
    seed(settings, api, LEGACY)
    before = read_contacts(settings)
    dry = run_repair(settings, "--dry-run")
    assert "dry run: nothing was changed" in dry.output
    assert read_contacts(settings) == before

    result = run_repair(settings)
    assert result.exit_code == 1, result.output  # the invalid email could not be repaired
    assert "row 13: email" in result.output
    assert "rows with neither identifier (never matched): 1 (ids 12)" in result.output
    rows = live(settings)
    assert not rule_violations(rows)
    by_id = {row["id"]: row for row in rows}
    assert (by_id[1]["email"], by_id[1]["phoneNumber"]) == ("doc@example.com", "5550101")
    assert by_id[2]["linkedId"] == 1
    assert by_id[5]["linkedId"] == 3 and by_id[4]["linkedId"] == 3
    assert by_id[7]["linkedId"] == 6 and by_id[8]["linkedId"] == 6
    assert by_id[10]["linkPrecedence"] == "primary" and by_id[11]["linkPrecedence"] == "primary"
    assert by_id[13]["email"] == "not-an-email"
    # every stored identifier is found by its canonical form
    for row in rows:
        if row["email"] and "@" in row["email"]:
            found = api.get("/customers", params={"email": row["email"]})
            assert found.status_code == 200 and row["id"] in [
                found.json()["contact"]["primaryContactId"],
                *found.json()["contact"]["secondaryContactIds"],
            ]
    assert api.identify("DOC@example.com", "(555) 0101")["primaryContactId"] == 1

    again = run_repair(settings)
    assert "nothing to repair" in again.output, again.output
    assert live(settings) == rows


def test_repair_dry_run_counts_a_customer_broken_in_several_ways_once(
    api: Api, settings: dict[str, Any]
) -> None:
    """A customer found from a chain, a second primary and a shared email and phone is one
    customer to repair: the dry run's summary says what the real run then does."""
    seed(
        settings,
        api,
        [
            (1, "a@x", "100", None, "primary", 1, False),
            (2, "b@x", "200", 1, "secondary", 2, False),
            (3, "c@x", "300", 2, "secondary", 3, False),  # a chain
            (4, "a@x", "400", None, "primary", 4, False),  # a second primary, sharing a@x
            (5, "d@x", "200", None, "primary", 5, False),  # and a third, sharing 200
        ],
    )
    dry = run_repair(settings, "--dry-run")
    real = run_repair(settings)
    assert real.exit_code == 0, real.output

    def summary(output: str) -> str:
        line = next(line for line in output.splitlines() if line.startswith("customers that"))
        return line.split(": ", 1)[1]

    assert (
        summary(dry.output)
        == summary(real.output)
        == (
            "1 (rows re-pointed 3, primaries demoted 2, merged because they share a canonical identifier 0,"
            " primaries promoted 0)"
        )
    )


@pytest.mark.parametrize("settings", [{"FLUXKART_PHONE_REGION": "IN"}], indirect=True)
def test_repair_renormalizes_for_a_new_region_and_merges(api: Api, settings: dict[str, Any]) -> None:
    """Numbers stored before the region was set become E.164, and customers that became one merge."""
    seed(
        settings,
        api,
        [
            (1, "old@x", "9876543210", None, "primary", 1, False),
            (2, "new@x", "+919876543210", None, "primary", 2, False),
        ],
    )
    result = run_repair(settings)
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in live(settings)}
    assert rows[1]["phoneNumber"] == "+919876543210" and rows[2]["linkedId"] == 1
    assert "merged because they share a canonical identifier 1" in result.output


def test_the_reference_table_after_migrate_serves_every_kind_without_repair(
    settings: dict[str, Any], tmp_path: Any
) -> None:
    """The reference's own table and rows, `migrate`, then identify straight away: rows stored as sent
    are found by their canonical form, and the chain and the several primaries are healed on touch."""
    from tests.harness.legacy import MYSQL_CONTACT, SQLITE_CONTACT
    from tests.harness.servers import LiveServer

    run_sql(settings, MYSQL_CONTACT if settings.get("MYSQL_HOST") else SQLITE_CONTACT)
    t = "2023-01-01 10:00:0{}"
    run_sql(
        settings,
        "INSERT INTO Contact (id, phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        [
            (1, "555 0101", "Doc@Example.com", None, "primary", t.format(1), t.format(1)),
            (2, "300001", "a@x", None, "primary", t.format(2), t.format(2)),
            (3, "300002", "b@x", 2, "secondary", t.format(3), t.format(3)),
            (4, "300003", "b@x", 3, "secondary", t.format(4), t.format(4)),
            (5, "400001", "N@x", None, "primary", t.format(5), t.format(5)),
            (6, "400001", "n@x", None, "primary", t.format(6), t.format(6)),
        ],
        many=True,
    )
    app = create_app(settings)
    refused = app.test_client().get("/health/ready")
    assert refused.status_code == 503 and "migrate" in refused.json["error"]["message"]
    result = app.test_cli_runner().invoke(args=["migrate"])
    assert result.exit_code == 0, result.output
    live_server = LiveServer(create_app(settings))
    try:
        api = Api(live_server.url)
        assert api.identify("doc@example.com", "5550101")["primaryContactId"] == 1
        chain = api.identify(None, "300003")
        assert (chain["primaryContactId"], chain["secondaryContactIds"]) == (2, [3, 4])
        twins = api.identify("n@x", "400001")
        assert (twins["primaryContactId"], twins["secondaryContactIds"]) == (5, [6])
        assert len(read_contacts(settings)) == 6  # nothing created: every identifier was known
        api.session.close()
    finally:
        live_server.close()


def test_repair_racing_live_identify_traffic(settings: dict[str, Any], tmp_path: Any) -> None:
    """repair runs while gunicorn workers serve orders for the same legacy customers: every order
    is answered 200, the table follows the rules afterwards, and every identifier sent is stored."""
    import os
    import random
    import subprocess
    import sys
    import threading

    from tests.harness.gunicorn import Gunicorn
    from tests.harness.processes import SERVICE_DIR

    app = create_app(settings)
    assert app.test_client().get("/health/ready").status_code == 200  # the schema
    customers = 150
    rows: list[Seed] = []
    for n in range(customers):
        base = 4 * n + 1
        rows += [
            (base, f"C{n}@Shop.X", f"700 {n:04d}", None, "primary", 1, False),  # stored as sent
            (base + 1, f"c{n}.b@shop.x", f"7001{n:04d}", base, "secondary", 2, False),
            (base + 2, f"c{n}.c@shop.x", f"7002{n:04d}", base + 1, "secondary", 3, False),  # a chain
            (base + 3, f"c{n}.d@shop.x", f"7002{n:04d}", None, "primary", 4, False),  # a second primary
        ]
    run_sql(
        settings,
        "INSERT INTO Contact (id, email, phoneNumber, linkedId, linkPrecedence, createdAt, updatedAt)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        [
            (i, e, p, link, prec, f"2024-01-01 00:00:{s:02d}", f"2024-01-01 00:00:{s:02d}")
            for i, e, p, link, prec, s, _ in rows
        ],
        many=True,
    )
    run_sql(settings, "UPDATE ServiceState SET value = '0' WHERE name = 'consistent'")
    env = {
        name: str(value)
        for name, value in settings.items()
        if name.startswith(("MYSQL_", "FLUXKART_")) and value
    }
    env.update(WEB_CONCURRENCY="3", GUNICORN_WORKER_CLASS="gthread", GUNICORN_THREADS="4")
    server = Gunicorn(env, tmp_path)
    server.start()
    sent: list[tuple[str | None, str | None]] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as session:
            for _ in range(60):
                n = rng.randrange(customers)
                pair = rng.choice(
                    [
                        (f"c{n}.b@shop.x", None),
                        (f"c{n}@shop.x", f"9{seed}{n:04d}"),
                        (f"c{n}.d@shop.x", f"7001{n:04d}"),
                        (f"x{seed}-{n}@shop.x", f"7002{n:04d}"),
                    ]
                )
                response = session.post(
                    server.url + "/identify", json={"email": pair[0], "phoneNumber": pair[1]}, timeout=30
                )
                with lock:
                    sent.append(pair)
                    statuses.append(response.status_code)

    try:
        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(6)]
        for thread in threads:
            thread.start()
        repair = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "fluxkart", "repair"],
            cwd=SERVICE_DIR,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        for thread in threads:
            thread.join(timeout=300)
    finally:
        server.stop()
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert set(statuses) == {200}, sorted(set(statuses))
    live_rows = live(settings)
    assert not rule_violations(live_rows)
    lost = [v for v in check_invariants(live_rows, sent) if v.startswith("[lost-identifier]")]
    assert not lost
    assert run_sql(settings, "SELECT value FROM ServiceState WHERE name = 'consistent'") == [{"value": "1"}]
