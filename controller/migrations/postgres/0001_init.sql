-- The controller's state. Times are milliseconds since the Unix epoch; generations and
-- transaction ids are u64 values kept below 2^63 so they compare as BIGINT. Tables are created
-- unqualified: they land in the connection's search_path (a per-deployment schema).

CREATE TABLE projects (
    name       TEXT   NOT NULL PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE tokens (
    id         TEXT   NOT NULL PRIMARY KEY,
    kind       TEXT   NOT NULL,
    project    TEXT   REFERENCES projects (name),
    -- SHA-256 of the secret: the lookup key of every authenticated call.
    hash       TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX tokens_project ON tokens (project);

-- A database and its lease in one row, so every lease transition is one statement on one row.
-- Renewals rewrite the row several times a second: free space on each page lets PostgreSQL
-- keep the new versions on the same page (HOT updates) instead of growing the table.
CREATE TABLE databases (
    project           TEXT   NOT NULL REFERENCES projects (name),
    name              TEXT   NOT NULL,
    policy            TEXT   NOT NULL,
    last_generation   BIGINT NOT NULL DEFAULT 0,
    holder            TEXT,
    holder_generation BIGINT NOT NULL DEFAULT 0,
    expires_at        BIGINT NOT NULL DEFAULT 0,
    handoff_to        TEXT,
    head_generation   BIGINT,
    head_txid         BIGINT,
    created_at        BIGINT NOT NULL,
    PRIMARY KEY (project, name)
) WITH (fillfactor = 50);

CREATE TABLE instances (
    id                      TEXT   NOT NULL PRIMARY KEY,
    project                 TEXT   NOT NULL REFERENCES projects (name),
    host                    TEXT   NOT NULL,
    platform                TEXT   NOT NULL,
    mode                    TEXT   NOT NULL,
    version                 TEXT   NOT NULL,
    started_at              BIGINT NOT NULL,
    last_seen               BIGINT NOT NULL,
    database                TEXT,
    role                    TEXT   NOT NULL DEFAULT '',
    -- The latest report: all NULL until the first one; report_generation marks its presence.
    -- u64 counters and the checksum are stored as their two's-complement bits.
    report_generation       BIGINT,
    report_local_txid       BIGINT,
    report_durable_txid     BIGINT,
    report_lag_seconds      DOUBLE PRECISION,
    report_lag_bytes        BIGINT,
    report_last_upload_at   BIGINT,
    report_uploads          BIGINT,
    report_upload_errors    BIGINT,
    report_upload_blocked   BOOLEAN,
    report_state            TEXT,
    report_durable_checksum BIGINT
);
CREATE INDEX instances_project ON instances (project, last_seen);
CREATE INDEX instances_last_seen ON instances (last_seen);

CREATE TABLE generations (
    project           TEXT    NOT NULL,
    database          TEXT    NOT NULL,
    generation        BIGINT  NOT NULL,
    instance          TEXT    NOT NULL,
    host              TEXT    NOT NULL,
    parent_generation BIGINT,
    parent_txid       BIGINT,
    created_at        BIGINT  NOT NULL,
    sealed_txid       BIGINT,
    sealed_at         BIGINT,
    leased            BOOLEAN NOT NULL,
    PRIMARY KEY (project, database, generation),
    FOREIGN KEY (project, database) REFERENCES databases (project, name)
);

-- An audit log: no foreign keys, so recording an event never fails on what it describes.
CREATE TABLE events (
    id             BIGSERIAL PRIMARY KEY,
    at             BIGINT NOT NULL,
    project        TEXT   NOT NULL,
    database       TEXT,
    kind           TEXT   NOT NULL,
    instance       TEXT,
    other_instance TEXT,
    message        TEXT   NOT NULL
);
CREATE INDEX events_project ON events (project, id);
CREATE INDEX events_database ON events (project, database, id);
