-- easel schema v1 (MariaDB / MySQL). Times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS jobs (
    seq         BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id          VARCHAR(64)  NOT NULL UNIQUE,
    kind        VARCHAR(32)  NOT NULL,
    request     LONGTEXT     NOT NULL,
    status      VARCHAR(16)  NOT NULL,
    attempts    BIGINT       NOT NULL DEFAULT 0,
    last_error  TEXT         NULL,
    owner_id    VARCHAR(64)  NOT NULL,
    origin      VARCHAR(255) NULL,
    backend     VARCHAR(255) NULL,
    claimed_by  VARCHAR(255) NULL,
    created_at  BIGINT       NOT NULL,
    updated_at  BIGINT       NOT NULL,
    started_at  BIGINT       NULL,
    finished_at BIGINT       NULL,
    INDEX jobs_status_seq (status, seq)
) CHARACTER SET utf8mb4;

CREATE TABLE IF NOT EXISTS categories (
    id       BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name64   VARCHAR(255) NOT NULL,
    owner_id VARCHAR(64)  NOT NULL
) CHARACTER SET utf8mb4;

CREATE TABLE IF NOT EXISTS images (
    id          VARCHAR(64) NOT NULL PRIMARY KEY,
    owner_id    VARCHAR(64) NOT NULL,
    png         LONGBLOB    NULL,
    preview     LONGBLOB    NULL,
    info        LONGTEXT    NULL,
    width       BIGINT      NOT NULL,
    height      BIGINT      NOT NULL,
    category_id BIGINT      NULL,
    message_id  VARCHAR(64) NULL,
    created_at  BIGINT      NOT NULL,
    INDEX images_owner (owner_id),
    CONSTRAINT images_category_fk FOREIGN KEY (category_id) REFERENCES categories (id) ON DELETE SET NULL
) CHARACTER SET utf8mb4;

CREATE TABLE IF NOT EXISTS users (
    id         VARCHAR(64) NOT NULL PRIMARY KEY,
    role       BIGINT      NOT NULL DEFAULT 1,
    created_at BIGINT      NOT NULL,
    updated_at BIGINT      NOT NULL
) CHARACTER SET utf8mb4;

CREATE TABLE IF NOT EXISTS models (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    model_name    VARCHAR(255) NOT NULL,
    friendly_name VARCHAR(255) NULL,
    is_restricted BIGINT       NOT NULL DEFAULT 0
) CHARACTER SET utf8mb4;
