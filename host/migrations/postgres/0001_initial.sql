-- easel schema v1 (PostgreSQL). Times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS jobs (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT   NOT NULL UNIQUE,
    kind        TEXT   NOT NULL,
    request     TEXT   NOT NULL,
    status      TEXT   NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT,
    owner_id    TEXT   NOT NULL,
    origin      TEXT,
    backend     TEXT,
    claimed_by  TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    started_at  BIGINT,
    finished_at BIGINT
);
CREATE INDEX IF NOT EXISTS jobs_status_seq ON jobs (status, seq);

CREATE TABLE IF NOT EXISTS categories (
    id       BIGSERIAL PRIMARY KEY,
    name64   TEXT NOT NULL,
    owner_id TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS images (
    id          TEXT   PRIMARY KEY,
    owner_id    TEXT   NOT NULL,
    png         BYTEA,
    preview     BYTEA,
    info        TEXT,
    width       BIGINT NOT NULL,
    height      BIGINT NOT NULL,
    category_id BIGINT REFERENCES categories (id) ON DELETE SET NULL,
    message_id  TEXT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_owner ON images (owner_id);

CREATE TABLE IF NOT EXISTS users (
    id         TEXT   PRIMARY KEY,
    role       BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS models (
    id            BIGSERIAL PRIMARY KEY,
    model_name    TEXT    NOT NULL,
    friendly_name TEXT,
    is_restricted BIGINT  NOT NULL DEFAULT 0
);
