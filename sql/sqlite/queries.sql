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

-- name: touch_customer_identifiers
-- Bumps the version of every identifier of the customer whose primary is
-- about to be demoted. (`WHERE true` tells SQLite's parser that ON CONFLICT
-- belongs to the INSERT, not to a join.)
INSERT INTO ContactIdentifier (kind, value, version)
SELECT kind, value, 1
FROM (
    SELECT 'email' AS kind, email AS value
    FROM Contact
    WHERE (id = %(primary_id)s OR linkedId = %(primary_id)s)
      AND email IS NOT NULL
    UNION
    SELECT 'phone' AS kind, phoneNumber AS value
    FROM Contact
    WHERE (id = %(primary_id)s OR linkedId = %(primary_id)s)
      AND phoneNumber IS NOT NULL
)
WHERE true
ON CONFLICT (kind, value) DO UPDATE SET version = version + 1

-- name: touch_identifier_rows
-- touch_identifiers for many identifiers at once (the import's batch).
INSERT INTO ContactIdentifier (kind, value, version)
VALUES (%(kind)s, %(value)s, %(version)s)
ON CONFLICT (kind, value) DO UPDATE SET version = version + 1

-- name: lock_contacts_by_emails
-- Live rows carrying any of these emails; `values` is a JSON array (sqlite3
-- has no list parameter). BEGIN IMMEDIATE is the lock.
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt
FROM Contact
WHERE email IN (SELECT value FROM json_each(%(values)s))
  AND deletedAt IS NULL

-- name: lock_contacts_by_phones
-- Live rows carrying any of these phone numbers.
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt
FROM Contact
WHERE phoneNumber IN (SELECT value FROM json_each(%(values)s))
  AND deletedAt IS NULL

-- name: lock_contacts_by_ids
-- Live rows with these ids.
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt
FROM Contact
WHERE id IN (SELECT value FROM json_each(%(values)s))
  AND deletedAt IS NULL

-- name: lock_contacts_by_linked_ids
-- Live rows linked to any of these ids.
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt
FROM Contact
WHERE linkedId IN (SELECT value FROM json_each(%(values)s))
  AND deletedAt IS NULL

-- name: relink_contact_rows
-- Writes the new link of an existing row the import changed (executemany:
-- in-process, so one statement per row costs no round trip).
UPDATE Contact
SET linkedId = %(linked_id)s,
    linkPrecedence = %(link_precedence)s,
    updatedAt = %(updated_at)s
WHERE id = %(id)s
