-- SQLite spellings of the statements whose syntax differs from MySQL's. The
-- comments in sql/mysql/queries.sql say why each exists.

-- name: touch_identifiers
-- Creates the row of each identifier the request carries, or bumps its version.
INSERT INTO ContactIdentifier (kind, value, version)
SELECT kind, value, 1
FROM (
    SELECT 'email' AS kind, %(email)s AS value
    UNION ALL
    SELECT 'phone' AS kind, %(phone)s AS value
) AS request
WHERE value IS NOT NULL
ORDER BY kind
ON CONFLICT (kind, value) DO UPDATE SET version = version + 1

-- name: touch_contact_identifiers
-- Bumps the version of every identifier these rows carry. (`WHERE true` tells
-- SQLite's parser that ON CONFLICT belongs to the INSERT, not to a join.)
INSERT INTO ContactIdentifier (kind, value, version)
SELECT kind, value, 1
FROM (
    SELECT 'email' AS kind, email AS value
    FROM Contact
    WHERE id IN %(ids)s
      AND email IS NOT NULL
    UNION
    SELECT 'phone' AS kind, phoneNumber AS value
    FROM Contact
    WHERE id IN %(ids)s
      AND phoneNumber IS NOT NULL
)
WHERE true
ON CONFLICT (kind, value) DO UPDATE SET version = version + 1

-- name: begin_write
-- Starts a write transaction. Takes SQLite's single write lock now, not at the first write, so two
-- writers never both read and then deadlock upgrading their locks.
BEGIN IMMEDIATE

-- name: select_contact_table_exists
-- 1 when the database already has a Contact table (the service's or another's).
SELECT COUNT(*) AS n
FROM sqlite_master
WHERE type = 'table'
  AND name = 'Contact'

-- name: upsert_service_state
-- Records one fact about the table (ServiceState).
INSERT INTO ServiceState (name, value)
VALUES (%(key)s, %(value)s)
ON CONFLICT (name) DO UPDATE SET value = excluded.value

-- name: fill_identifiers
-- Creates the ContactIdentifier row of every identifier these rows carry.
INSERT OR IGNORE INTO ContactIdentifier (kind, value, version)
SELECT 'email', email, 0
FROM Contact
WHERE id IN %(ids)s
  AND email IS NOT NULL
UNION
SELECT 'phone', phoneNumber, 0
FROM Contact
WHERE id IN %(ids)s
  AND phoneNumber IS NOT NULL

-- name: touch_identifier
-- Erasure: bumps the version of one identifier of the customer it erases.
INSERT INTO ContactIdentifier (kind, value, version)
VALUES (%(kind)s, %(value)s, 1)
ON CONFLICT (kind, value) DO UPDATE SET version = version + 1

-- name: touch_identifier_rows
-- touch_identifiers for many identifiers at once (the import's batch).
INSERT INTO ContactIdentifier (kind, value, version)
VALUES (%(kind)s, %(value)s, %(version)s)
ON CONFLICT (kind, value) DO UPDATE SET version = version + 1

-- name: store_contact_rows
-- Writes existing rows' identifiers and links as given (executemany:
-- in-process, so one statement per row costs no round trip).
UPDATE Contact
SET phoneNumber = %(phone)s,
    email = %(email)s,
    linkedId = %(linked_id)s,
    linkPrecedence = %(link_precedence)s,
    updatedAt = %(updated_at)s
WHERE id = %(id)s

-- name: insert_blocked_value
INSERT OR IGNORE INTO BlockedValue (kind, form, text, createdAt)
VALUES (%(kind)s, %(form)s, %(text)s, %(created_at)s)

-- name: touch_customer_locks
INSERT INTO CustomerLock (customerId, version)
VALUES (%(customer_id)s, 1)
ON CONFLICT (customerId) DO UPDATE SET version = version + 1

-- name: seed_feed_counter
INSERT OR IGNORE INTO FeedCounter (id, lastSeq)
VALUES (1, 0)
