-- FluxKart schema for MySQL 8 / MariaDB 10.6+. Idempotent: every statement is
-- IF NOT EXISTS, so it is safe at every start-up and never destroys data.
-- Identifier columns are utf8mb4_bin: the service decides equality by
-- normalizing, so the database must compare byte for byte.

-- What the service knows about its table (name -> value): 'schema' (the
-- schema version; a Contact table without it was written by something else and
-- must go through `migrate` first), 'consistent' ('1' when every customer is
-- known to satisfy the rules, so identify may answer repeat orders without a
-- lock), 'phone_region'. Created first: the service writes its facts before
-- it creates Contact, so no worker ever sees a Contact table without them.
CREATE TABLE IF NOT EXISTS ServiceState (
    name VARCHAR(64) CHARACTER SET ascii NOT NULL,
    value VARCHAR(255) NOT NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS Contact (
    id INT NOT NULL AUTO_INCREMENT,
    phoneNumber VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    email VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    linkedId INT NULL,
    linkPrecedence ENUM('primary', 'secondary') NOT NULL,
    createdAt DATETIME(6) NOT NULL,
    updatedAt DATETIME(6) NOT NULL,
    deletedAt DATETIME(6) NULL,
    PRIMARY KEY (id),
    KEY Contact_email (email),
    KEY Contact_phoneNumber (phoneNumber),
    KEY Contact_linkedId (linkedId)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per identifier ever sent. It exists before any contact carries the
-- identifier, so two first orders with the same email have a row to lock, and
-- its version is written by every identify that depends on the identifier, so
-- such requests also conflict on multi-primary clusters (Galera), where row
-- locks are local to one node and only overlapping writes collide.
CREATE TABLE IF NOT EXISTS ContactIdentifier (
    kind ENUM('email', 'phone') NOT NULL,
    value VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    version BIGINT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, value)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The append-only history of what identify (and repair, import) did to each
-- customer: ids only, never an email or a phone number, so erasing the
-- Contact rows erases the personal data (docs/history-and-erasure.md).
-- customerId is the customer's primary at the time; formerCustomerId is the
-- primary whose rows a `merged` or `repaired` event moved into customerId, so
-- a customer's history is the events of its id and, transitively, of every
-- former customer merged into it. contactIds is a JSON array of row ids.
-- detail is a JSON object of ids and kinds, never a value: a merge's evidence
-- (the row the request matched by email, the row it matched by phone), what a
-- `refused` event left out and why, what a `split` separated (SPEC, "Merge
-- protection"). feedSeq is the event's position in the feed of changes (GET
-- /changes, docs/changes.md): NULL when written, given by the feed's sequencer
-- after the event's transaction has committed; the index finds the events not
-- yet sequenced (NULL first, oldest first) and reads the feed in order.
CREATE TABLE IF NOT EXISTS CustomerHistory (
    id BIGINT NOT NULL AUTO_INCREMENT,
    kind ENUM('created', 'linked', 'merged', 'repaired', 'imported', 'refused', 'split') NOT NULL,
    createdAt DATETIME(6) NOT NULL,
    requestId VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    customerId INT NOT NULL,
    formerCustomerId INT NULL,
    contactIds TEXT CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    detail TEXT CHARACTER SET ascii COLLATE ascii_bin NULL,
    feedSeq BIGINT NULL,
    PRIMARY KEY (id),
    KEY CustomerHistory_customerId (customerId, createdAt, id),
    KEY CustomerHistory_formerCustomerId (formerCustomerId),
    KEY CustomerHistory_feedSeq (feedSeq, createdAt, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- What remains of an erased customer: when, by which request, how much. No
-- identifier. customerIds (a JSON array: the primary, then every contact id
-- erased) tells the feed's consumers which ids to delete too (an erased
-- customer's history goes with it); ids are not identifiers, and the feed's
-- sequencer clears them once the feed's retention has passed. feedSeq: as
-- CustomerHistory's.
CREATE TABLE IF NOT EXISTS CustomerErasure (
    id BIGINT NOT NULL AUTO_INCREMENT,
    erasedAt DATETIME(6) NOT NULL,
    requestId VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    contacts INT NOT NULL,
    identifiers INT NOT NULL,
    historyEvents INT NOT NULL,
    customerIds MEDIUMTEXT CHARACTER SET ascii COLLATE ascii_bin NULL,
    feedSeq BIGINT NULL,
    PRIMARY KEY (id),
    KEY CustomerErasure_feedSeq (feedSeq, erasedAt, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The feed's counter (docs/changes.md): one row, the last feed position handed
-- out. The sequencer locks it, numbers the committed events that have none yet,
-- and moves it on, in one short transaction: sequencing is serialized (on a
-- multi-primary cluster two sequencers write this row, so one is aborted and
-- retried), so a position once read is never handed out again.
CREATE TABLE IF NOT EXISTS FeedCounter (
    id INT NOT NULL,
    lastSeq BIGINT NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The blocked values (SPEC, "Merge protection"): identifiers that identify
-- nobody. form 'value' is one canonical value; 'pattern' a regular expression
-- (Python's re, matched against the whole canonical value). Shipped defaults
-- are written once, when the table is made; operators add and remove rows with
-- `flask --app fluxkart block`. Every worker re-reads the list every few seconds.
CREATE TABLE IF NOT EXISTS BlockedValue (
    kind ENUM('email', 'phone') NOT NULL,
    form ENUM('value', 'pattern') NOT NULL,
    text VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    createdAt DATETIME(6) NOT NULL,
    PRIMARY KEY (kind, form, text)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per customer that grew: every identify that links a new row to a
-- customer or merges customers bumps the version of each customer it writes,
-- after locking their rows. On a multi-primary cluster, where row locks are
-- local to one node, two requests that grow the same customer on two nodes
-- then write the same row and one is retried: so the identifier limit holds
-- there too. Taken after the rows, so it adds no lock-order cycle.
CREATE TABLE IF NOT EXISTS CustomerLock (
    customerId INT NOT NULL,
    version BIGINT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (customerId)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The support console's signed-in sessions (identity/sessions.py): the cookie
-- carries a random token, this table its SHA-256, so signing out deletes the
-- row and the copied cookie opens nothing, while other staff stay signed in.
-- lastSeenAt ends a session left idle. Shared by every worker and host.
CREATE TABLE IF NOT EXISTS ConsoleSession (
    tokenHash CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    createdAt DATETIME(6) NOT NULL,
    lastSeenAt DATETIME(6) NOT NULL,
    PRIMARY KEY (tokenHash),
    KEY ConsoleSession_lastSeenAt (lastSeenAt)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Failed console sign-ins by client address, for the throttle (shared by every
-- worker and host, so it cannot be dodged by landing on another one).
CREATE TABLE IF NOT EXISTS ConsoleSignInFailure (
    id BIGINT NOT NULL AUTO_INCREMENT,
    address VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    failedAt DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    KEY ConsoleSignInFailure_address (address, failedAt),
    KEY ConsoleSignInFailure_failedAt (failedAt)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
