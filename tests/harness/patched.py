"""The service with one piece taken out, by name: the controls and mutants that show a test
(or a benchmark) measures what it claims.

Each factory below replaces named functions of identity/ (its patch points) and then builds
the real app, so gunicorn serves it like the service itself:

    gunicorn -c gunicorn.conf.py 'tests.patched:erasure_without_locks()'

A patch point that was renamed or moved fails loudly (AttributeError), never silently.
fluxkart.py and identity/ have no switch for any of this.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from flask import Flask

from identity import database, erasure, history, merge, transactions
from identity.database import Database
from identity.errors import RetryTransaction


def replace_in(module: ModuleType, name: str, replacement: Callable[..., Any]) -> None:
    """Replace one module's function `name` (the callers in that module see the replacement)."""
    if not callable(getattr(module, name)):  # AttributeError when the patch point is gone
        raise TypeError(f"{module.__name__}.{name} is not a function")
    setattr(module, name, replacement)


def replace_everywhere(original: Callable[..., Any], replacement: Callable[..., Any]) -> int:
    """Replace a function in every module of the service that holds it (its own and every
    `from ... import` of it); returns how many modules changed."""
    changed = 0
    for module_name, module in list(sys.modules.items()):
        if module_name != "fluxkart" and not module_name.startswith("identity"):
            continue
        for name, value in list(vars(module).items()):
            if value is original:
                setattr(module, name, replacement)
                changed += 1
    return changed


def app() -> Flask:
    """The real app, built after the patches (imported here so the service's modules are loaded)."""
    import fluxkart

    return fluxkart.create_app()


def nothing(*_args: Any, **_kwargs: Any) -> None:
    """The replacement of a step that is taken out."""


def erasure_without_locks() -> Flask:
    """Erasure without identify's locks: no identifier touched, no row locked FOR UPDATE
    (tests: the erasure race finds damage against it)."""
    for name in ("touch_identifiers", "touch_identifier", "lock_rows"):
        replace_in(erasure, name, nothing)
    return app()


def without_growth_locks() -> Flask:
    """identify without the growth lock (identity.merge.touch_customer_locks): on a
    multi-primary cluster two nodes then grow one customer at once, past the limit
    (tests/cluster/test_galera.py's control)."""
    replace_in(merge, "touch_customer_locks", nothing)
    return app()


def without_history() -> Flask:
    """identify records no history (the benchmark of what the history costs)."""
    replace_in(history, "record_identify_events", nothing)
    return app()


def erasure_without_scrub() -> Flask:
    """Erasure as before issue 22 on SQLite: no secure_delete, no VACUUM, no WAL checkpoint
    (bench.erasure_cost measures what the clean-up costs against it)."""
    if not isinstance(database.SQLITE_SECURE_DELETE, bool):  # the patch point is gone
        raise TypeError("identity.database.SQLITE_SECURE_DELETE is not a flag")
    database.SQLITE_SECURE_DELETE = False
    replace_in(erasure, "scrub_after_erasure", nothing)
    return app()


def dropped_connection_500() -> Flask:
    """A mutant: a connection lost inside a transaction (begin, work or commit) is an
    unhandled error, a 500, instead of a retry and then a 503 (tests.mutants)."""
    real = transactions.in_transaction

    def lost_is_fatal(exc: RetryTransaction) -> None:
        if exc.reason == "connection_lost":
            raise RuntimeError("connection lost inside a transaction") from exc

    def in_transaction(db: Database, work: Callable[[Database], Any], unit: str) -> Any:
        begin, commit = db.begin, db.commit

        def guarded(step: Callable[..., Any]) -> Callable[..., Any]:
            def run(*args: Any) -> Any:
                try:
                    return step(*args)
                except RetryTransaction as exc:
                    lost_is_fatal(exc)
                    raise

            return run

        db.begin, db.commit = guarded(begin), guarded(commit)  # type: ignore[method-assign]
        try:
            return real(db, guarded(work), unit)
        finally:
            del db.begin, db.commit

    import fluxkart  # noqa: F401 (load every module that holds in_transaction first)

    if replace_everywhere(real, in_transaction) < 2:
        raise RuntimeError("in_transaction is not where the mutant expects it")
    return app()
