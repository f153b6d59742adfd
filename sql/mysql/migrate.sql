-- MySQL/MariaDB steps of `flask --app fluxkart migrate`: inspect the Contact
-- table, refuse values the new columns cannot hold, then the DDL. Every ALTER
-- names its InnoDB online-DDL algorithm (and its lock, where the algorithm takes
-- one: MySQL refuses a LOCK clause next to INSTANT, which locks nothing), so the
-- server refuses a step (error 1846) rather than quietly taking a stronger lock
-- than migrate printed.
-- The target shape is sql/mysql/schema.sql's; tests/test_migrate.py checks
-- that a migrated table and a table the schema created look the same.

-- name: select_table_names
-- The tables of this database (which of the service's tables are missing).
SELECT TABLE_NAME AS name
FROM information_schema.TABLES
WHERE TABLE_SCHEMA = DATABASE()

-- name: select_contact_columns
-- Contact's columns as the server describes them.
SELECT COLUMN_NAME AS name,
       COLUMN_TYPE AS type,
       IS_NULLABLE AS nullable,
       COLLATION_NAME AS collation,
       EXTRA AS extra
FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA = DATABASE()
  AND TABLE_NAME = 'Contact'
ORDER BY ORDINAL_POSITION

-- name: select_contact_table
-- Contact's storage engine and default collation.
SELECT ENGINE AS engine,
       TABLE_COLLATION AS collation
FROM information_schema.TABLES
WHERE TABLE_SCHEMA = DATABASE()
  AND TABLE_NAME = 'Contact'

-- name: select_contact_indexes
-- Contact's indexes, each with its columns in order.
SELECT INDEX_NAME AS name,
       GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX) AS column_list
FROM information_schema.STATISTICS
WHERE TABLE_SCHEMA = DATABASE()
  AND TABLE_NAME = 'Contact'
GROUP BY INDEX_NAME
ORDER BY INDEX_NAME

-- name: select_unconvertible_contacts
-- Rows holding a value the new columns cannot hold (the ALTER would cut it or
-- fail), first `limit` of them by id, with the total and what is wrong.
SELECT id,
       CONCAT_WS('; ',
           IF(CHAR_LENGTH(phoneNumber) > 32,
              CONCAT('phoneNumber has ', CHAR_LENGTH(phoneNumber), ' characters, the new column holds 32'),
              NULL),
           IF(CHAR_LENGTH(email) > 255,
              CONCAT('email has ', CHAR_LENGTH(email), ' characters, the new column holds 255'),
              NULL),
           IF(id > 2147483647, 'id is larger than INT holds', NULL),
           IF(linkedId NOT BETWEEN -2147483648 AND 2147483647, 'linkedId is outside INT', NULL)
       ) AS problem,
       COUNT(*) OVER () AS total
FROM Contact
WHERE CHAR_LENGTH(phoneNumber) > 32
   OR CHAR_LENGTH(email) > 255
   OR id > 2147483647
   OR linkedId NOT BETWEEN -2147483648 AND 2147483647
ORDER BY id
LIMIT %(limit)s

-- name: set_migrate_session
-- Strict mode, so a value that does not fit fails the ALTER instead of being
-- cut on a server configured without it; and a short wait for the table's
-- metadata lock, so an open transaction elsewhere makes migrate stop with a
-- message instead of queueing every later query on Contact behind the ALTER.
SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES'),
    SESSION lock_wait_timeout = %(lock_wait_s)s

-- name: convert_contact_columns
-- Rewrites the table (COPY: changing a VARCHAR's length and DATETIME's
-- precision cannot be done in place); LOCK=SHARED: reads go on, writes wait.
ALTER TABLE Contact
    MODIFY id INT NOT NULL AUTO_INCREMENT,
    MODIFY phoneNumber VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    MODIFY email VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    MODIFY linkedId INT NULL,
    MODIFY linkPrecedence ENUM('primary', 'secondary') CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    MODIFY createdAt DATETIME(6) NOT NULL,
    MODIFY updatedAt DATETIME(6) NOT NULL,
    MODIFY deletedAt DATETIME(6) NULL,
    ENGINE = InnoDB,
    DEFAULT CHARACTER SET = utf8mb4 COLLATE = utf8mb4_bin,
    ALGORITHM = COPY,
    LOCK = SHARED

-- name: set_contact_default_collation
-- Metadata only: the collation new columns would get. Used when the columns
-- are right already and only the table's default differs.
ALTER TABLE Contact
    DEFAULT CHARACTER SET = utf8mb4 COLLATE = utf8mb4_bin,
    ALGORITHM = INSTANT

-- name: rename_legacy_email_index
-- Metadata only: the replaced implementation's index (run.sh --indexes) becomes the service's.
ALTER TABLE Contact RENAME INDEX idx_email TO Contact_email, ALGORITHM = INSTANT

-- name: rename_legacy_phone_index
-- Metadata only, as above.
ALTER TABLE Contact RENAME INDEX idx_phoneNumber TO Contact_phoneNumber, ALGORITHM = INSTANT

-- name: rename_legacy_linked_id_index
-- Metadata only, as above.
ALTER TABLE Contact RENAME INDEX idx_linkedId TO Contact_linkedId, ALGORITHM = INSTANT

-- name: add_contact_indexes
-- All three of the service's indexes in one statement: InnoDB reads the table
-- once and sorts each index, without rewriting the table; reads and writes go on.
ALTER TABLE Contact
    ADD INDEX Contact_email (email),
    ADD INDEX Contact_phoneNumber (phoneNumber),
    ADD INDEX Contact_linkedId (linkedId),
    ALGORITHM = INPLACE,
    LOCK = NONE

-- name: add_contact_email_index
-- Builds the index by reading the table once, without rewriting it; reads and writes go on.
ALTER TABLE Contact ADD INDEX Contact_email (email), ALGORITHM = INPLACE, LOCK = NONE

-- name: add_contact_phone_index
-- As above.
ALTER TABLE Contact ADD INDEX Contact_phoneNumber (phoneNumber), ALGORITHM = INPLACE, LOCK = NONE

-- name: add_contact_linked_id_index
-- As above.
ALTER TABLE Contact ADD INDEX Contact_linkedId (linkedId), ALGORITHM = INPLACE, LOCK = NONE

-- name: select_service_state
-- Every ServiceState row (name, value).
SELECT name, value
FROM ServiceState
ORDER BY name

-- name: select_server_version
-- The server's name and version, for the first line of migrate's report.
SELECT VERSION() AS version

-- --------------------------------------------------------------------------
-- Schema 2 (the previous release) to 3: CustomerHistory gains merge
-- protection's kinds ('refused', 'split') and the `detail` column. Both are
-- metadata changes InnoDB makes instantly (values appended to an ENUM whose
-- storage size stays one byte; a nullable column added last): no rewrite,
-- only the brief metadata lock every ALTER takes.
-- --------------------------------------------------------------------------

-- name: select_history_columns
-- CustomerHistory's columns as the server describes them.
SELECT COLUMN_NAME AS name,
       COLUMN_TYPE AS type
FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA = DATABASE()
  AND TABLE_NAME = 'CustomerHistory'
ORDER BY ORDINAL_POSITION

-- name: extend_history_kinds
-- Appends 'refused' and 'split' to the kinds (the existing values keep their numbers).
ALTER TABLE CustomerHistory
    MODIFY kind ENUM('created', 'linked', 'merged', 'repaired', 'imported', 'refused', 'split') NOT NULL,
    ALGORITHM = INSTANT

-- name: add_history_detail
-- The JSON object of ids and kinds (schema.sql says what it holds), NULL for older events.
ALTER TABLE CustomerHistory
    ADD COLUMN detail TEXT CHARACTER SET ascii COLLATE ascii_bin NULL,
    ALGORITHM = INSTANT

-- --------------------------------------------------------------------------
-- The feed of changes (docs/changes.md): CustomerHistory and CustomerErasure
-- gain feedSeq (the position the feed's sequencer gives each, NULL until then)
-- and its index; CustomerErasure gains customerIds (the ids an erasure
-- removed). Online: the index is built while reads and writes go on.
-- --------------------------------------------------------------------------

-- name: add_history_feed_seq
-- The feed position and its index (NULL for the events already recorded: the
-- sequencer numbers them, oldest first, on its first runs).
ALTER TABLE CustomerHistory
    ADD COLUMN feedSeq BIGINT NULL,
    ADD KEY CustomerHistory_feedSeq (feedSeq, createdAt, id),
    ALGORITHM = INPLACE,
    LOCK = NONE

-- name: select_erasure_columns
-- CustomerErasure's columns as the server describes them.
SELECT COLUMN_NAME AS name,
       COLUMN_TYPE AS type
FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA = DATABASE()
  AND TABLE_NAME = 'CustomerErasure'
ORDER BY ORDINAL_POSITION

-- name: add_erasure_feed_columns
-- The erased ids (NULL for older records: they were not kept) and the feed position.
ALTER TABLE CustomerErasure
    ADD COLUMN customerIds MEDIUMTEXT CHARACTER SET ascii COLLATE ascii_bin NULL,
    ADD COLUMN feedSeq BIGINT NULL,
    ADD KEY CustomerErasure_feedSeq (feedSeq, erasedAt, id),
    ALGORITHM = INPLACE,
    LOCK = NONE
