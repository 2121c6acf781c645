-- Job events relayed between hosts sharing this database: each host appends what happened to
-- its jobs and polls what the others appended (rows older than a minute are pruned).
CREATE TABLE job_events (
    id          BIGINT AUTO_INCREMENT PRIMARY KEY,
    host        VARCHAR(64) NOT NULL,
    payload     MEDIUMTEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    INDEX job_events_created (created_at)
);
