"""The merge protection in force for this app: FLUXKART_MAX_CUSTOMER_IDENTIFIERS and the
blocked values stored in the database, re-read every few seconds so every worker and host
applies a `block add` or `block remove` within seconds (SPEC, "Merge protection")."""

from __future__ import annotations

import threading
import time

from identity.database import Database, utcnow
from identity.pool import app_state
from identity.protection import DEFAULT_BLOCKED, BlockList, Protection

# How long a worker keeps the list it read: the delay before a change applies everywhere.
BLOCKS_TTL_S = 2.0

_lock = threading.Lock()


def seed_default_blocks(db: Database) -> None:
    """Write the shipped defaults once per database (ServiceState 'blocked_defaults'): a default
    an operator removed later stays removed."""
    if db.read_state().get("blocked_defaults") == "1":
        return
    now = utcnow()
    for kind, form, text in DEFAULT_BLOCKED:
        db.run("insert_blocked_value", kind=kind, form=form, text=text, created_at=now)
    db.run("upsert_service_state", key="blocked_defaults", value="1")


def current_protection(db: Database) -> Protection:
    """The limit and the blocked values in force, from this app's cache when it is younger
    than BLOCKS_TTL_S, else read now (seeding the defaults into a new database first)."""
    state = app_state()
    cached = state.protection
    if cached is not None and time.monotonic() - cached[0] < BLOCKS_TTL_S:
        protection: Protection = cached[1]
        return protection
    with _lock:
        if db.state.get("blocked_defaults") != "1":
            seed_default_blocks(db)
        rules = [(row["kind"], row["form"], row["text"]) for row in db.all("select_blocked_values")]
        limit = int(db.settings["FLUXKART_MAX_CUSTOMER_IDENTIFIERS"])
        protection = Protection(limit, BlockList(rules))
        state.protection = (time.monotonic(), protection)
        return protection
