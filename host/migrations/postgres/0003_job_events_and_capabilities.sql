-- Per-job event sequence (bumped by every state change, in the same statement), the model and
-- pixel count a claim filters on (what a backend can run), and the latest live preview.
ALTER TABLE jobs ADD COLUMN event_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN model TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN pixels BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN preview BYTEA;
UPDATE jobs SET
    event_seq = 1 + attempts,
    model = COALESCE(request::jsonb ->> 'model_name', ''),
    pixels = COALESCE((request::jsonb ->> 'width')::bigint * (request::jsonb ->> 'height')::bigint, 0);
