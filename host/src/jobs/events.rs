//! Job events as a contract: what happened to a job, for whoever follows it.
//!
//! Every event carries its job's id, owner, origin and sequence number. The sequence number
//! is the job's `event_seq` in the store, bumped by the same statement that made the change, so
//! commit order is sequence order; progress events carry the number of the `Started` event of
//! their attempt (they change nothing stored).
//!
//! Two ways to listen:
//! - [`JobWatch`] follows one job and cannot miss its end. The hub (one task, owning every
//!   watcher) hands a watcher each state change in order, in an unbounded queue of its own (a
//!   job has a handful of them), and its progress as a latest-value slot, so a slow watcher
//!   sees fewer progress steps, never fewer state changes. If it hears nothing for a while,
//!   or the hub is gone, it reads the job from the store and reports what changed (the
//!   catch-up a follower on another host will need). A watcher is removed when its job ends
//!   or when it is dropped, whatever happened.
//! - [`Subscription`] sees every event of every job through a bounded broadcast channel; a
//!   subscriber that falls behind is told how many events it missed ([`Received::Lagged`])
//!   and catches up from the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};

use super::{JobId, JobReader, Origin};
use crate::store::JobStatus;

/// What happened to a job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobEvent {
    /// The job.
    pub job: JobId,
    /// The job's event sequence number (see the module docs).
    pub seq: i64,
    /// Who asked for it.
    pub owner: Arc<str>,
    /// Where the request came from.
    pub origin: Arc<Origin>,
    /// The host whose job service produced it (for a catch-up read from the store: the host
    /// that claimed the job last, or empty).
    pub host: Arc<str>,
    /// It was produced by another host sharing the database and relayed here
    /// ([`super::relay`]); counters of this host's own work skip such events.
    pub relayed: bool,
    /// What happened.
    pub kind: EventKind,
}

/// What happened to a job.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// Stored and waiting.
    Queued,
    /// A backend claimed it.
    Started {
        /// The backend's name.
        backend: Arc<str>,
        /// 1 for the first try.
        attempt: i64,
    },
    /// The backend that runs it loads the job's model first (a checkpoint swap).
    ModelChanged {
        /// The model it loads.
        model: Arc<str>,
    },
    /// A step was done.
    Progress {
        /// Steps done.
        step: u32,
        /// Steps in all.
        total: u32,
        /// A live preview was stored with it (read it through the job reader).
        preview: bool,
    },
    /// The image is stored.
    Finished {
        /// Which backend made it.
        backend: Arc<str>,
    },
    /// Given up.
    Failed {
        /// Why.
        error: String,
    },
    /// Back in the queue after a failed attempt, or after it failed for good and an operator
    /// put it back.
    Requeued {
        /// Why.
        reason: String,
        /// It had ended (failed) and an operator put it back: a front end that followed it to
        /// its end follows it again.
        revived: bool,
    },
    /// Stopped or removed on request.
    Interrupted {
        /// Whether it was running (else it was still queued).
        was_running: bool,
    },
}

impl EventKind {
    /// Whether the job ends with this event. An interrupted running job is not over yet: its
    /// backend may still deliver the partial picture (then `Finished` follows), so a watch
    /// stays until that comes or the store shows that nothing more will.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::Finished { .. }
                | EventKind::Failed { .. }
                | EventKind::Interrupted { was_running: false }
        )
    }
}

enum HubMessage {
    Event(JobEvent),
    Watch {
        job: JobId,
        key: u64,
        changes: mpsc::UnboundedSender<JobEvent>,
        progress: watch::Sender<Option<JobEvent>>,
    },
    Unwatch {
        job: JobId,
        key: u64,
    },
}

struct Watcher {
    key: u64,
    changes: mpsc::UnboundedSender<JobEvent>,
    progress: watch::Sender<Option<JobEvent>>,
}

/// Hands events to watchers and subscribers; one task owns the watchers.
#[derive(Debug)]
pub(super) struct Hub {
    inbox: mpsc::UnboundedSender<HubMessage>,
    broadcast: broadcast::Sender<JobEvent>,
    watched: Arc<AtomicUsize>,
    keys: AtomicU64,
}

impl std::fmt::Debug for HubMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubMessage")
    }
}

impl Hub {
    /// Starts the hub task; `capacity` bounds the broadcast channel of [`Subscription`]s.
    pub(super) fn start(capacity: usize) -> Self {
        let (inbox, messages) = mpsc::unbounded_channel();
        let (broadcast, _) = broadcast::channel(capacity.max(1));
        let watched = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run(messages, watched.clone()));
        Self {
            inbox,
            broadcast,
            watched,
            keys: AtomicU64::new(0),
        }
    }

    pub(super) fn emit(&self, event: JobEvent) {
        if self.broadcast.receiver_count() > 0 {
            // No subscriber is fine: events are a notification, the store is the record.
            let _ = self.broadcast.send(event.clone());
        }
        let _ = self.inbox.send(HubMessage::Event(event));
    }

    pub(super) fn subscribe(&self) -> Subscription {
        Subscription {
            events: self.broadcast.subscribe(),
        }
    }

    /// Jobs with at least one watcher.
    pub(super) fn watched(&self) -> usize {
        self.watched.load(Ordering::Relaxed)
    }

    /// Registers a watcher of `job`; events emitted after this call reach it.
    pub(super) fn watch(&self, job: JobId, reader: JobReader, known_seq: i64) -> JobWatch {
        let key = self.keys.fetch_add(1, Ordering::Relaxed);
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let (progress_tx, progress) = watch::channel(None);
        let _ = self.inbox.send(HubMessage::Watch {
            job: job.clone(),
            key,
            changes: changes_tx,
            progress: progress_tx,
        });
        JobWatch {
            job,
            key,
            seen: known_seq,
            changes,
            progress,
            inbox: self.inbox.clone(),
            reader,
            quiet: FIRST_CATCH_UP,
            done: false,
        }
    }
}

async fn run(mut messages: mpsc::UnboundedReceiver<HubMessage>, watched: Arc<AtomicUsize>) {
    let mut jobs: HashMap<JobId, Vec<Watcher>> = HashMap::new();
    let mut batch = Vec::with_capacity(256);
    while messages.recv_many(&mut batch, 256).await > 0 {
        for message in batch.drain(..) {
            match message {
                HubMessage::Event(event) => {
                    let Some(watchers) = jobs.get_mut(&event.job) else {
                        continue;
                    };
                    if matches!(event.kind, EventKind::Progress { .. }) {
                        for w in watchers.iter() {
                            w.progress.send_replace(Some(event.clone()));
                        }
                        continue;
                    }
                    watchers.retain(|w| w.changes.send(event.clone()).is_ok());
                    if event.kind.is_terminal() || watchers.is_empty() {
                        jobs.remove(&event.job);
                    }
                }
                HubMessage::Watch {
                    job,
                    key,
                    changes,
                    progress,
                } => jobs.entry(job).or_default().push(Watcher {
                    key,
                    changes,
                    progress,
                }),
                HubMessage::Unwatch { job, key } => {
                    if let Some(watchers) = jobs.get_mut(&job) {
                        watchers.retain(|w| w.key != key);
                        if watchers.is_empty() {
                            jobs.remove(&job);
                        }
                    }
                }
            }
        }
        watched.store(jobs.len(), Ordering::Relaxed);
    }
}

/// How long a watcher waits without news before it reads its job from the store; doubled
/// after every quiet catch-up, up to [`LAST_CATCH_UP`].
const FIRST_CATCH_UP: Duration = Duration::from_secs(5);
const LAST_CATCH_UP: Duration = Duration::from_secs(60);

/// Follows one job until it ends; see the module docs. Dropping it stops following.
pub struct JobWatch {
    job: JobId,
    key: u64,
    /// The sequence number of the last state change reported.
    seen: i64,
    changes: mpsc::UnboundedReceiver<JobEvent>,
    progress: watch::Receiver<Option<JobEvent>>,
    inbox: mpsc::UnboundedSender<HubMessage>,
    reader: JobReader,
    quiet: Duration,
    done: bool,
}

impl std::fmt::Debug for JobWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobWatch")
            .field("job", &self.job)
            .field("seen", &self.seen)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        let _ = self.inbox.send(HubMessage::Unwatch {
            job: self.job.clone(),
            key: self.key,
        });
    }
}

impl JobWatch {
    /// The job followed.
    pub fn job(&self) -> &JobId {
        &self.job
    }

    /// The next event of the job: every state change in order, progress as it comes (steps
    /// may be skipped), and `None` after the job ended (or if it no longer exists).
    pub async fn next(&mut self) -> Option<JobEvent> {
        if self.done {
            return None;
        }
        loop {
            let quiet = tokio::time::sleep(self.quiet);
            tokio::select! {
                biased;
                change = self.changes.recv() => match change {
                    // A model change belongs to the attempt whose start was reported (it
                    // changes nothing stored, so it carries that start's number).
                    Some(event) if matches!(event.kind, EventKind::ModelChanged { .. }) => {
                        if event.seq == self.seen {
                            return Some(event);
                        }
                        continue;
                    }
                    Some(event) if event.seq <= self.seen => continue,
                    Some(event) => return Some(self.report(event)),
                    // The hub is gone (the service is shutting down): the store knows.
                    None => return self.catch_up().await,
                },
                changed = self.progress.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let event = self.progress.borrow_and_update().clone();
                    if let Some(event) = event.filter(|e| e.seq >= self.seen) {
                        if event.seq > self.seen {
                            // Progress of an attempt whose start this watch never saw (it
                            // came before the watch, or from a host whose notice was lost):
                            // the store tells the start first.
                            if let Some(start) = self.catch_up_quietly().await {
                                return Some(start);
                            }
                        }
                        self.quiet = FIRST_CATCH_UP;
                        return Some(event);
                    }
                }
                () = quiet => {
                    if let Some(event) = self.catch_up_quietly().await {
                        return Some(event);
                    }
                    if self.done {
                        return None;
                    }
                    self.quiet = (self.quiet * 2).min(LAST_CATCH_UP);
                }
            }
        }
    }

    fn report(&mut self, event: JobEvent) -> JobEvent {
        self.seen = event.seq;
        self.done = event.kind.is_terminal();
        self.quiet = FIRST_CATCH_UP;
        event
    }

    /// Reads the job from the store: the state it is in, if that is news.
    pub(super) async fn catch_up(&mut self) -> Option<JobEvent> {
        match self.catch_up_quietly().await {
            Some(event) => Some(event),
            None if self.done => None,
            // The hub is gone and the store has no news: nothing more will come.
            None => {
                self.done = true;
                None
            }
        }
    }

    async fn catch_up_quietly(&mut self) -> Option<JobEvent> {
        let row = match self.reader.job(self.job.as_str()).await {
            Ok(Some(row)) => row,
            Ok(None) => {
                self.done = true;
                return None;
            }
            Err(err) => {
                tracing::warn!(job_id = %self.job, error = %err, "cannot read a followed job");
                return None;
            }
        };
        if row.event_seq <= self.seen {
            // Nothing new. An interrupted job whose backend delivered no partial picture ends
            // here.
            if row.status() == JobStatus::Interrupted {
                self.done = true;
            }
            return None;
        }
        let kind = match row.status() {
            JobStatus::Queued if row.attempts == 0 => EventKind::Queued,
            // A watch that is still reading was not ended by the failure a revival follows.
            JobStatus::Queued => EventKind::Requeued {
                reason: row.last_error.clone().unwrap_or_default(),
                revived: false,
            },
            JobStatus::Running => EventKind::Started {
                backend: Arc::from(row.backend.as_deref().unwrap_or_default()),
                attempt: row.attempts,
            },
            JobStatus::Finished => EventKind::Finished {
                backend: Arc::from(row.backend.as_deref().unwrap_or_default()),
            },
            JobStatus::Failed => EventKind::Failed {
                error: row.last_error.clone().unwrap_or_default(),
            },
            JobStatus::Interrupted => EventKind::Interrupted {
                was_running: row.started_at.is_some(),
            },
        };
        let event = JobEvent {
            job: self.job.clone(),
            seq: row.event_seq,
            owner: Arc::from(row.owner_id.as_str()),
            origin: Arc::new(Origin::parse(row.origin.as_deref())),
            host: Arc::from(row.claimed_by.as_deref().unwrap_or_default()),
            relayed: false,
            kind,
        };
        Some(self.report(event))
    }
}

/// Every event of every job; see the module docs.
#[derive(Debug)]
pub struct Subscription {
    events: broadcast::Receiver<JobEvent>,
}

/// What a [`Subscription`] receives.
#[derive(Clone, Debug, PartialEq)]
pub enum Received {
    /// The next event.
    Event(JobEvent),
    /// This many events were missed: read what matters from the store.
    Lagged(u64),
    /// The job service is gone.
    Closed,
}

impl Subscription {
    /// The next event, or how many were missed.
    pub async fn recv(&mut self) -> Received {
        match self.events.recv().await {
            Ok(event) => Received::Event(event),
            Err(broadcast::error::RecvError::Lagged(n)) => Received::Lagged(n),
            Err(broadcast::error::RecvError::Closed) => Received::Closed,
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Received> {
        match self.events.try_recv() {
            Ok(event) => Some(Received::Event(event)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Received::Lagged(n)),
            Err(broadcast::error::TryRecvError::Closed) => Some(Received::Closed),
            Err(broadcast::error::TryRecvError::Empty) => None,
        }
    }
}
