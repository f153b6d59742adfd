-- Portable statements, in PyMySQL's %(name)s style (rewritten to :name for
-- sqlite3). Names say what a statement does: select_* reads, lock_* takes row
-- locks, insert_/relink_/touch_* write. Dialect-only statements live in
-- sql/mysql/queries.sql and sql/sqlite/queries.sql under the same names.

-- name: select_customer
-- Every live row of the customer that owns this email or this phone number
-- (if two customers do, one of them: the caller then finds an identifier
-- missing and takes the locked path). One statement, so one consistent
-- snapshot: a repeat customer is answered from it without a transaction or a
-- lock. Two index merges, no temporary table: the hot path's only query. A
-- NULL parameter matches nothing (`email = NULL` is never true).
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt
FROM Contact
WHERE deletedAt IS NULL
  AND (
    id = (
        SELECT COALESCE(linkedId, id)
        FROM Contact
        WHERE (email = %(email)s OR phoneNumber = %(phone)s)
          AND deletedAt IS NULL
        LIMIT 1
    )
    OR linkedId = (
        SELECT COALESCE(linkedId, id)
        FROM Contact
        WHERE (email = %(email)s OR phoneNumber = %(phone)s)
          AND deletedAt IS NULL
        LIMIT 1
    )
  )

-- name: select_customers
-- Every live row of every customer that owns this email or this phone number,
-- oldest first: the read-only lookup, which must see when there are two.
WITH matched AS (
    SELECT COALESCE(linkedId, id) AS primaryId
    FROM Contact
    WHERE email = %(email)s
      AND deletedAt IS NULL
    UNION
    SELECT COALESCE(linkedId, id) AS primaryId
    FROM Contact
    WHERE phoneNumber = %(phone)s
      AND deletedAt IS NULL
)
SELECT c.id, c.email, c.phoneNumber, c.linkedId, c.linkPrecedence, c.createdAt
FROM matched AS m
JOIN Contact AS c ON c.id = m.primaryId
WHERE c.deletedAt IS NULL
UNION
SELECT c.id, c.email, c.phoneNumber, c.linkedId, c.linkPrecedence, c.createdAt
FROM matched AS m
JOIN Contact AS c ON c.linkedId = m.primaryId
WHERE c.deletedAt IS NULL
ORDER BY createdAt, id

-- name: select_customer_by_primary
-- Every live row of the customer with this primary. Inside identify's
-- transaction, once the primary is locked, nobody else can change them.
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt
FROM Contact
WHERE (id = %(primary_id)s OR linkedId = %(primary_id)s)
  AND deletedAt IS NULL

-- name: lock_primaries
-- Locks the primary row of each customer that owns this email or phone, so
-- no concurrent request can demote it or link rows to it until we commit.
-- The rows come back as they are once the lock is granted: one that is no
-- longer a primary was demoted by a merge that committed while we waited.
-- (On SQLite the loader drops FOR UPDATE: BEGIN IMMEDIATE already holds the
-- database's only write lock.)
SELECT c.id, c.linkedId, c.linkPrecedence, c.createdAt, c.deletedAt
FROM (
    SELECT COALESCE(linkedId, id) AS primaryId
    FROM Contact
    WHERE email = %(email)s
      AND deletedAt IS NULL
    UNION
    SELECT COALESCE(linkedId, id) AS primaryId
    FROM Contact
    WHERE phoneNumber = %(phone)s
      AND deletedAt IS NULL
) AS m
JOIN Contact AS c ON c.id = m.primaryId
ORDER BY c.id
FOR UPDATE

-- name: insert_contact
-- Adds one contact row: a new customer's primary, or a secondary carrying
-- information its customer did not have yet.
INSERT INTO Contact (phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt)
VALUES (%(phone)s, %(email)s, %(linked_id)s, %(link_precedence)s, %(created_at)s, %(created_at)s)

-- name: relink_customer
-- Folds a newer customer into the surviving one: its primary becomes a
-- secondary and every row that pointed at it now points at the survivor, so
-- no secondary is ever left pointing at a secondary.
UPDATE Contact
SET linkedId = %(primary_id)s,
    linkPrecedence = 'secondary',
    updatedAt = %(updated_at)s
WHERE id = %(demoted_id)s
   OR linkedId = %(demoted_id)s

-- name: select_contact_by_id
-- One live contact row, all columns.
SELECT id, phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt, deletedAt
FROM Contact
WHERE id = %(id)s
  AND deletedAt IS NULL

-- name: select_contacts
-- One page of live contact rows after the `after` id, optionally filtered by
-- canonical email and/or phone number (a NULL filter is not applied).
SELECT id, phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt, deletedAt
FROM Contact
WHERE id > %(after)s
  AND deletedAt IS NULL
  AND (%(email)s IS NULL OR email = %(email)s)
  AND (%(phone)s IS NULL OR phoneNumber = %(phone)s)
ORDER BY id
LIMIT %(limit)s

-- name: select_one
-- The readiness probe: proves a connection can run a query.
SELECT 1 AS ok

-- name: commit
-- Ends the write transaction begun by begin_write.
COMMIT

-- name: rollback
-- Undoes the open write transaction (after a conflict or an error).
ROLLBACK
