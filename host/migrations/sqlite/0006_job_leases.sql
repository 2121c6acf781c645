-- Claims are leases: the claiming host renews `lease_until` (Unix ms) of its running jobs, and
-- any host sharing the database requeues a running job whose lease has run out (its host died).
ALTER TABLE jobs ADD COLUMN lease_until BIGINT NULL;
