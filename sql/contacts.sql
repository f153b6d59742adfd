-- Portable statements, in PyMySQL's %(name)s style (rewritten to :name for
-- sqlite3). Names say what a statement does: select_* reads, lock_* takes row
-- locks, insert_/relink_/touch_* write. Dialect-only statements live in
-- sql/mysql/queries.sql and sql/sqlite/queries.sql under the same names.

-- name: select_customer
-- Every live row of the customer that owns this email or this phone number,
-- with the smallest and largest customer (primary id) any matching row points
-- to: when they differ, the identifiers belong to two customers (or the data
-- was not written by the service) and the caller takes the locked path. One
-- statement, so one consistent snapshot: a repeat customer is answered from it
-- without a transaction or a lock. The subqueries are not correlated, so each
-- runs once, through the email and phoneNumber indexes. A NULL parameter
-- matches nothing (`email = NULL` is never true). At most `limit` rows: a
-- customer with more is past the limit and takes the bounded path.
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt,
    (
        SELECT MAX(COALESCE(linkedId, id))
        FROM Contact
        WHERE (email = %(email)s OR phoneNumber = %(phone)s)
          AND deletedAt IS NULL
    ) AS lastCustomerId
FROM Contact
WHERE deletedAt IS NULL
  AND (
    id = (
        SELECT MIN(COALESCE(linkedId, id))
        FROM Contact
        WHERE (email = %(email)s OR phoneNumber = %(phone)s)
          AND deletedAt IS NULL
    )
    OR linkedId = (
        SELECT MIN(COALESCE(linkedId, id))
        FROM Contact
        WHERE (email = %(email)s OR phoneNumber = %(phone)s)
          AND deletedAt IS NULL
    )
  )
LIMIT %(limit)s

-- name: select_connected
-- One step of following a customer's connections (SPEC, "POST /identify": a
-- customer is a connected component of live rows): the live rows that carry
-- one of these emails or phone numbers, that one of the rows found so far
-- links to (parents), or that link to one of them (children), leaving out the
-- rows already found (known). Links through a deleted row connect nothing: a
-- deleted row is never found, and only live rows' ids are passed as children.
-- The Database wrapper expands each list; an empty list matches nothing (and
-- an empty `known` leaves out nothing: `IN (NULL)` is not TRUE). One SELECT
-- per index, not one SELECT with OR: with the import's lists of thousands of
-- values, MariaDB's optimizer chose a full scan of Contact for the OR. Each
-- names its index: for lists of a thousand values MariaDB's cost model also
-- prefers a full scan of a table of under a million rows, a scan that grows
-- with the table (rewritten to INDEXED BY for SQLite). A row found by two of
-- them comes twice (the caller keys rows by id). At most `limit` rows: a value
-- that thousands of rows share (a customer past the limit) is read no further
-- than merge protection needs to know it (SPEC, "Merge protection").
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt
FROM Contact FORCE INDEX (Contact_email)
WHERE email IN %(emails)s
  AND deletedAt IS NULL
  AND (id IN %(known)s) IS NOT TRUE
UNION ALL
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt
FROM Contact FORCE INDEX (Contact_phoneNumber)
WHERE phoneNumber IN %(phones)s
  AND deletedAt IS NULL
  AND (id IN %(known)s) IS NOT TRUE
UNION ALL
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt
FROM Contact
WHERE id IN %(parents)s
  AND deletedAt IS NULL
  AND (id IN %(known)s) IS NOT TRUE
UNION ALL
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt
FROM Contact FORCE INDEX (Contact_linkedId)
WHERE linkedId IN %(children)s
  AND deletedAt IS NULL
  AND (id IN %(known)s) IS NOT TRUE
LIMIT %(limit)s

-- name: lock_contacts
-- Locks these rows, in id order (so two requests never wait for each other
-- in opposite orders), and answers them as they are now. A row that is gone
-- or was deleted meanwhile does not come back.
-- (On SQLite the loader drops FOR UPDATE: BEGIN IMMEDIATE already holds the
-- database's only write lock.)
SELECT id, email, phoneNumber, linkedId, linkPrecedence, createdAt
FROM Contact
WHERE id IN %(ids)s
  AND deletedAt IS NULL
ORDER BY id
FOR UPDATE

-- name: promote_contact
-- Makes the oldest live row of a customer its primary (data the service did
-- not write can have it marked secondary, or linked to a deleted row).
UPDATE Contact
SET linkedId = NULL,
    linkPrecedence = 'primary',
    updatedAt = %(updated_at)s
WHERE id = %(id)s

-- name: relink_contacts
-- Points these rows (demoted primaries, secondaries of a demoted primary,
-- links of a chain) straight at the customer's primary: no chains.
UPDATE Contact
SET linkedId = %(primary_id)s,
    linkPrecedence = 'secondary',
    updatedAt = %(updated_at)s
WHERE id IN %(ids)s

-- name: insert_contact
-- Adds one contact row: a new customer's primary, or a secondary carrying
-- information its customer did not have yet.
INSERT INTO Contact (phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt)
VALUES (%(phone)s, %(email)s, %(linked_id)s, %(link_precedence)s, %(created_at)s, %(created_at)s)

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

-- name: select_service_state
-- What the service knows about the table: its schema version, whether every
-- customer is known to satisfy the rules, the phone region of stored numbers.
SELECT name, value
FROM ServiceState

-- name: count_live_contacts
-- How many live rows repair will read (for its progress bar).
SELECT COUNT(*) AS n
FROM Contact
WHERE deletedAt IS NULL

-- name: select_live_page
-- The next page of live rows by id (keyset pagination: repair reads the whole
-- table in bounded memory).
SELECT id, email, phoneNumber
FROM Contact
WHERE id > %(after)s
  AND deletedAt IS NULL
ORDER BY id
LIMIT %(limit)s

-- name: select_unsettled_contacts
-- Live rows that break the rules by their link alone: a primary that links
-- somewhere, or a secondary whose primary is missing, deleted, not a primary,
-- or younger than itself. One page, by id.
SELECT r.id
FROM Contact AS r
LEFT JOIN Contact AS p
  ON p.id = r.linkedId
 AND p.deletedAt IS NULL
WHERE r.id > %(after)s
  AND r.deletedAt IS NULL
  AND (
    (r.linkPrecedence = 'primary' AND r.linkedId IS NOT NULL)
    OR (
      r.linkPrecedence <> 'primary'
      AND (
        p.id IS NULL
        OR p.linkPrecedence <> 'primary'
        OR p.linkedId IS NOT NULL
        OR p.createdAt > r.createdAt
        OR (p.createdAt = r.createdAt AND p.id > r.id)
      )
    )
  )
ORDER BY r.id
LIMIT %(limit)s

-- name: select_shared_emails
-- Emails carried by live rows of more than one customer (rows pointing at
-- different primaries): each such customer set must be merged. One page.
SELECT email AS value
FROM Contact
WHERE deletedAt IS NULL
  AND email > %(after)s
GROUP BY email
HAVING COUNT(DISTINCT COALESCE(linkedId, id)) > 1
ORDER BY email
LIMIT %(limit)s

-- name: select_shared_phones
-- Phone numbers carried by live rows of more than one customer. One page.
SELECT phoneNumber AS value
FROM Contact
WHERE deletedAt IS NULL
  AND phoneNumber > %(after)s
GROUP BY phoneNumber
HAVING COUNT(DISTINCT COALESCE(linkedId, id)) > 1
ORDER BY phoneNumber
LIMIT %(limit)s

-- --------------------------------------------------------------------------
-- History and erasure (docs/history-and-erasure.md)
-- --------------------------------------------------------------------------

-- name: insert_history_event
-- Appends one event, in the transaction of the change it records. Ids only.
INSERT INTO CustomerHistory (kind, createdAt, requestId, customerId, formerCustomerId, contactIds, detail)
VALUES (%(kind)s, %(created_at)s, %(request_id)s, %(customer_id)s, %(former_customer_id)s, %(contact_ids)s, %(detail)s)

-- name: select_history_page
-- One page of a customer's events, oldest first by (createdAt, id), after the
-- cursor event. The customer's history is the events keyed by any of its rows
-- (live or deleted: every primary merged into it is now one of its rows) and,
-- following formerCustomerId, by every customer merged or repaired into those.
-- Never through a `split`: the customer a part left holds other people's events.
-- At most `max_rows` rows of the customer (merge protection's bound): a customer
-- past the limit is answered from its first rows, in bounded time.
WITH RECURSIVE members (id) AS (
    SELECT id
    FROM (
        SELECT id
        FROM Contact
        WHERE id = %(customer_id)s
           OR linkedId = %(customer_id)s
        ORDER BY id = %(customer_id)s DESC, id
        LIMIT %(max_rows)s
    ) AS customer_rows
    UNION
    SELECT h.formerCustomerId
    FROM CustomerHistory AS h
    JOIN members AS m ON h.customerId = m.id
    WHERE h.formerCustomerId IS NOT NULL
      AND h.kind IN ('merged', 'repaired')
)
SELECT h.id, h.kind, h.createdAt, h.requestId, h.customerId, h.formerCustomerId, h.contactIds, h.detail
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
-- customer: how a demoted (or deleted) primary's id leads to its survivor. (A
-- split names the customer a part left in formerCustomerId: it absorbs nothing.)
SELECT customerId
FROM CustomerHistory
WHERE formerCustomerId = %(former_customer_id)s
  AND kind IN ('merged', 'repaired')
ORDER BY createdAt DESC, id DESC
LIMIT 1

-- name: select_history_by_customer
-- Every event keyed by this customer id, with the former customers it names:
-- erasure follows them to the customers merged into this one. A `split` names
-- the customer a part left, other people: its formerCustomerId is not followed.
SELECT id, CASE WHEN kind IN ('merged', 'repaired') THEN formerCustomerId END AS formerCustomerId
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
-- The one record an erasure leaves: when, which request, how much, and (for the
-- feed's consumers, until its retention passes) the ids erased. No identifier.
INSERT INTO CustomerErasure (erasedAt, requestId, contacts, identifiers, historyEvents, customerIds)
VALUES (%(erased_at)s, %(request_id)s, %(contacts)s, %(identifiers)s, %(history_events)s, %(customer_ids)s)

-- name: select_identifier_owners
-- The customer (COALESCE(linkedId, id): its primary, on a consistent table) of
-- every live row that carries one of these emails or phone numbers: the
-- import's lock-free test of which orders change nothing. Two index lookups,
-- each naming its index (as select_connected, for the same reason).
SELECT email, phoneNumber, COALESCE(linkedId, id) AS customerId
FROM Contact FORCE INDEX (Contact_email)
WHERE email IN %(emails)s
  AND deletedAt IS NULL
UNION ALL
SELECT email, phoneNumber, COALESCE(linkedId, id) AS customerId
FROM Contact FORCE INDEX (Contact_phoneNumber)
WHERE phoneNumber IN %(phones)s
  AND deletedAt IS NULL

-- name: count_erasures
-- How many erasures have committed. The import counts them before its
-- lock-free read of settled orders and again before it commits: an erasure in
-- between may have removed a customer those orders were settled by. A count,
-- not MAX(id): an erasure can commit after one that took a larger id.
SELECT COUNT(*) AS n
FROM CustomerErasure

-- name: select_max_contact_id
-- The largest id so far (0 on an empty table). Taken inside the import's
-- transaction before it inserts: every row it inserts gets a larger id.
SELECT COALESCE(MAX(id), 0) AS top
FROM Contact

-- name: select_primaries_after_id
-- Live primaries with an id above `after`: the import reads back the ids of
-- the primaries it has just inserted (matched by their identifiers, which no
-- concurrent request can insert while the import holds them).
SELECT id, email, phoneNumber
FROM Contact
WHERE id > %(after)s
  AND linkedId IS NULL
  AND deletedAt IS NULL

-- name: select_secondaries_after_id
-- Live secondaries with an id above `after`: the import reads back the ids of
-- the secondaries it has just inserted (matched by their identifiers, as
-- select_primaries_after_id), for its history events.
SELECT id, email, phoneNumber, linkedId
FROM Contact
WHERE id > %(after)s
  AND linkedId IS NOT NULL
  AND deletedAt IS NULL

-- name: select_blocked_values
-- The blocked values and patterns (SPEC, "Merge protection"), read by every
-- worker every few seconds.
SELECT kind, form, text
FROM BlockedValue
ORDER BY kind, form, text

-- name: delete_blocked_value
-- `block remove`: one value or pattern.
DELETE FROM BlockedValue
WHERE kind = %(kind)s
  AND form = %(form)s
  AND text = %(text)s

-- --------------------------------------------------------------------------
-- The console's merge protection pages (docs/merge-protection.md)
-- --------------------------------------------------------------------------

-- name: select_refused_events
-- The latest `refused` history events (the identifier limit kept an identifier
-- out of a request) with an id below the cursor, newest first: one page of the
-- console's "Refused links". Walks the primary key backwards, so a page reads
-- no further back than its last event.
SELECT id, createdAt, requestId, customerId, contactIds, detail
FROM CustomerHistory
WHERE kind = 'refused'
  AND id < %(before)s
ORDER BY id DESC
LIMIT %(limit)s

-- name: select_customers_past_limit
-- Customers as stored (grouped by primary: COALESCE(linkedId, id)) holding
-- more distinct identifiers than the limit (emails and phone numbers together,
-- blocked values included: SQL cannot apply a pattern) or more rows than
-- max_rows, by primary id after the cursor: one page of the console's
-- "Customers past the limit". Scans the live rows from the cursor on: an
-- operator's page, never a request's.
SELECT COALESCE(linkedId, id) AS customerId,
    COUNT(*) AS rowCount,
    COUNT(DISTINCT email) AS emails,
    COUNT(DISTINCT phoneNumber) AS phones
FROM Contact
WHERE deletedAt IS NULL
  AND COALESCE(linkedId, id) > %(after)s
GROUP BY COALESCE(linkedId, id)
HAVING COUNT(DISTINCT email) + COUNT(DISTINCT phoneNumber) > %(max_identifiers)s
    OR COUNT(*) > %(max_rows)s
ORDER BY customerId
LIMIT %(limit)s

-- name: select_customers_sharing_email
-- What blocking this email would split: the customers as stored (primary ids)
-- in which more than one live row carries it, most such rows first. Reads the
-- rows carrying the value through its index.
SELECT COALESCE(linkedId, id) AS customerId, COUNT(*) AS rowCount
FROM Contact
WHERE email = %(value)s
  AND deletedAt IS NULL
GROUP BY COALESCE(linkedId, id)
HAVING COUNT(*) > 1
ORDER BY rowCount DESC, customerId
LIMIT %(limit)s

-- name: select_customers_sharing_phone
-- The same for a phone number.
SELECT COALESCE(linkedId, id) AS customerId, COUNT(*) AS rowCount
FROM Contact
WHERE phoneNumber = %(value)s
  AND deletedAt IS NULL
GROUP BY COALESCE(linkedId, id)
HAVING COUNT(*) > 1
ORDER BY rowCount DESC, customerId
LIMIT %(limit)s

-- Splitting what a blocked value joined (repair, `block add`; identity/split.py)
-- --------------------------------------------------------------------------

-- name: select_merge_evidence
-- The detail of every `merged` event recorded for these customers (ids of
-- their rows): the rows each merge matched by email and by phone.
SELECT detail
FROM CustomerHistory
WHERE kind = 'merged'
  AND customerId IN %(ids)s
  AND detail IS NOT NULL

-- name: select_customer_lock_version
-- The growth lock's version of one customer (no row: it never grew).
SELECT version
FROM CustomerLock
WHERE customerId = %(customer_id)s

-- name: promote_contacts
-- Makes these rows primaries: each the oldest row of a part a split detaches.
UPDATE Contact
SET linkedId = NULL,
    linkPrecedence = 'primary',
    updatedAt = %(updated_at)s
WHERE id IN %(ids)s

-- name: select_large_customers
-- Customers (by primary, on a table that follows the rules) with more rows or
-- more distinct identifiers than merge protection allows, blocked values
-- counted too (the caller counts again without them). One page, by id.
SELECT COALESCE(linkedId, id) AS customerId,
       COUNT(*) AS contacts
FROM Contact
WHERE deletedAt IS NULL
GROUP BY COALESCE(linkedId, id)
HAVING COUNT(*) > %(max_rows)s
    OR COUNT(DISTINCT email) + COUNT(DISTINCT phoneNumber) > %(max_identifiers)s
ORDER BY customerId
LIMIT %(limit)s

-- name: select_newest_block
-- When the newest blocked value or pattern was added: repair splits only once
-- every worker applies it (identity/blocks.py re-reads the list every few seconds).
SELECT createdAt
FROM BlockedValue
ORDER BY createdAt DESC
LIMIT 1
