-- A MySQL/MariaDB session's set-up, run once by every new connection (identity/database.py,
-- connect_mysql) before it serves. Session variables only: nothing here writes data.

-- name: set_read_committed
-- Our own isolation level: the lock protocol relies on READ COMMITTED reads seeing every
-- committed row, whatever the server's default is.
SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED

-- name: set_session_clock_and_lock_wait
-- UTC timestamps; statements that wait on a lock give up after this many seconds (the
-- transaction is then retried).
SET time_zone = '+00:00', innodb_lock_wait_timeout = %(lock_wait_s)s

-- name: keep_in_lists
-- MariaDB rewrites an IN list of 1000 values or more as a join with a table of the values
-- (the import's lists hold thousands); kept as lists, they are index range lookups. MySQL
-- has no such rewrite, and no such variable (error 1193, ignored).
SET SESSION in_predicate_conversion_threshold = 0

-- name: select_binlog_settings
-- READ COMMITTED writes cannot be logged as statements (error 1665 at the first write).
SELECT @@log_bin AS log_bin, @@binlog_format AS binlog_format

-- name: set_row_binlog
-- Possible for a user with BINLOG ADMIN; without it no write can succeed.
SET SESSION binlog_format = 'ROW'

-- name: select_wsrep_on
-- A Galera node answers ON.
SHOW VARIABLES LIKE 'wsrep_on'

-- name: set_wsrep_sync_wait
-- Galera's causal reads: every read waits until this node has applied every write the
-- cluster committed before it (SPEC, "Concurrency").
SET SESSION wsrep_sync_wait = %(sync_wait)s
