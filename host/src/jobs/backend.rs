//! The backend contract: how the simulated backend, the ZeroMQ worker pool and Forge machines
//! take jobs and settle them.
//!
//! A backend implements [`Backend`]: it has a name and runs with a [`BackendPort`] until the
//! port says stop. Through the port it claims jobs it can run ([`Capabilities`]: models, most
//! pixels), and gets a [`Lease`] per job — the only way to change that job: report progress
//! (with an optional preview image), finish, fail (the request is at fault), fault (the
//! backend is: the job is retried elsewhere until the fault limit), or requeue (the job never
//! ran). A lease dropped unsettled leaves the job running; it is requeued when the backends
//! stop ([`Backends::shutdown`], the one shutdown handle for all of them) or at the next
//! start. Every settlement is fenced on the claim, so a backend that lost its job changes
//! nothing.
//!
//! An operator drains a backend through [`Drains`] (the dashboard's action): its port then
//! claims nothing, the jobs it holds run to their end, and it claims again once resumed.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Claim, IDLE_RECHECK, JobError, JobId, JobService, Txt2Img};
use crate::store::{ClaimFilter, Fence, JobStatus};

/// What a backend, or one worker of it, can run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Capabilities {
    /// Models it has; empty: any. A job that names no model runs anywhere.
    pub models: Vec<String>,
    /// Largest `width * height` it draws; `None`: any.
    pub max_pixels: Option<u64>,
}

impl Capabilities {
    /// Anything.
    pub fn any() -> Self {
        Self::default()
    }

    /// Whether a job for `model` ("" for the default) of `pixels` fits.
    pub fn can_run(&self, model: &str, pixels: u64) -> bool {
        (self.models.is_empty() || model.is_empty() || self.models.iter().any(|m| m == model))
            && self.max_pixels.is_none_or(|max| pixels <= max)
    }

    fn filter(&self) -> ClaimFilter<'_> {
        ClaimFilter {
            models: (!self.models.is_empty()).then_some(self.models.as_slice()),
            max_pixels: self.max_pixels,
        }
    }
}

/// A backend: something that runs jobs.
pub trait Backend: Send + 'static {
    /// Its name, shown in `Started` events and stored in the job row.
    fn name(&self) -> String;

    /// Runs until [`BackendPort::stopped`]; takes and settles jobs only through `port`.
    fn run(self, port: BackendPort) -> impl Future<Output = ()> + Send;
}

/// A backend's access to the queue; cheap to clone (one per worker loop, say).
#[derive(Clone, Debug)]
pub struct BackendPort {
    jobs: Arc<JobService>,
    name: Arc<str>,
    stop: watch::Receiver<bool>,
    work: watch::Receiver<u64>,
    drained: watch::Receiver<BTreeSet<String>>,
}

impl BackendPort {
    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether an operator drained this backend (it claims nothing until resumed).
    pub fn is_drained(&self) -> bool {
        self.drained.borrow().contains(&*self.name)
    }

    /// Claims up to `limit` of the oldest queued jobs this backend can run, oldest first;
    /// none while the backend is drained.
    pub async fn claim(&self, can: &Capabilities, limit: usize) -> Result<Vec<Lease>, JobError> {
        if self.is_drained() {
            return Ok(Vec::new());
        }
        let claims = self
            .jobs
            .claim_many(&self.name, can.filter(), limit)
            .await?;
        Ok(claims
            .into_iter()
            .map(|claim| Lease {
                claim,
                jobs: self.jobs.clone(),
            })
            .collect())
    }

    /// The id and model of the oldest queued job this backend could run (not claimed; none
    /// while drained).
    pub async fn oldest_queued(
        &self,
        can: &Capabilities,
    ) -> Result<Option<(JobId, String)>, JobError> {
        if self.is_drained() {
            return Ok(None);
        }
        Ok(self
            .jobs
            .store()
            .oldest_queued(can.filter())
            .await?
            .map(|(id, model)| (JobId::from(id), model)))
    }

    /// The next job this backend can run: waits for one (store errors are logged and retried
    /// after a pause); `None` once the backends stop.
    pub async fn next(&mut self, can: &Capabilities) -> Option<Lease> {
        loop {
            if self.is_stopped() {
                return None;
            }
            match self.claim(can, 1).await {
                Ok(mut leases) if !leases.is_empty() => return leases.pop(),
                Ok(_) => self.wait_for_work().await,
                Err(err) => {
                    tracing::error!(backend = %self.name, error = %err, "cannot claim jobs; retrying");
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.stopped())
                        .await;
                }
            }
        }
    }

    /// Waits until a job may have become claimable (or [`IDLE_RECHECK`] passed, for jobs
    /// queued by other hosts, or the backends stop, or a backend was drained or resumed).
    pub async fn wait_for_work(&mut self) {
        let stop = self.clone();
        let lost = tokio::select! {
            changed = self.work.changed() => changed.is_err(),
            changed = self.drained.changed() => changed.is_err(),
            () = stop.stopped() => false,
            () = tokio::time::sleep(IDLE_RECHECK) => false,
        };
        if lost {
            // The job service is gone: nothing will wake us.
            tokio::time::sleep(IDLE_RECHECK).await;
        }
    }

    /// Whether the backends are stopping.
    pub fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves when the backends stop.
    pub async fn stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|stopped| *stopped).await;
    }

    /// Jobs waiting in the queue.
    pub fn queue_depth(&self) -> u64 {
        self.jobs.queue_depth()
    }
}

/// One claimed job; see the module docs.
#[derive(Debug)]
pub struct Lease {
    claim: Claim,
    jobs: Arc<JobService>,
}

/// The job was interrupted: stop working on it (its lease is settled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("job was interrupted")]
pub struct Interrupted;

impl Lease {
    /// The job.
    pub fn id(&self) -> &JobId {
        &self.claim.id
    }

    /// What to draw.
    pub fn request(&self) -> &Txt2Img {
        &self.claim.request
    }

    /// Who asked for it.
    pub fn owner(&self) -> &str {
        &self.claim.owner
    }

    /// Whether the job was asked to stop (without settling anything: the next
    /// [`Lease::progress`] says [`Interrupted`] too).
    pub fn interrupt_requested(&self) -> bool {
        self.jobs.interrupt_requested(&self.claim.id)
    }

    /// 1 for the first try.
    pub fn attempt(&self) -> i64 {
        self.claim.row.attempts
    }

    /// Reports progress; `Err` when the job was interrupted (stop, and drop the lease).
    pub fn progress(&self, step: u32, total: u32) -> Result<(), Interrupted> {
        self.jobs
            .progress(&self.claim, step, total, false)
            .map_err(|_| Interrupted)
    }

    /// Reports progress with a live preview image (stored; readers fetch it by job id).
    pub async fn progress_with_preview(
        &self,
        step: u32,
        total: u32,
        png: &[u8],
    ) -> Result<(), Interrupted> {
        let stored = match self.jobs.set_preview(&self.claim, png).await {
            Ok(stored) => stored,
            Err(err) => {
                tracing::warn!(job_id = %self.claim.id, error = %err, "cannot store a preview");
                false
            }
        };
        self.jobs
            .progress(&self.claim, step, total, stored)
            .map_err(|_| Interrupted)
    }

    /// Stores the picture `made_by` drew and ends the job. False when the claim was stale
    /// (requeued, interrupted or finished elsewhere): nothing was written. When the store
    /// fails, the lease comes back with the error (to fault the job, say).
    pub async fn finish(
        self,
        made_by: &str,
        png: Vec<u8>,
        info: String,
    ) -> Result<bool, Box<NotStored>> {
        match self
            .jobs
            .finish(
                &self.claim,
                Fence::Claim(self.claim.fence()),
                made_by,
                png,
                info,
            )
            .await
        {
            Ok(done) => Ok(done),
            Err(error) => Err(Box::new(NotStored { error, lease: self })),
        }
    }

    /// Says that this backend switches to `model` for the job (a checkpoint swap first).
    pub fn model_changing(&self, model: &str) {
        self.jobs.model_changing(&self.claim, model);
    }

    /// After [`Interrupted`]: stores the partial picture the backend drew before it stopped,
    /// and the job ends finished with it (as Forge answers an interrupt). False when the job
    /// changed otherwise meanwhile: nothing was written.
    pub async fn finish_partial(
        self,
        made_by: &str,
        png: Vec<u8>,
        info: String,
    ) -> Result<bool, JobError> {
        self.jobs
            .finish(
                &self.claim,
                Fence::Interrupted(self.claim.fence()),
                made_by,
                png,
                info,
            )
            .await
    }

    /// The request cannot be drawn: the job fails for good.
    pub async fn fail(self, error: &str) -> Result<bool, JobError> {
        self.jobs.end(&self.claim, JobStatus::Failed, error).await
    }

    /// The backend could not run it (not the job's fault): back to the queue.
    pub async fn requeue(self, reason: &str) -> Result<bool, JobError> {
        self.jobs.end(&self.claim, JobStatus::Queued, reason).await
    }

    /// The backend failed it (deadline passed, worker lost): requeued, or failed at the fault
    /// limit. The returned [`Expired`] may still take a late result.
    pub async fn fault(self, reason: &str) -> (Result<Option<JobStatus>, JobError>, Expired) {
        let status = self.jobs.fault(&self.claim, reason).await;
        (
            status,
            Expired {
                claim: self.claim,
                jobs: self.jobs,
            },
        )
    }
}

/// A result the store could not take; the lease is still held.
#[derive(Debug, thiserror::Error)]
#[error("the result could not be stored")]
pub struct NotStored {
    /// Why.
    #[source]
    pub error: JobError,
    /// The lease, unsettled.
    pub lease: Lease,
}

/// A claim that ended in a fault, kept for a result that arrives late.
#[derive(Debug)]
pub struct Expired {
    claim: Claim,
    jobs: Arc<JobService>,
}

impl Expired {
    /// The job.
    pub fn id(&self) -> &JobId {
        &self.claim.id
    }

    /// A late result: stored if nobody finished the job meanwhile (it may be queued again or
    /// running elsewhere), dropped otherwise.
    pub async fn finish_late(
        self,
        made_by: &str,
        png: Vec<u8>,
        info: String,
    ) -> Result<bool, JobError> {
        self.jobs
            .finish(&self.claim, Fence::Late, made_by, png, info)
            .await
    }
}

/// The running backends, and the one handle that stops them all.
#[derive(Debug)]
pub struct Backends {
    jobs: Arc<JobService>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    names: Vec<String>,
    drained: watch::Sender<BTreeSet<String>>,
}

/// Why a drain or resume was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrainError {
    /// No backend of that name runs here.
    #[error("no backend named {0:?} runs here")]
    UnknownBackend(String),
}

/// Drains and resumes backends by name; cheap to clone. A drained backend claims nothing
/// (what it runs goes on to its end) until resumed.
#[derive(Clone, Debug)]
pub struct Drains {
    names: Arc<[String]>,
    drained: watch::Sender<BTreeSet<String>>,
}

impl Drains {
    /// Stops `backend` claiming jobs; false when it was drained already.
    pub fn drain(&self, backend: &str) -> Result<bool, DrainError> {
        self.set(backend, true)
    }

    /// Lets `backend` claim jobs again; false when it was not drained.
    pub fn resume(&self, backend: &str) -> Result<bool, DrainError> {
        self.set(backend, false)
    }

    /// Whether `backend` is drained.
    pub fn is_drained(&self, backend: &str) -> bool {
        self.drained.borrow().contains(backend)
    }

    /// The backends running, in start order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Resolves at the next drain or resume.
    pub fn changes(&self) -> watch::Receiver<BTreeSet<String>> {
        self.drained.subscribe()
    }

    fn set(&self, backend: &str, drained: bool) -> Result<bool, DrainError> {
        if !self.names.iter().any(|n| n == backend) {
            return Err(DrainError::UnknownBackend(backend.to_owned()));
        }
        let changed = self.drained.send_if_modified(|set| {
            if drained {
                set.insert(backend.to_owned())
            } else {
                set.remove(backend)
            }
        });
        if changed {
            tracing::info!(
                backend,
                drained,
                "backend {}",
                if drained { "drained" } else { "resumed" }
            );
        }
        Ok(changed)
    }
}

impl Backends {
    /// No backends yet.
    pub fn new(jobs: Arc<JobService>) -> Self {
        Self {
            jobs,
            stop: watch::channel(false).0,
            tasks: JoinSet::new(),
            names: Vec::new(),
            drained: watch::channel(BTreeSet::new()).0,
        }
    }

    /// The drain switches of the backends started so far.
    pub fn drains(&self) -> Drains {
        Drains {
            names: self.names.clone().into(),
            drained: self.drained.clone(),
        }
    }

    /// A port for a backend called `name`.
    pub fn port(&self, name: &str) -> BackendPort {
        BackendPort {
            jobs: self.jobs.clone(),
            name: Arc::from(name),
            stop: self.stop.subscribe(),
            work: self.jobs.work(),
            drained: self.drained.subscribe(),
        }
    }

    /// Starts `backend` on a task of its own.
    pub fn start<B: Backend>(&mut self, backend: B) {
        let name = backend.name();
        let port = self.port(&name);
        tracing::info!(backend = %name, "backend started");
        self.names.push(name);
        self.tasks.spawn(backend.run(port));
    }

    /// The names of the backends started.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Stops every backend, waits for them, and puts the jobs they were running back in the
    /// queue.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        match self
            .jobs
            .requeue_running("host stopped while the job was running")
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "requeued running jobs at shutdown"),
            Err(err) => tracing::error!(error = %err, "could not requeue running jobs at shutdown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_match_model_and_size() {
        let any = Capabilities::any();
        assert!(any.can_run("anything", u64::MAX));
        let sdxl = Capabilities {
            models: vec!["sdxl".into()],
            max_pixels: Some(1024 * 1024),
        };
        assert!(sdxl.can_run("sdxl", 1024 * 1024));
        assert!(sdxl.can_run("", 512 * 512), "no model named: the default");
        assert!(!sdxl.can_run("flux", 512 * 512));
        assert!(!sdxl.can_run("sdxl", 1024 * 1025));
    }
}
