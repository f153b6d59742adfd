-- MySQL/MariaDB spellings of the statements whose syntax differs from SQLite's.

-- name: touch_identifiers
-- Creates the row of each identifier the request carries (email, then phone:
-- one fixed order), or bumps its version when it exists. Taken first in every
-- identify transaction: the row lock serializes requests for the same
-- identifier (the row exists even before any contact carries it, so there is
-- something to lock without gap locks), and the version write makes two such
-- requests conflict on a multi-primary cluster, where row locks are local to
-- one node.
INSERT INTO ContactIdentifier (kind, value, version)
SELECT kind, value, 1
FROM (
    SELECT 'email' AS kind, %(email)s AS value
    UNION ALL
    SELECT 'phone' AS kind, %(phone)s AS value
) AS request
WHERE value IS NOT NULL
ORDER BY kind
ON DUPLICATE KEY UPDATE version = version + 1

-- name: touch_contact_identifiers
-- Bumps the version of every identifier these rows carry: run by every
-- identify that re-points rows (a merge, a repair), for the rows it re-points.
-- Any request that linked a row to a demoted customer found it through one of
-- those rows and wrote that identifier row too, so on a multi-primary cluster
-- the two write sets overlap and one of the transactions is aborted instead of
-- leaving a chain.
INSERT INTO ContactIdentifier (kind, value, version)
SELECT 'email', email, 1
FROM Contact
WHERE id IN %(ids)s
  AND email IS NOT NULL
UNION
SELECT 'phone', phoneNumber, 1
FROM Contact
WHERE id IN %(ids)s
  AND phoneNumber IS NOT NULL
ON DUPLICATE KEY UPDATE version = version + 1

-- name: begin_write
-- Starts a write transaction. An ordinary InnoDB transaction: row locks are taken by the statements inside it.
START TRANSACTION

-- name: select_contact_table_exists
-- 1 when the database already has a Contact table (the service's or another's).
SELECT COUNT(*) AS n
FROM information_schema.tables
WHERE table_schema = DATABASE()
  AND table_name = 'Contact'

-- name: upsert_service_state
-- Records one fact about the table (ServiceState).
INSERT INTO ServiceState (name, value)
VALUES (%(key)s, %(value)s)
ON DUPLICATE KEY UPDATE value = VALUES(value)

-- name: fill_identifiers
-- Creates the ContactIdentifier row of every identifier these rows carry,
-- leaving existing ones as they are (repair fills the table for data the
-- service did not write).
INSERT IGNORE INTO ContactIdentifier (kind, value, version)
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
-- Erasure: bumps the version of one identifier of the customer it erases (or
-- creates its row), so every identify that depends on it waits (one node) or
-- conflicts (multi-primary cluster) until the erasure commits or rolls back.
INSERT INTO ContactIdentifier (kind, value, version)
VALUES (%(kind)s, %(value)s, 1)
ON DUPLICATE KEY UPDATE version = version + 1

-- name: touch_identifier_rows
-- touch_identifiers for many identifiers at once (the import's batch): one
-- multi-row statement (PyMySQL's executemany), the caller sorts the rows so
-- every batch takes its locks in one order. (The version is a parameter:
-- PyMySQL only rewrites a VALUES list made of placeholders alone.)
INSERT INTO ContactIdentifier (kind, value, version)
VALUES (%(kind)s, %(value)s, %(version)s)
ON DUPLICATE KEY UPDATE version = version + 1

-- name: store_contact_rows
-- Writes existing rows' identifiers and links as given, many in one multi-row
-- statement (PyMySQL's executemany): the import's re-pointed rows, repair's
-- canonical identifiers. Every row exists and is locked by this transaction,
-- so the upsert only ever takes its UPDATE arm.
INSERT INTO Contact (id, phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt)
VALUES (%(id)s, %(phone)s, %(email)s, %(linked_id)s, %(link_precedence)s, %(created_at)s, %(updated_at)s)
ON DUPLICATE KEY UPDATE
    phoneNumber = VALUES(phoneNumber),
    email = VALUES(email),
    linkedId = VALUES(linkedId),
    linkPrecedence = VALUES(linkPrecedence),
    updatedAt = VALUES(updatedAt)

-- name: insert_blocked_value
-- `block add` and the shipped defaults: one value or pattern; adding it again changes nothing.
INSERT IGNORE INTO BlockedValue (kind, form, text, createdAt)
VALUES (%(kind)s, %(form)s, %(text)s, %(created_at)s)

-- name: touch_customer_locks
-- Bumps the growth lock of each customer an identify grows or merges (one
-- multi-row statement, ids sorted by the caller), after their rows are locked:
-- on a multi-primary cluster two requests growing one customer on two nodes
-- then write the same row, and one is retried (schema.sql, CustomerLock).
INSERT INTO CustomerLock (customerId, version)
VALUES (%(customer_id)s, 1)
ON DUPLICATE KEY UPDATE version = version + 1

-- name: seed_feed_counter
-- The feed's counter row, made by the first sequencer (an existing row is left
-- as it is, and writes nothing: nothing for a cluster to certify).
INSERT IGNORE INTO FeedCounter (id, lastSeq)
VALUES (1, 0)
