-- Worker faults (deadline expiries, lost workers) per job, counted apart from attempts so a
-- host restart is not held against a job.
ALTER TABLE jobs ADD COLUMN faults BIGINT NOT NULL DEFAULT 0;
