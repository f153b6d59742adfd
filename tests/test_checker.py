"""The invariant checker (tests/checker.py) on hand-made states and on a sequential model.

It must pass every state a sequential order of requests produces, and name
each kind of damage a race can do.
"""

from __future__ import annotations

import itertools
import random
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.checker import check_answers, check_invariants, violation_kinds

T0 = datetime(2024, 1, 1)
Pair = tuple[str | None, str | None]


def row(
    id: int, email: str | None, phone: str | None, linked: int | None = None, at: int | None = None
) -> dict[str, Any]:
    """A Contact row; createdAt defaults to the id's order (`at` overrides it)."""
    return {
        "id": id,
        "email": email,
        "phoneNumber": phone,
        "linkedId": linked,
        "linkPrecedence": "primary" if linked is None else "secondary",
        "createdAt": T0 + timedelta(seconds=id if at is None else at),
        "deletedAt": None,
    }


# (a, 1), (b, 2), (a, 2) merges the two customers, (c, 1) adds c.
REQUESTS = [("a@x", "1"), ("b@x", "2"), ("a@x", "2"), ("c@x", "1")]


def good_rows() -> list[dict[str, Any]]:
    return [row(1, "a@x", "1"), row(2, "b@x", "2", linked=1), row(3, "c@x", "1", linked=1)]


def kinds(rows: list[dict[str, Any]], requests: list[Any] = REQUESTS) -> dict[str, int]:
    return dict(violation_kinds(check_invariants(rows, requests)))


def test_a_sequential_state_passes() -> None:
    assert check_invariants(good_rows(), REQUESTS) == []


def test_requests_may_be_mappings() -> None:
    requests = [{"email": email, "phoneNumber": phone} for email, phone in REQUESTS]
    assert check_invariants(good_rows(), requests) == []


def test_deleted_rows_are_ignored() -> None:
    rows = [*good_rows(), {**row(4, "a@x", "1"), "deletedAt": T0}]
    assert check_invariants(rows, REQUESTS) == []


def test_flags_a_chain() -> None:
    rows = good_rows()
    rows[2]["linkedId"] = 2  # c -> b -> a
    assert kinds(rows) == {"chain": 1}


def test_flags_two_primaries() -> None:
    rows = good_rows()
    rows[2].update(linkedId=None, linkPrecedence="primary")  # c shares phone 1 with a
    assert kinds(rows) == {"several-primaries": 1}


def test_flags_a_primary_that_is_not_the_oldest() -> None:
    rows = [row(1, "a@x", "1", linked=2), row(2, "b@x", "2"), row(3, "c@x", "1", linked=2)]
    assert kinds(rows) == {"primary-not-oldest": 1}


def test_oldest_means_created_first_not_smallest_id() -> None:
    # Row 9 was created first: it is the rightful primary although its id is larger.
    rows = [row(9, "a@x", "1", at=1), row(2, "b@x", "2", linked=9, at=2), row(3, "c@x", "1", linked=9, at=3)]
    assert check_invariants(rows, REQUESTS) == []
    rows = [row(9, "a@x", "1", linked=2, at=1), row(2, "b@x", "2", at=2), row(3, "c@x", "1", linked=2, at=3)]
    assert kinds(rows) == {"primary-not-oldest": 1}


def test_flags_a_lost_identifier() -> None:
    assert kinds(good_rows(), [*REQUESTS, ("d@x", None)]) == {"lost-identifier": 1}


def test_flags_a_duplicate_row() -> None:
    rows = [*good_rows(), row(4, "c@x", "1", linked=1)]
    assert kinds(rows) == {"duplicate": 1}


def test_flags_a_row_that_brings_nothing_new() -> None:
    # a and 2 were both stored already: sequentially, (a, 2) only merges.
    rows = [*good_rows(), row(4, "a@x", "2", linked=1)]
    assert kinds(rows) == {"redundant": 1}


def test_a_row_that_brings_one_new_identifier_is_fine() -> None:
    rows = [*good_rows(), row(4, "c@x", "5", linked=1)]
    assert check_invariants(rows, [*REQUESTS, ("c@x", "5")]) == []


def test_flags_a_missing_merge() -> None:
    rows = [row(1, "a@x", "1"), row(2, "b@x", "2"), row(3, "c@x", "1", linked=1)]
    assert kinds(rows) == {"split": 1}


def test_flags_a_merge_no_request_asked_for() -> None:
    requests = [("a@x", "1"), ("b@x", "2"), ("c@x", "1")]
    assert kinds(good_rows(), requests) == {"over-merged": 1}


def test_flags_a_row_no_request_sent() -> None:
    # z came with phone 2; a row (z, 1) is in the right customer but was never requested.
    rows = [*good_rows(), row(4, "z@x", "1", linked=1)]
    assert kinds(rows, [*REQUESTS, ("z@x", "2")]) == {"foreign-row": 1}


def test_flags_links_to_other_customers_and_nowhere() -> None:
    rows = [*good_rows(), row(4, "z@x", "9", linked=1), row(5, "y@x", None, linked=77)]
    requests = [*REQUESTS, ("z@x", "9"), ("y@x", None)]
    # Row 4's link joins two customers no request links; row 5 dangles, leaving y without a primary.
    assert kinds(rows, requests) == {"over-merged": 1, "wrong-link": 1, "no-primary": 1}


def test_flags_a_linked_primary() -> None:
    rows = good_rows()
    rows[0]["linkedId"] = 3
    assert kinds(rows) == {"primary-linked": 1}


def test_answers_are_checked_against_the_final_customers() -> None:
    rows = [*good_rows(), row(4, "z@x", "9")]
    right = {
        "primaryContactId": 1,
        "primaryContatctId": 1,
        "emails": ["a@x", "b@x"],
        "phoneNumbers": ["1", "2"],
        "secondaryContactIds": [2],
    }
    assert check_answers(rows, [(("b@x", "2"), right)]) == []
    wrong = {**right, "primaryContactId": 4, "primaryContatctId": 4, "secondaryContactIds": []}
    assert violation_kinds(check_answers(rows, [(("b@x", "2"), wrong)])) == {"answer-wrong-customer": 1}
    not_oldest = {**right, "primaryContactId": 2, "primaryContatctId": 2, "secondaryContactIds": [1]}
    found = violation_kinds(check_answers(rows, [(("b@x", "2"), not_oldest)]))
    assert found == {"answer-primary-not-oldest": 1}
    incomplete = {**right, "phoneNumbers": ["1"]}
    found = violation_kinds(check_answers(rows, [(("b@x", "2"), incomplete)]))
    assert found == {"answer-missing-identifier": 1}


# --------------------------------------------------------------------------
# A sequential model of the SPEC's identify: whatever it produces must pass.
# --------------------------------------------------------------------------


def sequential(
    requests: list[Pair], seed: int
) -> tuple[list[dict[str, Any]], list[tuple[Pair, dict[str, Any]]]]:
    """The SPEC's rules applied one request at a time; ids shuffled so only createdAt orders rows."""
    ids = random.Random(seed).sample(range(1, 10_000), len(requests))
    rows: list[dict[str, Any]] = []
    answers: list[tuple[Pair, dict[str, Any]]] = []
    clock = itertools.count(1)
    for email, phone in requests:
        matched = [
            r
            for r in rows
            if (email is not None and r["email"] == email)
            or (phone is not None and r["phoneNumber"] == phone)
        ]
        if not matched:
            rows.append(row(ids[len(rows)], email, phone, at=next(clock)))
            customer = [rows[-1]]
        else:
            heads = {r["linkedId"] or r["id"] for r in matched}
            customer = [r for r in rows if (r["linkedId"] or r["id"]) in heads]
            survivor = min(customer, key=lambda r: (r["createdAt"], r["id"]))
            for r in customer:
                if r is not survivor:
                    r.update(linkedId=survivor["id"], linkPrecedence="secondary")
            if (email is not None and all(r["email"] != email for r in customer)) or (
                phone is not None and all(r["phoneNumber"] != phone for r in customer)
            ):
                rows.append(row(ids[len(rows)], email, phone, linked=survivor["id"], at=next(clock)))
                customer.append(rows[-1])
        customer.sort(key=lambda r: (r["createdAt"], r["id"]))
        answers.append(
            (
                (email, phone),
                {
                    "primaryContactId": customer[0]["id"],
                    "primaryContatctId": customer[0]["id"],
                    "emails": list(dict.fromkeys(r["email"] for r in customer if r["email"])),
                    "phoneNumbers": list(
                        dict.fromkeys(r["phoneNumber"] for r in customer if r["phoneNumber"])
                    ),
                    "secondaryContactIds": [r["id"] for r in customer[1:]],
                },
            )
        )
    return rows, answers


identifier_requests = st.lists(
    st.tuples(
        st.sampled_from([None, "a@x", "b@x", "c@x", "d@x"]), st.sampled_from([None, "1", "2", "3", "4"])
    ).filter(lambda pair: pair != (None, None)),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(requests=identifier_requests, seed=st.integers(0, 1000))
def test_every_sequential_history_passes(requests: list[Pair], seed: int) -> None:
    rows, answers = sequential(requests, seed)
    assert check_invariants(rows, requests) == []
    assert check_answers(rows, answers) == []


@pytest.mark.parametrize("seed", range(5))
def test_replaying_a_request_out_of_turn_is_caught(seed: int) -> None:
    """The damage a lost race does: one request applied against a stale view is flagged."""
    rng = random.Random(seed)
    requests: list[Pair] = [(f"{rng.choice('abc')}@x", rng.choice("123")) for _ in range(12)]
    rows, _ = sequential(requests, seed)
    # A racing duplicate of the first request that saw an empty table: a second primary.
    stale = row(10_001, requests[0][0], requests[0][1], at=10_001)
    assert "duplicate" in violation_kinds(check_invariants([*rows, stale], requests))
