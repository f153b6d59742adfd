-- Statements of `flask --app fluxkart migrate` that both dialects spell alike.
-- A table written by another implementation may hold NULL where the service's
-- columns are NOT NULL; these read and fill those values by the rules in
-- docs/switching.md ("What migrate changes"). The dialect's own steps are in
-- sql/<dialect>/migrate.sql.

-- name: count_migrate_fills
-- One scan of Contact: its rows, and how many rows each fill below changes.
SELECT COUNT(*) AS contact_rows,
       COALESCE(SUM(CASE WHEN linkPrecedence IS NULL OR linkPrecedence = '' THEN 1 ELSE 0 END), 0)
           AS missing_link_precedence,
       COALESCE(SUM(CASE WHEN createdAt IS NULL THEN 1 ELSE 0 END), 0) AS missing_created_at,
       COALESCE(SUM(CASE WHEN updatedAt IS NULL THEN 1 ELSE 0 END), 0) AS missing_updated_at
FROM Contact

-- name: select_earliest_created_at
-- The oldest creation time in the table: what a row with no timestamp at all gets.
SELECT MIN(createdAt) AS earliest
FROM Contact
WHERE createdAt IS NOT NULL

-- name: fill_missing_values
-- Writes, in one scan: a row without a precedence is a secondary when it
-- links to another row, else a primary (what the replaced implementation
-- meant by it); a row without a creation time existed by its last update,
-- else by its deletion, else it counts as old as the oldest row (`earliest`);
-- a row without an update time was never updated: its (filled) creation
-- time. (MySQL assigns left to right and SQLite all at once; updatedAt comes
-- out the same whether it reads the old createdAt or the filled one.)
UPDATE Contact
SET linkPrecedence = CASE
        WHEN linkPrecedence IS NOT NULL AND linkPrecedence <> '' THEN linkPrecedence
        WHEN linkedId IS NULL THEN 'primary'
        ELSE 'secondary'
    END,
    createdAt = COALESCE(createdAt, updatedAt, deletedAt, %(earliest)s),
    updatedAt = COALESCE(updatedAt, createdAt, deletedAt, %(earliest)s)
WHERE linkPrecedence IS NULL
   OR linkPrecedence = ''
   OR createdAt IS NULL
   OR updatedAt IS NULL
