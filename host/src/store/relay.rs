//! The store's side of the job-event relay between hosts sharing one database: PostgreSQL's
//! `LISTEN/NOTIFY` on the channel [`CHANNEL`], or on MariaDB the `job_events` table that
//! hosts append to and poll. SQLite serves one host and relays nothing. What a payload says is
//! the job service's business ([`crate::jobs`]); here it is text.

use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;

use super::{Pool, Result, Store, now_ms};

/// The PostgreSQL notification channel of job events.
pub const CHANNEL: &str = "easel_job_events";
/// The largest payload PostgreSQL's `NOTIFY` takes is 8000 bytes; batches stay below this.
pub const MAX_PAYLOAD: usize = 7000;
/// How often a MariaDB feed polls `job_events`.
const POLL: Duration = Duration::from_millis(100);
/// How long a MariaDB feed waits for a missing id (an insert not committed yet) before it
/// reads on past it (a rolled-back insert leaves a gap for ever).
const GAP_WAIT: Duration = Duration::from_secs(1);

/// Other hosts' payloads, as they arrive.
#[derive(Debug)]
pub enum EventFeed {
    /// `LISTEN easel_job_events`.
    Postgres(Box<PgListener>),
    /// Polls `job_events` after the last id read.
    MySql {
        /// The pool.
        pool: sqlx::MySqlPool,
        /// The last id delivered.
        last: i64,
        /// Since when the feed waits for the id after `last`.
        gap: Option<Instant>,
    },
}

impl Store {
    /// Whether this database can be shared by several hosts (and so relays events).
    pub fn is_shared(&self) -> bool {
        !matches!(self.pool, Pool::Sqlite(_))
    }

    /// Publishes payloads for the other hosts: a `NOTIFY` each, or one insert of them all.
    pub async fn publish_events(&self, host: &str, payloads: &[String]) -> Result<()> {
        if payloads.is_empty() {
            return Ok(());
        }
        match &self.pool {
            Pool::Sqlite(_) => {}
            Pool::Postgres(pool) => {
                for payload in payloads {
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(CHANNEL)
                        .bind(payload)
                        .execute(pool)
                        .await?;
                }
            }
            Pool::MySql(pool) => {
                let rows = vec!["(?, ?, ?)"; payloads.len()].join(", ");
                let sql = sqlx::AssertSqlSafe(format!(
                    "INSERT INTO job_events (host, payload, created_at) VALUES {rows}"
                ));
                let now = now_ms();
                let mut query = sqlx::query(sql);
                for payload in payloads {
                    query = query.bind(host).bind(payload).bind(now);
                }
                query.execute(pool).await?;
            }
        }
        Ok(())
    }

    /// A feed of what hosts publish from now on (`None` on SQLite).
    pub async fn event_feed(&self) -> Result<Option<EventFeed>> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(None),
            Pool::Postgres(pool) => {
                let mut listener = PgListener::connect_with(pool).await?;
                listener.listen(CHANNEL).await?;
                Ok(Some(EventFeed::Postgres(Box::new(listener))))
            }
            Pool::MySql(pool) => {
                let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM job_events")
                    .fetch_one(pool)
                    .await?;
                Ok(Some(EventFeed::MySql {
                    pool: pool.clone(),
                    last,
                    gap: None,
                }))
            }
        }
    }

    /// Removes relayed events older than `age` (MariaDB's table; a no-op elsewhere).
    pub async fn prune_events(&self, age: Duration) -> Result<u64> {
        let Pool::MySql(pool) = &self.pool else {
            return Ok(0);
        };
        let before = now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        Ok(sqlx::query("DELETE FROM job_events WHERE created_at < ?")
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected())
    }
}

impl EventFeed {
    /// The next payloads (this host's own among them). A lost PostgreSQL connection is
    /// reconnected; what was sent meanwhile is lost (followers catch up from the store).
    pub async fn next(&mut self) -> Result<Vec<String>> {
        match self {
            EventFeed::Postgres(listener) => Ok(vec![listener.recv().await?.payload().to_owned()]),
            EventFeed::MySql { pool, last, gap } => loop {
                let rows: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT id, payload FROM job_events WHERE id > ? ORDER BY id LIMIT 1000",
                )
                .bind(*last)
                .fetch_all(&*pool)
                .await?;
                let mut batch = Vec::with_capacity(rows.len());
                for (id, payload) in rows {
                    if id != *last + 1 {
                        // An id in between may not be committed yet: wait for it a little.
                        let since = *gap.get_or_insert_with(Instant::now);
                        if since.elapsed() < GAP_WAIT {
                            break;
                        }
                    }
                    *gap = None;
                    *last = id;
                    batch.push(payload);
                }
                if !batch.is_empty() {
                    return Ok(batch);
                }
                tokio::time::sleep(POLL).await;
            },
        }
    }
}
