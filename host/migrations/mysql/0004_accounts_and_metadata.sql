-- A job's image category from the moment it is queued (Navigator lists unfinished jobs with
-- their category), the owner's gallery index, the LoRA metadata cache and the file hash cache.
ALTER TABLE jobs ADD COLUMN category_id BIGINT NULL;
UPDATE jobs SET category_id = CAST(JSON_EXTRACT(request, '$.category_id') AS SIGNED)
    WHERE JSON_EXTRACT(request, '$.category_id') IS NOT NULL;
CREATE INDEX jobs_owner_created ON jobs (owner_id, created_at);
CREATE TABLE IF NOT EXISTS model_metadata (
    id               BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    hash             VARCHAR(255) NOT NULL UNIQUE,
    model_type       BIGINT       NOT NULL DEFAULT 0,
    metadata         LONGTEXT     NULL,
    provider         BIGINT       NOT NULL,
    metadata_id      BIGINT       NULL,
    updated_at       BIGINT       NOT NULL,
    updates_disabled BIGINT       NOT NULL DEFAULT 0
) CHARACTER SET utf8mb4;
CREATE TABLE IF NOT EXISTS file_sha256_cache (
    file_name  VARCHAR(255) NOT NULL PRIMARY KEY,
    sha256     VARCHAR(64)  NOT NULL,
    created_at BIGINT       NOT NULL
) CHARACTER SET utf8mb4;
