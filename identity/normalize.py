"""Identifiers in canonical form (SPEC, "Normalization of identifiers"): 400 when invalid."""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal
from typing import Any

import phonenumbers

from identity.errors import ApiError

PHONE_PUNCTUATION = frozenset("-.()")
MAX_EMAIL_LENGTH = 254
MAX_PHONE_DIGITS = 20
# Ids above this cannot be stored (BIGINT's range); such a lookup is a plain 404.
MAX_CONTACT_ID = 2**63 - 1


# Exactly Unicode's categories Cc (controls) and Cs (surrogates): one regex scan
# instead of a unicodedata lookup per character (on identify's hot path).
UNCLEAN_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def is_clean_text(value: str) -> bool:
    """No control characters and nothing the database could not store (lone surrogates)."""
    return UNCLEAN_TEXT.search(value) is None


def normalize_email(value: Any, field: str = "email") -> str | None:
    """The canonical email (trimmed, NFC, lower-cased), None when absent; 400 when invalid."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "invalid_email", f"{field} must be a string or null")
    email = value.strip()
    if not email:
        return None
    # NFC again after lower-casing: a few Greek capitals lower to a decomposed form.
    email = unicodedata.normalize("NFC", unicodedata.normalize("NFC", email).lower())
    local, at, domain = email.partition("@")
    if (
        not at
        or not local
        or not domain
        or "@" in domain
        or any(ch.isspace() for ch in email)
        or not is_clean_text(email)
    ):
        raise ApiError(400, "invalid_email", f"{field} must look like name@domain, without spaces")
    if len(email) > MAX_EMAIL_LENGTH:
        raise ApiError(400, "invalid_email", f"{field} must be at most {MAX_EMAIL_LENGTH} characters")
    return email


def whole_number(value: float | Decimal, field: str) -> int:
    """A JSON number with no fractional part as the integer it is (SPEC: `9876543210.0` is the
    integer 9876543210, as JSON Schema counts it); ApiError 400 for a fraction, NaN or infinity.
    A Decimal (json_body parses numbers so, keeping every digit) past 20 digits is refused
    before it is expanded: `1e1000000000` must not become a billion-digit int."""
    if isinstance(value, Decimal):
        if not value.is_finite() or value != value.to_integral_value():
            raise ApiError(400, "invalid_phone_number", f"{field} must be a string, a whole number or null")
        if value.adjusted() >= MAX_PHONE_DIGITS:
            raise ApiError(400, "invalid_phone_number", f"{field} must have 1 to {MAX_PHONE_DIGITS} digits")
        return int(value)
    if not value.is_integer():
        raise ApiError(400, "invalid_phone_number", f"{field} must be a string, a whole number or null")
    if abs(value) >= 10.0**MAX_PHONE_DIGITS:
        raise ApiError(400, "invalid_phone_number", f"{field} must have 1 to {MAX_PHONE_DIGITS} digits")
    return int(value)


def normalize_phone(value: Any, region: str = "", field: str = "phoneNumber") -> str | None:
    """The canonical phone number, None when absent; 400 when invalid.

    Digits with an optional leading +, formatting (spaces - . ( )) dropped; in
    E.164 form when a region is configured and the number is valid there
    (SPEC, "Normalization of identifiers"). Raises ApiError(400) when invalid.
    """
    if value is None:
        return None
    if isinstance(value, float | Decimal) and not isinstance(value, bool):
        value = whole_number(value, field)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ApiError(400, "invalid_phone_number", f"{field} must be a string, a whole number or null")
    if isinstance(value, int):
        if value < 0:
            raise ApiError(400, "invalid_phone_number", f"{field} must not be negative")
        value = str(value)
    phone: str = value.strip()
    if not phone:
        return None
    # Formatting: any Unicode space separator (U+00A0 from spreadsheets, U+202F ...) and - . ( ).
    phone = "".join(ch for ch in phone if ch not in PHONE_PUNCTUATION and unicodedata.category(ch) != "Zs")
    digits = phone[1:] if phone.startswith("+") else phone
    if not digits or not all("0" <= ch <= "9" for ch in digits):
        raise ApiError(
            400,
            "invalid_phone_number",
            f"{field} may hold only digits, a leading +, spaces, '-', '.', '(' and ')'",
        )
    if len(digits) > MAX_PHONE_DIGITS:
        raise ApiError(400, "invalid_phone_number", f"{field} must have 1 to {MAX_PHONE_DIGITS} digits")
    if region:
        try:
            parsed = phonenumbers.parse(phone, region)
        except phonenumbers.NumberParseException:
            return phone
        if phonenumbers.is_valid_number(parsed):
            return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))
    return phone
