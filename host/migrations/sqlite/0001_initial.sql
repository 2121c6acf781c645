-- easel schema v1 (SQLite). Times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS jobs (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL,
    request     TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    owner_id    TEXT    NOT NULL,
    origin      TEXT,
    backend     TEXT,
    claimed_by  TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_status_seq ON jobs (status, seq);

CREATE TABLE IF NOT EXISTS categories (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    name64   TEXT NOT NULL,
    owner_id TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS images (
    id          TEXT    PRIMARY KEY,
    owner_id    TEXT    NOT NULL,
    png         BLOB,
    preview     BLOB,
    info        TEXT,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    category_id INTEGER REFERENCES categories (id) ON DELETE SET NULL,
    message_id  TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS images_owner ON images (owner_id);

CREATE TABLE IF NOT EXISTS users (
    id         TEXT    PRIMARY KEY,
    role       INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS models (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    model_name    TEXT    NOT NULL,
    friendly_name TEXT,
    is_restricted INTEGER NOT NULL DEFAULT 0
);
