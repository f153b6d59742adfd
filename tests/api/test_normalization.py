"""Identifier normalization (SPEC "Normalization of identifiers"), through POST /identify.

Each accepted value must be stored and answered in its canonical form, and every spelling
of one identifier must find the same customer; each rejected value must answer 400 in the
error shape and write nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.harness.servers import Api

IN_REGION = pytest.mark.parametrize("settings", [{"FLUXKART_PHONE_REGION": "IN"}], indirect=True)


def stored(rows: list[dict[str, Any]]) -> list[tuple[str | None, str | None]]:
    """(email, phoneNumber) of every row, in id order."""
    return [(row["email"], row["phoneNumber"]) for row in rows]


def email_of_length(length: int, local: str = "") -> str:
    """A valid email of exactly `length` characters."""
    domain = "@hillvalley.edu"
    return local + "x" * (length - len(local) - len(domain)) + domain


def assert_rejected(api: Api, contacts: Any, body: Any, code: str) -> None:
    """400 in the error shape with this code, and the Contact table unchanged."""
    before = contacts()
    response = api.post("/identify", data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert contacts() == before


@pytest.fixture
def seeded(api: Api) -> None:
    """One customer already stored, so "nothing written" is checked against a real table."""
    api.identify("seed@hillvalley.edu", "555")


# --------------------------------------------------------------------------
# email
# --------------------------------------------------------------------------

VALID_EMAILS = {  # sent -> canonical
    "kept as is": ("lorraine@hillvalley.edu", "lorraine@hillvalley.edu"),
    "trimmed": ("  lorraine@hillvalley.edu \t\n", "lorraine@hillvalley.edu"),
    "lower-cased": ("Lorraine@HillValley.EDU", "lorraine@hillvalley.edu"),
    "non-ASCII lower-cased": ("ÉLODIE@EXEMPLE.FR", "élodie@exemple.fr"),
    "NFD becomes NFC": ("jose\u0301@example.com", "jos\u00e9@example.com"),
    "NFD upper-case becomes NFC lower-case": ("JOSE\u0301@EXAMPLE.COM", "jos\u00e9@example.com"),
    "gmail dots kept": ("John.Doe@gmail.com", "john.doe@gmail.com"),
    "plus tag kept": ("john.doe+shop@gmail.com", "john.doe+shop@gmail.com"),
    "254 characters": (email_of_length(254), email_of_length(254)),
    "254 characters after trimming": ("  " + email_of_length(254) + "  ", email_of_length(254)),
    # 100 NFD pairs "e\u0301" are 354 characters sent, 254 once composed: the limit is on the NFC form.
    "254 characters after NFC": (
        email_of_length(354, "e\u0301" * 100),
        email_of_length(254, "\u00e9" * 100),
    ),
}


@pytest.mark.parametrize(("sent", "canonical"), VALID_EMAILS.values(), ids=VALID_EMAILS.keys())
def test_email_is_stored_in_canonical_form(api: Api, contacts: Any, sent: str, canonical: str) -> None:
    """The answer and the row carry the canonical email; sending that form again finds the same row."""
    assert api.identify(sent, None)["emails"] == [canonical]
    assert api.identify(canonical, None)["primaryContactId"] == 1
    assert stored(contacts()) == [(canonical, None)]


@pytest.mark.parametrize(
    "spellings",
    [
        ["lorraine@hillvalley.edu", " LORRAINE@hillvalley.edu", "Lorraine@HillValley.Edu\n"],
        [
            "jos\u00e9@example.com",
            "jose\u0301@example.com",
            "JOSE\u0301@EXAMPLE.COM",
            "JOS\u00c9@example.com",
        ],
    ],
    ids=["case and spaces", "NFC and NFD"],
)
def test_email_spellings_are_one_identifier(api: Api, contacts: Any, spellings: list[str]) -> None:
    """Every spelling that normalizes alike is the same customer: one row, one email."""
    for email in spellings:
        assert api.identify(email, None)["primaryContactId"] == 1
    assert len(contacts()) == 1


def test_provider_specific_forms_stay_distinct(api: Api, contacts: Any) -> None:
    """No Gmail folding: dots and +tags make different identifiers, so different customers."""
    emails = ["john.doe@gmail.com", "johndoe@gmail.com", "john.doe+shop@gmail.com", "johndoe@googlemail.com"]
    ids = [api.identify(email, None)["primaryContactId"] for email in emails]
    assert ids == [1, 2, 3, 4]
    assert stored(contacts()) == [(email, None) for email in emails]


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"], ids=["empty", "spaces", "tab-newline"])
def test_blank_email_is_absent(api: Api, contacts: Any, blank: str) -> None:
    """An email that is empty after trimming counts as absent: only the phone is used."""
    assert api.identify(blank, "123456") == api.identify(None, "123456")
    assert stored(contacts()) == [(None, "123456")]


INVALID_EMAILS = {
    "no @": "lorraine.hillvalley.edu",
    "nothing before @": "@hillvalley.edu",
    "nothing after @": "lorraine@",
    "@ alone": "@",
    "two @": "lorraine@@hillvalley.edu",
    "two @ apart": "lor@raine@hillvalley.edu",
    "space inside": "lorraine @hillvalley.edu",
    "space in the domain": "lorraine@hill valley.edu",
    "tab inside": "lorraine@hill\tvalley.edu",
    "newline inside": "lorraine\n@hillvalley.edu",
    "no-break space inside": "lorraine\u00a0baines@hillvalley.edu",
    "em space inside": "lorraine\u2003baines@hillvalley.edu",
    "255 characters": email_of_length(255),
}


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("email", INVALID_EMAILS.values(), ids=INVALID_EMAILS.keys())
def test_invalid_email_is_rejected(api: Api, contacts: Any, email: str) -> None:
    """400 invalid_email, with or without a valid phone next to it, and nothing written."""
    assert_rejected(api, contacts, {"email": email}, "invalid_email")
    assert_rejected(api, contacts, {"email": email, "phoneNumber": "555"}, "invalid_email")


# --------------------------------------------------------------------------
# phoneNumber
# --------------------------------------------------------------------------

VALID_PHONES = {  # sent -> canonical (no FLUXKART_PHONE_REGION)
    "digits": ("123456", "123456"),
    "JSON integer": (123456, "123456"),
    "JSON integer zero": (0, "0"),
    "trimmed": (" \t123456 \n", "123456"),
    "spaces dropped": ("12 34 56", "123456"),
    "dashes, dots and brackets dropped": ("(123) 456-78.91", "1234567891"),
    "leading + kept": ("+1 (555) 010-0000", "+15550100000"),
    "leading zero kept": ("098765 43210", "09876543210"),
    "one digit": ("7", "7"),
    # Not one digit repeated: that is a blocked placeholder (SPEC, "Merge protection").
    "20 digits": ("12" * 10, "12" * 10),
    "+ and 20 digits": ("+" + "98" * 10, "+" + "98" * 10),
    "20 digits with formatting": ("(12) 345-678-901-234.567-890", "12345678901234567890"),
    "20-digit JSON integer": (10**19, "1" + "0" * 19),
    # SPEC: an integer "as JSON Schema defines one": a number with no fractional part.
    "JSON number with a zero fraction": (123456.0, "123456"),
    "JSON number in exponent form": (1e5, "100000"),
}


@pytest.mark.parametrize(("sent", "canonical"), VALID_PHONES.values(), ids=VALID_PHONES.keys())
def test_phone_is_stored_in_canonical_form(api: Api, contacts: Any, sent: Any, canonical: str) -> None:
    """The answer and the row carry the canonical phone; sending that form again finds the same row."""
    assert api.identify(None, sent)["phoneNumbers"] == [canonical]
    assert api.identify(None, canonical)["primaryContactId"] == 1
    assert stored(contacts()) == [(None, canonical)]


def test_phone_spellings_are_one_identifier(api: Api, contacts: Any) -> None:
    """A JSON number and every formatting of its digits are one identifier."""
    for phone in [123456, "123456", "123-456", " (123) 456 ", "12.34.56"]:
        assert api.identify(None, phone)["primaryContactId"] == 1
    assert stored(contacts()) == [(None, "123456")]


def test_phone_forms_that_differ_stay_distinct(api: Api, contacts: Any) -> None:
    """Without a region, a leading + or 0 is part of the identifier."""
    for phone in ["123456", "+123456", "0123456"]:
        api.identify(None, phone)
    assert stored(contacts()) == [(None, "123456"), (None, "+123456"), (None, "0123456")]


@pytest.mark.parametrize("blank", ["", "  ", "\t"], ids=["empty", "spaces", "tab"])
def test_blank_phone_is_absent(api: Api, contacts: Any, blank: str) -> None:
    """A phone that is empty after trimming counts as absent: only the email is used."""
    assert api.identify("lorraine@hillvalley.edu", blank) == api.identify("lorraine@hillvalley.edu", None)
    assert stored(contacts()) == [("lorraine@hillvalley.edu", None)]


INVALID_PHONES = {
    "true": True,
    "false": False,
    "float": 1.5,
    "negative integer": -123456,
    "minus one": -1,
    "letters": "12a34",
    "words": "call me",
    "+ in the middle": "1+23",
    "+ at the end": "123+",
    "two leading +": "++123",
    "+ alone": "+",
    "formatting only": "-",
    "brackets only": "()",
    "slash": "12/34",
    "underscore": "12_34",
    "comma": "12,34",
    "hash": "#123",
    "star": "*123",
    "Arabic-Indic digits": "\u0661\u0662\u0663\u0664\u0665\u0666",
    "Devanagari digits": "\u0967\u0968\u0969",
    "fullwidth digits": "\uff11\uff12\uff13",
    "superscript digits": "\u00b2\u00b3",
    "21 digits": "1" * 21,
    "+ and 21 digits": "+" + "1" * 21,
    "21-digit JSON integer": 10**20,
    "41-digit JSON integer": 10**40,
}


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("phone", INVALID_PHONES.values(), ids=INVALID_PHONES.keys())
def test_invalid_phone_is_rejected(api: Api, contacts: Any, phone: Any) -> None:
    """400 invalid_phone_number, with or without a valid email next to it, and nothing written."""
    assert_rejected(api, contacts, {"phoneNumber": phone}, "invalid_phone_number")
    assert_rejected(
        api, contacts, {"email": "seed@hillvalley.edu", "phoneNumber": phone}, "invalid_phone_number"
    )


# --------------------------------------------------------------------------
# FLUXKART_PHONE_REGION
# --------------------------------------------------------------------------

INDIAN_SPELLINGS = ["+91 98765 43210", "098765 43210", "9876543210", 9876543210, "+919876543210"]


@IN_REGION
def test_region_makes_national_and_international_forms_one_identifier(api: Api, contacts: Any) -> None:
    """With FLUXKART_PHONE_REGION=IN, every spelling of one Indian number is stored once, in E.164."""
    for phone in INDIAN_SPELLINGS:
        assert api.identify(None, phone) == api.identify(None, "+919876543210")
    assert stored(contacts()) == [(None, "+919876543210")]


@IN_REGION
@pytest.mark.parametrize(
    ("sent", "canonical"),
    [("12345", "12345"), (" 123-45 ", "12345"), ("0000", "0000"), ("+1234", "+1234")],
)
def test_region_keeps_digits_for_numbers_invalid_there(
    api: Api, contacts: Any, sent: str, canonical: str
) -> None:
    """A number the phonenumbers library does not accept as valid keeps its digits-only form."""
    assert api.identify(None, sent)["phoneNumbers"] == [canonical]
    assert stored(contacts()) == [(None, canonical)]


@IN_REGION
def test_region_applies_to_lookups(api: Api) -> None:
    """The read endpoints normalize with the region too: a national spelling finds the E.164 row."""
    api.identify("lorraine@hillvalley.edu", "+91 98765 43210")
    found = api.get("/customers", params={"phoneNumber": "098765 43210"})
    assert found.status_code == 200
    assert found.json()["contact"]["phoneNumbers"] == ["+919876543210"]
    listed = api.get("/contacts", params={"phoneNumber": "9876543210"})
    assert [row["id"] for row in listed.json()] == [1]


def test_without_region_the_spellings_are_different_identifiers(api: Api, contacts: Any) -> None:
    """Unset, the digits-only form is used: the three SPEC spellings are three customers."""
    for phone in INDIAN_SPELLINGS[:3]:
        api.identify(None, phone)
    assert stored(contacts()) == [(None, "+919876543210"), (None, "09876543210"), (None, "9876543210")]
