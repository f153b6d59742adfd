"""The exceptions every part raises and the app answers: what went wrong, in the field's terms."""

from __future__ import annotations

import click


class ApiError(Exception):
    """An error the client caused or can act on, answered as JSON (SPEC, "Errors")."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class ConfigurationError(click.ClickException):
    """A setting the service cannot start with; the message names the setting and the fix.

    A ClickException, so a `flask` command whose app cannot be built says it in one line
    ("Error: FLUXKART_PHONE_REGION=...") and exits 1, instead of a traceback.
    """


class DatabaseUnavailable(Exception):
    """The database cannot be reached or stayed busy through every retry (HTTP 503)."""


class DatabaseMisconfigured(Exception):
    """A database setting or state the service cannot work with; retrying will not help.

    The message names the setting and the fix; it is logged, shown by readiness,
    and the client is told it is a server configuration problem (HTTP 500).
    """


class RetryTransaction(Exception):
    """The unit of work must start over: a lock conflict or a concurrent merge."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason  # a metric label: a few fixed words, no data


def database_problem(exc: Exception) -> str:
    """A database error for a command's one-line message, with the driver's own words but not
    its raw tuple: 'MySQL error 1045: ... (Access denied for user ...)' (printed, no traceback)."""
    cause = exc.__cause__
    if cause is None:
        return str(exc)
    args = cause.args
    words = str(args[1]) if len(args) == 2 and isinstance(args[0], int) else str(cause)
    words = " ".join(words.split())  # one line, whatever the driver put in it
    return f"{exc} ({words})" if words and words not in str(exc) else str(exc)
