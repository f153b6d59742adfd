"""The support console's sessions, kept on the server, and its sign-in throttle (issue 22).

The console's signed cookie carries a random session token; the database keeps its SHA-256
(ConsoleSession), so a session is one row every worker and host sees:
- signing out deletes the row: a copied cookie opens nothing afterwards, and other staff's
  sessions are untouched (rotating FLUXKART_SECRET_KEY stays the way to end them all);
- a session unused for IDLE_LIMIT ends by itself (the cookie's 8 hours remain the hard cap).
Failed sign-ins are counted per client address (ConsoleSignInFailure) in the same database,
so the throttle holds whichever worker or host a guess lands on.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from datetime import datetime, timedelta

from identity.database import Database, utcnow

# A support agent who has not clicked for this long has walked away from the screen.
IDLE_LIMIT = timedelta(minutes=30)
# Failed sign-ins one client address may make within THROTTLE_WINDOW before it must wait:
# enough for a person's typos, far too few to guess a token (tokens are 32 random bytes,
# so this is about keeping the log and the database quiet more than about the odds).
THROTTLE_FAILURES = 10
THROTTLE_WINDOW = timedelta(minutes=15)


def token_hash(token: str) -> str:
    """What the database keeps of a session token: a stolen table opens no session."""
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(db: Database) -> str:
    """A new session; returns the token its cookie carries. Tidies sessions gone idle."""
    now = utcnow()
    token = secrets.token_urlsafe(32)
    db.run("delete_idle_console_sessions", idle_since=now - IDLE_LIMIT)
    db.run("insert_console_session", token_hash=token_hash(token), now=now)
    return token


def session_alive(db: Database, token: str) -> bool:
    """True when the session exists, was not signed out and has not gone idle; keeps it alive."""
    if not token:
        return False
    now = utcnow()
    touched = db.execute(
        "touch_console_session", {"token_hash": token_hash(token), "now": now, "idle_since": now - IDLE_LIMIT}
    )
    return bool(touched.rowcount)


def end_session(db: Database, token: str) -> None:
    """Sign-out: the session ends for every holder of its cookie."""
    if token:
        db.run("delete_console_session", token_hash=token_hash(token))


def throttled_for(db: Database, address: str) -> int:
    """Whole minutes `address` must wait before another sign-in attempt; 0 when it may try now."""
    now = utcnow()
    row = db.one("count_sign_in_failures", address=address, since=now - THROTTLE_WINDOW) or {}
    if int(row.get("n") or 0) < THROTTLE_FAILURES or row.get("oldest") is None:
        return 0
    oldest = row["oldest"]
    if isinstance(oldest, str):  # SQLite answers an aggregate's DATETIME as text
        oldest = datetime.fromisoformat(oldest)
    wait = oldest + THROTTLE_WINDOW - now
    return max(1, math.ceil(float(wait.total_seconds()) / 60))


def record_failure(db: Database, address: str) -> None:
    """One failed sign-in from `address`; failures older than the window are dropped."""
    now = utcnow()
    db.run("delete_sign_in_failures_before", before=now - THROTTLE_WINDOW)
    db.run("insert_sign_in_failure", address=address, now=now)


def forgive(db: Database, address: str) -> None:
    """A successful sign-in from `address` clears its failures."""
    db.run("delete_sign_in_failures_of", address=address)
