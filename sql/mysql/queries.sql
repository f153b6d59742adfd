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

-- name: touch_customer_identifiers
-- Bumps the version of every identifier of the customer whose primary is
-- about to be demoted. Any request that linked rows to that primary wrote one
-- of these rows too, so on a multi-primary cluster the two write sets overlap
-- and one of the transactions is aborted instead of leaving a chain.
INSERT INTO ContactIdentifier (kind, value, version)
SELECT 'email', email, 1
FROM Contact
WHERE (id = %(primary_id)s OR linkedId = %(primary_id)s)
  AND email IS NOT NULL
UNION
SELECT 'phone', phoneNumber, 1
FROM Contact
WHERE (id = %(primary_id)s OR linkedId = %(primary_id)s)
  AND phoneNumber IS NOT NULL
ON DUPLICATE KEY UPDATE version = version + 1

-- name: touch_identifier_rows
-- touch_identifiers for many identifiers at once (the import's batch): one
-- multi-row statement (PyMySQL's executemany), the caller sorts the rows so
-- every batch takes its locks in one order. (The version is a parameter:
-- PyMySQL only rewrites a VALUES list made of placeholders alone.)
INSERT INTO ContactIdentifier (kind, value, version)
VALUES (%(kind)s, %(value)s, %(version)s)
ON DUPLICATE KEY UPDATE version = version + 1

-- name: lock_contacts_by_emails
-- Live rows carrying any of these emails, locked (the import's component
-- read). PyMySQL renders a tuple parameter as a parenthesized list.
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt
FROM Contact
WHERE email IN %(values)s
  AND deletedAt IS NULL
FOR UPDATE

-- name: lock_contacts_by_phones
-- Live rows carrying any of these phone numbers, locked.
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt
FROM Contact
WHERE phoneNumber IN %(values)s
  AND deletedAt IS NULL
FOR UPDATE

-- name: lock_contacts_by_ids
-- Live rows with these ids (the rows a loaded row links to), locked.
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt
FROM Contact
WHERE id IN %(values)s
  AND deletedAt IS NULL
FOR UPDATE

-- name: lock_contacts_by_linked_ids
-- Live rows linked to any of these ids (a loaded row's secondaries), locked.
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt
FROM Contact
WHERE linkedId IN %(values)s
  AND deletedAt IS NULL
FOR UPDATE

-- name: relink_contact_rows
-- Writes the new link of existing rows the import changed, many in one
-- multi-row statement (PyMySQL's executemany): every row exists and is
-- locked by this transaction, so the upsert only ever takes its UPDATE arm.
INSERT INTO Contact (id, phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt)
VALUES (%(id)s, %(phone)s, %(email)s, %(linked_id)s, %(link_precedence)s, %(created_at)s, %(updated_at)s)
ON DUPLICATE KEY UPDATE
    linkedId = VALUES(linkedId),
    linkPrecedence = VALUES(linkPrecedence),
    updatedAt = VALUES(updatedAt)
