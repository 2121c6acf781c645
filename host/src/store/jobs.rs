//! The `jobs` table: the durable queue.
//!
//! Every change of a job's state bumps its `event_seq` in the same statement, and every change
//! of a claimed job is fenced on the `event_seq` its claim returned: a backend that lost its
//! claim (requeued, interrupted, finished elsewhere) changes nothing, and the new sequence
//! number of a fenced change is always the fence plus one.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::AssertSqlSafe;

use super::{DatabaseKind, JobStatus, NewImage, Pool, Result, Store, now_ms, retry_transient};

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
    /// Where the request came from (IP for HTTP, `discord:…` for Discord).
    pub origin: Option<String>,
    /// The backend that ran it last.
    pub backend: Option<String>,
    /// The host (its id) that claimed it last.
    pub claimed_by: Option<String>,
    /// While running: until when (Unix ms) the claiming host holds it; once passed without a
    /// renewal, any host may requeue it.
    pub lease_until: Option<i64>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// Unix ms of the last claim.
    pub started_at: Option<i64>,
    /// Unix ms of the end.
    pub finished_at: Option<i64>,
    /// The job's event sequence number: 1 when queued, one more for every change since.
    pub event_seq: i64,
    /// The model asked for ("" for the backend's default), for capability-aware claims.
    pub model: String,
    /// `width * height`, for capability-aware claims.
    pub pixels: i64,
}

impl JobRow {
    /// The parsed status (an unknown value reads as failed).
    pub fn status(&self) -> JobStatus {
        JobStatus::parse(&self.status).unwrap_or(JobStatus::Failed)
    }
}

/// How long a claim holds when nobody says otherwise (the job service renews its claims every
/// third of its lease).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

const JOB_COLUMNS: &str = "seq, id, kind, request, status, attempts, faults, last_error, owner_id, \
     origin, backend, claimed_by, lease_until, created_at, updated_at, started_at, finished_at, \
     event_seq, model, pixels";

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
    /// Origin, as stored.
    pub origin: Option<&'a str>,
    /// Model asked for ("" for the backend's default).
    pub model: &'a str,
    /// `width * height`.
    pub pixels: i64,
    /// The owner's image category.
    pub category_id: Option<i64>,
}

/// Which queued jobs a claim may take: what the claiming backend can run.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClaimFilter<'a> {
    /// Models it has (`None` or empty: any). A job that names no model runs anywhere.
    pub models: Option<&'a [String]>,
    /// Largest `width * height` it draws (`None`: any).
    pub max_pixels: Option<u64>,
}

impl ClaimFilter<'_> {
    fn models(&self) -> &[String] {
        self.models.unwrap_or_default()
    }

    /// ` AND …` with `?` placeholders, bound by [`ClaimFilter::bind`] in the same order.
    fn sql(&self) -> String {
        let mut sql = String::new();
        let models = self.models();
        if !models.is_empty() {
            sql.push_str(" AND (model = '' OR model IN (");
            sql.push_str(&vec!["?"; models.len()].join(", "));
            sql.push_str("))");
        }
        if self.max_pixels.is_some() {
            sql.push_str(" AND pixels <= ?");
        }
        sql
    }
}

/// Binds the values of a [`ClaimFilter`] to any sqlx query of any engine.
macro_rules! bind_filter {
    ($query:expr, $filter:expr) => {{
        let mut query = $query;
        for model in $filter.models() {
            query = query.bind(model.as_str());
        }
        if let Some(max) = $filter.max_pixels {
            query = query.bind(i64::try_from(max).unwrap_or(i64::MAX));
        }
        query
    }};
}

/// A finished image to record with the job's completion.
#[derive(Clone, Debug)]
pub struct Completion<'a> {
    /// The job.
    pub id: &'a str,
    /// Which claim the result belongs to.
    pub fence: Fence,
    /// Who made it.
    pub backend: &'a str,
    /// The image.
    pub image: NewImage<'a>,
}

/// Which claim a result belongs to, and so when the store takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// The current claim, at this `event_seq`: taken while the job still runs under it.
    Claim(i64),
    /// A late result of an expired claim: taken while nobody has finished the job.
    Late,
    /// The partial picture of a job interrupted during the claim at this `event_seq`: taken
    /// while the job is still as the interrupt left it.
    Interrupted(i64),
}

/// Binds the values of one [`NewJob`] row (see `insert_jobs`) to a query.
macro_rules! bind_job {
    ($query:expr, $job:expr, $now:expr) => {
        $query
            .bind($job.id)
            .bind($job.kind)
            .bind($job.request)
            .bind($job.owner_id)
            .bind($job.origin)
            .bind($job.model)
            .bind($job.pixels)
            .bind($job.category_id)
            .bind($now)
            .bind($now)
    };
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Store {
    /// Inserts queued jobs in one statement (one commit for a burst of submissions). One flag
    /// per job, in order: false when its id is taken (nothing was written for it).
    pub async fn insert_jobs(&self, jobs: &[NewJob<'_>]) -> Result<Vec<bool>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let _turn = self.write_turn().await;
        const INSERT: &str = "INSERT INTO jobs (id, kind, request, status, attempts, owner_id, \
             origin, model, pixels, category_id, event_seq, created_at, updated_at) VALUES ";
        const ROW: &str = "(?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?, 1, ?, ?)";
        let now = now_ms();
        let all = self.sql(&format!("{INSERT}{}", vec![ROW; jobs.len()].join(", ")));
        let inserted = on_pool!(self, pool => {
            let mut query = sqlx::query(all);
            for job in jobs {
                query = bind_job!(query, job, now);
            }
            query.execute(pool).await.map(|done| done.rows_affected())
        });
        match inserted {
            Ok(_) => return Ok(vec![true; jobs.len()]),
            Err(err) if is_unique_violation(&err) => {}
            Err(err) => return Err(err.into()),
        }
        // A taken id (rare): the statement changed nothing; insert one by one to find it.
        let one = self.sql(&format!("{INSERT}{ROW}"));
        let mut done = Vec::with_capacity(jobs.len());
        for job in jobs {
            let inserted = on_pool!(self, pool => {
                bind_job!(sqlx::query(AssertSqlSafe(one.0.clone())), job, now)
                    .execute(pool)
                    .await
                    .map(|done| done.rows_affected())
            });
            match inserted {
                Ok(_) => done.push(true),
                Err(err) if is_unique_violation(&err) => done.push(false),
                Err(err) => return Err(err.into()),
            }
        }
        Ok(done)
    }

    /// Inserts one queued job. Fails with a unique-key error if the id exists.
    pub async fn insert_job(&self, job: &NewJob<'_>) -> Result<()> {
        match self.insert_jobs(std::slice::from_ref(job)).await?[..] {
            [true] => Ok(()),
            _ => Err(sqlx::Error::Protocol(format!("job id {} is taken", job.id)).into()),
        }
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

    /// Queued and running jobs whose origin starts with `prefix` (no `%` or `_` in it), oldest
    /// first.
    pub async fn unfinished_jobs_from(&self, prefix: &str) -> Result<Vec<JobRow>> {
        let sql = self.sql(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') \
             AND origin LIKE ? ORDER BY seq"
        ));
        debug_assert!(!prefix.contains(['%', '_']), "a literal prefix");
        let pattern = format!("{prefix}%");
        let rows = on_pool!(self, pool => {
            sqlx::query_as::<_, JobRow>(sql).bind(pattern).fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// The queue as it stands: running jobs, then queued ones, each in claim order, at most
    /// `limit` (for the admin view).
    pub async fn unfinished_jobs(&self, limit: i64) -> Result<Vec<JobRow>> {
        let sql = self.sql(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') \
             ORDER BY CASE WHEN status = 'running' THEN 0 ELSE 1 END, seq LIMIT ?"
        ));
        let rows = on_pool!(self, pool => {
            sqlx::query_as::<_, JobRow>(sql).bind(limit).fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// The latest `limit` jobs that ended with `status` (finished, failed…), newest end first
    /// (for the dashboard's gallery and failures).
    pub async fn recent_jobs(&self, status: JobStatus, limit: i64) -> Result<Vec<JobRow>> {
        let sql = self.sql(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE status = ? \
             ORDER BY finished_at DESC, seq DESC LIMIT ?"
        ));
        let rows = on_pool!(self, pool => {
            sqlx::query_as::<_, JobRow>(sql)
                .bind(status.as_str())
                .bind(limit)
                .fetch_all(pool)
                .await?
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

    /// Queued and running jobs ahead of job `id` in claim order (the queue's `seq`); `None`
    /// when there is no such job. Two indexed reads, for "Queued: position N".
    pub async fn jobs_ahead(&self, id: &str) -> Result<Option<i64>> {
        let seq_of = self.sql("SELECT seq FROM jobs WHERE id = ?");
        let seq: Option<i64> = on_pool!(self, pool => {
            sqlx::query_scalar(seq_of).bind(id).fetch_optional(pool).await?
        });
        let Some(seq) = seq else { return Ok(None) };
        let count =
            self.sql("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running') AND seq < ?");
        let n: i64 = on_pool!(self, pool => {
            sqlx::query_scalar(count).bind(seq).fetch_one(pool).await?
        });
        Ok(Some(n))
    }

    /// Claims the oldest queued job for `backend` on `host`, leased for [`DEFAULT_LEASE`].
    pub async fn claim_job(&self, host: &str, backend: &str) -> Result<Option<JobRow>> {
        Ok(self
            .claim_jobs(host, backend, ClaimFilter::default(), 1, DEFAULT_LEASE)
            .await?
            .pop())
    }

    /// The id and model of the oldest queued job that `filter` lets through.
    pub async fn oldest_queued(&self, filter: ClaimFilter<'_>) -> Result<Option<(String, String)>> {
        let sql = self.sql(&format!(
            "SELECT id, model FROM jobs WHERE status = 'queued'{} ORDER BY seq LIMIT 1",
            filter.sql()
        ));
        let row = on_pool!(self, pool => {
            let query = sqlx::query_as::<_, (String, String)>(sql);
            bind_filter!(query, filter).fetch_optional(pool).await?
        });
        Ok(row)
    }

    /// Claims up to `limit` of the oldest queued jobs that `filter` lets through, oldest
    /// first: each becomes running, its attempt counter and event sequence go up, and `host`
    /// holds it for `lease` (see [`Store::renew_leases`]). Empty when nothing fits (or every
    /// fitting row is locked by another host's claim).
    pub async fn claim_jobs(
        &self,
        host: &str,
        backend: &str,
        filter: ClaimFilter<'_>,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<JobRow>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut rows =
            retry_transient(|| self.claim_jobs_once(host, backend, filter, limit as i64, lease))
                .await?;
        rows.sort_by_key(|row| row.seq);
        Ok(rows)
    }

    async fn claim_jobs_once(
        &self,
        host: &str,
        backend: &str,
        filter: ClaimFilter<'_>,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<JobRow>> {
        let _turn = self.write_turn().await;
        const SET: &str = "UPDATE jobs SET status = 'running', attempts = attempts + 1, \
             event_seq = event_seq + 1, claimed_by = ?, lease_until = ?, backend = ?, \
             started_at = ?, updated_at = ?";
        let now = now_ms();
        let until = now.saturating_add(duration_ms(lease));
        let pick = format!(
            "SELECT seq FROM jobs WHERE status = 'queued'{} ORDER BY seq LIMIT ?",
            filter.sql()
        );
        match &self.pool {
            // One statement; SQLite has a single writer.
            Pool::Sqlite(pool) => {
                let sql = AssertSqlSafe(format!(
                    "{SET} WHERE seq IN ({pick}) AND status = 'queued' RETURNING {JOB_COLUMNS}"
                ));
                let query = sqlx::query_as::<_, JobRow>(sql)
                    .bind(host)
                    .bind(until)
                    .bind(backend)
                    .bind(now)
                    .bind(now);
                Ok(bind_filter!(query, filter)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?)
            }
            // One statement; the CTE locks the rows it picks and skips those other hosts hold
            // (a plain `IN (subquery … LIMIT)` may be re-planned and pick other rows).
            Pool::Postgres(pool) => {
                let sql = self.sql(&format!(
                    "WITH picked AS ({} FOR UPDATE SKIP LOCKED) {SET} FROM picked \
                     WHERE jobs.seq = picked.pick RETURNING {JOB_COLUMNS}",
                    pick.replacen("SELECT seq", "SELECT seq AS pick", 1)
                ));
                let query = bind_filter!(sqlx::query_as::<_, JobRow>(sql), filter);
                Ok(query
                    .bind(limit)
                    .bind(host)
                    .bind(until)
                    .bind(backend)
                    .bind(now)
                    .bind(now)
                    .fetch_all(pool)
                    .await?)
            }
            // MariaDB has no `UPDATE … RETURNING`: lock, update, read back in one transaction.
            Pool::MySql(pool) => {
                let mut tx = pool.begin().await?;
                let select = AssertSqlSafe(format!("{pick} FOR UPDATE SKIP LOCKED"));
                let seqs: Vec<i64> = bind_filter!(sqlx::query_scalar::<_, i64>(select), filter)
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
                    .bind(until)
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

    /// Marks running jobs finished and stores their images, in one transaction (one commit
    /// for a burst of results). One answer per completion, in order: the job's new event
    /// sequence number, or `None` (and nothing written) when the claim was stale — the job
    /// was requeued, interrupted or finished by someone else meanwhile.
    pub async fn finish_jobs(&self, items: &[Completion<'_>]) -> Result<Vec<Option<i64>>> {
        retry_transient(|| self.finish_jobs_once(items)).await
    }

    async fn finish_jobs_once(&self, items: &[Completion<'_>]) -> Result<Vec<Option<i64>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let _turn = self.write_turn().await;
        let now = now_ms();
        // Three statements for the whole batch: read (and lock) the jobs' states, finish the
        // ones whose claim still holds, store their images.
        let ids = vec!["?"; items.len()].join(", ");
        // SQLite takes the write lock at BEGIN (a read transaction that later writes would
        // fail with SQLITE_BUSY if another connection wrote meanwhile); the others lock the
        // rows they read.
        let (begin, lock) = match self.kind {
            DatabaseKind::Sqlite => ("BEGIN IMMEDIATE", ""),
            DatabaseKind::MySql | DatabaseKind::Postgres => ("BEGIN", " FOR UPDATE"),
        };
        let read = self.sql(&format!(
            "SELECT id, owner_id, status, event_seq FROM jobs WHERE id IN ({ids}) \
             ORDER BY id{lock}"
        ));
        let done = on_pool!(self, pool => {
            let mut tx = pool.begin_with(begin).await?;
            let mut query = sqlx::query_as::<_, (String, String, String, i64)>(read);
            for item in items {
                query = query.bind(item.id);
            }
            let states: HashMap<String, (String, String, i64)> = query
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|(id, owner, status, seq)| (id, (owner, status, seq)))
                .collect();
            // A claim holds when the job still runs at the fence; a late result (no fence) is
            // taken while nobody has finished the job. The first result for a job wins.
            let mut taken: HashSet<&str> = HashSet::new();
            let accepted: Vec<Option<(&Completion<'_>, &str, i64)>> = items
                .iter()
                .map(|item| {
                    let (owner, status, seq) = states.get(item.id)?;
                    let holds = match item.fence {
                        Fence::Claim(fence) => status == "running" && *seq == fence,
                        Fence::Late => status == "queued" || status == "running",
                        Fence::Interrupted(fence) => status == "interrupted" && *seq == fence + 1,
                    };
                    if !holds || !taken.insert(item.id) {
                        return None;
                    }
                    Some((item, owner.as_str(), seq + 1))
                })
                .collect();
            let finished: Vec<_> = accepted.iter().flatten().collect();
            if !finished.is_empty() {
                let list = vec!["?"; finished.len()].join(", ");
                let backend = "WHEN ? THEN ? ".repeat(finished.len());
                let update = self.sql(&format!(
                    "UPDATE jobs SET status = 'finished', finished_at = ?, updated_at = ?, \
                     last_error = NULL, preview = NULL, event_seq = event_seq + 1, \
                     backend = CASE id {backend}END WHERE id IN ({list})"
                ));
                let mut query = sqlx::query(update).bind(now).bind(now);
                for (item, _, _) in &finished {
                    query = query.bind(item.id).bind(item.backend);
                }
                for (item, _, _) in &finished {
                    query = query.bind(item.id);
                }
                let changed = query.execute(&mut *tx).await?.rows_affected();
                if changed != finished.len() as u64 {
                    // Cannot happen under the lock; never store images for jobs left as they were.
                    return Err(sqlx::Error::Protocol(format!(
                        "finished {changed} of {} jobs",
                        finished.len()
                    ))
                    .into());
                }
                let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; finished.len()].join(", ");
                let insert = self.sql(&format!(
                    "INSERT INTO images (id, owner_id, png, info, width, height, category_id, \
                     created_at) VALUES {rows}"
                ));
                let mut query = sqlx::query(insert);
                for (item, owner, _) in &finished {
                    let image = &item.image;
                    query = query
                        .bind(item.id)
                        .bind(*owner)
                        .bind(image.png)
                        .bind(image.info)
                        .bind(i64::from(image.width))
                        .bind(i64::from(image.height))
                        .bind(image.category_id)
                        .bind(now);
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            accepted
                .iter()
                .map(|done| done.map(|(_, _, seq)| seq))
                .collect::<Vec<_>>()
        });
        Ok(done)
    }

    /// Moves a running job (claimed at `fence`) to `status` with `error`; false when the
    /// claim is stale.
    pub async fn end_attempt(
        &self,
        id: &str,
        fence: i64,
        status: JobStatus,
        error: &str,
    ) -> Result<bool> {
        let _turn = self.write_turn().await;
        let sql = self.sql(
            "UPDATE jobs SET status = ?, last_error = ?, updated_at = ?, finished_at = ?, \
             preview = NULL, event_seq = event_seq + 1 \
             WHERE id = ? AND status = 'running' AND event_seq = ?",
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
                .bind(fence)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(changed == 1)
    }

    /// Records a backend fault on the claim made at `fence`: the job goes back to the queue,
    /// or fails when this was fault number `max_faults`. Returns the new status, or `None`
    /// when the claim is stale.
    pub async fn fault_job(
        &self,
        id: &str,
        fence: i64,
        max_faults: i64,
        reason: &str,
    ) -> Result<Option<JobStatus>> {
        retry_transient(|| self.fault_job_once(id, fence, max_faults, reason, false)).await
    }

    /// [`Store::fault_job`] for a claim whose lease ran out: nothing happens if its host
    /// renewed the lease meanwhile.
    pub async fn expire_lease(
        &self,
        id: &str,
        fence: i64,
        max_faults: i64,
        reason: &str,
    ) -> Result<Option<JobStatus>> {
        retry_transient(|| self.fault_job_once(id, fence, max_faults, reason, true)).await
    }

    async fn fault_job_once(
        &self,
        id: &str,
        fence: i64,
        max_faults: i64,
        reason: &str,
        expired_only: bool,
    ) -> Result<Option<JobStatus>> {
        let _turn = self.write_turn().await;
        // `faults` is assigned last: MariaDB evaluates assignments left to right, PostgreSQL and
        // SQLite see old values everywhere; so every engine reads the old `faults` above.
        let update = self.sql(&format!(
            "UPDATE jobs SET status = CASE WHEN faults + 1 >= ? THEN 'failed' ELSE 'queued' END, \
             finished_at = CASE WHEN faults + 1 >= ? THEN ? ELSE NULL END, \
             last_error = ?, updated_at = ?, preview = NULL, event_seq = event_seq + 1, \
             faults = faults + 1 \
             WHERE id = ? AND status = 'running' AND event_seq = ?{}",
            if expired_only {
                " AND lease_until < ?"
            } else {
                ""
            }
        ));
        let select = self.sql("SELECT status FROM jobs WHERE id = ?");
        let now = now_ms();
        let status: Option<String> = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let query = sqlx::query(update)
                .bind(max_faults)
                .bind(max_faults)
                .bind(now)
                .bind(reason)
                .bind(now)
                .bind(id)
                .bind(fence);
            let query = if expired_only { query.bind(now) } else { query };
            let changed = query
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

    /// Marks a queued or running job interrupted; returns its row as it was before, or
    /// `None` if it was not queued or running.
    pub async fn interrupt_job(&self, id: &str) -> Result<Option<JobRow>> {
        let _turn = self.write_turn().await;
        let Some(job) = self.job(id).await? else {
            return Ok(None);
        };
        if !matches!(job.status(), JobStatus::Queued | JobStatus::Running) {
            return Ok(None);
        }
        let sql = self.sql(
            "UPDATE jobs SET status = 'interrupted', updated_at = ?, finished_at = ?, \
             preview = NULL, event_seq = event_seq + 1 WHERE id = ? AND event_seq = ?",
        );
        let now = now_ms();
        let changed = on_pool!(self, pool => {
            sqlx::query(sql)
                .bind(now)
                .bind(now)
                .bind(id)
                .bind(job.event_seq)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok((changed == 1).then_some(job))
    }

    /// Puts a failed job back in the queue at its old place, with its fault count cleared (an
    /// operator's retry); returns its row as it was before, or `None` when it is not failed.
    pub async fn requeue_failed(&self, id: &str, reason: &str) -> Result<Option<JobRow>> {
        let _turn = self.write_turn().await;
        let Some(job) = self.job(id).await? else {
            return Ok(None);
        };
        if job.status() != JobStatus::Failed {
            return Ok(None);
        }
        let sql = self.sql(
            "UPDATE jobs SET status = 'queued', faults = 0, last_error = ?, updated_at = ?, \
             finished_at = NULL, preview = NULL, event_seq = event_seq + 1 \
             WHERE id = ? AND status = 'failed' AND event_seq = ?",
        );
        let now = now_ms();
        let changed = on_pool!(self, pool => {
            sqlx::query(sql)
                .bind(reason)
                .bind(now)
                .bind(id)
                .bind(job.event_seq)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok((changed == 1).then_some(job))
    }

    /// Extends the leases of the jobs `host` runs to `lease` from now; how many it holds.
    pub async fn renew_leases(&self, host: &str, lease: Duration) -> Result<u64> {
        let _turn = self.write_turn().await;
        let sql =
            self.sql("UPDATE jobs SET lease_until = ? WHERE status = 'running' AND claimed_by = ?");
        let until = now_ms().saturating_add(duration_ms(lease));
        let n = on_pool!(self, pool => {
            sqlx::query(sql).bind(until).bind(host).execute(pool).await?.rows_affected()
        });
        Ok(n)
    }

    /// Running jobs whose lease ran out (their host stopped renewing it), oldest first, at
    /// most `limit`. Settle each with [`Store::fault_job`] on its `event_seq`: a host that
    /// renews or settles it meanwhile wins, and the fault is not recorded twice.
    pub async fn expired_leases(&self, limit: i64) -> Result<Vec<JobRow>> {
        let sql = self.sql(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'running' AND lease_until < ? \
             ORDER BY seq LIMIT ?"
        ));
        let rows = on_pool!(self, pool => {
            sqlx::query_as::<_, JobRow>(sql).bind(now_ms()).bind(limit).fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// Puts every job left running by `host` back in the queue (after a crash or at shutdown).
    pub async fn requeue_running(&self, host: &str, reason: &str) -> Result<u64> {
        let _turn = self.write_turn().await;
        let sql = self.sql(
            "UPDATE jobs SET status = 'queued', last_error = ?, updated_at = ?, preview = NULL, \
             event_seq = event_seq + 1 WHERE status = 'running' AND claimed_by = ?",
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

    /// Stores the latest live preview of a running job (claimed at `fence`).
    pub async fn set_preview(&self, id: &str, fence: i64, png: &[u8]) -> Result<bool> {
        let _turn = self.write_turn().await;
        let sql = self.sql(
            "UPDATE jobs SET preview = ? WHERE id = ? AND status = 'running' AND event_seq = ?",
        );
        let changed = on_pool!(self, pool => {
            sqlx::query(sql).bind(png).bind(id).bind(fence).execute(pool).await?.rows_affected()
        });
        Ok(changed == 1)
    }

    /// The latest live preview of a running job.
    pub async fn preview_png(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let sql = self.sql("SELECT preview FROM jobs WHERE id = ?");
        let png: Option<Option<Vec<u8>>> = on_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(id).fetch_optional(pool).await?
        });
        Ok(png.flatten())
    }
}
