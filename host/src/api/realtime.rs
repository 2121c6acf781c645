//! Navigator's realtime API: socket.io (Engine.IO v4, socket.io v5, polling and websocket)
//! on `[api] rt_port`, path `/socket.io/`, with the events of compat.md §2.6 and their exact
//! payloads (the "cleansed task": no prompt, owner or size).
//!
//! Routing, never to anyone else:
//! - a socket that sends credentials (handshake `auth.token`, or an `Authorization` header:
//!   a Bearer JWT or the superuser token) receives the events of its user's jobs; bad
//!   credentials refuse the connection;
//! - a socket without credentials (Navigator's clients, Compass) receives the events of jobs
//!   queued from its address: the peer address, or its `X-Forwarded-For` (left-most entry)
//!   or `cf-connecting-ip` header, as Navigator matches them;
//! - `models-refreshed` goes to every socket.
//!
//! What a (re)connecting socket gets: `connected`, then for each of its jobs that is running
//! `task-started` and the latest `task-progress`, so a reloaded page keeps its progress bar.
//!
//! A client that only follows a job once the HTTP queue answer has reached it (Compass does)
//! would miss the end of a job that ended before that. So the terminal event
//! (`task-finished` / `task-failed`) of a job that ended within [`REPLAY_WINDOW`] of being
//! queued is sent again after each of [`REPLAYS`]. Compass acts on the first it sees after it
//! knows the id and ignores the rest (it stops following the job); other clients filter by
//! `job_id` as Navigator's documentation asks, and see at most a repeat.
//!
//! One actor task owns the followed jobs and emits; the HTTP routes hand it a [`JobWatch`]
//! per job they queue (so no state change is missed, whatever the broadcast does), and so
//! does [`Realtime::follow_other_hosts`] for txt2img jobs queued over HTTP on other hosts
//! sharing the database (relayed events). Consumes job events; emits socket.io events.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, header};
use serde_json::{Map, Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::socket::Sid;
use tokio::sync::mpsc;

use super::Authenticator;
use crate::accounts::Accounts;
use crate::jobs::{EventKind, JobEvent, JobId, JobReader, JobWatch, Origin, Received, Task};

/// A terminal event of a job that ended this soon after being queued is sent again.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(10);
/// When it is sent again, after the first time.
pub const REPLAYS: [Duration; 3] = [
    Duration::from_millis(150),
    Duration::from_millis(600),
    Duration::from_millis(2000),
];

const GREETING: &str = "Welcome aboard! We're navigating uncharted territories together.";

/// A job as socket events describe it.
#[derive(Debug, Clone)]
pub struct Followed {
    /// The cleansed task (its `status` is replaced, in place, by each event's).
    pub task: Map<String, Value>,
    /// Its owner.
    pub owner: String,
    /// The address it was queued from.
    pub origin: Option<String>,
    /// `txt2img` jobs report the actual seed when finished.
    pub reports_seed: bool,
}

enum Msg {
    Follow {
        job: JobId,
        followed: Box<Followed>,
        queued_at: Instant,
    },
    Event(JobEvent),
    Ended(JobId),
    Connected {
        sid: Sid,
        user: Option<String>,
        addresses: Vec<String>,
    },
}

/// The socket.io server's handle: follow jobs, tell every socket something.
#[derive(Clone, Debug)]
pub struct Realtime {
    io: SocketIo,
    inbox: mpsc::UnboundedSender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

struct Live {
    followed: Followed,
    rooms: Vec<String>,
    queued_at: Instant,
    started_at: Option<Instant>,
    /// `task-started` and the latest `task-progress`, for sockets that connect later.
    latest: Vec<(&'static str, Value)>,
}

fn user_room(user: &str) -> String {
    format!("user:{user}")
}

fn address_room(address: &str) -> String {
    format!("addr:{address}")
}

impl Realtime {
    /// The socket.io service (mount it with [`Realtime::router`]) and its actor, reading
    /// images' info through `jobs`.
    pub fn start(
        jobs: JobReader,
        auth: Authenticator,
        accounts: Arc<Accounts>,
        greet: bool,
    ) -> (Self, socketioxide::layer::SocketIoLayer) {
        let (layer, io) = SocketIo::builder().max_buffer_size(1024).build_layer();
        let (inbox, rx) = mpsc::unbounded_channel();
        let rt = Self {
            io: io.clone(),
            inbox: inbox.clone(),
        };
        let on_connect = {
            let inbox = inbox.clone();
            move |socket: SocketRef, TryData(data): TryData<Value>| {
                let inbox = inbox.clone();
                let auth = auth.clone();
                let accounts = accounts.clone();
                async move {
                    let token = data
                        .ok()
                        .and_then(|d| d.get("token").and_then(Value::as_str).map(str::to_owned));
                    let parts = socket.req_parts();
                    let header_auth = parts
                        .headers
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let credential = token.filter(|t| !t.is_empty()).or(header_auth);
                    let user = match credential {
                        Some(credential) => {
                            match authenticate(&auth, &accounts, &credential).await {
                                Some(user) => Some(user),
                                None => {
                                    tracing::info!(sid = %socket.id, "socket.io credentials refused");
                                    socket.disconnect().ok();
                                    return;
                                }
                            }
                        }
                        None => None,
                    };
                    let addresses = addresses(&socket);
                    match &user {
                        Some(user) => socket.join(user_room(user)),
                        None => {
                            for address in &addresses {
                                socket.join(address_room(address));
                            }
                        }
                    }
                    if greet {
                        let _ = socket.emit("connected", &json!({"message": GREETING}));
                    }
                    let _ = inbox.send(Msg::Connected {
                        sid: socket.id,
                        user,
                        addresses,
                    });
                }
            }
        };
        io.ns("/", on_connect);
        tokio::spawn(actor(io, jobs, rx));
        (rt, layer)
    }

    /// The socket.io server as an axum app (for its own listener).
    pub fn router(layer: socketioxide::layer::SocketIoLayer) -> axum::Router {
        axum::Router::new().layer(layer).layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(tower_http::cors::AllowOrigin::any())
                .allow_methods(tower_http::cors::Any)
                .allow_headers(tower_http::cors::Any),
        )
    }

    /// Sends the events of `watch`'s job to its owner's and origin's sockets.
    pub fn follow(&self, mut watch: JobWatch, followed: Followed) {
        let job = watch.job().clone();
        let _ = self.inbox.send(Msg::Follow {
            job: job.clone(),
            followed: Box::new(followed),
            queued_at: Instant::now(),
        });
        let inbox = self.inbox.clone();
        tokio::spawn(async move {
            while let Some(event) = watch.next().await {
                if inbox.send(Msg::Event(event)).is_err() {
                    return;
                }
            }
            let _ = inbox.send(Msg::Ended(job));
        });
    }

    /// Follows the HTTP jobs of other hosts sharing the database (their relayed events), so
    /// a socket on this host gets its user's or address's events wherever the job was queued
    /// or runs. Ends with the job service.
    pub fn follow_other_hosts(&self, jobs: JobReader) {
        let rt = self.clone();
        tokio::spawn(async move {
            let mut events = jobs.subscribe();
            let mut known = KnownJobs::default();
            loop {
                let event = match events.recv().await {
                    Received::Event(event) => event,
                    Received::Lagged(_) => continue,
                    Received::Closed => return,
                };
                let Origin::Http { client } = &*event.origin else {
                    continue;
                };
                if !event.relayed || event.kind.is_terminal() || !known.insert(&event.job) {
                    continue;
                }
                // Watched before anything else is read, so no later event is missed.
                let watch = jobs.watch(event.job.clone());
                let request = match jobs.request(event.job.as_str()).await {
                    Ok(Some(request)) if request.task == Task::Txt2Img => request,
                    Ok(_) => continue,
                    Err(err) => {
                        tracing::debug!(job_id = %event.job, error = %err, "cannot read another host's job");
                        continue;
                    }
                };
                let Ok((_, task)) = super::queue::txt2img_job(
                    &request,
                    event.job.as_str(),
                    &event.owner,
                    client,
                    0,
                ) else {
                    continue;
                };
                rt.follow(
                    watch,
                    Followed {
                        task,
                        owner: event.owner.to_string(),
                        origin: Some(client.clone()),
                        reports_seed: true,
                    },
                );
                // The event that made it known came before the watch: hand it on too.
                let _ = rt.inbox.send(Msg::Event(event));
            }
        });
    }

    /// `event` with `data` to every socket.
    pub async fn to_all(&self, event: &str, data: &Value) {
        if let Err(err) = self.io.emit(event, data).await {
            tracing::debug!(error = %err, "socket.io broadcast failed");
        }
    }

    /// Disconnects every socket (at shutdown: long-polls and websockets end now).
    pub async fn close(&self) {
        self.io.close().await;
    }
}

/// The jobs of other hosts already followed (the latest [`KNOWN_JOBS`]).
#[derive(Default)]
struct KnownJobs {
    set: std::collections::HashSet<JobId>,
    order: std::collections::VecDeque<JobId>,
}

const KNOWN_JOBS: usize = 10_000;

impl KnownJobs {
    /// False if `job` was known already.
    fn insert(&mut self, job: &JobId) -> bool {
        if !self.set.insert(job.clone()) {
            return false;
        }
        self.order.push_back(job.clone());
        if self.order.len() > KNOWN_JOBS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// The user a socket's credential names (`Bearer <jwt>`, a bare JWT, or the superuser
/// token); `None` if it is not accepted.
async fn authenticate(
    auth: &Authenticator,
    accounts: &Accounts,
    credential: &str,
) -> Option<String> {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(credential).ok()?;
    headers.insert(header::AUTHORIZATION, value);
    if let Ok(user) = auth.authenticate(&headers, accounts).await {
        return Some(user.discord_id);
    }
    if !credential.contains(' ') {
        let bearer = HeaderValue::from_str(&format!("Bearer {credential}")).ok()?;
        headers.insert(header::AUTHORIZATION, bearer);
        return auth
            .authenticate(&headers, accounts)
            .await
            .ok()
            .map(|u| u.discord_id);
    }
    None
}

/// The addresses a socket without credentials is reached at, as Navigator matches them.
fn addresses(socket: &SocketRef) -> Vec<String> {
    let parts = socket.req_parts();
    let mut out = Vec::new();
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        out.push(peer.ip().to_string());
    }
    for name in ["x-forwarded-for", "cf-connecting-ip"] {
        if let Some(value) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
            let first = value.split(',').next().unwrap_or_default().trim();
            if !first.is_empty() && !out.iter().any(|a| a == first) {
                out.push(first.to_owned());
            }
        }
    }
    out
}

async fn actor(io: SocketIo, jobs: JobReader, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut live: HashMap<JobId, Live> = HashMap::new();
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Follow {
                job,
                followed,
                queued_at,
            } => {
                let mut rooms = vec![user_room(&followed.owner)];
                if let Some(origin) = &followed.origin {
                    rooms.push(address_room(origin));
                }
                live.insert(
                    job,
                    Live {
                        followed: *followed,
                        rooms,
                        queued_at,
                        started_at: None,
                        latest: Vec::new(),
                    },
                );
            }
            Msg::Ended(job) => {
                live.remove(&job);
            }
            Msg::Connected {
                sid,
                user,
                addresses,
            } => {
                let Some(socket) = io.get_socket(sid) else {
                    continue;
                };
                for entry in live.values() {
                    let mine = match &user {
                        Some(user) => &entry.followed.owner == user,
                        None => entry
                            .followed
                            .origin
                            .as_ref()
                            .is_some_and(|o| addresses.contains(o)),
                    };
                    if mine {
                        for (event, payload) in &entry.latest {
                            let _ = socket.emit(*event, payload);
                        }
                    }
                }
            }
            Msg::Event(event) => {
                let Some(entry) = live.get_mut(&event.job) else {
                    continue;
                };
                let Some((name, payload)) = payload(&jobs, entry, &event).await else {
                    continue;
                };
                let rooms = entry.rooms.clone();
                match name {
                    "task-started" => entry.latest = vec![(name, payload.clone())],
                    "task-progress" => {
                        entry.latest.truncate(1);
                        entry.latest.push((name, payload.clone()));
                    }
                    "task-finished" | "task-failed" => {
                        entry.latest.clear();
                        if entry.queued_at.elapsed() < REPLAY_WINDOW {
                            replay(io.clone(), rooms.clone(), name, payload.clone());
                        }
                    }
                    _ => {}
                }
                if let Err(err) = io.to(rooms).emit(name, &payload).await {
                    tracing::debug!(error = %err, event = name, "socket.io emit failed");
                }
            }
        }
    }
}

/// Sends a terminal event again, later (see the module docs).
fn replay(io: SocketIo, rooms: Vec<String>, name: &'static str, payload: Value) {
    tokio::spawn(async move {
        let mut waited = Duration::ZERO;
        for at in REPLAYS {
            tokio::time::sleep(at - waited).await;
            waited = at;
            let _ = io.to(rooms.clone()).emit(name, &payload).await;
        }
    });
}

/// The socket event for a job event, if there is one.
async fn payload(
    jobs: &JobReader,
    entry: &mut Live,
    event: &JobEvent,
) -> Option<(&'static str, Value)> {
    let job_id = event.job.as_str();
    let with = |status: &str, extra: Vec<(&str, Value)>| {
        let mut task = entry.followed.task.clone();
        task.insert("status".into(), Value::String(status.to_owned()));
        for (k, v) in extra {
            task.insert(k.to_owned(), v);
        }
        Value::Object(task)
    };
    match &event.kind {
        EventKind::Started { .. } => {
            entry.started_at = Some(Instant::now());
            Some(("task-started", with("started", vec![])))
        }
        EventKind::ModelChanged { model } => Some((
            "model-changed",
            json!({"model_name": &**model, "job_id": job_id}),
        )),
        EventKind::Progress {
            step,
            total,
            preview: true,
        } => {
            let progress = f64::from(*step) / f64::from((*total).max(1));
            let elapsed = entry
                .started_at
                .map_or(0.0, |at| at.elapsed().as_secs_f64());
            let eta = if *step == 0 {
                0.0
            } else {
                elapsed / f64::from(*step) * f64::from(total.saturating_sub(*step))
            };
            Some((
                "task-progress",
                with(
                    "processing",
                    vec![
                        ("progress", json!(progress)),
                        ("eta_relative", json!((eta * 1000.0).round() / 1000.0)),
                        ("current_step", json!(step)),
                        ("total_steps", json!(total)),
                        ("progress_path", json!(format!("/api/previews/{job_id}"))),
                    ],
                ),
            ))
        }
        EventKind::Finished { .. } => {
            let mut extra = Vec::new();
            if entry.followed.reports_seed
                && let Some(seed) = actual_seed(jobs, job_id).await
            {
                extra.push(("seed", json!(seed)));
            }
            extra.push(("img_path", json!(format!("/api/images/{job_id}"))));
            Some(("task-finished", with("finished", extra)))
        }
        EventKind::Failed { error } => {
            Some(("task-failed", with("failed", vec![("error", json!(error))])))
        }
        // A queued job that was removed has no event: the HTTP answer said "removed".
        EventKind::Interrupted { was_running: true } => {
            Some(("task-interrupted", with("interrupted", vec![])))
        }
        _ => None,
    }
}

/// The seed the backend used, from the stored info (`seed`, else png-info's `Seed`).
async fn actual_seed(jobs: &JobReader, job_id: &str) -> Option<i64> {
    let info: Value = serde_json::from_str(&jobs.image_info(job_id).await.ok()??).ok()?;
    if let Some(seed) = info.get("seed").and_then(Value::as_i64) {
        return Some(seed);
    }
    match info.get("parameters")?.get("Seed")? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}
