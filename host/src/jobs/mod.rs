//! The job service: the job model, the durable queue, the event stream and the backend
//! contract.
//!
//! Jobs come in through the intake (the one caller of [`JobService::enqueue`]) and go out
//! through backends, which claim and settle them only through the [`backend`] contract
//! ([`BackendPort`], [`Lease`]). Every change goes to the store first, then out as a
//! [`JobEvent`]: to the watchers of that job ([`JobWatch`], which cannot miss a job's end) and
//! to every [`Subscription`]. Front ends read jobs and images through a [`JobReader`]; nobody
//! writes the jobs table but this service.
//!
//! The state machine: `queued` → `running` (a claim: attempt + 1) → `finished` | `failed` |
//! `interrupted`, or back to `queued` (requeue, a backend fault below the fault limit, a host
//! restart). Every change bumps the job's event sequence number in the same statement, and a
//! claim's changes are fenced on the number its claim returned, so a stale backend changes
//! nothing and a job cannot finish twice. A claim is a lease ([`JobSettings::lease`]): this
//! host renews its claims, and requeues as a fault any host's running job whose lease ran out
//! (that host died), so hosts sharing a database lose nothing when one is killed. At start,
//! jobs this host left running (a crash, `kill -9`) go back to the queue at once.
//!
//! With several hosts on one database, [`relay`] carries every event to the other hosts
//! (PostgreSQL `NOTIFY`, a polled table on MariaDB) and replays theirs here.
//!
//! Submissions and results are group-committed ([`writer`]); the queue depth is kept in
//! memory (recounted from the store every [`RECOUNT`]).

pub mod backend;
mod events;
mod model;
mod relay;
mod writer;

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

pub use backend::{
    Backend, BackendPort, Backends, Capabilities, DrainError, Drains, Expired, Interrupted, Lease,
    NotStored,
};
pub use events::{EventKind, JobEvent, JobWatch, Received, Subscription};
pub use model::{JobId, Origin, Task, Txt2Img, png_size};

use crate::store::{ClaimFilter, Fence, JobRow, JobStatus, Store, StoreError};

/// A failed job-service operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The store failed.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The request could not be encoded or decoded.
    #[error("invalid job request")]
    Request(#[source] serde_json::Error),
    /// The id is taken by another job.
    #[error("job id {0} is taken")]
    DuplicateId(JobId),
    /// The job was interrupted while running.
    #[error("job was interrupted")]
    Interrupted,
}

impl From<StoreError> for JobError {
    fn from(err: StoreError) -> Self {
        JobError::Store(Arc::new(err))
    }
}

impl From<Arc<StoreError>> for JobError {
    fn from(err: Arc<StoreError>) -> Self {
        JobError::Store(err)
    }
}

/// How often the in-memory queue depth is recounted from the store (other hosts sharing the
/// database change it too).
pub const RECOUNT: Duration = Duration::from_secs(5);

/// Most jobs with an expired lease settled per round of the lease keeper.
const EXPIRED_PER_ROUND: i64 = 100;

/// How long a backend waits for a wake-up before looking at the store again (jobs queued by
/// another host sharing the database send no wake-up here).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// What the job service is configured with.
#[derive(Clone, Debug)]
pub struct JobSettings {
    /// This host's id in claims (`claimed_by`): jobs it left running are requeued at its
    /// next start, or by another host once their lease runs out.
    pub host: String,
    /// Backend faults after which a job fails.
    pub max_faults: u32,
    /// Capacity of the broadcast channel of [`Subscription`]s.
    pub event_buffer: usize,
    /// How long a claim holds without renewal: this host renews its claims every third of
    /// it, and requeues (as a fault) any host's running job whose lease ran out.
    pub lease: Duration,
}

impl JobSettings {
    /// Defaults for `host`: 2 faults, 1,024 buffered events, 30 s leases.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            max_faults: 2,
            event_buffer: 1024,
            lease: crate::store::DEFAULT_LEASE,
        }
    }
}

/// A job a backend holds: its row, decoded request and the sequence number that fences it.
#[derive(Clone, Debug)]
pub(crate) struct Claim {
    pub row: JobRow,
    pub id: JobId,
    pub request: Txt2Img,
    pub owner: Arc<str>,
    pub origin: Arc<Origin>,
}

impl Claim {
    fn fence(&self) -> i64 {
        self.row.event_seq
    }
}

/// Reads jobs, images and previews for front ends, and follows jobs; cheap to clone.
#[derive(Clone, Debug)]
pub struct JobReader {
    store: Arc<Store>,
    hub: Arc<events::Hub>,
    queued: Arc<AtomicI64>,
    host: Arc<str>,
}

impl JobReader {
    /// This host's id (what its claims carry in `claimed_by`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Follows an existing job from its current state (the first event reports it).
    pub fn watch(&self, job: JobId) -> JobWatch {
        self.hub.watch(job, self.clone(), 0)
    }

    /// Every event of every job.
    pub fn subscribe(&self) -> Subscription {
        self.hub.subscribe()
    }

    /// Jobs that somebody in this process follows.
    pub fn watched_jobs(&self) -> usize {
        self.hub.watched()
    }

    /// One job's row.
    pub async fn job(&self, id: &str) -> Result<Option<JobRow>, JobError> {
        Ok(self.store.job(id).await?)
    }

    /// One job's request, if the job exists and its request is readable.
    pub async fn request(&self, id: &str) -> Result<Option<Txt2Img>, JobError> {
        Ok(self
            .job(id)
            .await?
            .and_then(|row| serde_json::from_str(&row.request).ok()))
    }

    /// The finished picture of a job.
    pub async fn image_png(&self, id: &str) -> Result<Option<Vec<u8>>, JobError> {
        Ok(self.store.image_png(id).await?)
    }

    /// The generation info stored with a finished picture (JSON text).
    pub async fn image_info(&self, id: &str) -> Result<Option<String>, JobError> {
        Ok(self.store.image_info(id).await?)
    }

    /// The latest live preview of a running job.
    pub async fn preview_png(&self, id: &str) -> Result<Option<Vec<u8>>, JobError> {
        Ok(self.store.preview_png(id).await?)
    }

    /// One page of `owner`'s jobs, newest first: the total and `(id, category_id)` of each
    /// (see [`Store::owner_jobs`]).
    pub async fn owner_jobs(
        &self,
        owner: &str,
        category: Option<i64>,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<(String, Option<i64>)>), JobError> {
        Ok(self
            .store
            .owner_jobs(owner, category, limit, offset)
            .await?)
    }

    /// Jobs waiting in the queue (the job service's count, see [`JobService::queue_depth`]).
    pub fn queue_depth(&self) -> u64 {
        self.queued.load(Ordering::Relaxed).max(0) as u64
    }

    /// Running jobs, then queued ones, in claim order, at most `limit`.
    pub async fn unfinished(&self, limit: i64) -> Result<Vec<JobRow>, JobError> {
        Ok(self.store.unfinished_jobs(limit).await?)
    }

    /// The latest `limit` jobs that ended with `status`, newest first.
    pub async fn recent(&self, status: JobStatus, limit: i64) -> Result<Vec<JobRow>, JobError> {
        Ok(self.store.recent_jobs(status, limit).await?)
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> Result<(), JobError> {
        Ok(self.store.ping().await?)
    }

    /// Owner, category, queue time and Discord message of a job.
    pub async fn meta(&self, id: &str) -> Result<Option<crate::store::JobMeta>, JobError> {
        Ok(self.store.job_meta(id).await?)
    }

    /// A job's place in line: 1 + the queued and running jobs ahead of it in claim order
    /// (exact, read from the store); `None` for an unknown job.
    pub async fn queue_position(&self, id: &str) -> Result<Option<u64>, JobError> {
        let ahead = self.store.jobs_ahead(id).await?;
        Ok(ahead.map(|n| u64::try_from(n).unwrap_or(0) + 1))
    }

    /// Queued and running jobs whose stored origin starts with `prefix`, oldest first.
    pub async fn unfinished_from(&self, prefix: &str) -> Result<Vec<JobRow>, JobError> {
        Ok(self.store.unfinished_jobs_from(prefix).await?)
    }
}

/// The meeting point of front ends and backends; share it behind an `Arc`.
pub struct JobService {
    store: Arc<Store>,
    settings: JobSettings,
    hub: Arc<events::Hub>,
    writers: writer::Writers,
    /// Bumped whenever a job may have become claimable; backends wait on it.
    work: watch::Sender<u64>,
    /// Running jobs asked to stop; their backend learns it at its next progress report.
    interrupted: Mutex<HashSet<JobId>>,
    /// Jobs waiting, as this process counts them.
    queued: Arc<AtomicI64>,
    /// `settings.host`, as events carry it.
    host_id: Arc<str>,
}

impl std::fmt::Debug for JobService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobService")
            .field("host", &self.settings.host)
            .finish_non_exhaustive()
    }
}

/// A request as it is stored.
fn request_json(request: &Txt2Img) -> Result<String, JobError> {
    serde_json::to_string(request).map_err(JobError::Request)
}

impl JobService {
    /// A service over `store`. Starts its tasks (event hub, writers, queue recount) on the
    /// current tokio runtime; they stop when the service is dropped.
    pub fn new(store: Arc<Store>, settings: JobSettings) -> Arc<Self> {
        let (work, _) = watch::channel(0);
        let service = Arc::new(Self {
            hub: Arc::new(events::Hub::start(settings.event_buffer)),
            writers: writer::Writers::start(store.clone()),
            store,
            host_id: Arc::from(settings.host.as_str()),
            settings,
            work,
            interrupted: Mutex::new(HashSet::new()),
            queued: Arc::new(AtomicI64::new(0)),
        });
        let weak = Arc::downgrade(&service);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(RECOUNT);
            loop {
                every.tick().await;
                let Some(service) = weak.upgrade() else {
                    return;
                };
                match service.store.count_jobs(JobStatus::Queued).await {
                    Ok(n) => service.queued.store(n, Ordering::Relaxed),
                    Err(err) => tracing::debug!(error = %err, "cannot recount the queue"),
                }
            }
        });
        let weak = Arc::downgrade(&service);
        let every = (service.settings.lease / 3).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(service) = weak.upgrade() else {
                    return;
                };
                service.keep_leases().await;
            }
        });
        service
    }

    /// Relays job events to and from the other hosts sharing the database (nothing on
    /// SQLite); call once, from the server. See [`relay`].
    pub fn relay_events(self: &Arc<Self>) {
        relay::start(self);
    }

    /// Renews the leases of this host's running jobs, then requeues (as a fault) the running
    /// jobs of any host whose lease ran out: that host died or lost the database.
    async fn keep_leases(&self) {
        let (host, lease) = (&self.settings.host, self.settings.lease);
        if let Err(err) = self.store.renew_leases(host, lease).await {
            tracing::warn!(error = %err, "cannot renew this host's job leases");
        }
        let expired = match self.store.expired_leases(EXPIRED_PER_ROUND).await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(error = %err, "cannot look for expired job leases");
                return;
            }
        };
        for row in expired {
            let holder = row.claimed_by.as_deref().unwrap_or("an unknown host");
            let reason = format!("the lease of host {holder} ran out");
            let id = JobId::from(row.id.as_str());
            let owner: Arc<str> = Arc::from(row.owner_id.as_str());
            let origin = Arc::new(Origin::parse(row.origin.as_deref()));
            match self
                .record_fault((&id, &owner, &origin), row.event_seq, &reason, true)
                .await
            {
                Ok(Some(_)) => {
                    metrics::counter!("easel_job_leases_expired_total").increment(1);
                    tracing::warn!(job_id = %id, holder, "a job's lease ran out");
                }
                Ok(None) => {} // Renewed or settled meanwhile.
                Err(err) => {
                    tracing::warn!(job_id = %id, error = %err, "cannot requeue a job whose lease ran out")
                }
            }
        }
    }

    /// The store (for backends' read-only queue queries).
    fn store(&self) -> &Store {
        &self.store
    }

    /// The name this process claims jobs under.
    pub fn host(&self) -> &str {
        &self.settings.host
    }

    /// A read handle for front ends.
    pub fn reader(&self) -> JobReader {
        JobReader {
            store: self.store.clone(),
            hub: self.hub.clone(),
            queued: self.queued.clone(),
            host: self.host_id.clone(),
        }
    }

    /// Every event of every job.
    pub fn subscribe(&self) -> Subscription {
        self.hub.subscribe()
    }

    /// Follows an existing job from its current state (the first event reports it).
    pub fn watch(&self, job: JobId) -> JobWatch {
        self.reader().watch(job)
    }

    /// Jobs that somebody in this process follows.
    pub fn watched_jobs(&self) -> usize {
        self.hub.watched()
    }

    /// Jobs waiting in the queue (this process's count, recounted every [`RECOUNT`]).
    pub fn queue_depth(&self) -> u64 {
        self.queued.load(Ordering::Relaxed).max(0) as u64
    }

    fn emit(&self, claim_like: (&JobId, &Arc<str>, &Arc<Origin>), seq: i64, kind: EventKind) {
        let (job, owner, origin) = claim_like;
        self.hub.emit(JobEvent {
            job: job.clone(),
            seq,
            owner: owner.clone(),
            origin: origin.clone(),
            host: self.host_id.clone(),
            relayed: false,
            kind,
        });
    }

    /// An event another host produced (see [`relay`]): an interrupt of a job this host runs
    /// reaches its backend, a job queued elsewhere wakes the idle backends here, and the event
    /// goes to this host's watchers and subscribers.
    async fn accept_relayed(&self, event: JobEvent) {
        match &event.kind {
            EventKind::Interrupted { was_running: true } => {
                match self.store.job(event.job.as_str()).await {
                    Ok(Some(row)) if row.claimed_by.as_deref() == Some(self.host()) => {
                        tracing::info!(job_id = %event.job, from = %event.host, "job interrupted on another host");
                        self.interrupted
                            .lock()
                            .expect("interrupt set poisoned")
                            .insert(event.job.clone());
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(job_id = %event.job, error = %err, "cannot check a relayed interrupt");
                    }
                }
            }
            EventKind::Queued | EventKind::Requeued { .. } => self.wake_backends(),
            _ => {}
        }
        self.hub.emit(event);
    }

    fn wake_backends(&self) {
        self.work.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Requeues what this host left running; call once at start.
    pub async fn recover(&self) -> Result<u64, JobError> {
        let n = self
            .store
            .requeue_running(
                &self.settings.host,
                "host restarted while the job was running",
            )
            .await?;
        if n > 0 {
            tracing::warn!(jobs = n, "requeued jobs left running by a previous run");
        }
        let queued = self.store.count_jobs(JobStatus::Queued).await?;
        self.queued.store(queued, Ordering::Relaxed);
        self.wake_backends();
        Ok(n)
    }

    /// Stores a new job under `id` and returns once it is durable; optionally follows it
    /// (the watcher is registered before the job can be claimed, so it misses nothing).
    /// Only the intake calls this (and benchmarks of the queue itself).
    pub(crate) async fn enqueue(
        &self,
        id: &JobId,
        owner: &str,
        origin: &Origin,
        request: &Txt2Img,
        follow: bool,
    ) -> Result<Option<JobWatch>, JobError> {
        let json = request_json(request)?;
        let watch = follow.then(|| self.hub.watch(id.clone(), self.reader(), 0));
        let inserted = self
            .writers
            .insert(writer::Insert {
                id: id.to_string(),
                kind: request.task.as_str(),
                request: json,
                owner: owner.to_owned(),
                origin: origin.to_stored(),
                model: request.model_name.clone(),
                pixels: i64::try_from(request.pixels()).unwrap_or(i64::MAX),
                category_id: request.category_id,
            })
            .await?;
        if !inserted {
            return Err(JobError::DuplicateId(id.clone()));
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(job_id = %id, owner, "job queued");
        let (owner, origin) = (Arc::from(owner), Arc::new(origin.clone()));
        self.emit((id, &owner, &origin), 1, EventKind::Queued);
        self.wake_backends();
        Ok(watch)
    }

    /// [`JobService::enqueue`] under a fresh random id; an id that collides with an old job
    /// is drawn again.
    pub(crate) async fn enqueue_new(
        &self,
        owner: &str,
        origin: &Origin,
        request: &Txt2Img,
        follow: bool,
    ) -> Result<(JobId, Option<JobWatch>), JobError> {
        let mut tries = 0;
        loop {
            let id = JobId::random();
            match self.enqueue(&id, owner, origin, request, follow).await {
                Ok(watch) => return Ok((id, watch)),
                Err(JobError::DuplicateId(_)) if tries < 5 => tries += 1,
                Err(err) => return Err(err),
            }
        }
    }

    /// Claims up to `limit` of the oldest queued jobs that `filter` allows, for `backend`.
    async fn claim_many(
        &self,
        backend: &Arc<str>,
        filter: ClaimFilter<'_>,
        limit: usize,
    ) -> Result<Vec<Claim>, JobError> {
        let rows = self
            .store
            .claim_jobs(
                &self.settings.host,
                backend,
                filter,
                limit,
                self.settings.lease,
            )
            .await?;
        self.queued.fetch_sub(rows.len() as i64, Ordering::Relaxed);
        let mut claims = Vec::with_capacity(rows.len());
        for row in rows {
            let id = JobId::from(row.id.as_str());
            let owner: Arc<str> = Arc::from(row.owner_id.as_str());
            let origin = Arc::new(Origin::parse(row.origin.as_deref()));
            let request = match serde_json::from_str(&row.request) {
                Ok(request) => request,
                Err(err) => {
                    // A row this build cannot read: fail it rather than loop on it forever.
                    let error = format!("stored request is unreadable: {err}");
                    if self
                        .store
                        .end_attempt(&row.id, row.event_seq, JobStatus::Failed, &error)
                        .await?
                    {
                        self.emit(
                            (&id, &owner, &origin),
                            row.event_seq + 1,
                            EventKind::Failed { error },
                        );
                    }
                    continue;
                }
            };
            tracing::info!(job_id = %id, %backend, attempt = row.attempts, "job started");
            self.emit(
                (&id, &owner, &origin),
                row.event_seq,
                EventKind::Started {
                    backend: backend.clone(),
                    attempt: row.attempts,
                },
            );
            claims.push(Claim {
                row,
                id,
                request,
                owner,
                origin,
            });
        }
        Ok(claims)
    }

    /// A receiver that changes whenever a job may have become claimable.
    fn work(&self) -> watch::Receiver<u64> {
        self.work.subscribe()
    }

    /// Reports progress; `Err(Interrupted)` tells the backend to stop.
    fn progress(
        &self,
        claim: &Claim,
        step: u32,
        total: u32,
        preview: bool,
    ) -> Result<(), JobError> {
        if self.take_interrupt(&claim.id) {
            return Err(JobError::Interrupted);
        }
        self.emit(
            (&claim.id, &claim.owner, &claim.origin),
            claim.fence(),
            EventKind::Progress {
                step,
                total,
                preview,
            },
        );
        Ok(())
    }

    /// Says that the backend running `claim` loads `model` for it first.
    fn model_changing(&self, claim: &Claim, model: &str) {
        self.emit(
            (&claim.id, &claim.owner, &claim.origin),
            claim.fence(),
            EventKind::ModelChanged {
                model: Arc::from(model),
            },
        );
    }

    /// Whether `id` was interrupted while running; keeps the mark.
    fn interrupt_requested(&self, id: &JobId) -> bool {
        self.interrupted
            .lock()
            .expect("interrupt set poisoned")
            .contains(id)
    }

    /// Whether `id` was interrupted while running; clears the mark.
    fn take_interrupt(&self, id: &JobId) -> bool {
        self.interrupted
            .lock()
            .expect("interrupt set poisoned")
            .remove(id)
    }

    /// Stores a result for the claim `fence` says (see [`Fence`]). False when nothing was
    /// written.
    async fn finish(
        &self,
        claim: &Claim,
        fence: Fence,
        backend: &str,
        png: Vec<u8>,
        info: String,
    ) -> Result<bool, JobError> {
        self.take_interrupt(&claim.id);
        // The stored size is the picture's own (a seed worker draws at its model's size).
        let (width, height) = png_size(&png).unwrap_or((claim.request.width, claim.request.height));
        let seq = self
            .writers
            .finish(writer::Finish {
                id: claim.id.to_string(),
                fence,
                backend: backend.to_owned(),
                png,
                info,
                width,
                height,
                category_id: claim.request.category_id,
            })
            .await?;
        let Some(seq) = seq else {
            tracing::info!(job_id = %claim.id, backend, "stale result dropped");
            return Ok(false);
        };
        tracing::info!(job_id = %claim.id, backend, ?fence, "job finished");
        self.emit(
            (&claim.id, &claim.owner, &claim.origin),
            seq,
            EventKind::Finished {
                backend: Arc::from(backend),
            },
        );
        Ok(true)
    }

    /// A backend fault (deadline passed, worker lost): the job is requeued, or fails once it
    /// has had `max_faults` faults. Returns the job's new status (`None`: the claim was stale).
    async fn fault(&self, claim: &Claim, reason: &str) -> Result<Option<JobStatus>, JobError> {
        self.take_interrupt(&claim.id);
        let who = (&claim.id, &claim.owner, &claim.origin);
        self.record_fault(who, claim.fence(), reason, false).await
    }

    /// Records a fault on the claim made at `fence` (with `lease_expired`, only if its lease
    /// is still out) and says so: requeued, or failed at the fault limit.
    async fn record_fault(
        &self,
        who: (&JobId, &Arc<str>, &Arc<Origin>),
        fence: i64,
        reason: &str,
        lease_expired: bool,
    ) -> Result<Option<JobStatus>, JobError> {
        let max_faults = self.settings.max_faults;
        let (id, limit) = (who.0.as_str(), i64::from(max_faults));
        let status = if lease_expired {
            self.store.expire_lease(id, fence, limit, reason).await?
        } else {
            self.store.fault_job(id, fence, limit, reason).await?
        };
        let seq = fence + 1;
        match status {
            Some(JobStatus::Failed) => {
                let error = format!("gave up after {max_faults} worker faults; last: {reason}");
                tracing::warn!(job_id = %who.0, error, "job failed");
                self.emit(who, seq, EventKind::Failed { error });
            }
            Some(_) => {
                tracing::warn!(job_id = %who.0, reason, "job requeued after a worker fault");
                self.queued.fetch_add(1, Ordering::Relaxed);
                self.emit(
                    who,
                    seq,
                    EventKind::Requeued {
                        reason: reason.to_owned(),
                        revived: false,
                    },
                );
                self.wake_backends();
            }
            None => {}
        }
        Ok(status)
    }

    /// Ends the claim with `status` (failed, or queued again) and says so.
    async fn end(&self, claim: &Claim, status: JobStatus, why: &str) -> Result<bool, JobError> {
        self.take_interrupt(&claim.id);
        let done = self
            .store
            .end_attempt(claim.id.as_str(), claim.fence(), status, why)
            .await?;
        if !done {
            return Ok(false);
        }
        let who = (&claim.id, &claim.owner, &claim.origin);
        let seq = claim.fence() + 1;
        if status == JobStatus::Queued {
            tracing::warn!(job_id = %claim.id, reason = why, "job requeued");
            self.queued.fetch_add(1, Ordering::Relaxed);
            self.emit(
                who,
                seq,
                EventKind::Requeued {
                    reason: why.to_owned(),
                    revived: false,
                },
            );
            self.wake_backends();
        } else {
            tracing::warn!(job_id = %claim.id, error = why, "job failed");
            self.emit(
                who,
                seq,
                EventKind::Failed {
                    error: why.to_owned(),
                },
            );
        }
        Ok(true)
    }

    /// Stores a live preview of a running job.
    async fn set_preview(&self, claim: &Claim, png: &[u8]) -> Result<bool, JobError> {
        Ok(self
            .store
            .set_preview(claim.id.as_str(), claim.fence(), png)
            .await?)
    }

    /// Interrupts a queued (removed from the queue) or running (its backend is told at its
    /// next progress report) job. `None` if the job is neither.
    pub async fn interrupt(&self, id: &str) -> Result<Option<JobStatus>, JobError> {
        let Some(before) = self.store.interrupt_job(id).await? else {
            return Ok(None);
        };
        let status = before.status();
        let was_running = status == JobStatus::Running;
        let id = JobId::from(id);
        if was_running {
            self.interrupted
                .lock()
                .expect("interrupt set poisoned")
                .insert(id.clone());
        } else {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        tracing::info!(job_id = %id, was_running, "job interrupted");
        let owner: Arc<str> = Arc::from(before.owner_id.as_str());
        let origin = Arc::new(Origin::parse(before.origin.as_deref()));
        self.emit(
            (&id, &owner, &origin),
            before.event_seq + 1,
            EventKind::Interrupted { was_running },
        );
        Ok(Some(status))
    }

    /// Puts a failed job back in the queue (an operator's retry: its fault count starts
    /// again); false when the job is not failed.
    pub async fn requeue_failed(&self, id: &str) -> Result<bool, JobError> {
        const REASON: &str = "requeued by an operator";
        let Some(before) = self.store.requeue_failed(id, REASON).await? else {
            return Ok(false);
        };
        self.queued.fetch_add(1, Ordering::Relaxed);
        let id = JobId::from(id);
        tracing::info!(job_id = %id, "failed job requeued by an operator");
        let owner: Arc<str> = Arc::from(before.owner_id.as_str());
        let origin = Arc::new(Origin::parse(before.origin.as_deref()));
        self.emit(
            (&id, &owner, &origin),
            before.event_seq + 1,
            EventKind::Requeued {
                reason: REASON.to_owned(),
                revived: true,
            },
        );
        self.wake_backends();
        Ok(true)
    }

    /// Sets or clears the category of `owner`'s job `id` (and its picture); false when
    /// `owner` has no such job. Whether `owner` owns the category is the caller's to check.
    pub async fn set_category(
        &self,
        id: &str,
        owner: &str,
        category: Option<i64>,
    ) -> Result<bool, JobError> {
        Ok(self.store.set_job_category(id, owner, category).await?)
    }

    /// Deletes `owner`'s job `id` and its picture, stopping it first when it is queued or
    /// running; false when `owner` has no such job.
    pub async fn delete(&self, id: &str, owner: &str) -> Result<bool, JobError> {
        let Some(row) = self.store.job(id).await? else {
            return Ok(false);
        };
        if row.owner_id != owner {
            return Ok(false);
        }
        if matches!(row.status(), JobStatus::Queued | JobStatus::Running) {
            self.interrupt(id).await?;
        }
        let deleted = self.store.delete_job(id, owner).await?;
        if deleted {
            tracing::info!(job_id = id, "job and picture deleted by their owner");
        }
        Ok(deleted)
    }

    /// Puts this host's running jobs back in the queue (at a clean stop).
    pub async fn requeue_running(&self, reason: &str) -> Result<u64, JobError> {
        let n = self
            .store
            .requeue_running(&self.settings.host, reason)
            .await?;
        self.queued.fetch_add(n as i64, Ordering::Relaxed);
        Ok(n)
    }
}
