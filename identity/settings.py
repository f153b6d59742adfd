"""The service's settings: defaults, then the environment (and .env), then a caller's overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import phonenumbers
from dotenv import load_dotenv

from identity.errors import ConfigurationError

MYSQL_SETTINGS = ("MYSQL_HOST", "MYSQL_PORT", "MYSQL_USER", "MYSQL_PASSWORD", "MYSQL_DATABASE")
SETTINGS = (
    *MYSQL_SETTINGS,
    "FLUXKART_SQLITE_PATH",
    "FLUXKART_API_TOKEN",
    "FLUXKART_PHONE_REGION",
    "FLUXKART_WSREP_SYNC_WAIT",
    "FLUXKART_SECRET_KEY",
    "FLUXKART_DB_POOL_SIZE",
    "FLUXKART_MAX_CUSTOMER_IDENTIFIERS",
    "FLUXKART_CHANGES_RETENTION_DAYS",
)

# Every default in one place. An empty value (in the environment, .env or the
# overrides) means "not set": the default applies.
DEFAULTS: dict[str, Any] = {
    "MYSQL_HOST": "127.0.0.1",
    "MYSQL_PORT": "3306",
    "MYSQL_USER": "root",
    "MYSQL_PASSWORD": "",
    "MYSQL_DATABASE": "Fluxkart",
    "FLUXKART_SQLITE_PATH": "fluxkart.db",
    "FLUXKART_API_TOKEN": "",
    "FLUXKART_PHONE_REGION": "",
    # Galera's causal reads: every read waits until this node has applied
    # every write the cluster committed before it (SPEC, "Concurrency").
    "FLUXKART_WSREP_SYNC_WAIT": "1",
    # Signs the console's session cookie; the console is off without it.
    "FLUXKART_SECRET_KEY": "",
    # A request body is two short strings; anything near this limit is abuse.
    "MAX_CONTENT_LENGTH": 64 * 1024,
    # Database connections per worker process, and so the requests a worker runs at once;
    # the others wait their turn in order of arrival (identity/pool.py). 4 kept the p99 at
    # 0.83x that of 10 with the same throughput (docs/performance.md). Far below MariaDB's
    # default max_connections (151) for a few workers.
    "FLUXKART_DB_POOL_SIZE": "4",
    # Merge protection: the most identifiers (emails and phones together) one customer may
    # hold; Adobe Experience Platform caps an identity graph at 50 (docs/merge-protection.md).
    "FLUXKART_MAX_CUSTOMER_IDENTIFIERS": "50",
    # The feed of changes (GET /changes, docs/changes.md) serves a change this many days; a
    # consumer further behind gets 410 and resyncs. A month covers a consumer's long outage.
    "FLUXKART_CHANGES_RETENTION_DAYS": "30",
}
# The limit's range: a new customer holds two identifiers; above this, "bounded" means little.
MAX_IDENTIFIERS_RANGE = (2, 10_000)
# The feed's retention, in days: at least one (a consumer restarted overnight catches up), at
# most ten years (the erased ids it keeps for its consumers are cleared after it).
RETENTION_DAYS_RANGE = (1, 3650)


def load_settings(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults, then the environment (and .env), then the caller's overrides.

    Returns the settings with FLUXKART_DIALECT ("mysql" when any MYSQL_* is
    given, else "sqlite") and the phone region checked and upper-cased.
    Raises ConfigurationError for a region the phonenumbers library does not know.
    """
    load_dotenv()  # never overrides a variable the environment already sets
    chosen = {name: os.environ[name] for name in SETTINGS if name in os.environ}
    chosen.update(overrides or {})
    settings = dict(DEFAULTS)
    settings.update({name: value for name, value in chosen.items() if value != ""})
    settings["FLUXKART_DIALECT"] = "mysql" if any(chosen.get(name) for name in MYSQL_SETTINGS) else "sqlite"
    settings["FLUXKART_PHONE_REGION"] = check_region(settings["FLUXKART_PHONE_REGION"])
    limit = str(settings["FLUXKART_MAX_CUSTOMER_IDENTIFIERS"])
    settings["FLUXKART_MAX_CUSTOMER_IDENTIFIERS"] = check_limit(limit)
    retention = str(settings["FLUXKART_CHANGES_RETENTION_DAYS"])
    settings["FLUXKART_CHANGES_RETENTION_DAYS"] = check_retention(retention)
    return settings


def check_retention(value: str) -> int:
    """FLUXKART_CHANGES_RETENTION_DAYS as a whole number of days in RETENTION_DAYS_RANGE; else
    ConfigurationError naming the setting (docs/changes.md)."""
    low, high = RETENTION_DAYS_RANGE
    text = value.strip()
    if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
        raise ConfigurationError(
            f"FLUXKART_CHANGES_RETENTION_DAYS={value!r} is not a whole number of days from {low} to "
            f"{high} (how long GET /changes serves a change; default 30)"
        )
    return int(text)


def check_limit(value: str) -> int:
    """FLUXKART_MAX_CUSTOMER_IDENTIFIERS as a whole number in MAX_IDENTIFIERS_RANGE; else
    ConfigurationError naming the setting (SPEC, "Merge protection")."""
    low, high = MAX_IDENTIFIERS_RANGE
    text = value.strip()
    if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
        raise ConfigurationError(
            f"FLUXKART_MAX_CUSTOMER_IDENTIFIERS={value!r} is not a whole number from {low} to {high} "
            "(the most emails and phone numbers one customer may hold; default 50)"
        )
    return int(text)


def check_region(region: str) -> str:
    """The region code upper-cased ("in" -> "IN"), "" for none; ConfigurationError when unknown (SPEC)."""
    code = region.strip().upper()
    if code and code not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigurationError(
            f"FLUXKART_PHONE_REGION={region!r} is not a region code the phonenumbers library knows; "
            "use a two-letter code such as IN, US or GB, or leave it unset"
        )
    return code


def database_location(settings: dict[str, Any]) -> str:
    """Where the service and its commands read and write: "MySQL host:port/database" or
    "SQLite /absolute/path" (a command says it first: a mistyped name is a new database)."""
    if settings["FLUXKART_DIALECT"] == "mysql":
        return f"MySQL {settings['MYSQL_HOST']}:{settings['MYSQL_PORT']}/{settings['MYSQL_DATABASE']}"
    return f"SQLite {Path(settings['FLUXKART_SQLITE_PATH']).resolve()}"
