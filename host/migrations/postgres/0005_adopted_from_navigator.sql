-- The marker of an adopted BitForged Navigator database. Only MariaDB/MySQL databases are
-- adopted (store::adopt); the table exists on every engine so the migrations stay numbered alike.
CREATE TABLE IF NOT EXISTS adopted_from_navigator (
    adopted_at BIGINT NOT NULL
);
