-- nimbus embedded engine schema. Times are milliseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS queues (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT    NOT NULL UNIQUE,
    visibility_ms  INTEGER NOT NULL,
    retention_ms   INTEGER NOT NULL,
    max_bytes      INTEGER NOT NULL,
    content_dedup  INTEGER NOT NULL,
    dlq            TEXT,
    max_receives   INTEGER
);
-- AUTOINCREMENT: a message id is never reused, and FIFO order is id order.
CREATE TABLE IF NOT EXISTS messages (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_id       INTEGER NOT NULL,
    visible_at     INTEGER NOT NULL,
    receive_count  INTEGER NOT NULL DEFAULT 0,
    receipt        INTEGER NOT NULL DEFAULT 0,
    sent_at        INTEGER NOT NULL,
    group_id       TEXT,
    attrs          TEXT,
    body           BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue_id, visible_at);
CREATE TABLE IF NOT EXISTS dedup (
    queue_id    INTEGER NOT NULL,
    dedup_id    TEXT    NOT NULL,
    message_id  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (queue_id, dedup_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS topics (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    name  TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS subscriptions (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    topic_id  INTEGER NOT NULL,
    queue     TEXT    NOT NULL,
    filter    TEXT,
    UNIQUE (topic_id, queue)
);
CREATE TABLE IF NOT EXISTS ledger (
    partition  TEXT    NOT NULL,
    sort       TEXT    NOT NULL,
    value      BLOB    NOT NULL,
    counter    INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    PRIMARY KEY (partition, sort)
) WITHOUT ROWID;
