-- What an erasure leaves behind in an SQLite file, and how it is wiped
-- (identity/scrub.py). SQLite only: MariaDB's leftovers are the operator's
-- (docs/history-and-erasure.md).

-- name: vacuum
-- Rewrites the database from its live rows alone. Deleting a row zeroes its cell
-- (secure_delete), but SQLite leaves stale copies of cells it moved between
-- pages in the unused gap of the page they left: measured, an erased phone
-- survived there in a Contact leaf and in Contact_phoneNumber leaves. Only a
-- rebuild of every page removes them (REINDEX alone left one in 2,000).
VACUUM

-- name: checkpoint_truncate
-- Copies every page of the WAL into the database file and truncates the WAL
-- to zero bytes: the WAL held a copy of every page the customer was ever
-- written to. busy = 1 when a reader kept it from finishing.
PRAGMA wal_checkpoint(TRUNCATE)
