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

-- name: begin_write
-- Starts a write transaction. Takes SQLite's single write lock now, not at the first write, so two
-- writers never both read and then deadlock upgrading their locks.
BEGIN IMMEDIATE
