"""The invariant checker (tests/harness/checker.py) on hand-made states and on a sequential model.

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

from tests.harness.checker import check_answers, check_invariants, violation_kinds

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


def test_flags_a_row_without_identifiers() -> None:
    rows = [*good_rows(), row(4, None, None)]
    # Nobody sent (None, None) either: the row is also no request's.
    assert kinds(rows) == {"no-identifier": 1, "foreign-row": 1}


def test_flags_a_bad_precedence() -> None:
    rows = good_rows()
    rows[2]["linkPrecedence"] = "tertiary"
    assert kinds(rows) == {"bad-precedence": 1}


# Answers to (b, 2) and others, against good_rows() plus a separate customer z/9 (row 4).
ANSWER_ROWS = [*good_rows(), row(4, "z@x", "9")]
# What (b, 2) was told when only rows 1 and 2 existed: a right answer then, and still right.
RIGHT = {
    "primaryContactId": 1,
    "primaryContatctId": 1,
    "emails": ["a@x", "b@x"],
    "phoneNumbers": ["1", "2"],
    "secondaryContactIds": [2],
}
ALL_THREE = {**RIGHT, "emails": ["a@x", "b@x", "c@x"], "secondaryContactIds": [2, 3]}


def answer_kinds(contact: dict[str, Any], request: Pair = ("b@x", "2")) -> dict[str, int]:
    return dict(violation_kinds(check_answers(ANSWER_ROWS, [(request, contact)])))


def test_right_answers_pass() -> None:
    assert answer_kinds(RIGHT) == {}
    assert answer_kinds(ALL_THREE) == {}
    assert answer_kinds(ALL_THREE, {"email": "c@x", "phoneNumber": None}) == {}


@pytest.mark.parametrize(
    ("contact", "request_", "expected"),
    [
        pytest.param(RIGHT, ("q@x", None), {"answer-unknown-customer": 1}, id="unknown-customer"),
        pytest.param({**RIGHT, "primaryContatctId": 2}, None, {"answer-inconsistent": 1}, id="two-spellings"),
        pytest.param(
            {**RIGHT, "secondaryContactIds": [2, 2]}, None, {"answer-inconsistent": 1}, id="id-twice"
        ),
        pytest.param(
            {**RIGHT, "secondaryContactIds": [2, 77]}, None, {"answer-wrong-customer": 1}, id="no-such-row"
        ),
        pytest.param(
            # The customer z/9 for (b, 2): its row, and its identifiers, and not the request's.
            {**RIGHT, "primaryContactId": 4, "primaryContatctId": 4, "emails": ["z@x"], "phoneNumbers": ["9"]}
            | {"secondaryContactIds": []},
            None,
            {"answer-wrong-customer": 3, "answer-missing-identifier": 2},
            id="other-customer",
        ),
        pytest.param(
            {**RIGHT, "emails": ["a@x", "b@x", "z@x"]},
            None,
            {"answer-wrong-customer": 1, "answer-contents": 1},
            id="other-customers-email",
        ),
        pytest.param(
            {**RIGHT, "primaryContactId": 2, "primaryContatctId": 2, "secondaryContactIds": [1]}
            | {"emails": ["b@x", "a@x"], "phoneNumbers": ["2", "1"]},
            None,
            {"answer-primary-not-oldest": 1},
            id="primary-not-oldest",
        ),
        pytest.param(RIGHT, ("c@x", "1"), {"answer-missing-identifier": 1}, id="missing-email"),
        pytest.param(
            {**RIGHT, "emails": ["a@x", "c@x"], "phoneNumbers": ["1"], "secondaryContactIds": [3]},
            ("a@x", "2"),
            {"answer-missing-identifier": 1},
            id="missing-phone",
        ),
        pytest.param(
            {**RIGHT, "emails": ["a@x", "b@x", "b@x"]}, None, {"answer-duplicate": 1}, id="dup-email"
        ),
        pytest.param(
            {**RIGHT, "phoneNumbers": ["1", "1", "2"]}, None, {"answer-duplicate": 1}, id="dup-phone"
        ),
        pytest.param(
            # Row 1 listed with the emails of rows 1 and 3 (the audit's example).
            {**RIGHT, "emails": ["a@x", "c@x"], "phoneNumbers": ["1"], "secondaryContactIds": []},
            ("a@x", "1"),
            {"answer-contents": 1},
            id="email-of-unlisted-row",
        ),
        pytest.param(
            {**RIGHT, "phoneNumbers": ["1"]},
            ("b@x", None),
            {"answer-contents": 1},
            id="phone-of-listed-row-missing",
        ),
        pytest.param({**RIGHT, "emails": ["b@x", "a@x"]}, None, {"answer-order": 1}, id="emails-order"),
        pytest.param({**RIGHT, "phoneNumbers": ["2", "1"]}, None, {"answer-order": 1}, id="phones-order"),
        pytest.param(
            {**ALL_THREE, "secondaryContactIds": [3, 2]}, None, {"answer-order": 1}, id="secondaries-order"
        ),
    ],
)
def test_flags_a_wrong_answer(
    contact: dict[str, Any], request_: Pair | None, expected: dict[str, int]
) -> None:
    assert answer_kinds(contact, request_ or ("b@x", "2")) == expected


# --------------------------------------------------------------------------
# A sequential model of the SPEC's identify: whatever it produces must pass.
# --------------------------------------------------------------------------


def sequential(
    requests: list[Pair], seed: int
) -> tuple[list[dict[str, Any]], list[tuple[Pair, dict[str, Any]]]]:
    """The SPEC's rules applied one request at a time; ids shuffled so only createdAt orders rows."""
    # The same ids for every prefix of a sequence (protected_sequential replays prefixes).
    ids = random.Random(seed).sample(range(1, 10_000), max(len(requests), 64))
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


# --------------------------------------------------------------------------
# Merge protection: blocked values connect nothing, no customer past the limit
# --------------------------------------------------------------------------

BLOCKED = {("phone", "0"), ("email", "test@x")}


def is_blocked(kind: str, value: str) -> bool:
    return (kind, value) in BLOCKED


def protected_kinds(
    rows: list[dict[str, Any]], requests: list[Any], limit: int | None = None
) -> dict[str, int]:
    return dict(violation_kinds(check_invariants(rows, requests, is_blocked, limit)))


def test_a_blocked_value_connects_nothing() -> None:
    # Two orders sharing only the blocked phone 0: two customers, the phone stored by neither.
    requests = [("a@x", "0"), ("b@x", "0")]
    rows = [row(1, "a@x", None), row(2, "b@x", None)]
    assert protected_kinds(rows, requests) == {}
    # Without the block the same state is a split of what the requests link.
    assert kinds(rows, requests) == {"split": 1, "lost-identifier": 1, "foreign-row": 2}


def test_flags_a_blocked_value_stored() -> None:
    requests = [("a@x", "0"), ("b@x", "0")]
    rows = [row(1, "a@x", "0"), row(2, "b@x", None)]
    # Stored, and then row 1 is no request's pair as applied either.
    assert protected_kinds(rows, requests) == {"blocked-stored": 1, "foreign-row": 1}


def test_flags_a_merge_through_a_blocked_value() -> None:
    requests = [("a@x", "0"), ("b@x", "0")]
    rows = [row(1, "a@x", None), row(2, "b@x", None, linked=1)]
    assert protected_kinds(rows, requests) == {"over-merged": 1}


def test_a_request_with_only_blocked_values_expects_nothing() -> None:
    assert protected_kinds(good_rows(), [*REQUESTS, ("test@x", "0")]) == {}


def limited(pair: Pair, *ignored: str) -> dict[str, Any]:
    """A request as sent with its answer's "ignored" fields (reason "limit")."""
    return {
        "email": pair[0],
        "phoneNumber": pair[1],
        "ignored": [{"field": field, "reason": "limit"} for field in ignored],
    }


# Limit 3: customer a/1/2 is full; (a, 9) is refused its phone, (d, 1) its phone (new customer d).
FULL = [row(1, "a@x", "1"), row(2, "a@x", "2", linked=1), row(3, "d@x", None)]
FULL_REQUESTS = [
    ("a@x", "1"),
    ("a@x", "2"),
    limited(("a@x", "9"), "phoneNumber"),
    limited(("d@x", "1"), "phoneNumber"),
]


def test_a_customer_at_the_limit_with_needed_refusals_passes() -> None:
    assert protected_kinds(FULL, FULL_REQUESTS, limit=3) == {}


def test_flags_a_customer_past_the_limit() -> None:
    rows = [*FULL[:2], row(4, "a@x", "9", linked=1), FULL[2]]
    requests = [*FULL_REQUESTS[:2], ("a@x", "9"), FULL_REQUESTS[3]]
    assert protected_kinds(rows, requests, limit=3) == {"past-limit": 1}
    assert protected_kinds(rows, requests, limit=4) == {}


def test_flags_a_refusal_the_limit_did_not_need() -> None:
    # With a limit of 4, (a, 9) and (d, 1) fitted: leaving their phones out was wrong.
    assert protected_kinds(FULL, FULL_REQUESTS, limit=4) == {"needless-refusal": 2}


def test_a_refused_identifier_is_not_expected_stored() -> None:
    # Without the answers' "ignored", 9 should be stored and d and 1 one customer.
    bare = [(r["email"], r["phoneNumber"]) if isinstance(r, dict) else r for r in FULL_REQUESTS]
    assert protected_kinds(FULL, bare, limit=3) == {"lost-identifier": 1, "split": 1, "foreign-row": 1}


def protected_sequential(
    requests: list[Pair], seed: int, limit: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[Any, dict[str, Any]]]]:
    """The SPEC's rules with merge protection, one request at a time: blocked values left out,
    then the phone, then the email dropped until the customer fits the limit. Returns the rows,
    the requests with their answers' "ignored", and (request, answer) for the applied ones."""
    sent: list[dict[str, Any]] = []
    exchanges: list[tuple[Any, dict[str, Any]]] = []
    rows: list[dict[str, Any]] = []
    applied: list[Pair] = []
    for email, phone in requests:
        request: dict[str, Any] = {"email": email, "phoneNumber": phone, "ignored": []}
        sent.append(request)
        kept_email = None if email is None or is_blocked("email", email) else email
        kept_phone = None if phone is None or is_blocked("phone", phone) else phone
        if (kept_email, kept_phone) == (None, None):
            continue
        for candidate in ((kept_email, kept_phone), (kept_email, None), (None, None)):
            if candidate == (None, None):
                break
            trial, answers = sequential([*applied, candidate], seed)
            customer = answers[-1][1]
            if len(customer["emails"]) + len(customer["phoneNumbers"]) <= limit:
                rows = trial
                applied.append(candidate)
                exchanges.append((request, customer))
                break
        for kind, value, kept in (("phoneNumber", phone, kept_phone), ("email", email, kept_email)):
            if value is not None and kept is not None and kept not in candidate:
                request["ignored"].append({"field": kind, "reason": "limit"})
    return rows, sent, exchanges


protected_requests = st.lists(
    st.tuples(
        st.sampled_from([None, "a@x", "b@x", "c@x", "d@x", "test@x"]),
        st.sampled_from([None, "1", "2", "3", "4", "0"]),
    ).filter(lambda pair: pair != (None, None)),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(requests=protected_requests, seed=st.integers(0, 1000), limit=st.integers(2, 5))
def test_every_protected_sequential_history_passes(requests: list[Pair], seed: int, limit: int) -> None:
    rows, sent, exchanges = protected_sequential(requests, seed, limit)
    assert check_invariants(rows, sent, is_blocked, limit) == []
    assert check_answers(rows, exchanges, is_blocked) == []


def test_the_protected_model_refuses_and_blocks() -> None:
    """The model above is not vacuous: it blocks, refuses by priority and keeps the limit."""
    rows, sent, _ = protected_sequential([("a@x", "1"), ("a@x", "2"), ("a@x", "3"), ("b@x", "0")], 1, 3)
    assert [r["ignored"] for r in sent] == [[], [], [{"field": "phoneNumber", "reason": "limit"}], []]
    assert sorted((r["email"], r["phoneNumber"]) for r in rows) == [("a@x", "1"), ("a@x", "2"), ("b@x", None)]
