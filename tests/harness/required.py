"""What a missing system package does to the tests that need it: skip locally, fail in CI.

CI=true (or FLUXKART_REQUIRE_MYSQL=1) makes a missing MariaDB or Galera fail its tests;
the console's browser tests read FLUXKART_REQUIRE_BROWSER likewise.
"""

from __future__ import annotations

import os

import pytest

from tests.harness.galera import galera_missing
from tests.harness.mariadb import server_binaries

MYSQL_REQUIRED = bool(os.environ.get("CI") or os.environ.get("FLUXKART_REQUIRE_MYSQL"))


def skip_or_fail(message: str, required: bool) -> None:
    """pytest.fail when the package is `required` (CI), pytest.skip otherwise."""
    if required:
        pytest.fail(message)
    pytest.skip(message)


def require_mariadb(who: str) -> None:
    """Skip (locally) or fail (in CI) when the MariaDB binaries are not installed."""
    if server_binaries() is None:
        message = f"MariaDB is not installed (apt-get install mariadb-server); {who} need it"
        skip_or_fail(message, MYSQL_REQUIRED)


def require_galera() -> None:
    """Skip (locally) or fail (in CI) when galera-4 or the rest of a Galera node is missing."""
    why = galera_missing()
    if why:
        skip_or_fail(f"a Galera cluster needs packages that are missing ({why})", MYSQL_REQUIRED)
