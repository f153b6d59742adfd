-- SQLite steps of `flask --app fluxkart migrate`. SQLite cannot change a
-- column's type or collation, so a Contact table that differs from
-- sql/sqlite/schema.sql is rebuilt the way SQLite's documentation prescribes
-- (https://sqlite.org/lang_altertable.html#otheralter): create the new table,
-- copy the rows, drop the old one, rename the new one, all in one transaction
-- that holds the write lock (readers go on, writers wait). The new table is
-- created from the schema file's own Contact statement under the name
-- Contact_new, so the two cannot drift apart.

-- name: select_table_names
-- The tables of this database (which of the service's tables are missing).
SELECT name
FROM sqlite_master
WHERE type = 'table'

-- name: select_contact_definition
-- The CREATE TABLE statement Contact was created with (SQLite keeps the text).
SELECT sql
FROM sqlite_master
WHERE type = 'table'
  AND name = 'Contact'

-- name: select_contact_indexes
-- Contact's indexes that someone created (not the primary key's), with their columns.
SELECT il.name AS name,
       group_concat(ii.name) AS column_list
FROM pragma_index_list('Contact') AS il
JOIN pragma_index_info(il.name) AS ii
WHERE il.origin = 'c'
GROUP BY il.name
ORDER BY il.name

-- name: select_contact_sequence
-- The next id AUTOINCREMENT would hand out, minus one (kept across the rebuild).
SELECT COALESCE(
           (SELECT seq FROM sqlite_sequence WHERE name = 'Contact'),
           (SELECT MAX(id) FROM Contact),
           0
       ) AS seq

-- name: select_contact_max_id
-- The largest id (for a table created without AUTOINCREMENT there is no sequence).
SELECT COALESCE(MAX(id), 0) AS seq
FROM Contact

-- name: select_unconvertible_contacts
-- Rows holding a value the new table cannot hold, first `limit` of them by id,
-- with the total and what is wrong: timestamps must be 'YYYY-MM-DD HH:MM:SS'
-- with an optional fraction of up to 6 digits (a 'T' for the space is fine),
-- which the copy widens to the service's fixed-width microsecond text.
SELECT id,
       trim(
           CASE WHEN linkPrecedence NOT IN ('primary', 'secondary', '')
                THEN 'linkPrecedence is neither primary nor secondary; ' ELSE '' END
           || CASE WHEN linkedId IS NOT NULL AND typeof(linkedId) <> 'integer'
                   THEN 'linkedId is not a whole number; ' ELSE '' END
           || CASE WHEN createdAt IS NOT NULL AND NOT (
                       createdAt GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][ T][0-9][0-9]:[0-9][0-9]:[0-9][0-9]*'
                       AND (length(createdAt) = 19 OR (substr(createdAt, 20, 1) = '.'
                            AND length(createdAt) BETWEEN 21 AND 26 AND substr(createdAt, 21) NOT GLOB '*[^0-9]*')))
                   THEN 'createdAt is not a timestamp; ' ELSE '' END
           || CASE WHEN updatedAt IS NOT NULL AND NOT (
                       updatedAt GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][ T][0-9][0-9]:[0-9][0-9]:[0-9][0-9]*'
                       AND (length(updatedAt) = 19 OR (substr(updatedAt, 20, 1) = '.'
                            AND length(updatedAt) BETWEEN 21 AND 26 AND substr(updatedAt, 21) NOT GLOB '*[^0-9]*')))
                   THEN 'updatedAt is not a timestamp; ' ELSE '' END
           || CASE WHEN deletedAt IS NOT NULL AND NOT (
                       deletedAt GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][ T][0-9][0-9]:[0-9][0-9]:[0-9][0-9]*'
                       AND (length(deletedAt) = 19 OR (substr(deletedAt, 20, 1) = '.'
                            AND length(deletedAt) BETWEEN 21 AND 26 AND substr(deletedAt, 21) NOT GLOB '*[^0-9]*')))
                   THEN 'deletedAt is not a timestamp; ' ELSE '' END,
           '; '
       ) AS problem,
       COUNT(*) OVER () AS total
FROM Contact
WHERE problem <> ''
ORDER BY id
LIMIT %(limit)s

-- name: copy_contacts_to_new
-- Every row into the new table with its id; timestamps widened to the
-- service's fixed-width 'YYYY-MM-DD HH:MM:SS.ffffff', which sorts as text.
INSERT INTO Contact_new (id, phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt, deletedAt)
SELECT id,
       phoneNumber,
       email,
       linkedId,
       linkPrecedence,
       substr(createdAt, 1, 10) || ' ' || substr(createdAt, 12, 8) || '.'
           || substr(substr(createdAt, 21) || '000000', 1, 6),
       substr(updatedAt, 1, 10) || ' ' || substr(updatedAt, 12, 8) || '.'
           || substr(substr(updatedAt, 21) || '000000', 1, 6),
       CASE WHEN deletedAt IS NULL THEN NULL
            ELSE substr(deletedAt, 1, 10) || ' ' || substr(deletedAt, 12, 8) || '.'
                 || substr(substr(deletedAt, 21) || '000000', 1, 6)
       END
FROM Contact
ORDER BY id

-- name: drop_legacy_contact
-- The old table, once every row is in the new one (same transaction).
DROP TABLE Contact

-- name: rename_new_contact
-- The new table takes the name.
ALTER TABLE Contact_new RENAME TO Contact

-- name: forget_contact_sequence
-- Clears Contact's AUTOINCREMENT counter before it is set again below.
DELETE FROM sqlite_sequence
WHERE name = 'Contact'

-- name: set_contact_sequence
-- Ids already handed out (even of rows deleted since) are never handed out again.
INSERT INTO sqlite_sequence (name, seq)
VALUES ('Contact', %(seq)s)

-- name: select_service_state
-- Every ServiceState row (name, value).
SELECT name, value
FROM ServiceState
ORDER BY name

-- name: create_contact_new
-- The new table: sql/sqlite/schema.sql's Contact under another name (a test
-- checks that the two agree, column for column).
CREATE TABLE Contact_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    phoneNumber TEXT,
    email TEXT,
    linkedId INTEGER,
    linkPrecedence TEXT NOT NULL CHECK (linkPrecedence IN ('primary', 'secondary')),
    createdAt DATETIME NOT NULL,
    updatedAt DATETIME NOT NULL,
    deletedAt DATETIME
)

-- name: select_server_version
-- The SQLite library's version, for the first line of migrate's report.
SELECT sqlite_version() AS version

-- --------------------------------------------------------------------------
-- Schema 2 (the previous release) to 3: CustomerHistory gains merge
-- protection's kinds ('refused', 'split') and the `detail` column. SQLite
-- cannot alter a CHECK constraint, so the table is rebuilt as Contact is above,
-- in the migrate transaction: every event keeps its id, the AUTOINCREMENT
-- counter is kept, and its indexes are made again from the schema file.
-- --------------------------------------------------------------------------

-- name: select_history_definition
-- The CREATE TABLE statement CustomerHistory was created with.
SELECT sql
FROM sqlite_master
WHERE type = 'table'
  AND name = 'CustomerHistory'

-- name: select_history_sequence
-- The largest event id handed out so far (kept across the rebuild).
SELECT COALESCE(
           (SELECT seq FROM sqlite_sequence WHERE name = 'CustomerHistory'),
           (SELECT MAX(id) FROM CustomerHistory),
           0
       ) AS seq

-- name: create_history_new
-- The new table: sql/sqlite/schema.sql's CustomerHistory under another name
-- (a test checks that the two agree, column for column).
CREATE TABLE CustomerHistory_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('created', 'linked', 'merged', 'repaired', 'imported', 'refused', 'split')),
    createdAt DATETIME NOT NULL,
    requestId TEXT NOT NULL,
    customerId INTEGER NOT NULL,
    formerCustomerId INTEGER,
    contactIds TEXT NOT NULL,
    detail TEXT,
    feedSeq INTEGER,
    UNIQUE (feedSeq, createdAt, id)
)

-- name: copy_history_to_new
-- Every event of schema 2 into the new table with its id; detail stays NULL,
-- and feedSeq (the feed's sequencer numbers the events on its first run).
INSERT INTO CustomerHistory_new (id, kind, createdAt, requestId, customerId, formerCustomerId, contactIds)
SELECT id, kind, createdAt, requestId, customerId, formerCustomerId, contactIds
FROM CustomerHistory
ORDER BY id

-- name: copy_history_with_detail_to_new
-- The same from a table that already has `detail` (made before the feed's column).
INSERT INTO CustomerHistory_new (id, kind, createdAt, requestId, customerId, formerCustomerId, contactIds, detail)
SELECT id, kind, createdAt, requestId, customerId, formerCustomerId, contactIds, detail
FROM CustomerHistory
ORDER BY id

-- name: drop_old_history
-- The old table (and its indexes), once every event is in the new one.
DROP TABLE CustomerHistory

-- name: rename_new_history
-- The new table takes the name.
ALTER TABLE CustomerHistory_new RENAME TO CustomerHistory

-- name: forget_history_sequence
-- Clears CustomerHistory's AUTOINCREMENT counter before it is set again below.
DELETE FROM sqlite_sequence
WHERE name = 'CustomerHistory'

-- name: set_history_sequence
-- Event ids already handed out (even of events erased since) are never handed out again.
INSERT INTO sqlite_sequence (name, seq)
VALUES ('CustomerHistory', %(seq)s)

-- --------------------------------------------------------------------------
-- The feed of changes (docs/changes.md): CustomerErasure gains customerIds and
-- feedSeq with its index, a table constraint (schema.sql says why), so the
-- table is rebuilt like CustomerHistory above, every record keeping its id.
-- --------------------------------------------------------------------------

-- name: select_erasure_definition
-- The CREATE TABLE statement CustomerErasure was created with.
SELECT sql
FROM sqlite_master
WHERE type = 'table'
  AND name = 'CustomerErasure'

-- name: select_erasure_sequence
-- The largest erasure record id handed out so far (kept across the rebuild).
SELECT COALESCE(
           (SELECT seq FROM sqlite_sequence WHERE name = 'CustomerErasure'),
           (SELECT MAX(id) FROM CustomerErasure),
           0
       ) AS seq

-- name: create_erasure_new
-- The new table: sql/sqlite/schema.sql's CustomerErasure under another name
-- (a test checks that the two agree, column for column).
CREATE TABLE CustomerErasure_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    erasedAt DATETIME NOT NULL,
    requestId TEXT NOT NULL,
    contacts INTEGER NOT NULL,
    identifiers INTEGER NOT NULL,
    historyEvents INTEGER NOT NULL,
    customerIds TEXT,
    feedSeq INTEGER,
    UNIQUE (feedSeq, erasedAt, id)
)

-- name: copy_erasures_to_new
-- Every erasure record with its id; the erased ids were never kept before (NULL).
INSERT INTO CustomerErasure_new (id, erasedAt, requestId, contacts, identifiers, historyEvents)
SELECT id, erasedAt, requestId, contacts, identifiers, historyEvents
FROM CustomerErasure
ORDER BY id

-- name: drop_old_erasure
-- The old table, once every record is in the new one.
DROP TABLE CustomerErasure

-- name: rename_new_erasure
-- The new table takes the name.
ALTER TABLE CustomerErasure_new RENAME TO CustomerErasure

-- name: forget_erasure_sequence
-- Clears CustomerErasure's AUTOINCREMENT counter before it is set again below.
DELETE FROM sqlite_sequence
WHERE name = 'CustomerErasure'

-- name: set_erasure_sequence
-- Record ids already handed out are never handed out again.
INSERT INTO sqlite_sequence (name, seq)
VALUES ('CustomerErasure', %(seq)s)
