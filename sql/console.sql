-- The support console's sessions and sign-in throttle (identity/sessions.py),
-- portable to both dialects.

-- name: insert_console_session
-- A new signed-in session, by the SHA-256 of the token its cookie carries.
INSERT INTO ConsoleSession (tokenHash, createdAt, lastSeenAt)
VALUES (%(token_hash)s, %(now)s, %(now)s)

-- name: touch_console_session
-- Keeps a session that is still in use alive; 0 rows when it was signed out or went idle.
UPDATE ConsoleSession
SET lastSeenAt = %(now)s
WHERE tokenHash = %(token_hash)s
  AND lastSeenAt >= %(idle_since)s

-- name: delete_console_session
-- Sign-out: the session ends for whoever holds its cookie.
DELETE FROM ConsoleSession
WHERE tokenHash = %(token_hash)s

-- name: delete_idle_console_sessions
-- Sessions idle past the limit (they open nothing already; this only tidies).
DELETE FROM ConsoleSession
WHERE lastSeenAt < %(idle_since)s

-- name: count_sign_in_failures
-- Failed sign-ins from one client address since a time (the throttle's window).
SELECT COUNT(*) AS n, MIN(failedAt) AS oldest
FROM ConsoleSignInFailure
WHERE address = %(address)s
  AND failedAt >= %(since)s

-- name: insert_sign_in_failure
-- One failed sign-in from a client address.
INSERT INTO ConsoleSignInFailure (address, failedAt)
VALUES (%(address)s, %(now)s)

-- name: delete_sign_in_failures_before
-- Failures older than the throttle's window count for nothing.
DELETE FROM ConsoleSignInFailure
WHERE failedAt < %(before)s

-- name: delete_sign_in_failures_of
-- A successful sign-in from an address forgives its earlier failures.
DELETE FROM ConsoleSignInFailure
WHERE address = %(address)s
