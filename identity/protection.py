"""Merge protection's rules (SPEC, "Merge protection"): blocked values identify nobody, and a
customer holds at most a limit of identifiers. Pure: the list in force is read from the
database by identity/protection_in_force.py, applied by identity/merge.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import phonenumbers

from identity.database import Row
from identity.errors import ApiError

# The shipped defaults (docs/merge-protection.md says why each): (kind, form, text). A
# pattern is matched against the whole canonical value (a phone also by its digits alone).
# Never a value a real customer may have: the Bitespeed examples 123456 and 717171 are real.
DEFAULT_BLOCKED: tuple[tuple[str, str, str], ...] = (
    # A checkout form's default: one digit repeated, seven or more times (0000000000, 9999999).
    ("phone", "pattern", r"(\d)\1{6,}"),
    ("phone", "value", "1234567890"),
    ("phone", "value", "0123456789"),
    ("email", "value", "test@test.com"),
    ("email", "value", "none@none.com"),
    # A shop's own sender address typed in for a customer: noreply@, no-reply@ any domain.
    ("email", "pattern", r"no-?reply@.+"),
)
KINDS = ("email", "phone")
FORMS = ("value", "pattern")
# The answer's name for each kind of identifier.
FIELDS = {"email": "email", "phone": "phoneNumber"}
# How many rows a customer may have per identifier before it counts as past the limit
# too: the service writes at most one row per new identifier, data from elsewhere can
# repeat a pair (the replaced implementation did, under concurrency).
ROWS_PER_IDENTIFIER = 4


def phone_digit_forms(phone: str) -> set[str]:
    """The forms of a canonical phone number a rule is matched against: as stored, its digits
    without '+', and for an E.164 number its national number (so '+919999999999' is also
    '9999999999')."""
    forms = {phone, phone.lstrip("+")}
    if phone.startswith("+"):
        try:
            forms.add(str(phonenumbers.parse(phone, None).national_number))
        except phonenumbers.NumberParseException:
            pass
    return forms


# How many answers a BlockList keeps (a few hundred KiB at most).
MAX_REMEMBERED_ANSWERS = 4096


class BlockList:
    """The blocked values and patterns of each kind; `blocks(kind, value)` says whether a
    canonical value identifies nobody."""

    def __init__(self, rules: Iterable[tuple[str, str, str]]):
        self.rules = sorted(set(rules))
        self.values: dict[str, set[str]] = {kind: set() for kind in KINDS}
        self.patterns: dict[str, list[re.Pattern[str]]] = {kind: [] for kind in KINDS}
        for kind, form, text in self.rules:
            if form == "value":
                self.values[kind].add(text)
            else:
                self.patterns[kind].append(compile_pattern(text))
        # Answers already given: every row a request reads is screened, and a worker re-reads
        # the list (a new BlockList) every few seconds, so this stays small and current.
        self.answers: dict[tuple[str, str], bool] = {}

    def blocks(self, kind: str, value: str | None) -> bool:
        """True when the canonical `value` ("email" or "phone") is blocked; None is not."""
        if value is None:
            return False
        answer = self.answers.get((kind, value))
        if answer is None:
            forms = phone_digit_forms(value) if kind == "phone" else {value}
            answer = bool(forms & self.values[kind]) or any(
                pattern.fullmatch(form) for pattern in self.patterns[kind] for form in forms
            )
            if len(self.answers) >= MAX_REMEMBERED_ANSWERS:
                self.answers.clear()
            self.answers[(kind, value)] = answer
        return answer


def compile_pattern(text: str) -> re.Pattern[str]:
    """A blocked pattern as a regular expression; ApiError 400 when it is not one."""
    try:
        return re.compile(text)
    except re.error as exc:
        raise ApiError(400, "invalid_pattern", f"not a regular expression: {exc}") from exc


@dataclass(frozen=True)
class Protection:
    """What merge protection enforces now: the limit of identifiers per customer
    (FLUXKART_MAX_CUSTOMER_IDENTIFIERS) and the blocked values."""

    max_identifiers: int
    blocked: BlockList

    @property
    def max_rows(self) -> int:
        """Rows beyond which a customer counts as past the limit (ROWS_PER_IDENTIFIER each)."""
        return ROWS_PER_IDENTIFIER * self.max_identifiers

    def identifiers(self, row: Row) -> list[tuple[str, str]]:
        """The identifiers a row carries that identify someone: ("email", v), ("phone", v)."""
        found = []
        if row["email"] is not None and not self.blocked.blocks("email", row["email"]):
            found.append(("email", row["email"]))
        if row["phoneNumber"] is not None and not self.blocked.blocks("phone", row["phoneNumber"]):
            found.append(("phone", row["phoneNumber"]))
        return found

    def count(self, rows: Iterable[Row]) -> int:
        """How many distinct identifiers the rows carry, blocked values not counted."""
        return len({identifier for row in rows for identifier in self.identifiers(row)})


# Nothing blocked and no practical limit: for code that runs without protection (tests of
# the merge protocol itself).
UNPROTECTED = Protection(max_identifiers=10**9, blocked=BlockList(()))


def screen_blocked(
    protection: Protection, email: str | None, phone: str | None
) -> tuple[str | None, str | None, list[tuple[str, str]]]:
    """A request's canonical identifiers with the blocked ones taken out (SPEC, "Merge
    protection": treated as absent), and what was taken out as (field, "blocked").
    Raises ApiError 422 blocked_identifier when nothing is left."""
    ignored = []
    if protection.blocked.blocks("email", email):
        email = None
        ignored.append((FIELDS["email"], "blocked"))
    if protection.blocked.blocks("phone", phone):
        phone = None
        ignored.append((FIELDS["phone"], "blocked"))
    if ignored and email is None and phone is None:
        names = " and ".join(name for name, _ in ignored)
        raise ApiError(
            422,
            "blocked_identifier",
            f"the {names} sent {'is' if len(ignored) == 1 else 'are'} blocked: a placeholder shared by "
            "people who are not one person identifies nobody; send the customer's own email or phone number",
        )
    return email, phone, ignored
