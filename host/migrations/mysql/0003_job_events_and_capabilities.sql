-- Per-job event sequence (bumped by every state change, in the same statement), the model and
-- pixel count a claim filters on (what a backend can run), and the latest live preview.
ALTER TABLE jobs
    ADD COLUMN event_seq BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN model VARCHAR(255) NOT NULL DEFAULT '',
    ADD COLUMN pixels BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN preview LONGBLOB NULL;
UPDATE jobs SET
    event_seq = 1 + attempts,
    model = COALESCE(JSON_UNQUOTE(JSON_EXTRACT(request, '$.model_name')), ''),
    pixels = COALESCE(CAST(JSON_EXTRACT(request, '$.width') AS SIGNED) * CAST(JSON_EXTRACT(request, '$.height') AS SIGNED), 0);
