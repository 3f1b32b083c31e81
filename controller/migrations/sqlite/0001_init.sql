-- The controller's state. Times are milliseconds since the Unix epoch; generations and
-- transaction ids are u64 values kept below 2^63 so they compare as INTEGER.

CREATE TABLE projects (
    name       TEXT    NOT NULL PRIMARY KEY,
    created_at INTEGER NOT NULL
);

CREATE TABLE tokens (
    id         TEXT    NOT NULL PRIMARY KEY,
    kind       TEXT    NOT NULL,
    project    TEXT    REFERENCES projects (name),
    -- SHA-256 of the secret: the lookup key of every authenticated call.
    hash       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX tokens_project ON tokens (project);

-- A database and its lease in one row, so every lease transition is one statement on one row.
CREATE TABLE databases (
    project           TEXT    NOT NULL REFERENCES projects (name),
    name              TEXT    NOT NULL,
    policy            TEXT    NOT NULL,
    last_generation   INTEGER NOT NULL DEFAULT 0,
    holder            TEXT,
    holder_generation INTEGER NOT NULL DEFAULT 0,
    expires_at        INTEGER NOT NULL DEFAULT 0,
    handoff_to        TEXT,
    head_generation   INTEGER,
    head_txid         INTEGER,
    created_at        INTEGER NOT NULL,
    PRIMARY KEY (project, name)
) WITHOUT ROWID;

CREATE TABLE instances (
    id                      TEXT    NOT NULL PRIMARY KEY,
    project                 TEXT    NOT NULL REFERENCES projects (name),
    host                    TEXT    NOT NULL,
    platform                TEXT    NOT NULL,
    mode                    TEXT    NOT NULL,
    version                 TEXT    NOT NULL,
    started_at              INTEGER NOT NULL,
    last_seen               INTEGER NOT NULL,
    database                TEXT,
    role                    TEXT    NOT NULL DEFAULT '',
    -- The latest report: all NULL until the first one; report_generation marks its presence.
    -- u64 counters and the checksum are stored as their two's-complement bits.
    report_generation       INTEGER,
    report_local_txid       INTEGER,
    report_durable_txid     INTEGER,
    report_lag_seconds      REAL,
    report_lag_bytes        INTEGER,
    report_last_upload_at   INTEGER,
    report_uploads          INTEGER,
    report_upload_errors    INTEGER,
    report_upload_blocked   BOOLEAN,
    report_state            TEXT,
    report_durable_checksum INTEGER
);
CREATE INDEX instances_project ON instances (project, last_seen);
CREATE INDEX instances_last_seen ON instances (last_seen);

CREATE TABLE generations (
    project           TEXT    NOT NULL,
    database          TEXT    NOT NULL,
    generation        INTEGER NOT NULL,
    instance          TEXT    NOT NULL,
    host              TEXT    NOT NULL,
    parent_generation INTEGER,
    parent_txid       INTEGER,
    created_at        INTEGER NOT NULL,
    sealed_txid       INTEGER,
    sealed_at         INTEGER,
    leased            BOOLEAN NOT NULL,
    PRIMARY KEY (project, database, generation),
    FOREIGN KEY (project, database) REFERENCES databases (project, name)
) WITHOUT ROWID;

-- An audit log: no foreign keys, so recording an event never fails on what it describes.
-- AUTOINCREMENT: ids are never reused, so readers can page with after_id.
CREATE TABLE events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at             INTEGER NOT NULL,
    project        TEXT    NOT NULL,
    database       TEXT,
    kind           TEXT    NOT NULL,
    instance       TEXT,
    other_instance TEXT,
    message        TEXT    NOT NULL
);
CREATE INDEX events_project ON events (project, id);
CREATE INDEX events_database ON events (project, database, id);
