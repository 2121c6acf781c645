-- The marker of an adopted BitForged Navigator database (store::adopt): one row, written by the
-- copy's transaction as its last statement. Navigator's tables stay next to easel's as
-- navigator_*.
CREATE TABLE IF NOT EXISTS adopted_from_navigator (
    adopted_at BIGINT NOT NULL
) CHARACTER SET utf8mb4;
