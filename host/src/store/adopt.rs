//! Adopting a BitForged Navigator database (MariaDB/MySQL, Navigator's migrations v1–v8), so an
//! operator can point `database.url` at the database Navigator used and keep every row.
//!
//! Owns: the schema lock every MariaDB/MySQL start holds around its migrations, recognising
//! such a database, moving Navigator's tables out of the way and copying their rows into
//! easel's tables. Does not own easel's schema (the migrations do) or any reading of the rows
//! afterwards (the other table modules do).
//!
//! Navigator and easel both have `images`, `users`, `models`, `model_metadata` and
//! `file_sha256_cache`, with other columns, so an adoption goes in three steps, each safe to
//! interrupt:
//!
//! 1. [`begin`], before easel's migrations: a database that has Navigator's `migrations`
//!    table (column `migration_id`, at version 8) and no `_sqlx_migrations` gets Navigator's
//!    seven tables renamed to `navigator_<name>` in ONE `RENAME TABLE` (atomic). They stay as
//!    the backup and are never dropped or changed.
//! 2. easel's migrations create its own tables (and `adopted_from_navigator`, the marker).
//! 3. [`Schema::finish`]: one transaction of `INSERT … SELECT`s from `navigator_*` into easel's
//!    (empty) tables, whose last statement writes the marker row.
//!
//! A crash before the commit leaves the renamed tables, easel's tables empty and no marker:
//! the next start finds `navigator_migrations` without a marker and runs steps 2 and 3 again.
//! With the marker written, the adoption is done and every later start skips it after one
//! look at the table list. Every start takes one named lock (`GET_LOCK`) for steps 1 to 3
//! and reads the state under it, so hosts starting at once take turns: one adopts, the others
//! find the marker. The same lock keeps their migrations apart (sqlx's own lock does not work
//! on MariaDB, see [`LOCK`]).
//!
//! What each Navigator row becomes (Navigator's conventions: compat.md §2.7):
//!
//! * `image_categories` → `categories`, same ids (and Navigator's next id, so a new category
//!   never reuses the id of one deleted under Navigator).
//! * `users` → `users`: the `BIGINT` id as text, `DATETIME`s as Unix ms.
//! * `models` → `models`, same ids.
//! * `model_metadata` → `model_metadata`: same ids, `metadata_cache` base64-decoded to its JSON
//!   text, `metadata_provider` → `provider`, `metadata_updated_at` → `updated_at` (ms). A row
//!   without a hash (nothing can look it up) stays only in the backup.
//! * `file_sha256_cache` → `file_sha256_cache` (`sha256_sum` → `sha256`).
//! * every `images` row → a `jobs` row (Navigator made the row when the job was queued):
//!   `finished` when it has a picture, else `failed` ("unfinished when the database was
//!   adopted from Navigator"; Navigator's queue lived in memory, so nothing would ever have
//!   finished it). Its request is a [`Txt2Img`](crate::jobs::Txt2Img) rebuilt from png-info's
//!   parameters where Navigator cached them, Navigator's defaults elsewhere. Its live preview
//!   stays readable at `/api/previews/:id`, as under Navigator.
//! * every picture → an `images` row: the base64 of `image_data`, `preview_data` and
//!   `info_data64` decoded to bytes, bytes and JSON text (`{}` when png-info was never cached,
//!   so the info route asks Forge as Navigator did), width and height from the PNG header.

use std::collections::HashSet;

use sqlx::mysql::{MySqlConnection, MySqlPool};
use sqlx::{AssertSqlSafe, Connection};

use super::{Result, StoreError, now_ms};

/// The Navigator schema version this module knows: migrations v1..v8.
const NAVIGATOR_VERSION: i64 = 8;

/// Navigator's tables and the names they are kept under.
const RENAMES: [(&str, &str); 7] = [
    ("images", "navigator_images"),
    ("users", "navigator_users"),
    ("models", "navigator_models"),
    ("model_metadata", "navigator_model_metadata"),
    ("file_sha256_cache", "navigator_file_sha256_cache"),
    ("image_categories", "navigator_image_categories"),
    ("migrations", "navigator_migrations"),
];

/// The tables the copy fills: they must all be empty before it.
const EASEL_TABLES: [&str; 8] = [
    "jobs",
    "images",
    "categories",
    "users",
    "models",
    "model_metadata",
    "file_sha256_cache",
    "adopted_from_navigator",
];

/// Held by a starting host from before the rename to after the copy (or just around the
/// migrations, when there is nothing to adopt), so hosts starting together never rename,
/// migrate or copy at the same time. sqlx's own migration lock does not hold on MariaDB: it
/// asks `GET_LOCK(…, -1)`, which MariaDB answers with NULL at once instead of waiting.
const LOCK: &str = "easel_schema";

/// How long a host waits for another one's start (adopting a large database takes minutes).
const LOCK_WAIT_SECONDS: i64 = 900;

/// What the table list says about the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    /// Not Navigator's (an empty database, or easel's own): nothing to do.
    Other,
    /// Navigator's tables, untouched.
    Navigator,
    /// Navigator's tables renamed; the copy has not committed yet.
    Renamed,
    /// Adopted earlier.
    Adopted,
}

async fn tables(conn: &mut MySqlConnection) -> Result<HashSet<String>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
         WHERE table_schema = DATABASE()",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(names.into_iter().collect())
}

async fn found(conn: &mut MySqlConnection) -> Result<Found> {
    let tables = tables(conn).await?;
    if tables.contains("navigator_migrations") {
        if tables.contains("adopted_from_navigator") {
            let marks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM adopted_from_navigator")
                .fetch_one(&mut *conn)
                .await?;
            if marks > 0 {
                return Ok(Found::Adopted);
            }
        }
        return Ok(Found::Renamed);
    }
    if !tables.contains("migrations") {
        return Ok(Found::Other);
    }
    let navigator: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() \
         AND table_name = 'migrations' AND column_name = 'migration_id'",
    )
    .fetch_one(&mut *conn)
    .await?;
    if navigator == 0 {
        return Ok(Found::Other);
    }
    if tables.contains("_sqlx_migrations") {
        tracing::warn!(
            "this database holds BitForged Navigator's `migrations` table next to easel's own \
             tables; it is not adopted (adoption starts only from a database easel never ran on)"
        );
        return Ok(Found::Other);
    }
    Ok(Found::Navigator)
}

/// A MariaDB/MySQL start under way: the schema lock is held on this connection (out of the
/// pool, so neither the lock nor the copy's session settings serve anyone else) until
/// [`Schema::finish`].
pub(super) struct Schema {
    conn: MySqlConnection,
    /// Navigator's tables are renamed and their rows still to copy.
    adopt: bool,
}

/// Step 1 (see the module doc), before easel's migrations: takes the schema lock, then
/// renames Navigator's tables if this is Navigator's database. The migrations run while the
/// lock is held; then [`Schema::finish`].
pub(super) async fn begin(pool: &MySqlPool) -> Result<Schema> {
    let mut conn = pool.acquire().await?.detach();
    let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
        .bind(LOCK)
        .bind(LOCK_WAIT_SECONDS)
        .fetch_one(&mut conn)
        .await?;
    if locked != Some(1) {
        return Err(StoreError::Adopt(format!(
            "another easel host has been migrating or adopting this database for \
             {LOCK_WAIT_SECONDS} s (lock {LOCK} is held); start again once it is done"
        )));
    }
    // Read under the lock: another host may have renamed, migrated or copied meanwhile.
    let adopt = match found(&mut conn).await {
        Ok(Found::Other | Found::Adopted) => false,
        Ok(Found::Renamed) => {
            tracing::info!(
                "resuming the adoption of BitForged Navigator's database (its tables are \
                 already kept as navigator_*; easel's tables are filled now)"
            );
            true
        }
        Ok(Found::Navigator) => match rename(&mut conn).await {
            Ok(()) => true,
            Err(err) => return Err(close_after(conn, err).await),
        },
        Err(err) => return Err(close_after(conn, err).await),
    };
    Ok(Schema { conn, adopt })
}

/// Closes the lock's session (releasing it) after `err`, which is returned.
async fn close_after(conn: MySqlConnection, err: StoreError) -> StoreError {
    if let Err(close) = conn.close().await {
        tracing::debug!(error = %close, "closing the schema lock's connection failed");
    }
    err
}

/// Checks that the database is Navigator's at v8 and renames its tables in one statement.
async fn rename(conn: &mut MySqlConnection) -> Result<()> {
    let version: Option<i64> = sqlx::query_scalar("SELECT MAX(migration_id) FROM migrations")
        .fetch_one(&mut *conn)
        .await?;
    let version = version.unwrap_or_default();
    if version != NAVIGATOR_VERSION {
        return Err(StoreError::Adopt(format!(
            "BitForged Navigator's database is at migration v{version}; easel adopts one at \
             v{NAVIGATOR_VERSION} (run Navigator's current release on it once, then start easel)"
        )));
    }
    let tables = tables(conn).await?;
    let missing: Vec<&str> = RENAMES
        .iter()
        .map(|(from, _)| *from)
        .filter(|from| !tables.contains(*from))
        .collect();
    if !missing.is_empty() {
        return Err(StoreError::Adopt(format!(
            "the database has BitForged Navigator's migrations table but not its tables {}",
            missing.join(", ")
        )));
    }
    let taken: Vec<&str> = RENAMES
        .iter()
        .map(|(_, to)| *to)
        .filter(|to| tables.contains(*to))
        .collect();
    if !taken.is_empty() {
        return Err(StoreError::Adopt(format!(
            "cannot keep BitForged Navigator's tables under their backup names: {} already \
             exist",
            taken.join(", ")
        )));
    }
    let pairs: Vec<String> = RENAMES
        .iter()
        .map(|(from, to)| format!("`{from}` TO `{to}`"))
        .collect();
    let sql = format!("RENAME TABLE {}", pairs.join(", "));
    sqlx::query(AssertSqlSafe(sql)).execute(&mut *conn).await?;
    tracing::info!(
        "adopting BitForged Navigator's database: its tables are kept as navigator_* (never \
         changed or dropped), their rows are copied into easel's tables"
    );
    Ok(())
}

/// Rows copied, per easel table.
#[derive(Debug)]
struct Copied {
    categories: u64,
    users: u64,
    models: u64,
    model_metadata: u64,
    file_hashes: u64,
    images: u64,
    jobs: u64,
    failed_jobs: i64,
}

impl Schema {
    /// Step 3 (see the module doc), after easel's migrations: copies every Navigator row in one
    /// transaction that ends with the marker (when there is something to adopt), then
    /// releases the lock.
    pub(super) async fn finish(mut self) -> Result<()> {
        if !self.adopt {
            self.conn.close().await?;
            return Ok(());
        }
        let copied = match copy(&mut self.conn).await {
            Ok(copied) => copied,
            Err(err) => return Err(close_after(self.conn, err).await),
        };
        self.conn.close().await?;
        tracing::info!(
            categories = copied.categories,
            users = copied.users,
            models = copied.models,
            model_metadata = copied.model_metadata,
            file_sha256_cache = copied.file_hashes,
            jobs = copied.jobs,
            unfinished_jobs = copied.failed_jobs,
            images = copied.images,
            "adopted BitForged Navigator's database (its tables stay as navigator_*)"
        );
        Ok(())
    }
}

/// Unix ms of a Navigator `DATETIME`/`TIMESTAMP` column (read in the session's time zone, set
/// to the server's own: Navigator let the server fill them).
fn ms(column: &str) -> String {
    format!("CAST(UNIX_TIMESTAMP({column}) * 1000 AS SIGNED)")
}

/// `bytes` as text when they are valid UTF-8, else `NULL` (no error even in strict mode
/// because the session is not strict during the copy).
fn utf8(bytes: &str) -> String {
    format!(
        "IF(CAST(CONVERT({bytes} USING utf8mb4) AS BINARY) = {bytes}, \
         CONVERT({bytes} USING utf8mb4), NULL)"
    )
}

/// One of png-info's `parameters` (a scalar, as text), from the adopted picture `i`.
fn param(key: &str) -> String {
    format!("JSON_VALUE(i.info, '$.parameters.\"{key}\"')")
}

/// A parameter that is a whole number (JSON number or numeric string), else `fallback`.
fn whole(key: &str, digits: &str, fallback: &str) -> String {
    let value = param(key);
    let ty = if digits.starts_with('-') {
        "SIGNED"
    } else {
        "UNSIGNED"
    };
    format!("IF({value} REGEXP '^{digits}$', CAST({value} AS {ty}), {fallback})")
}

/// A parameter that is a decimal number, else `fallback`.
fn decimal(key: &str, fallback: &str) -> String {
    let value = param(key);
    format!(
        "IF({value} REGEXP '^-?[0-9]{{1,15}}([.][0-9]{{1,15}})?$', CAST({value} AS DOUBLE), \
         {fallback})"
    )
}

/// The `jobs` rows: one per Navigator image, its request rebuilt as a `Txt2Img` (Navigator's
/// defaults where png-info says nothing; nulls dropped by the merge patch, so absent optional
/// fields are absent as easel writes them).
fn jobs_sql() -> String {
    const U32: &str = "[0-9]{1,9}";
    const I64: &str = "-?[0-9]{1,18}";
    let text = |key: &str, fallback: &str| format!("COALESCE({}, {fallback})", param(key));
    format!(
        "INSERT INTO jobs (id, kind, request, status, attempts, faults, last_error, owner_id, \
             created_at, updated_at, finished_at, event_seq, model, pixels, preview, category_id) \
         SELECT r.id, 'txt2img', \
             JSON_MERGE_PATCH('{{}}', JSON_OBJECT( \
                 'model_name', r.model_name, 'prompt', r.prompt, \
                 'negative_prompt', r.negative_prompt, 'width', r.width, 'height', r.height, \
                 'steps', r.steps, 'hrf_steps', r.hrf_steps, 'seed', r.seed, \
                 'cfg_scale', r.cfg_scale, 'distilled_cfg', r.distilled_cfg, \
                 'sampler_name', r.sampler_name, 'scheduler_name', r.scheduler_name, \
                 'denoising_strength', r.denoising_strength, \
                 'force_hr_fix', r.upscaler_name IS NOT NULL, \
                 'subseed', r.subseed, 'subseed_strength', r.subseed_strength, \
                 'upscaler_name', r.upscaler_name, 'image_enhancements', false, \
                 'category_id', r.category_id)), \
             IF(r.finished, 'finished', 'failed'), 0, 0, \
             CASE WHEN r.finished THEN NULL \
                 WHEN r.had_picture THEN '{UNDECODABLE}' \
                 ELSE '{UNFINISHED}' END, \
             r.owner_id, r.created_at, IF(r.finished, r.created_at, ?), \
             IF(r.finished, r.created_at, ?), 1, r.model_name, \
             IF(r.png_width > 0, r.png_width * r.png_height, r.width * r.height), \
             FROM_BASE64(r.preview_data), r.category_id \
         FROM ( \
             SELECT n.id, n.owner_id, n.preview_data, n.image_data IS NOT NULL AS had_picture, \
                 i.id IS NOT NULL AS finished, COALESCE(i.width, 0) AS png_width, \
                 COALESCE(i.height, 0) AS png_height, \
                 (SELECT c.id FROM categories c WHERE c.id = n.category_id) AS category_id, \
                 COALESCE({created}, 0) AS created_at, \
                 {model} AS model_name, {prompt} AS prompt, {negative} AS negative_prompt, \
                 {width} AS width, {height} AS height, {steps} AS steps, \
                 {hrf_steps} AS hrf_steps, {seed} AS seed, {cfg} AS cfg_scale, \
                 {distilled} AS distilled_cfg, {sampler} AS sampler_name, \
                 {scheduler} AS scheduler_name, {denoising} AS denoising_strength, \
                 {subseed} AS subseed, {subseed_strength} AS subseed_strength, \
                 {upscaler} AS upscaler_name \
             FROM navigator_images n LEFT JOIN images i ON i.id = n.id \
         ) r",
        created = ms("n.created_at"),
        model = text("Model", "''"),
        prompt = text("Prompt", "''"),
        negative = param("Negative prompt"),
        width = whole("Size-1", U32, "COALESCE(NULLIF(i.width, 0), 512)"),
        height = whole("Size-2", U32, "COALESCE(NULLIF(i.height, 0), 512)"),
        steps = whole("Steps", U32, "50"),
        hrf_steps = whole("Hires steps", U32, "NULL"),
        seed = whole("Seed", I64, "-1"),
        cfg = decimal("CFG scale", "7"),
        distilled = decimal("distilled_cfg", &decimal("Distilled CFG Scale", "3.5")),
        sampler = text("Sampler", "'DPM++ 2M'"),
        scheduler = text("Schedule type", "'automatic'"),
        denoising = decimal("Denoising strength", "0"),
        subseed = whole("Variation seed", I64, "NULL"),
        subseed_strength = decimal("Variation seed strength", "NULL"),
        upscaler = param("Hires upscaler"),
    )
}

/// `last_error` of a job Navigator never finished.
pub(super) const UNFINISHED: &str = "unfinished when the database was adopted from Navigator";

/// `last_error` of a job whose stored picture is not base64.
const UNDECODABLE: &str = "the picture Navigator stored is not valid base64 (it is kept in \
     navigator_images)";

async fn copy(conn: &mut MySqlConnection) -> Result<Copied> {
    // Navigator's DATETIMEs were filled by the server in its own time zone; strict mode would
    // turn a stray invalid byte into an error that stops the adoption (every value is checked
    // below instead, and no target column is narrower than its source).
    sqlx::query(
        "SET SESSION time_zone = @@GLOBAL.time_zone, sql_mode = \
         REPLACE(REPLACE(@@SESSION.sql_mode, 'STRICT_TRANS_TABLES', ''), 'STRICT_ALL_TABLES', '')",
    )
    .execute(&mut *conn)
    .await?;
    // Navigator's next ids (DDL: before the transaction, which it would commit).
    for (navigator, easel) in [
        ("navigator_image_categories", "categories"),
        ("navigator_models", "models"),
    ] {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(auto_increment AS SIGNED) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = ?",
        )
        .bind(navigator)
        .fetch_optional(&mut *conn)
        .await?
        .flatten();
        if let Some(next) = next {
            let sql = format!("ALTER TABLE {easel} AUTO_INCREMENT = {next}");
            sqlx::query(AssertSqlSafe(sql)).execute(&mut *conn).await?;
        }
    }

    let now = now_ms();
    let mut tx = conn.begin().await?;
    let counts: Vec<String> = EASEL_TABLES
        .iter()
        .map(|table| format!("(SELECT COUNT(*) FROM {table})"))
        .collect();
    let held: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT {}", counts.join(" + "))))
        .fetch_one(&mut *tx)
        .await?;
    if held > 0 {
        return Err(StoreError::Adopt(format!(
            "easel's tables already hold {held} rows next to BitForged Navigator's renamed \
             tables (navigator_*); refusing to copy over them"
        )));
    }
    let categories = sqlx::query(
        "INSERT INTO categories (id, name64, owner_id) \
         SELECT id, name64, owner_id FROM navigator_image_categories",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let users_sql = format!(
        "INSERT INTO users (id, role, created_at, updated_at) \
         SELECT CAST(id AS CHAR), role, COALESCE({created}, ?), COALESCE({updated}, {created}, ?) \
         FROM navigator_users",
        created = ms("created_at"),
        updated = ms("updated_at"),
    );
    let users = sqlx::query(AssertSqlSafe(users_sql))
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let models = sqlx::query(
        "INSERT INTO models (id, model_name, friendly_name, is_restricted) \
         SELECT id, model_name, friendly_name, IF(is_restricted <> 0, 1, 0) FROM navigator_models",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // metadata_cache is base64 of JSON; a cache that is not base64 is kept as it is.
    let metadata_sql = format!(
        "INSERT INTO model_metadata (id, hash, model_type, metadata, provider, metadata_id, \
             updated_at, updates_disabled) \
         SELECT id, hash, model_type, {metadata}, COALESCE(metadata_provider, 0), metadata_id, \
             COALESCE({updated}, 0), IF(updates_disabled <> 0, 1, 0) \
         FROM (SELECT *, COALESCE(FROM_BASE64(metadata_cache), CAST(metadata_cache AS BINARY)) \
             AS decoded FROM navigator_model_metadata) m \
         WHERE hash IS NOT NULL",
        metadata = utf8("m.decoded"),
        updated = ms("metadata_updated_at"),
    );
    let model_metadata = sqlx::query(AssertSqlSafe(metadata_sql))
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let hashes = format!(
        "INSERT INTO file_sha256_cache (file_name, sha256, created_at) \
         SELECT file_name, sha256_sum, COALESCE({created}, ?) FROM navigator_file_sha256_cache",
        created = ms("created_at"),
    );
    let file_hashes = sqlx::query(AssertSqlSafe(hashes))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    // Pictures first (the jobs read their size), then their size from the PNG header: width
    // and height are the big-endian u32s at bytes 17..24 (1-based) after the signature and
    // the IHDR chunk's length and type. Bytes that are not a PNG keep their size 0.
    let images = format!(
        "INSERT INTO images (id, owner_id, png, preview, info, width, height, category_id, \
             message_id, created_at) \
         SELECT n.id, n.owner_id, FROM_BASE64(n.image_data), FROM_BASE64(n.preview_data), \
             COALESCE({info}, '{{}}'), 0, 0, \
             (SELECT c.id FROM categories c WHERE c.id = n.category_id), n.message_id, \
             COALESCE({created}, 0) \
         FROM (SELECT *, FROM_BASE64(info_data64) AS info FROM navigator_images) n \
         WHERE n.image_data IS NOT NULL",
        info = utf8("n.info"),
        created = ms("n.created_at"),
    );
    let copied_images = sqlx::query(AssertSqlSafe(images))
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let undecodable = sqlx::query("DELETE FROM images WHERE png IS NULL")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query(
        "UPDATE images SET \
             width = CAST(CONV(HEX(SUBSTRING(png, 17, 4)), 16, 10) AS SIGNED), \
             height = CAST(CONV(HEX(SUBSTRING(png, 21, 4)), 16, 10) AS SIGNED) \
         WHERE SUBSTRING(png, 1, 8) = UNHEX('89504E470D0A1A0A') \
             AND SUBSTRING(png, 13, 4) = UNHEX('49484452')",
    )
    .execute(&mut *tx)
    .await?;
    let jobs = sqlx::query(AssertSqlSafe(jobs_sql()))
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let failed_jobs = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'failed'")
        .fetch_one(&mut *tx)
        .await?;
    let unreachable: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM navigator_model_metadata WHERE hash IS NULL")
            .fetch_one(&mut *tx)
            .await?;
    // The marker, last: with it the adoption is done.
    sqlx::query("INSERT INTO adopted_from_navigator (adopted_at) VALUES (?)")
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if undecodable > 0 {
        tracing::warn!(
            jobs = undecodable,
            "pictures Navigator stored are not valid base64: their jobs are adopted as failed, \
             the data stays in navigator_images"
        );
    }
    if unreachable > 0 {
        tracing::warn!(
            rows = unreachable,
            "model metadata rows without a hash stay only in navigator_model_metadata"
        );
    }
    Ok(Copied {
        categories,
        users,
        models,
        model_metadata,
        file_hashes,
        images: copied_images - undecodable,
        jobs,
        failed_jobs,
    })
}
