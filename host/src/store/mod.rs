//! Durable storage: jobs, images, users, categories and models in SQLite, MariaDB/MySQL or
//! PostgreSQL, chosen by the URL scheme.
//!
//! Each engine has its own migrations (`host/migrations/<engine>/`), run at connect. Queries are
//! written once with `?` placeholders and rewritten to `$n` for PostgreSQL; the few statements
//! that differ between engines (claiming a job) are written per engine. Claiming is safe with
//! several hosts on one PostgreSQL or MariaDB database (`FOR UPDATE SKIP LOCKED`); SQLite has a
//! single writer and claims in one `UPDATE … RETURNING`.
//!
//! Times are Unix milliseconds in `BIGINT` columns, so every engine decodes them the same way.

use std::str::FromStr;
use std::time::Duration;

use sqlx::AssertSqlSafe;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Which database engine a URL selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseKind {
    /// `sqlite://FILE` (created on first start).
    Sqlite,
    /// `mysql://` or `mariadb://`.
    MySql,
    /// `postgres://` or `postgresql://`.
    Postgres,
}

impl DatabaseKind {
    /// The engine of `url`, or what was expected instead.
    pub fn from_url(url: &str) -> Result<Self, &'static str> {
        const EXPECTED: &str =
            "a URL starting with sqlite://, mysql://, mariadb://, postgres:// or postgresql://";
        let (scheme, rest) = url.split_once("://").ok_or(EXPECTED)?;
        if rest.is_empty() {
            return Err(EXPECTED);
        }
        match scheme {
            "sqlite" => Ok(Self::Sqlite),
            "mysql" | "mariadb" => Ok(Self::MySql),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            _ => Err(EXPECTED),
        }
    }
}

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The URL names no supported engine.
    #[error("unsupported database url: expected {0}")]
    Url(&'static str),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting for a backend.
    Queued,
    /// Claimed by a backend.
    Running,
    /// Image stored.
    Finished,
    /// Given up, with a reason in `last_error`.
    Failed,
    /// Stopped or removed on request.
    Interrupted,
}

impl JobStatus {
    /// The value stored in `jobs.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
        }
    }

    /// Parses a stored status.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "finished" => Self::Finished,
            "failed" => Self::Failed,
            "interrupted" => Self::Interrupted,
            _ => return None,
        })
    }
}

/// One row of `jobs`.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct JobRow {
    /// Queue order.
    pub seq: i64,
    /// Public job id (8 hex digits for Navigator clients).
    pub id: String,
    /// `txt2img`, …
    pub kind: String,
    /// The request, as JSON.
    pub request: String,
    /// See [`JobStatus`].
    pub status: String,
    /// How many times a backend claimed it.
    pub attempts: i64,
    /// How many attempts ended in a worker fault (deadline, lost worker).
    pub faults: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Who asked.
    pub owner_id: String,
    /// Where the request came from (IP for HTTP).
    pub origin: Option<String>,
    /// The backend that ran it last.
    pub backend: Option<String>,
    /// The host that claimed it last.
    pub claimed_by: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// Unix ms of the last claim.
    pub started_at: Option<i64>,
    /// Unix ms of the end.
    pub finished_at: Option<i64>,
}

impl JobRow {
    /// The parsed status (an unknown value reads as failed).
    pub fn status(&self) -> JobStatus {
        JobStatus::parse(&self.status).unwrap_or(JobStatus::Failed)
    }
}

const JOB_COLUMNS: &str = "seq, id, kind, request, status, attempts, faults, last_error, owner_id, origin, \
     backend, claimed_by, created_at, updated_at, started_at, finished_at";

/// A job to insert.
#[derive(Clone, Debug)]
pub struct NewJob<'a> {
    /// Public id.
    pub id: &'a str,
    /// Kind (`txt2img`).
    pub kind: &'a str,
    /// Request JSON.
    pub request: &'a str,
    /// Owner.
    pub owner_id: &'a str,
    /// Origin (IP).
    pub origin: Option<&'a str>,
}

/// A finished image to store with the job's completion.
#[derive(Clone, Debug)]
pub struct NewImage<'a> {
    /// PNG bytes.
    pub png: &'a [u8],
    /// Generation info (JSON).
    pub info: &'a str,
    /// Pixel width.
    pub width: u32,
    /// Pixel height.
    pub height: u32,
    /// Category it belongs to.
    pub category_id: Option<i64>,
}

enum Pool {
    Sqlite(SqlitePool),
    MySql(MySqlPool),
    Postgres(PgPool),
}

/// Runs the same code against whichever pool this store holds.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::MySql($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// The database, with its migrations applied.
pub struct Store {
    pool: Pool,
    kind: DatabaseKind,
    /// SQLite has one writer per file: writers of this process take turns here instead of
    /// meeting SQLITE_BUSY, whose retry sleeps for milliseconds at a time.
    writer: Option<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("kind", &self.kind).finish()
    }
}

/// Whether `err` is a transient conflict between concurrent transactions (deadlock,
/// serialization failure, lock wait timeout) that is safe to retry.
fn is_transient(err: &StoreError) -> bool {
    let StoreError::Database(sqlx::Error::Database(db)) = err else {
        return false;
    };
    let code = db.code();
    matches!(code.as_deref(), Some("40001" | "40P01"))
        || db.message().contains("Deadlock found")
        || db.message().contains("Lock wait timeout")
}

/// Runs `op` again (up to 5 times, with a short growing pause) while it fails with a transient
/// conflict. Only for operations that are one transaction, so a failed try changed nothing.
async fn retry_transient<T, F, Fut>(mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut tries = 0u32;
    loop {
        match op().await {
            Err(err) if tries < 5 && is_transient(&err) => {
                tries += 1;
                tracing::debug!(error = %err, tries, "transient database conflict; retrying");
                tokio::time::sleep(Duration::from_millis(u64::from(tries) * 5)).await;
            }
            other => return other,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl Store {
    /// Connects to `url` (creating an SQLite file if needed) and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let kind = DatabaseKind::from_url(url).map_err(StoreError::Url)?;
        let acquire = Duration::from_secs(10);
        let pool = match kind {
            DatabaseKind::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // WAL + NORMAL survives a process crash (`kill -9`); only an OS crash can
                    // lose the last transactions.
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10));
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(acquire)
                    .connect_with(options)
                    .await?;
                sqlx::migrate!("migrations/sqlite").run(&pool).await?;
                Pool::Sqlite(pool)
            }
            DatabaseKind::MySql => {
                let url = url.replacen("mariadb://", "mysql://", 1);
                let options = MySqlConnectOptions::from_str(&url)?;
                let pool = MySqlPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(acquire)
                    .connect_with(options)
                    .await?;
                sqlx::migrate!("migrations/mysql").run(&pool).await?;
                Pool::MySql(pool)
            }
            DatabaseKind::Postgres => {
                let options = PgConnectOptions::from_str(url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(acquire)
                    .connect_with(options)
                    .await?;
                sqlx::migrate!("migrations/postgres").run(&pool).await?;
                Pool::Postgres(pool)
            }
        };
        let writer = (kind == DatabaseKind::Sqlite).then(|| tokio::sync::Mutex::new(()));
        Ok(Self { pool, kind, writer })
    }

    /// Taken around every write (SQLite only; a no-op elsewhere).
    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.writer {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }

    /// The engine behind this store.
    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    /// Closes every connection.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    /// `sql` with `?` placeholders, rewritten for this engine. Only the constant statements of
    /// this module come through here; values are always bound, never formatted in.
    fn sql(&self, sql: &str) -> AssertSqlSafe<String> {
        if self.kind != DatabaseKind::Postgres || !sql.contains('?') {
            return AssertSqlSafe(sql.to_owned());
        }
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for ch in sql.chars() {
            if ch == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(ch);
            }
        }
        AssertSqlSafe(out)
    }

    /// Inserts a queued job. Fails with a unique-key error if the id exists.
    pub async fn insert_job(&self, job: &NewJob<'_>) -> Result<()> {
        let _turn = self.write_turn().await;
        let sql = self.sql(
            "INSERT INTO jobs (id, kind, request, status, attempts, owner_id, origin, created_at, updated_at) \
             VALUES (?, ?, ?, 'queued', 0, ?, ?, ?, ?)",
        );
        let now = now_ms();
        on_pool!(self, pool => {
            sqlx::query(sql)
                .bind(job.id)
                .bind(job.kind)
                .bind(job.request)
                .bind(job.owner_id)
                .bind(job.origin)
                .bind(now)
                .bind(now)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Reads one job.
    pub async fn job(&self, id: &str) -> Result<Option<JobRow>> {
        let sql = self.sql(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"));
        let row = on_pool!(self, pool => {
            sqlx::query_as::<_, JobRow>(sql).bind(id).fetch_optional(pool).await?
        });
        Ok(row)
    }

    /// Every job, oldest first (for tests and tools).
    pub async fn jobs(&self) -> Result<Vec<JobRow>> {
        let sql = AssertSqlSafe(format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY seq"));
        let rows = on_pool!(self, pool => {
            sqlx::query_as::<_, JobRow>(sql).fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// Number of jobs with `status`.
    pub async fn count_jobs(&self, status: JobStatus) -> Result<i64> {
        let sql = self.sql("SELECT COUNT(*) FROM jobs WHERE status = ?");
        let n: i64 = on_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(status.as_str()).fetch_one(pool).await?
        });
        Ok(n)
    }

    /// Claims the oldest queued job for `backend` on `host`: it becomes running and its attempt
    /// counter goes up. `None` when nothing is queued (or every queued row is locked by another
    /// host's claim).
    pub async fn claim_job(&self, host: &str, backend: &str) -> Result<Option<JobRow>> {
        Ok(self.claim_jobs(host, backend, 1).await?.pop())
    }

    /// Claims up to `limit` of the oldest queued jobs at once, oldest first.
    pub async fn claim_jobs(&self, host: &str, backend: &str, limit: usize) -> Result<Vec<JobRow>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut rows =
            retry_transient(|| self.claim_jobs_once(host, backend, limit as i64)).await?;
        rows.sort_by_key(|row| row.seq);
        Ok(rows)
    }

    async fn claim_jobs_once(&self, host: &str, backend: &str, limit: i64) -> Result<Vec<JobRow>> {
        let _turn = self.write_turn().await;
        const SET: &str = "UPDATE jobs SET status = 'running', attempts = attempts + 1, \
             claimed_by = ?, backend = ?, started_at = ?, updated_at = ?";
        let now = now_ms();
        match &self.pool {
            // One statement; SQLite has a single writer.
            Pool::Sqlite(pool) => {
                let sql = AssertSqlSafe(format!(
                    "{SET} WHERE seq IN (SELECT seq FROM jobs WHERE status = 'queued' \
                     ORDER BY seq LIMIT ?) AND status = 'queued' RETURNING {JOB_COLUMNS}"
                ));
                Ok(sqlx::query_as::<_, JobRow>(sql)
                    .bind(host)
                    .bind(backend)
                    .bind(now)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?)
            }
            // One statement; the CTE locks the rows it picks and skips those other hosts hold
            // (a plain `IN (subquery … LIMIT)` may be re-planned and pick other rows).
            Pool::Postgres(pool) => {
                let sql = AssertSqlSafe(format!(
                    "WITH picked AS (SELECT seq AS pick FROM jobs WHERE status = 'queued' \
                     ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED) \
                     UPDATE jobs SET status = 'running', attempts = attempts + 1, \
                     claimed_by = $2, backend = $3, started_at = $4, updated_at = $4 \
                     FROM picked WHERE jobs.seq = picked.pick RETURNING {JOB_COLUMNS}"
                ));
                Ok(sqlx::query_as::<_, JobRow>(sql)
                    .bind(limit)
                    .bind(host)
                    .bind(backend)
                    .bind(now)
                    .fetch_all(pool)
                    .await?)
            }
            // MariaDB has no `UPDATE … RETURNING`: lock, update, read back in one transaction.
            Pool::MySql(pool) => {
                let mut tx = pool.begin().await?;
                let seqs: Vec<i64> = sqlx::query_scalar(
                    "SELECT seq FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT ? \
                     FOR UPDATE SKIP LOCKED",
                )
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                if seqs.is_empty() {
                    tx.commit().await?;
                    return Ok(Vec::new());
                }
                let list = vec!["?"; seqs.len()].join(", ");
                let update = AssertSqlSafe(format!("{SET} WHERE seq IN ({list})"));
                let mut query = sqlx::query(update)
                    .bind(host)
                    .bind(backend)
                    .bind(now)
                    .bind(now);
                for seq in &seqs {
                    query = query.bind(*seq);
                }
                query.execute(&mut *tx).await?;
                let fetch = AssertSqlSafe(format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE seq IN ({list}) ORDER BY seq"
                ));
                let mut query = sqlx::query_as::<_, JobRow>(fetch);
                for seq in &seqs {
                    query = query.bind(*seq);
                }
                let rows = query.fetch_all(&mut *tx).await?;
                tx.commit().await?;
                Ok(rows)
            }
        }
    }

    /// Marks a running job finished and stores its image, if `attempt` is still the current
    /// claim. Returns false (and changes nothing) when the job was requeued, interrupted or
    /// finished by someone else meanwhile.
    ///
    /// With `attempt` `None` (a late result of an expired claim), the job is finished if it is
    /// queued or running under any claim, that is, if nobody finished it yet.
    pub async fn finish_job(
        &self,
        id: &str,
        attempt: Option<i64>,
        image: &NewImage<'_>,
    ) -> Result<bool> {
        Ok(self.finish_jobs(&[(id, attempt, image.clone())]).await?[0])
    }

    /// [`Store::finish_job`] for several jobs in one transaction (one commit for a burst of
    /// results); one flag per job, in order.
    pub async fn finish_jobs(
        &self,
        items: &[(&str, Option<i64>, NewImage<'_>)],
    ) -> Result<Vec<bool>> {
        retry_transient(|| self.finish_jobs_once(items)).await
    }

    async fn finish_jobs_once(
        &self,
        items: &[(&str, Option<i64>, NewImage<'_>)],
    ) -> Result<Vec<bool>> {
        let _turn = self.write_turn().await;
        let current = self.sql(
            "UPDATE jobs SET status = 'finished', finished_at = ?, updated_at = ?, last_error = NULL \
             WHERE id = ? AND status = 'running' AND attempts = ?",
        );
        let late = self.sql(
            "UPDATE jobs SET status = 'finished', finished_at = ?, updated_at = ?, last_error = NULL \
             WHERE id = ? AND status IN ('queued', 'running')",
        );
        let insert = self.sql(
            "INSERT INTO images (id, owner_id, png, info, width, height, category_id, created_at) \
             SELECT id, owner_id, ?, ?, ?, ?, ?, ? FROM jobs WHERE id = ?",
        );
        let now = now_ms();
        let done = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut done = Vec::with_capacity(items.len());
            for (id, attempt, image) in items {
                let update = match attempt {
                    Some(attempt) => sqlx::query(AssertSqlSafe(current.0.clone())).bind(now).bind(now).bind(*id).bind(*attempt),
                    None => sqlx::query(AssertSqlSafe(late.0.clone())).bind(now).bind(now).bind(*id),
                };
                let changed = update.execute(&mut *tx).await?.rows_affected();
                if changed == 1 {
                    sqlx::query(AssertSqlSafe(insert.0.clone()))
                        .bind(image.png)
                        .bind(image.info)
                        .bind(i64::from(image.width))
                        .bind(i64::from(image.height))
                        .bind(image.category_id)
                        .bind(now)
                        .bind(*id)
                        .execute(&mut *tx)
                        .await?;
                }
                done.push(changed == 1);
            }
            tx.commit().await?;
            done
        });
        Ok(done)
    }

    /// Moves a running job (current claim `attempt`) to `status` with `error`; false when the
    /// claim is stale.
    pub async fn end_attempt(
        &self,
        id: &str,
        attempt: i64,
        status: JobStatus,
        error: &str,
    ) -> Result<bool> {
        let _turn = self.write_turn().await;
        let sql = self.sql(
            "UPDATE jobs SET status = ?, last_error = ?, updated_at = ?, finished_at = ? \
             WHERE id = ? AND status = 'running' AND attempts = ?",
        );
        let now = now_ms();
        let finished_at = (status != JobStatus::Queued).then_some(now);
        let changed = on_pool!(self, pool => {
            sqlx::query(sql)
                .bind(status.as_str())
                .bind(error)
                .bind(now)
                .bind(finished_at)
                .bind(id)
                .bind(attempt)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(changed == 1)
    }

    /// Records a worker fault on the current claim: the job goes back to the queue, or fails
    /// when this was fault number `max_faults`. Returns the new status, or `None` when the
    /// claim is stale.
    pub async fn fault_job(
        &self,
        id: &str,
        attempt: i64,
        max_faults: i64,
        reason: &str,
    ) -> Result<Option<JobStatus>> {
        retry_transient(|| self.fault_job_once(id, attempt, max_faults, reason)).await
    }

    async fn fault_job_once(
        &self,
        id: &str,
        attempt: i64,
        max_faults: i64,
        reason: &str,
    ) -> Result<Option<JobStatus>> {
        let _turn = self.write_turn().await;
        // `faults` is assigned last: MariaDB evaluates assignments left to right, PostgreSQL and
        // SQLite see old values everywhere; so every engine reads the old `faults` above.
        let update = self.sql(
            "UPDATE jobs SET status = CASE WHEN faults + 1 >= ? THEN 'failed' ELSE 'queued' END, \
             finished_at = CASE WHEN faults + 1 >= ? THEN ? ELSE NULL END, \
             last_error = ?, updated_at = ?, faults = faults + 1 \
             WHERE id = ? AND status = 'running' AND attempts = ?",
        );
        let select = self.sql("SELECT status FROM jobs WHERE id = ?");
        let now = now_ms();
        let status: Option<String> = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let changed = sqlx::query(update)
                .bind(max_faults)
                .bind(max_faults)
                .bind(now)
                .bind(reason)
                .bind(now)
                .bind(id)
                .bind(attempt)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let status = if changed == 1 {
                sqlx::query_scalar(select).bind(id).fetch_optional(&mut *tx).await?
            } else {
                None
            };
            tx.commit().await?;
            status
        });
        Ok(status.as_deref().and_then(JobStatus::parse))
    }

    /// Marks a queued or running job interrupted; returns the status it had, or `None` if it
    /// was not queued or running.
    pub async fn interrupt_job(&self, id: &str) -> Result<Option<JobStatus>> {
        let _turn = self.write_turn().await;
        let Some(job) = self.job(id).await? else {
            return Ok(None);
        };
        let before = job.status();
        if !matches!(before, JobStatus::Queued | JobStatus::Running) {
            return Ok(None);
        }
        let sql = self.sql(
            "UPDATE jobs SET status = 'interrupted', updated_at = ?, finished_at = ? \
             WHERE id = ? AND status = ?",
        );
        let now = now_ms();
        let changed = on_pool!(self, pool => {
            sqlx::query(sql)
                .bind(now)
                .bind(now)
                .bind(id)
                .bind(before.as_str())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok((changed == 1).then_some(before))
    }

    /// Puts every job left running by `host` back in the queue (after a crash or at shutdown).
    pub async fn requeue_running(&self, host: &str, reason: &str) -> Result<u64> {
        let _turn = self.write_turn().await;
        let sql = self.sql(
            "UPDATE jobs SET status = 'queued', last_error = ?, updated_at = ? \
             WHERE status = 'running' AND claimed_by = ?",
        );
        let now = now_ms();
        let n = on_pool!(self, pool => {
            sqlx::query(sql)
                .bind(reason)
                .bind(now)
                .bind(host)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n)
    }

    /// Stores the latest live preview of a job's image.
    pub async fn set_preview(&self, id: &str, png: &[u8]) -> Result<()> {
        let _turn = self.write_turn().await;
        let sql = self.sql("UPDATE images SET preview = ? WHERE id = ?");
        on_pool!(self, pool => {
            sqlx::query(sql).bind(png).bind(id).execute(pool).await?;
        });
        Ok(())
    }

    /// The finished PNG of a job.
    pub async fn image_png(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let sql = self.sql("SELECT png FROM images WHERE id = ?");
        let png: Option<Option<Vec<u8>>> = on_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(id).fetch_optional(pool).await?
        });
        Ok(png.flatten())
    }

    /// The stored role of a user, if the user has a row.
    pub async fn user_role(&self, id: &str) -> Result<Option<i64>> {
        let sql = self.sql("SELECT role FROM users WHERE id = ?");
        let role = on_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(id).fetch_optional(pool).await?
        });
        Ok(role)
    }

    /// Whether `owner_id` owns at least one image (Navigator's legacy auto-enrolment).
    pub async fn owns_images(&self, owner_id: &str) -> Result<bool> {
        let sql = self.sql("SELECT COUNT(*) FROM images WHERE owner_id = ?");
        let n: i64 = on_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(owner_id).fetch_one(pool).await?
        });
        Ok(n > 0)
    }

    /// Creates or updates a user's role.
    pub async fn set_user_role(&self, id: &str, role: i64) -> Result<()> {
        let _turn = self.write_turn().await;
        let now = now_ms();
        let update = self.sql("UPDATE users SET role = ?, updated_at = ? WHERE id = ?");
        let insert =
            self.sql("INSERT INTO users (id, role, created_at, updated_at) VALUES (?, ?, ?, ?)");
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let changed = sqlx::query(update)
                .bind(role)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if changed == 0 {
                sqlx::query(insert)
                    .bind(id)
                    .bind(role)
                    .bind(now)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Creates a category owned by `owner_id`; returns its id.
    pub async fn create_category(&self, name64: &str, owner_id: &str) -> Result<i64> {
        let _turn = self.write_turn().await;
        let insert = self.sql("INSERT INTO categories (name64, owner_id) VALUES (?, ?)");
        let select = self.sql("SELECT MAX(id) FROM categories WHERE name64 = ? AND owner_id = ?");
        let id: Option<i64> = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(insert).bind(name64).bind(owner_id).execute(&mut *tx).await?;
            let id = sqlx::query_scalar(select)
                .bind(name64)
                .bind(owner_id)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            id
        });
        Ok(id.unwrap_or_default())
    }

    /// Whether category `id` exists and belongs to `owner_id`.
    pub async fn category_owned_by(&self, id: i64, owner_id: &str) -> Result<bool> {
        let sql = self.sql("SELECT COUNT(*) FROM categories WHERE id = ? AND owner_id = ?");
        let n: i64 = on_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(id).bind(owner_id).fetch_one(pool).await?
        });
        Ok(n > 0)
    }

    /// Adds a model to the catalog; returns its id.
    pub async fn add_model(
        &self,
        model_name: &str,
        friendly_name: Option<&str>,
        restricted: bool,
    ) -> Result<i64> {
        let _turn = self.write_turn().await;
        let insert = self
            .sql("INSERT INTO models (model_name, friendly_name, is_restricted) VALUES (?, ?, ?)");
        let select = self.sql("SELECT MAX(id) FROM models WHERE model_name = ?");
        let id: Option<i64> = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(insert)
                .bind(model_name)
                .bind(friendly_name)
                .bind(i64::from(restricted))
                .execute(&mut *tx)
                .await?;
            let id = sqlx::query_scalar(select).bind(model_name).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            id
        });
        Ok(id.unwrap_or_default())
    }

    /// The model catalog: `(model_name, friendly_name, is_restricted)`.
    pub async fn models(&self) -> Result<Vec<(String, Option<String>, bool)>> {
        let sql = "SELECT model_name, friendly_name, is_restricted FROM models ORDER BY id";
        let rows: Vec<(String, Option<String>, i64)> = on_pool!(self, pool => {
            sqlx::query_as(sql).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(name, friendly, restricted)| (name, friendly, restricted != 0))
            .collect())
    }
}
