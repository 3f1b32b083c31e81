-- Where a project's replicas may live, as an admin set it: the controller reads (scans, drills,
-- restores) a replica URL only when it lies under one of its project's roots.
CREATE TABLE replica_roots (
    project    TEXT   NOT NULL REFERENCES projects (name),
    url        TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (project, url)
);
