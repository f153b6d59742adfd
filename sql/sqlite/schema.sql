-- FluxKart schema for the embedded SQLite file. Idempotent, like the MySQL one.
-- TEXT compares byte for byte (BINARY collation) by default. Timestamps are
-- stored as fixed-width 'YYYY-MM-DD HH:MM:SS.ffffff' UTC text and parsed back
-- into datetimes by the DATETIME converter the app registers.

-- What the service knows about its table (see sql/mysql/schema.sql). Created
-- first: the service writes its facts before it creates Contact.
CREATE TABLE IF NOT EXISTS ServiceState (
    name TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS Contact (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    phoneNumber TEXT,
    email TEXT,
    linkedId INTEGER,
    linkPrecedence TEXT NOT NULL CHECK (linkPrecedence IN ('primary', 'secondary')),
    createdAt DATETIME NOT NULL,
    updatedAt DATETIME NOT NULL,
    deletedAt DATETIME
);

CREATE INDEX IF NOT EXISTS Contact_email ON Contact (email);

CREATE INDEX IF NOT EXISTS Contact_phoneNumber ON Contact (phoneNumber);

CREATE INDEX IF NOT EXISTS Contact_linkedId ON Contact (linkedId);

CREATE TABLE IF NOT EXISTS ContactIdentifier (
    kind TEXT NOT NULL CHECK (kind IN ('email', 'phone')),
    value TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;

-- The append-only history (sql/mysql/schema.sql says why each column exists).
CREATE TABLE IF NOT EXISTS CustomerHistory (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('created', 'linked', 'merged', 'repaired', 'imported', 'refused', 'split')),
    createdAt DATETIME NOT NULL,
    requestId TEXT NOT NULL,
    customerId INTEGER NOT NULL,
    formerCustomerId INTEGER,
    contactIds TEXT NOT NULL,
    detail TEXT,
    feedSeq INTEGER,
    -- The feed's index (a table constraint, so an older table without the column
    -- is left alone until migrate rebuilds it, instead of failing a CREATE INDEX).
    UNIQUE (feedSeq, createdAt, id)
);

CREATE INDEX IF NOT EXISTS CustomerHistory_customerId ON CustomerHistory (customerId, createdAt, id);

CREATE INDEX IF NOT EXISTS CustomerHistory_formerCustomerId ON CustomerHistory (formerCustomerId);

CREATE TABLE IF NOT EXISTS CustomerErasure (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    erasedAt DATETIME NOT NULL,
    requestId TEXT NOT NULL,
    contacts INTEGER NOT NULL,
    identifiers INTEGER NOT NULL,
    historyEvents INTEGER NOT NULL,
    customerIds TEXT,
    feedSeq INTEGER,
    UNIQUE (feedSeq, erasedAt, id)
);

-- The feed's counter: one row (sql/mysql/schema.sql says why).
CREATE TABLE IF NOT EXISTS FeedCounter (
    id INTEGER PRIMARY KEY,
    lastSeq INTEGER NOT NULL
);

-- The blocked values and the customers' growth locks (sql/mysql/schema.sql says why).
CREATE TABLE IF NOT EXISTS BlockedValue (
    kind TEXT NOT NULL CHECK (kind IN ('email', 'phone')),
    form TEXT NOT NULL CHECK (form IN ('value', 'pattern')),
    text TEXT NOT NULL,
    createdAt DATETIME NOT NULL,
    PRIMARY KEY (kind, form, text)
);

CREATE TABLE IF NOT EXISTS CustomerLock (
    customerId INTEGER PRIMARY KEY,
    version INTEGER NOT NULL DEFAULT 0
);

-- The console's sessions and failed sign-ins (sql/mysql/schema.sql says why).
CREATE TABLE IF NOT EXISTS ConsoleSession (
    tokenHash TEXT PRIMARY KEY,
    createdAt DATETIME NOT NULL,
    lastSeenAt DATETIME NOT NULL
);

CREATE INDEX IF NOT EXISTS ConsoleSession_lastSeenAt ON ConsoleSession (lastSeenAt);

CREATE TABLE IF NOT EXISTS ConsoleSignInFailure (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    address TEXT NOT NULL,
    failedAt DATETIME NOT NULL
);

CREATE INDEX IF NOT EXISTS ConsoleSignInFailure_address ON ConsoleSignInFailure (address, failedAt);

CREATE INDEX IF NOT EXISTS ConsoleSignInFailure_failedAt ON ConsoleSignInFailure (failedAt);
