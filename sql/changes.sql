-- The feed of changes (GET /changes; identity/changes.py, docs/changes.md): the
-- sequencer that numbers committed history events and erasure records, and
-- the reads of the feed. Portable statements, in PyMySQL's %(name)s style.

-- name: select_feed_state
-- The newest feed position handed out (NULL before the first), and whether a
-- committed event or erasure record is still waiting for one: what a reader
-- polls, two index probes and a one-row read.
SELECT (
        SELECT lastSeq
        FROM FeedCounter
        WHERE id = 1
    ) AS head,
    EXISTS (
        SELECT 1
        FROM CustomerHistory
        WHERE feedSeq IS NULL
    ) AS historyPending,
    EXISTS (
        SELECT 1
        FROM CustomerErasure
        WHERE feedSeq IS NULL
    ) AS erasurePending

-- name: lock_feed_counter
-- The sequencer's first step: the counter's row, locked until the sequencer
-- commits (on SQLite BEGIN IMMEDIATE already holds the write lock).
SELECT lastSeq
FROM FeedCounter
WHERE id = 1
FOR UPDATE

-- name: select_unsequenced_history
-- The oldest committed events that have no feed position yet, by (createdAt,
-- id), through the feed's index (its NULL prefix, in that order).
SELECT id, createdAt
FROM CustomerHistory
WHERE feedSeq IS NULL
ORDER BY feedSeq, createdAt, id
LIMIT %(limit)s

-- name: select_unsequenced_erasures
-- The oldest committed erasure records that have no feed position yet.
SELECT id, erasedAt
FROM CustomerErasure
WHERE feedSeq IS NULL
ORDER BY feedSeq, erasedAt, id
LIMIT %(limit)s

-- name: sequence_history_event
-- Gives one event its feed position (only once: a row already numbered is left
-- as it is, and the sequencer starts over).
UPDATE CustomerHistory
SET feedSeq = %(seq)s
WHERE id = %(id)s
  AND feedSeq IS NULL

-- name: sequence_erasure
-- Gives one erasure record its feed position (only once).
UPDATE CustomerErasure
SET feedSeq = %(seq)s
WHERE id = %(id)s
  AND feedSeq IS NULL

-- name: advance_feed_counter
-- The last position the sequencer handed out; written in its transaction, so
-- two sequencers on two cluster nodes conflict and one starts over.
UPDATE FeedCounter
SET lastSeq = %(last_seq)s
WHERE id = 1

-- name: clear_expired_erasure_ids
-- The erased ids are kept only as long as the feed serves them (its
-- retention); the erasure record keeps its counts, time and request id.
UPDATE CustomerErasure
SET customerIds = NULL
WHERE erasedAt < %(cutoff)s
  AND customerIds IS NOT NULL
  AND feedSeq IS NOT NULL

-- name: select_feed_page
-- The changes after the cursor up to the head (every position up to the head
-- was committed before the head was), oldest first, at most `limit`: events
-- and erasure records, each table read through its feed index. One statement,
-- so one consistent read of both tables.
SELECT feedSeq, kind, createdAt, requestId, customerId, formerCustomerId, contactIds, detail
FROM (
    SELECT feedSeq, kind, createdAt, requestId, customerId, formerCustomerId, contactIds, detail
    FROM CustomerHistory
    WHERE feedSeq > %(after)s
      AND feedSeq <= %(head)s
    ORDER BY feedSeq
    LIMIT %(limit)s
) AS events
UNION ALL
SELECT feedSeq, kind, createdAt, requestId, customerId, formerCustomerId, contactIds, detail
FROM (
    SELECT feedSeq, 'erased' AS kind, erasedAt AS createdAt, requestId, NULL AS customerId,
        NULL AS formerCustomerId, customerIds AS contactIds, NULL AS detail
    FROM CustomerErasure
    WHERE feedSeq > %(after)s
      AND feedSeq <= %(head)s
    ORDER BY feedSeq
    LIMIT %(limit)s
) AS erasures
ORDER BY feedSeq
LIMIT %(limit)s
