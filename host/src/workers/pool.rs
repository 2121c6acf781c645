//! The host side: a ZeroMQ ROUTER, the table of workers, dispatch, deadlines and liveness.
//!
//! The pool is a [`Backend`]: it takes jobs through its [`BackendPort`] and settles them
//! through their [`Lease`]s only. One task owns all pool state (no locks): it receives worker
//! messages from a reader task, wake-ups from the port (a job was queued or requeued), and a
//! 100 ms tick for deadlines and heartbeats. Dispatch is least-recently-ready first, one job
//! per worker, capability-aware (an easel worker that announced models or a pixel limit only
//! gets jobs it can run; idle workers with the same capabilities share one claim), and happens
//! as soon as a job and a ready worker both exist.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use zeromq::{Socket, SocketEvent, SocketRecv, SocketSend, ZmqMessage};

use super::protocol::{Control, ExtendedJob, Inbound, PROTOCOL, SeedJob, new_id_num};
use crate::config::Workers as WorkersConfig;
use crate::jobs::{self, Backend, BackendPort, Expired, Lease, png_size};

/// Easel workers heartbeat every second; three missed and they are gone.
const HEARTBEAT_GRACE: Duration = Duration::from_secs(3);
/// Most worker messages handled before the pool dispatches again.
const INBOUND_BATCH: usize = 256;
/// How many expired claims are remembered for late results.
const EXPIRED_MEMORY: usize = 10_000;

/// Pool counters, shared with whoever wants to report them.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Workers known (ready, busy or idle).
    pub connected: AtomicU64,
    /// Workers holding a job.
    pub busy: AtomicU64,
    /// Jobs sent to workers.
    pub dispatched: AtomicU64,
    /// Jobs put back in the queue after a fault.
    pub requeued: AtomicU64,
    /// Jobs that failed after too many faults.
    pub failed: AtomicU64,
    /// Results stored.
    pub finished: AtomicU64,
    /// Frames dropped as malformed.
    pub dropped: AtomicU64,
    /// Each worker known, then the last [`DEPARTED_SHOWN`] that left (for the dashboard).
    workers: watch::Sender<Arc<[WorkerView]>>,
}

/// How many workers that left the pool stay in [`PoolStats::workers`] (as down).
pub const DEPARTED_SHOWN: usize = 16;

/// One worker as the dashboard shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WorkerView {
    /// Its ZeroMQ identity (hex), unique while it is connected.
    pub identity: String,
    /// The host name it announced.
    pub hostname: String,
    /// `seed` (Stably Discordant's Python worker) or `easel` (`easel worker`).
    pub kind: &'static str,
    /// Connected; false for a worker that left (see `left`).
    pub up: bool,
    /// The job it holds.
    pub job: Option<String>,
    /// When it got that job (Unix ms).
    pub job_since_ms: Option<i64>,
    /// Results it returned.
    pub done: u64,
    /// Its faults: failed jobs, a missed deadline, leaving with a job.
    pub faults: u64,
    /// The models it announced (empty: any; a seed worker draws with its one model).
    pub models: Vec<String>,
    /// When it joined (Unix ms).
    pub joined_ms: i64,
    /// Why it left, and when (Unix ms).
    pub left: Option<(String, i64)>,
}

impl PoolStats {
    /// Each worker known, then the last workers that left; changes whenever a worker joins,
    /// leaves, takes or returns a job.
    pub fn workers(&self) -> watch::Receiver<Arc<[WorkerView]>> {
        self.workers.subscribe()
    }
}

/// The pool's counters at one moment (for `/metrics` and `/api/admin/backends`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolSnapshot {
    /// Workers known.
    pub connected: u64,
    /// Workers holding a job.
    pub busy: u64,
    /// Jobs sent to workers.
    pub dispatched: u64,
    /// Results stored.
    pub finished: u64,
    /// Jobs put back in the queue after a fault.
    pub requeued: u64,
    /// Jobs failed after too many faults.
    pub failed: u64,
    /// Malformed frames dropped.
    pub dropped: u64,
}

impl PoolStats {
    /// The counters now.
    pub fn snapshot(&self) -> PoolSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PoolSnapshot {
            connected: get(&self.connected),
            busy: get(&self.busy),
            dispatched: get(&self.dispatched),
            finished: get(&self.finished),
            requeued: get(&self.requeued),
            failed: get(&self.failed),
            dropped: get(&self.dropped),
        }
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let s = self.snapshot();
        format!(
            "workers connected={} busy={} jobs dispatched={} finished={} requeued={} failed={} dropped_frames={}",
            s.connected, s.busy, s.dispatched, s.finished, s.requeued, s.failed, s.dropped
        )
    }
}

/// Why the pool could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind the worker pool to {endpoint}: {source}")]
pub struct BindError {
    endpoint: String,
    source: zeromq::ZmqError,
}

/// `tcp://*:N` (the seed's form) is `tcp://0.0.0.0:N` for the zeromq crate.
fn normalise_endpoint(bind: &str) -> String {
    bind.replacen("tcp://*:", "tcp://0.0.0.0:", 1)
}

fn is_loopback(endpoint: &str) -> bool {
    let host = endpoint
        .trim_start_matches("tcp://")
        .rsplit_once(':')
        .map_or("", |(host, _)| host)
        .trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The deadline of a dispatched job: AI Horde's rule with easel's knobs.
pub fn deadline(config: &WorkersConfig, request: &crate::jobs::Txt2Img) -> Duration {
    let pixels = f64::from(request.width) * f64::from(request.height);
    let work = 30.0 + f64::from(request.steps) * 2.0 * pixels / (512.0 * 512.0);
    Duration::from_secs_f64(config.deadline_min_s.max(work * config.deadline_scale))
}

/// A bound pool, ready to run as a backend ([`crate::jobs::Backends::start`]).
pub struct WorkerPool {
    config: WorkersConfig,
    endpoint: String,
    socket: zeromq::RouterSocket,
    monitor: futures_channel::mpsc::Receiver<SocketEvent>,
    stats: Arc<PoolStats>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The backend name of the pool.
pub const BACKEND: &str = "workers";

impl WorkerPool {
    /// Binds the ROUTER.
    pub async fn bind(config: WorkersConfig) -> Result<Self, BindError> {
        let endpoint = normalise_endpoint(&config.bind);
        let mut socket = zeromq::RouterSocket::new();
        let monitor = socket.monitor();
        let bound = socket.bind(&endpoint).await.map_err(|source| BindError {
            endpoint: config.bind.clone(),
            source,
        })?;
        let endpoint = bound.to_string();
        if config.token.is_empty() && !is_loopback(&endpoint) {
            tracing::warn!(
                endpoint = %endpoint,
                "worker pool listens beyond this machine without a token: anyone who can reach it can take jobs ([workers] token)"
            );
        }
        tracing::info!(endpoint = %endpoint, "worker pool listening");
        Ok(Self {
            config,
            endpoint,
            socket,
            monitor,
            stats: Arc::new(PoolStats::default()),
        })
    }

    /// The endpoint bound (port 0 resolved).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<PoolStats> {
        self.stats.clone()
    }
}

impl Backend for WorkerPool {
    fn name(&self) -> String {
        BACKEND.to_owned()
    }

    /// Runs until the port stops; jobs held by workers then stay running in the store and are
    /// requeued by the backends' shutdown.
    async fn run(self, port: BackendPort) {
        let (send, recv) = self.socket.split();
        let (inbound_tx, inbound_rx) = mpsc::channel(4096);
        let reader = tokio::spawn(read_frames(
            recv,
            self.monitor,
            inbound_tx,
            self.config.max_message_bytes,
        ));
        let pool = Pool {
            port,
            config: self.config,
            send,
            workers: HashMap::new(),
            ready: VecDeque::new(),
            outstanding: HashMap::new(),
            expired: HashMap::new(),
            expired_order: VecDeque::new(),
            stats: self.stats,
            starved_logged: None,
            departed: VecDeque::new(),
        };
        pool.run(inbound_rx).await;
        reader.abort();
    }
}

/// What the reader task hands the pool.
enum Wire {
    /// One well-formed message.
    Message(Bytes, Inbound),
    /// The transport dropped this peer.
    Disconnected(Bytes),
}

fn identity_label(identity: &[u8]) -> String {
    identity.iter().map(|b| format!("{b:02x}")).collect()
}

async fn read_frames(
    mut recv: zeromq::RouterRecvHalf,
    mut monitor: futures_channel::mpsc::Receiver<SocketEvent>,
    pool: mpsc::Sender<Wire>,
    max_bytes: usize,
) {
    loop {
        tokio::select! {
            message = recv.recv() => {
                let message = match message {
                    Ok(message) => message,
                    Err(err) => {
                        tracing::warn!(error = %err, "worker socket receive failed");
                        continue;
                    }
                };
                let frames = message.into_vec();
                let identity = frames.first().cloned().unwrap_or_default();
                let who = identity_label(&identity);
                if frames.len() != 2 {
                    tracing::warn!(worker = %who, frames = frames.len(), "dropped a message: expected exactly one frame");
                    continue;
                }
                if frames[1].len() > max_bytes {
                    tracing::warn!(worker = %who, bytes = frames[1].len(), max_bytes, "dropped an oversized message");
                    continue;
                }
                match Inbound::parse(&frames[1]) {
                    Ok(inbound) => {
                        if pool.send(Wire::Message(identity, inbound)).await.is_err() {
                            return;
                        }
                    }
                    Err(err) => tracing::warn!(worker = %who, error = %err, "dropped a message"),
                }
            }
            event = monitor.next() => match event {
                Some(SocketEvent::Disconnected(peer)) => {
                    if pool.send(Wire::Disconnected(Bytes::from(peer))).await.is_err() {
                        return;
                    }
                }
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    }
}

#[derive(Debug)]
enum Kind {
    /// Stably Discordant's Python worker: four-key jobs, no heartbeats; takes any job (it
    /// draws with its one model at that model's size).
    Seed,
    /// `easel worker`: extended jobs, heartbeats, control messages; gets only jobs its
    /// capabilities cover.
    Easel(jobs::Capabilities),
}

impl Kind {
    fn can(&self) -> jobs::Capabilities {
        match self {
            Kind::Seed => jobs::Capabilities::any(),
            Kind::Easel(can) => can.clone(),
        }
    }
}

#[derive(Debug)]
struct Worker {
    hostname: String,
    kind: Kind,
    last_seen: Instant,
    job: Option<Assigned>,
    in_ready: bool,
    joined_ms: i64,
    done: u64,
    faults: u64,
}

impl Worker {
    fn view(&self, identity: &Bytes) -> WorkerView {
        WorkerView {
            identity: identity_label(identity),
            hostname: self.hostname.clone(),
            kind: match self.kind {
                Kind::Seed => "seed",
                Kind::Easel(_) => "easel",
            },
            up: true,
            job: self.job.as_ref().map(|a| a.lease.id().to_string()),
            job_since_ms: self.job.as_ref().map(|a| a.since_ms),
            done: self.done,
            faults: self.faults,
            models: match &self.kind {
                Kind::Seed => Vec::new(),
                Kind::Easel(can) => can.models.clone(),
            },
            joined_ms: self.joined_ms,
            left: None,
        }
    }
}

#[derive(Debug)]
struct Assigned {
    lease: Lease,
    id_num: String,
    deadline: Instant,
    since_ms: i64,
}

struct Pool {
    port: BackendPort,
    config: WorkersConfig,
    send: zeromq::RouterSendHalf,
    workers: HashMap<Bytes, Worker>,
    ready: VecDeque<Bytes>,
    /// id_num → worker identity, for jobs out on a worker.
    outstanding: HashMap<String, Bytes>,
    /// id_num → claim, for jobs whose worker missed the deadline (late results).
    expired: HashMap<String, Expired>,
    expired_order: VecDeque<String>,
    stats: Arc<PoolStats>,
    /// When the pool last said that queued jobs fit none of its idle workers.
    starved_logged: Option<Instant>,
    /// The last workers that left, newest last.
    departed: VecDeque<WorkerView>,
}

/// Counts what a fault did to a job.
fn count_fault(
    stats: &PoolStats,
    job: &jobs::JobId,
    status: Result<Option<crate::store::JobStatus>, jobs::JobError>,
) {
    match status {
        Ok(Some(crate::store::JobStatus::Failed)) => PoolStats::add(&stats.failed),
        Ok(Some(_)) => PoolStats::add(&stats.requeued),
        Ok(None) => {}
        Err(err) => tracing::error!(job_id = %job, error = %err, "could not record a worker fault"),
    }
}

impl Pool {
    async fn run(mut self, mut inbound: mpsc::Receiver<Wire>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut report = tokio::time::interval(Duration::from_secs(60));
        let mut last_summary = String::new();
        // A fresh host may have queued jobs already.
        let mut may_dispatch = true;
        // Its own port, so that the wake-ups it has seen stay seen.
        let mut work = self.port.clone();
        loop {
            if may_dispatch && !self.ready.is_empty() {
                self.dispatch().await;
            }
            may_dispatch = false;
            tokio::select! {
                () = self.port.stopped() => break,
                wire = inbound.recv() => {
                    let Some(wire) = wire else { break };
                    may_dispatch = self.receive(wire).await;
                    // Whatever else has arrived is handled before dispatching, so the workers
                    // that became ready meanwhile share one claim.
                    for _ in 0..INBOUND_BATCH {
                        let Ok(wire) = inbound.try_recv() else { break };
                        may_dispatch |= self.receive(wire).await;
                    }
                }
                () = work.wait_for_work() => may_dispatch = true,
                _ = tick.tick() => {
                    self.check_liveness().await;
                    // Also picks up jobs queued by other hosts sharing the database.
                    may_dispatch = true;
                }
                _ = report.tick() => {
                    let summary = self.stats.summary();
                    if summary != last_summary {
                        tracing::info!("{summary}");
                        last_summary = summary;
                    }
                }
            }
        }
        tracing::info!("worker pool stopped; {}", self.stats.summary());
    }

    /// One message from the reader; whether dispatch may now find a ready worker.
    async fn receive(&mut self, wire: Wire) -> bool {
        match wire {
            Wire::Message(identity, message) => self.handle(identity, message).await,
            Wire::Disconnected(identity) => {
                self.lost(&identity, "worker disconnected").await;
                false
            }
        }
    }

    fn refresh_gauges(&self) {
        let busy = self.workers.values().filter(|w| w.job.is_some()).count();
        self.stats
            .connected
            .store(self.workers.len() as u64, Ordering::Relaxed);
        self.stats.busy.store(busy as u64, Ordering::Relaxed);
        let mut views: Vec<WorkerView> = self
            .workers
            .iter()
            .map(|(identity, worker)| worker.view(identity))
            .collect();
        views.sort_by(|a, b| (&a.hostname, a.joined_ms).cmp(&(&b.hostname, b.joined_ms)));
        views.extend(self.departed.iter().rev().cloned());
        self.stats.workers.send_replace(views.into());
    }

    async fn send_json(&mut self, identity: &Bytes, json: String) -> Result<(), zeromq::ZmqError> {
        let message =
            ZmqMessage::try_from(vec![identity.clone(), Bytes::from(json)]).expect("two frames");
        self.send.send(message).await
    }

    async fn control(&mut self, identity: &Bytes, control: Control) {
        let json = serde_json::to_string(&control).expect("control message");
        if let Err(err) = self.send_json(identity, json).await {
            tracing::debug!(worker = %identity_label(identity), error = %err, "control message not delivered");
        }
    }

    /// Handles one message; returns whether dispatch may now find a ready worker.
    async fn handle(&mut self, identity: Bytes, message: Inbound) -> bool {
        let who = identity_label(&identity);
        if let Some(worker) = self.workers.get_mut(&identity) {
            worker.last_seen = Instant::now();
        }
        match message {
            Inbound::Ready {
                hostname,
                protocol,
                token,
                capabilities,
            } => {
                let hostname = hostname.unwrap_or_else(|| "unknown".to_owned());
                let easel = protocol.as_deref() == Some(PROTOCOL);
                if !self.config.token.is_empty()
                    && token.as_deref() != Some(self.config.token.as_str())
                {
                    tracing::warn!(worker = %who, %hostname, easel, "READY refused: missing or wrong worker token");
                    if easel {
                        self.control(
                            &identity,
                            Control::Refused {
                                reason: "invalid worker token".into(),
                            },
                        )
                        .await;
                    }
                    return false;
                }
                if let Some(old) = self.workers.get_mut(&identity)
                    && let Some(assigned) = old.job.take()
                {
                    old.faults += 1;
                    // READY while holding a job: the worker dropped it (restarted in place).
                    self.outstanding.remove(&assigned.id_num);
                    self.fault(assigned, "worker announced READY without returning its job")
                        .await;
                }
                let kind = if easel {
                    let capabilities = capabilities.unwrap_or_default();
                    tracing::debug!(worker = %who, ?capabilities, "easel worker capabilities");
                    Kind::Easel(jobs::Capabilities {
                        models: capabilities.models,
                        max_pixels: capabilities.max_pixels,
                    })
                } else {
                    Kind::Seed
                };
                let worker = self.workers.entry(identity.clone()).or_insert_with(|| {
                    tracing::info!(worker = %who, %hostname, "worker joined");
                    Worker {
                        hostname: hostname.clone(),
                        kind: Kind::Seed,
                        last_seen: Instant::now(),
                        job: None,
                        in_ready: false,
                        joined_ms: crate::store::now_ms(),
                        done: 0,
                        faults: 0,
                    }
                });
                worker.hostname = hostname;
                worker.kind = kind;
                if !worker.in_ready {
                    worker.in_ready = true;
                    self.ready.push_back(identity);
                }
                self.refresh_gauges();
                true
            }
            Inbound::Output {
                image_data,
                id_num,
                hostname,
            } => {
                self.output(identity, &who, image_data, id_num, hostname)
                    .await;
                false
            }
            Inbound::Failed { id_num, error } => {
                match self.take_outstanding(&identity, &id_num) {
                    Some(assigned) => {
                        if let Some(worker) = self.workers.get_mut(&identity) {
                            worker.faults += 1;
                        }
                        let reason = format!("worker {who} failed: {error}");
                        self.fault(assigned, &reason).await;
                    }
                    None => {
                        tracing::warn!(worker = %who, %id_num, "FAILED for a job this worker does not hold");
                    }
                }
                false
            }
            Inbound::Heartbeat => {
                if self.workers.contains_key(&identity) {
                    self.control(&identity, Control::Pong).await;
                } else {
                    self.control(&identity, Control::Reannounce).await;
                }
                false
            }
            Inbound::Goodbye => {
                self.lost(&identity, "worker said goodbye").await;
                false
            }
        }
    }

    fn take_outstanding(&mut self, identity: &Bytes, id_num: &str) -> Option<Assigned> {
        if self.outstanding.get(id_num) != Some(identity) {
            return None;
        }
        self.outstanding.remove(id_num);
        let assigned = self.workers.get_mut(identity)?.job.take();
        self.refresh_gauges();
        assigned
    }

    async fn output(
        &mut self,
        identity: Bytes,
        who: &str,
        image_data: String,
        id_num: String,
        hostname: Option<String>,
    ) {
        let png = match base64::engine::general_purpose::STANDARD.decode(image_data.trim()) {
            Ok(png) => png,
            Err(err) => {
                PoolStats::add(&self.stats.dropped);
                tracing::warn!(worker = %who, %id_num, error = %err, "dropped OUTPUT: bad base64");
                return;
            }
        };
        if png_size(&png).is_none() {
            PoolStats::add(&self.stats.dropped);
            tracing::warn!(worker = %who, %id_num, bytes = png.len(), "dropped OUTPUT: not a PNG");
            return;
        }
        let hostname = hostname.unwrap_or_else(|| "unknown".to_owned());
        let backend = format!("worker:{hostname}");
        let info = serde_json::json!({"backend": backend, "hostname": hostname}).to_string();
        if let Some(worker) = self.workers.get_mut(&identity)
            && self.outstanding.get(&id_num) == Some(&identity)
        {
            worker.done += 1;
        }
        if let Some(assigned) = self.take_outstanding(&identity, &id_num) {
            // Stored off the pool's task (results are group-committed), so dispatch goes on
            // meanwhile.
            let stats = self.stats.clone();
            tokio::spawn(async move {
                let job = assigned.lease.id().clone();
                match assigned.lease.finish(&backend, png, info).await {
                    Ok(true) => PoolStats::add(&stats.finished),
                    Ok(false) => {}
                    Err(not_stored) => {
                        tracing::error!(job_id = %job, error = %not_stored.error, "could not store a result");
                        let (status, _) = not_stored
                            .lease
                            .fault("the result could not be stored")
                            .await;
                        count_fault(&stats, &job, status);
                    }
                }
            });
        } else if let Some(expired) = self.expired.remove(&id_num) {
            let job = expired.id().clone();
            let stats = self.stats.clone();
            let who = who.to_owned();
            tokio::spawn(async move {
                match expired.finish_late(&backend, png, info).await {
                    Ok(true) => {
                        PoolStats::add(&stats.finished);
                        tracing::info!(worker = %who, job_id = %job, "late result accepted");
                    }
                    Ok(false) => tracing::info!(
                        worker = %who,
                        job_id = %job,
                        "late result dropped: the job was already finished"
                    ),
                    Err(err) => {
                        tracing::error!(job_id = %job, error = %err, "could not store a late result")
                    }
                }
            });
        } else {
            PoolStats::add(&self.stats.dropped);
            tracing::warn!(worker = %who, %id_num, "dropped OUTPUT: id_num not marked as outstanding");
        }
    }

    /// A worker is gone: forget it; its job (if any) is a fault.
    async fn lost(&mut self, identity: &Bytes, reason: &str) {
        let Some(worker) = self.workers.remove(identity) else {
            return;
        };
        self.ready.retain(|id| id != identity);
        tracing::info!(worker = %identity_label(identity), hostname = %worker.hostname, reason, "worker left");
        let mut view = worker.view(identity);
        view.up = false;
        view.faults += u64::from(worker.job.is_some());
        view.left = Some((reason.to_owned(), crate::store::now_ms()));
        self.departed.push_back(view);
        while self.departed.len() > DEPARTED_SHOWN {
            self.departed.pop_front();
        }
        if let Some(assigned) = worker.job {
            self.outstanding.remove(&assigned.id_num);
            self.fault(assigned, reason).await;
        }
        self.refresh_gauges();
    }

    async fn fault(&mut self, assigned: Assigned, reason: &str) {
        let job = assigned.lease.id().clone();
        let (status, expired) = assigned.lease.fault(reason).await;
        count_fault(&self.stats, &job, status);
        // Its worker may still answer: remember the claim for a late result.
        self.expired_order.push_back(assigned.id_num.clone());
        self.expired.insert(assigned.id_num, expired);
        while self.expired_order.len() > EXPIRED_MEMORY {
            if let Some(old) = self.expired_order.pop_front() {
                self.expired.remove(&old);
            }
        }
    }

    async fn check_liveness(&mut self) {
        let now = Instant::now();
        let mut late = Vec::new();
        let mut silent = Vec::new();
        for (identity, worker) in &self.workers {
            if let Some(assigned) = &worker.job
                && assigned.deadline <= now
            {
                late.push(identity.clone());
            } else if matches!(worker.kind, Kind::Easel(_))
                && now.duration_since(worker.last_seen) > HEARTBEAT_GRACE
            {
                silent.push(identity.clone());
            }
        }
        for identity in late {
            // Considered gone until it sends READY again.
            self.lost(&identity, "deadline passed").await;
        }
        for identity in silent {
            self.lost(&identity, "missed 3 heartbeats").await;
        }
    }

    /// Hands queued jobs to ready workers, least recently ready first: idle workers that can
    /// run the same jobs share one claim.
    async fn dispatch(&mut self) {
        if self.port.is_drained() {
            // Drained by an operator: ready workers keep their place until it resumes.
            return;
        }
        let mut groups: Vec<(jobs::Capabilities, Vec<Bytes>)> = Vec::new();
        while let Some(identity) = self.ready.pop_front() {
            let Some(worker) = self.workers.get_mut(&identity) else {
                continue;
            };
            worker.in_ready = false;
            if worker.job.is_some() {
                continue;
            }
            let can = worker.kind.can();
            match groups.iter_mut().find(|(c, _)| *c == can) {
                Some((_, idle)) => idle.push(identity),
                None => groups.push((can, vec![identity])),
            }
        }
        let mut unserved = Vec::new();
        for (can, idle) in groups {
            let leases = match self.port.claim(&can, idle.len()).await {
                Ok(leases) => leases,
                Err(err) => {
                    tracing::error!(error = %err, "cannot claim jobs for workers");
                    Vec::new()
                }
            };
            let mut idle = idle.into_iter();
            for lease in leases {
                let identity = idle.next().expect("no more claims than idle workers");
                self.send_job(identity, lease).await;
            }
            unserved.extend(idle);
        }
        if !unserved.is_empty() && self.port.queue_depth() > 0 {
            self.starving(unserved.len());
        }
        // Those left keep their place at the head of the line.
        for identity in unserved.into_iter().rev() {
            self.put_back(identity);
        }
    }

    /// Idle workers and queued jobs, but no job any of them can run: say so (once a minute).
    fn starving(&mut self, idle: usize) {
        if self
            .starved_logged
            .is_some_and(|at| at.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.starved_logged = Some(Instant::now());
        tracing::info!(
            idle_workers = idle,
            queued = self.port.queue_depth(),
            "queued jobs wait: none fits the models or size limits of the idle workers"
        );
    }

    async fn send_job(&mut self, identity: Bytes, lease: Lease) {
        let Some(worker) = self.workers.get(&identity) else {
            // Gone meanwhile: the job was never sent.
            if let Err(err) = lease.requeue("worker left before dispatch").await {
                tracing::error!(error = %err, "could not requeue");
            }
            return;
        };
        let id_num = new_id_num();
        let request = lease.request();
        let json = match &worker.kind {
            Kind::Seed => serde_json::to_string(&SeedJob {
                prompt: request.prompt.clone(),
                cfg: request.cfg_scale,
                steps: request.steps,
                id_num: id_num.clone(),
            }),
            Kind::Easel(_) => serde_json::to_string(&ExtendedJob::new(request, &id_num)),
        }
        .expect("job serializes");
        let deadline = Instant::now() + deadline(&self.config, request);
        match self.send_json(&identity, json).await {
            Ok(()) => {
                PoolStats::add(&self.stats.dispatched);
                tracing::debug!(job_id = %lease.id(), worker = %identity_label(&identity), "job dispatched");
                self.outstanding.insert(id_num.clone(), identity.clone());
                if let Some(worker) = self.workers.get_mut(&identity) {
                    worker.job = Some(Assigned {
                        lease,
                        id_num,
                        deadline,
                        since_ms: crate::store::now_ms(),
                    });
                }
                self.refresh_gauges();
            }
            Err(err) => {
                // A dead identity: the job never left, so it is no fault of the job's.
                tracing::info!(worker = %identity_label(&identity), error = %err, "worker unreachable; forgetting it");
                self.workers.remove(&identity);
                self.refresh_gauges();
                if let Err(err) = lease.requeue("worker unreachable").await {
                    tracing::error!(error = %err, "could not requeue");
                }
            }
        }
    }

    fn put_back(&mut self, identity: Bytes) {
        if let Some(worker) = self.workers.get_mut(&identity) {
            worker.in_ready = true;
            self.ready.push_front(identity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horde_deadline() {
        let config = WorkersConfig::default();
        let mut request = crate::jobs::Txt2Img {
            width: 512,
            height: 512,
            steps: 50,
            ..Default::default()
        };
        assert_eq!(deadline(&config, &request), Duration::from_secs(150));
        request.width = 2048;
        request.height = 2048;
        // 30 + 50 * 2 * 16 = 1630
        assert_eq!(deadline(&config, &request), Duration::from_secs(1630));
        let scaled = WorkersConfig {
            deadline_min_s: 1.0,
            deadline_scale: 0.5,
            ..WorkersConfig::default()
        };
        assert_eq!(deadline(&scaled, &request), Duration::from_secs(815));
    }

    #[test]
    fn endpoints() {
        assert_eq!(normalise_endpoint("tcp://*:5556"), "tcp://0.0.0.0:5556");
        assert!(is_loopback("tcp://127.0.0.1:5556"));
        assert!(!is_loopback("tcp://0.0.0.0:5556"));
    }
}
