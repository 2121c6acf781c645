//! Durable storage: jobs, images, users, categories and models in SQLite, MariaDB/MySQL or
//! PostgreSQL, chosen by the URL scheme. One file per table family: [`jobs`](self::jobs)
//! (the queue), `images`, `accounts` (users, categories) and `catalog` (models).
//!
//! Only the services write: the job service (jobs, images), the accounts service (users,
//! categories) and the catalog (models). Front ends read through their read handles.
//!
//! Each engine has its own migrations (`host/migrations/<engine>/`), run at connect; on
//! MariaDB/MySQL a database BitForged Navigator created is adopted around them
//! ([`adopt`](self::adopt): its tables kept as `navigator_*`, its rows copied). Queries are
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
    /// A BitForged Navigator database could not be adopted; the message says why and what to
    /// do. Nothing of Navigator's was changed beyond the rename (see `store::adopt`).
    #[error("cannot adopt the BitForged Navigator database: {0}")]
    Adopt(String),
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

enum Pool {
    Sqlite(SqlitePool),
    MySql(MySqlPool),
    Postgres(PgPool),
}

/// Runs the same code against whichever pool this store holds.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite($pool) => $body,
            $crate::store::Pool::MySql($pool) => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}

// After the macro, so the table modules can use it.
mod accounts;
mod adopt;
mod catalog;
mod images;
mod jobs;
mod metadata;
mod relay;

pub use catalog::ModelEntry;
pub use images::{JobMeta, NewImage};
pub use jobs::{ClaimFilter, Completion, DEFAULT_LEASE, Fence, JobRow, NewJob};
pub use metadata::{MetadataRow, NewMetadata};
pub use relay::{EventFeed, MAX_PAYLOAD};

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
    /// Connects to `url` (creating an SQLite file if needed) and runs the migrations (on
    /// MariaDB/MySQL adopting a BitForged Navigator database first, see `store::adopt`).
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
                // Under one lock with the other hosts: adopt a Navigator database, migrate.
                let schema = adopt::begin(&pool).await?;
                sqlx::migrate!("migrations/mysql").run(&pool).await?;
                schema.finish().await?;
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

    /// Whether the database answers (`SELECT 1`).
    pub async fn ping(&self) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
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
}
