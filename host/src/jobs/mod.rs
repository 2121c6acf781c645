//! The job service: the job model, the durable queue and the event stream.
//!
//! Front ends (HTTP today; Discord, socket.io and gRPC later) enqueue [`Txt2Img`] requests;
//! backends (the simulated one today; ZeroMQ workers and Forge later) claim them, report
//! progress and finish or fail them. Every change goes to the store first, then out as a
//! [`JobEvent`] on a broadcast channel that any subsystem may subscribe to. Nobody reaches into
//! another subsystem: this service is the meeting point.
//!
//! A claim is identified by the job id and its attempt number: finishing, failing or requeueing
//! with a stale attempt changes nothing, so a job can never finish twice. At start, jobs this
//! host left running (a crash, `kill -9`) go back to the queue.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};

use crate::store::{JobRow, JobStatus, NewImage, NewJob, Store, StoreError};

/// A fresh Navigator job id: 8 lowercase hex digits.
pub fn new_job_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A text-to-image request, normalised (defaults applied) by the front end that took it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Txt2Img {
    /// Checkpoint name.
    pub model_name: String,
    /// What to draw.
    pub prompt: String,
    /// What to avoid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// Sampling steps.
    pub steps: u32,
    /// High-res fix steps (Navigator: `hrf_steps || steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hrf_steps: Option<u32>,
    /// `-1`: random.
    pub seed: i64,
    /// Classifier-free guidance.
    pub cfg_scale: f64,
    /// Flux distilled CFG.
    pub distilled_cfg: f64,
    /// Sampler.
    pub sampler_name: String,
    /// Scheduler.
    pub scheduler_name: String,
    /// 0 means unset.
    pub denoising_strength: f64,
    /// Force the high-res fix.
    pub force_hr_fix: bool,
    /// Variation seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subseed: Option<i64>,
    /// Variation strength.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subseed_strength: Option<f64>,
    /// Upscaler for the high-res fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upscaler_name: Option<String>,
    /// FreeU + SAG.
    pub image_enhancements: bool,
    /// Extra Forge modules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<Vec<String>>,
    /// Image category of the owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_id: Option<i64>,
}

/// What happened to a job; broadcast to every subscriber.
#[derive(Clone, Debug, PartialEq)]
pub enum JobEvent {
    /// Stored and waiting.
    Queued {
        /// Job id.
        job_id: String,
    },
    /// A backend claimed it.
    Started {
        /// Job id.
        job_id: String,
        /// Which backend.
        backend: String,
        /// 1 for the first try.
        attempt: i64,
    },
    /// A step was done.
    Progress {
        /// Job id.
        job_id: String,
        /// Steps done.
        step: u32,
        /// Steps in all.
        total: u32,
    },
    /// The image is stored.
    Finished {
        /// Job id.
        job_id: String,
        /// Which backend made it.
        backend: String,
    },
    /// Given up.
    Failed {
        /// Job id.
        job_id: String,
        /// Why.
        error: String,
    },
    /// Back in the queue after a failed attempt.
    Requeued {
        /// Job id.
        job_id: String,
        /// Why.
        reason: String,
    },
    /// Stopped or removed on request.
    Interrupted {
        /// Job id.
        job_id: String,
        /// Whether it was running (else it was still queued).
        was_running: bool,
    },
}

/// A failed job-service operation.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request could not be encoded or decoded.
    #[error("invalid job request: {0}")]
    Request(#[from] serde_json::Error),
    /// The job was interrupted while running.
    #[error("job was interrupted")]
    Interrupted,
}

impl JobError {
    /// The id is taken by another job (draw another one).
    pub fn is_duplicate_id(&self) -> bool {
        matches!(self, JobError::Store(StoreError::Database(sqlx::Error::Database(db))) if db.is_unique_violation())
    }
}

/// A finished image to record: the claim it answers, whether it came after the claim
/// expired, and what the backend made.
#[derive(Clone, Copy, Debug)]
pub struct JobResult<'a> {
    /// The claim.
    pub claim: &'a Claim,
    /// Arrived after the claim expired: stored only if nobody finished the job meanwhile.
    pub late: bool,
    /// Which backend made it.
    pub backend: &'a str,
    /// PNG bytes.
    pub png: &'a [u8],
    /// Generation info (JSON).
    pub info: &'a str,
}

/// A job a backend holds: its row, decoded request and the attempt that identifies the claim.
#[derive(Clone, Debug)]
pub struct Claim {
    /// The stored row at claim time.
    pub row: JobRow,
    /// The request.
    pub request: Txt2Img,
    /// The claim's attempt number.
    pub attempt: i64,
}

impl Claim {
    /// The job id.
    pub fn id(&self) -> &str {
        &self.row.id
    }
}

/// The meeting point of front ends and backends; cheap to share behind an `Arc`.
pub struct JobService {
    store: Arc<Store>,
    host: String,
    events: broadcast::Sender<JobEvent>,
    work: Notify,
    interrupted: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for JobService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobService")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// The size of a PNG, from its header; `None` if the bytes are not a PNG.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 24 || &bytes[..8] != SIGNATURE || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let height = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    (width > 0 && height > 0).then_some((width, height))
}

/// How long a backend waits for a wake-up before looking at the store again (jobs queued by
/// another host sharing the database send no wake-up here).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

impl JobService {
    /// A service over `store`; `host` names this process's claims.
    pub fn new(store: Arc<Store>, host: impl Into<String>) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            store,
            host: host.into(),
            events,
            work: Notify::new(),
            interrupted: Mutex::new(HashSet::new()),
        }
    }

    /// The store underneath (for read-only routes).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Subscribes to job events.
    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    fn emit(&self, event: JobEvent) {
        // No subscriber is fine: events are a notification, the store is the record.
        let _ = self.events.send(event);
    }

    /// Requeues what this host left running; call once at start.
    pub async fn recover(&self) -> Result<u64, JobError> {
        let n = self
            .store
            .requeue_running(&self.host, "host restarted while the job was running")
            .await?;
        if n > 0 {
            tracing::warn!(jobs = n, "requeued jobs left running by a previous run");
            self.work.notify_one();
        }
        Ok(n)
    }

    /// Stores a new job and returns once it is durable.
    pub async fn enqueue(
        &self,
        id: &str,
        owner_id: &str,
        origin: Option<&str>,
        request: &Txt2Img,
    ) -> Result<(), JobError> {
        let json = serde_json::to_string(request)?;
        self.store
            .insert_job(&NewJob {
                id,
                kind: "txt2img",
                request: &json,
                owner_id,
                origin,
            })
            .await?;
        tracing::info!(job_id = id, owner = owner_id, "job queued");
        self.emit(JobEvent::Queued {
            job_id: id.to_owned(),
        });
        self.work.notify_one();
        Ok(())
    }

    /// Stores a new job under a fresh id (8 lowercase hex digits, as Navigator makes them) and
    /// returns the id once the job is durable. A random id that collides with an old job is
    /// drawn again.
    pub async fn enqueue_new(
        &self,
        owner_id: &str,
        origin: Option<&str>,
        request: &Txt2Img,
    ) -> Result<String, JobError> {
        let mut tries = 0;
        loop {
            let id = new_job_id();
            match self.enqueue(&id, owner_id, origin, request).await {
                Ok(()) => return Ok(id),
                Err(err) if err.is_duplicate_id() && tries < 5 => tries += 1,
                Err(err) => return Err(err),
            }
        }
    }

    /// Claims the oldest queued job for `backend`, if any.
    pub async fn claim(&self, backend: &str) -> Result<Option<Claim>, JobError> {
        Ok(self.claim_many(backend, 1).await?.pop())
    }

    /// Claims up to `limit` queued jobs for `backend` in one go, oldest first.
    pub async fn claim_many(&self, backend: &str, limit: usize) -> Result<Vec<Claim>, JobError> {
        let rows = self.store.claim_jobs(&self.host, backend, limit).await?;
        let mut claims = Vec::with_capacity(rows.len());
        for row in rows {
            let attempt = row.attempts;
            let request = match serde_json::from_str(&row.request) {
                Ok(request) => request,
                Err(err) => {
                    // A row this build cannot read: fail it rather than loop on it forever.
                    let error = format!("stored request is unreadable: {err}");
                    self.store
                        .end_attempt(&row.id, attempt, JobStatus::Failed, &error)
                        .await?;
                    self.emit(JobEvent::Failed {
                        job_id: row.id.clone(),
                        error,
                    });
                    continue;
                }
            };
            tracing::info!(job_id = %row.id, backend, attempt, "job started");
            self.emit(JobEvent::Started {
                job_id: row.id.clone(),
                backend: backend.to_owned(),
                attempt,
            });
            claims.push(Claim {
                row,
                request,
                attempt,
            });
        }
        Ok(claims)
    }

    /// Waits until a job may be available (a wake-up, or the periodic recheck).
    pub async fn wait_for_work(&self) {
        let _ = tokio::time::timeout(IDLE_RECHECK, self.work.notified()).await;
    }

    /// Reports progress; `Err(Interrupted)` tells the backend to stop.
    pub fn progress(&self, claim: &Claim, step: u32, total: u32) -> Result<(), JobError> {
        if self.take_interrupt(claim.id()) {
            return Err(JobError::Interrupted);
        }
        self.emit(JobEvent::Progress {
            job_id: claim.id().to_owned(),
            step,
            total,
        });
        Ok(())
    }

    /// Whether `id` was interrupted while running; clears the mark.
    fn take_interrupt(&self, id: &str) -> bool {
        self.interrupted
            .lock()
            .expect("interrupt set poisoned")
            .remove(id)
    }

    /// Stores the image and marks the job finished. Returns false when the claim was stale
    /// (the job was requeued, interrupted or finished elsewhere): nothing is written then.
    pub async fn finish(
        &self,
        claim: &Claim,
        backend: &str,
        png: &[u8],
        info: &str,
    ) -> Result<bool, JobError> {
        self.take_interrupt(claim.id());
        self.store_result(claim, Some(claim.attempt), backend, png, info)
            .await
    }

    /// A result that arrived after its claim expired: accepted if nobody finished the job yet
    /// (it may be queued again or running elsewhere), dropped otherwise.
    pub async fn finish_late(
        &self,
        claim: &Claim,
        backend: &str,
        png: &[u8],
        info: &str,
    ) -> Result<bool, JobError> {
        self.store_result(claim, None, backend, png, info).await
    }

    async fn store_result(
        &self,
        claim: &Claim,
        attempt: Option<i64>,
        backend: &str,
        png: &[u8],
        info: &str,
    ) -> Result<bool, JobError> {
        let result = JobResult {
            claim,
            late: attempt.is_none(),
            backend,
            png,
            info,
        };
        Ok(self.finish_many(&[result]).await?[0])
    }

    /// Stores several results in one transaction (see [`JobService::finish`] and
    /// [`JobService::finish_late`]); one flag per result, in order.
    pub async fn finish_many(&self, results: &[JobResult<'_>]) -> Result<Vec<bool>, JobError> {
        let items: Vec<_> = results
            .iter()
            .map(|r| {
                // The stored size is the picture's own (a seed worker draws at its model's size).
                let (width, height) =
                    png_size(r.png).unwrap_or((r.claim.request.width, r.claim.request.height));
                let image = NewImage {
                    png: r.png,
                    info: r.info,
                    width,
                    height,
                    category_id: r.claim.request.category_id,
                };
                (r.claim.id(), (!r.late).then_some(r.claim.attempt), image)
            })
            .collect();
        let done = self.store.finish_jobs(&items).await?;
        for (result, done) in results.iter().zip(&done) {
            let (id, backend) = (result.claim.id(), result.backend);
            if *done {
                tracing::info!(job_id = id, backend, late = result.late, "job finished");
                self.emit(JobEvent::Finished {
                    job_id: id.to_owned(),
                    backend: backend.to_owned(),
                });
            } else {
                tracing::info!(job_id = id, backend, "stale result dropped");
            }
        }
        Ok(done)
    }

    /// A worker fault (deadline passed, worker lost): the job is requeued, or fails once it has
    /// had `max_faults` faults. Returns the job's new status (`None`: the claim was stale).
    pub async fn fault(
        &self,
        claim: &Claim,
        max_faults: u32,
        reason: &str,
    ) -> Result<Option<JobStatus>, JobError> {
        self.take_interrupt(claim.id());
        let status = self
            .store
            .fault_job(claim.id(), claim.attempt, i64::from(max_faults), reason)
            .await?;
        match status {
            Some(JobStatus::Failed) => {
                let error = format!("gave up after {max_faults} worker faults; last: {reason}");
                tracing::warn!(job_id = claim.id(), error, "job failed");
                self.emit(JobEvent::Failed {
                    job_id: claim.id().to_owned(),
                    error,
                });
            }
            Some(_) => {
                tracing::warn!(
                    job_id = claim.id(),
                    reason,
                    "job requeued after a worker fault"
                );
                self.emit(JobEvent::Requeued {
                    job_id: claim.id().to_owned(),
                    reason: reason.to_owned(),
                });
                self.work.notify_one();
            }
            None => {}
        }
        Ok(status)
    }

    /// Fails the job for good.
    pub async fn fail(&self, claim: &Claim, error: &str) -> Result<bool, JobError> {
        self.end(claim, JobStatus::Failed, error).await
    }

    /// Puts the job back in the queue (its backend went away before it could run it).
    pub async fn requeue(&self, claim: &Claim, reason: &str) -> Result<bool, JobError> {
        self.end(claim, JobStatus::Queued, reason).await
    }

    /// Ends the claim with `status` (failed, or queued again) and says so.
    async fn end(&self, claim: &Claim, status: JobStatus, why: &str) -> Result<bool, JobError> {
        self.take_interrupt(claim.id());
        let done = self
            .store
            .end_attempt(claim.id(), claim.attempt, status, why)
            .await?;
        if !done {
            return Ok(false);
        }
        let job_id = claim.id().to_owned();
        if status == JobStatus::Queued {
            tracing::warn!(job_id, reason = why, "job requeued");
            self.emit(JobEvent::Requeued {
                job_id,
                reason: why.to_owned(),
            });
            self.work.notify_one();
        } else {
            tracing::warn!(job_id, error = why, "job failed");
            self.emit(JobEvent::Failed {
                job_id,
                error: why.to_owned(),
            });
        }
        Ok(true)
    }

    /// Interrupts a queued (removed from the queue) or running (its backend is told at its
    /// next progress report) job. `None` if the job is neither.
    pub async fn interrupt(&self, id: &str) -> Result<Option<JobStatus>, JobError> {
        let before = self.store.interrupt_job(id).await?;
        if let Some(status) = before {
            let was_running = status == JobStatus::Running;
            if was_running {
                self.interrupted
                    .lock()
                    .expect("interrupt set poisoned")
                    .insert(id.to_owned());
            }
            tracing::info!(job_id = id, was_running, "job interrupted");
            self.emit(JobEvent::Interrupted {
                job_id: id.to_owned(),
                was_running,
            });
        }
        Ok(before)
    }

    /// Number of jobs waiting.
    pub async fn queued(&self) -> Result<i64, JobError> {
        Ok(self.store.count_jobs(JobStatus::Queued).await?)
    }
}
