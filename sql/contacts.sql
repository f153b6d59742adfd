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

-- --------------------------------------------------------------------------
-- History and erasure (docs/history-and-erasure.md)
-- --------------------------------------------------------------------------

-- name: insert_history_event
-- Appends one event, in the transaction of the change it records. Ids only.
INSERT INTO CustomerHistory (kind, createdAt, requestId, customerId, formerCustomerId, contactIds)
VALUES (%(kind)s, %(created_at)s, %(request_id)s, %(customer_id)s, %(former_customer_id)s, %(contact_ids)s)

-- name: select_history_page
-- One page of a customer's events, oldest first by (createdAt, id), after the
-- cursor event. The customer's history is the events keyed by any of its rows
-- (live or deleted: every primary merged into it is now one of its rows) and,
-- following formerCustomerId, by every customer merged or repaired into those.
WITH RECURSIVE members (id) AS (
    SELECT id
    FROM Contact
    WHERE id = %(customer_id)s
       OR linkedId = %(customer_id)s
    UNION
    SELECT h.formerCustomerId
    FROM CustomerHistory AS h
    JOIN members AS m ON h.customerId = m.id
    WHERE h.formerCustomerId IS NOT NULL
)
SELECT h.id, h.kind, h.createdAt, h.requestId, h.customerId, h.formerCustomerId, h.contactIds
FROM CustomerHistory AS h
WHERE h.customerId IN (SELECT id FROM members)
  AND (h.createdAt > %(after_at)s OR (h.createdAt = %(after_at)s AND h.id > %(after)s))
ORDER BY h.createdAt, h.id
LIMIT %(limit)s

-- name: select_history_event_by_id
-- The position (createdAt, id) of a page cursor.
SELECT id, createdAt
FROM CustomerHistory
WHERE id = %(id)s

-- name: select_absorbing_event
-- The latest event that moved this former customer's rows into another
-- customer: how a demoted (or deleted) primary's id leads to its survivor.
SELECT customerId
FROM CustomerHistory
WHERE formerCustomerId = %(former_customer_id)s
ORDER BY createdAt DESC, id DESC
LIMIT 1

-- name: select_history_by_customer
-- Every event keyed by this customer id, with the former customers it names.
SELECT id, formerCustomerId
FROM CustomerHistory
WHERE customerId = %(customer_id)s

-- name: delete_history_by_customer
-- Erasure: the events keyed by one id of the erased customer.
DELETE FROM CustomerHistory
WHERE customerId = %(customer_id)s

-- name: select_contact_link
-- Any row, live or deleted: where a history request's id leads.
SELECT id, linkedId, linkPrecedence, deletedAt
FROM Contact
WHERE id = %(id)s

-- name: select_rows_by_email
-- Every row carrying this email, live or deleted (erasure's walk of a customer).
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt, deletedAt
FROM Contact
WHERE email = %(email)s

-- name: select_rows_by_phone
-- Every row carrying this phone number, live or deleted.
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt, deletedAt
FROM Contact
WHERE phoneNumber = %(phone)s

-- name: select_rows_by_link
-- The row with this id and every row linked to it, live or deleted.
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt, deletedAt
FROM Contact
WHERE id = %(id)s
   OR linkedId = %(id)s

-- name: lock_contact_by_id
-- Erasure locks every row it deletes, in id order, once it holds the
-- customer's identifier rows (identify's order: identifiers, then rows).
SELECT id
FROM Contact
WHERE id = %(id)s
FOR UPDATE

-- name: delete_contact_by_id
-- Erasure: a hard delete, live or soft-deleted row alike.
DELETE FROM Contact
WHERE id = %(id)s

-- name: delete_email_identifier_if_unused
-- Erasure: the identifier row of an email that no remaining row carries.
DELETE FROM ContactIdentifier
WHERE kind = 'email'
  AND value = %(value)s
  AND NOT EXISTS (
    SELECT 1
    FROM Contact
    WHERE email = %(value)s
  )

-- name: delete_phone_identifier_if_unused
-- Erasure: the identifier row of a phone number that no remaining row carries.
DELETE FROM ContactIdentifier
WHERE kind = 'phone'
  AND value = %(value)s
  AND NOT EXISTS (
    SELECT 1
    FROM Contact
    WHERE phoneNumber = %(value)s
  )

-- name: insert_erasure
-- The one record an erasure leaves: when, which request, how much. No identifier.
INSERT INTO CustomerErasure (erasedAt, requestId, contacts, identifiers, historyEvents)
VALUES (%(erased_at)s, %(request_id)s, %(contacts)s, %(identifiers)s, %(history_events)s)
