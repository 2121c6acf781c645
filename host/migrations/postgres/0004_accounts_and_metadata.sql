-- A job's image category from the moment it is queued (Navigator lists unfinished jobs with
-- their category), the owner's gallery index, the LoRA metadata cache and the file hash cache.
ALTER TABLE jobs ADD COLUMN category_id BIGINT;
UPDATE jobs SET category_id = (request::jsonb ->> 'category_id')::bigint
    WHERE request::jsonb ? 'category_id';
CREATE INDEX jobs_owner_created ON jobs (owner_id, created_at);
CREATE TABLE IF NOT EXISTS model_metadata (
    id               BIGSERIAL PRIMARY KEY,
    hash             TEXT      NOT NULL UNIQUE,
    model_type       BIGINT    NOT NULL DEFAULT 0,
    metadata         TEXT,
    provider         BIGINT    NOT NULL,
    metadata_id      BIGINT,
    updated_at       BIGINT    NOT NULL,
    updates_disabled BIGINT    NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS file_sha256_cache (
    file_name  TEXT   NOT NULL PRIMARY KEY,
    sha256     TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
