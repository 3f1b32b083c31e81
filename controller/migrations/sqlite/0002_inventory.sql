-- Inventory notes per database, newest only: the replica URL agents report ("replica"), the
-- last reconcile scan ("scan"), the last drill ("drill"). Bodies are JSON.
CREATE TABLE notes (
    project  TEXT   NOT NULL,
    database TEXT   NOT NULL,
    kind     TEXT   NOT NULL,
    at       BIGINT NOT NULL,
    body     TEXT   NOT NULL,
    PRIMARY KEY (project, database, kind)
);
