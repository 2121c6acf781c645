//! The operator dashboard: `GET /dashboard` (one page; its script and style are embedded in
//! the binary, nothing from a CDN), the live feed behind it (`GET /api/admin/stream`,
//! server-sent events), and its actions (cancel a job, requeue a failed one, drain or resume
//! a backend). The stream and the actions need the superuser token or a role ≥ 3, like the
//! rest of `/api/admin`; the page itself holds no data.
//!
//! One [`Feed`] task per server builds the dashboard's state and every stream follows it
//! through a `watch` channel, so the store is read once per change, whatever the number of
//! viewers. It consumes the job events (every kind: they change the queue), the plugin
//! registry's and the drain switches' change signals and the worker pool's worker list, and a
//! one-second tick for what has no signal (Forge machines' states); it reads the store (queue,
//! recent images, recent failures) only after a job event, at most every
//! [`STORE_REFRESH`], and every [`STORE_RESYNC`] for jobs of other hosts.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::admin::administrator;
use super::{ApiError, AppState, openapi};
use crate::forge::Offer;
use crate::jobs::{DrainError, Drains, EventKind, JobId, JobReader, Received};
use crate::plugins::Registry;
use crate::store::JobStatus;
use crate::workers::{PoolStats, WorkerView};

/// Most often the store is read after job events.
pub const STORE_REFRESH: Duration = Duration::from_millis(250);
/// How often the store is read without a job event (jobs queued or run by other hosts).
pub const STORE_RESYNC: Duration = Duration::from_secs(5);
/// How often a stream checks that its credentials still hold (a role lowered, a user
/// disabled).
const REAUTHENTICATE: Duration = Duration::from_secs(30);
/// The sparklines: this many buckets of [`BUCKET`] each.
const BUCKETS: usize = 60;
const BUCKET: Duration = Duration::from_secs(10);
/// Jobs shown in the queue, the gallery and the failures.
const QUEUE_SHOWN: i64 = 500;
const GALLERY_SHOWN: i64 = 12;
const FAILURES_SHOWN: i64 = 10;
/// Most queued jobs whose queue time the feed remembers (for the wait sparkline).
const QUEUED_MEMORY: usize = 100_000;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// What the dashboard shows, read from the services; the admin routes answer with the same
/// views.
#[derive(Clone, Debug)]
pub struct Views {
    jobs: JobReader,
    plugins: Arc<Registry>,
    offer: Offer,
    pool: Option<Arc<PoolStats>>,
    drains: Drains,
}

impl Views {
    /// Views over the running server's services.
    pub fn new(
        jobs: JobReader,
        plugins: Arc<Registry>,
        offer: Offer,
        pool: Option<Arc<PoolStats>>,
        drains: Drains,
    ) -> Self {
        Self {
            jobs,
            plugins,
            offer,
            pool,
            drains,
        }
    }

    /// The drain switches.
    pub fn drains(&self) -> &Drains {
        &self.drains
    }

    /// Running jobs, then queued ones in claim order (`GET /api/admin/queue`).
    pub async fn queue(&self) -> Result<Value, crate::jobs::JobError> {
        let rows = self.jobs.unfinished(QUEUE_SHOWN).await?;
        let now = crate::store::now_ms();
        let mut position = 0;
        let jobs: Vec<Value> = rows
            .iter()
            .map(|row| {
                let running = row.status == "running";
                if !running {
                    position += 1;
                }
                let request: Option<crate::jobs::Txt2Img> = serde_json::from_str(&row.request).ok();
                let origin = crate::jobs::Origin::parse(row.origin.as_deref());
                json!({
                    "position": if running { 0 } else { position },
                    "id": row.id,
                    "state": row.status,
                    "owner_id": row.owner_id,
                    "front_end": origin.front_end(),
                    "model": row.model,
                    "width": request.as_ref().map_or(0, |r| r.width),
                    "height": request.as_ref().map_or(0, |r| r.height),
                    "age_s": (now - row.created_at).max(0) as f64 / 1000.0,
                    "created_at": row.created_at,
                    "started_at": if running { row.started_at } else { None },
                    "backend": if running { row.backend.clone() } else { None },
                    "host": if running { row.claimed_by.clone() } else { None },
                    "attempts": row.attempts,
                })
            })
            .collect();
        Ok(json!({"queued": self.jobs.queue_depth(), "jobs": jobs}))
    }

    /// The backends (`GET /api/admin/backends`): names, which are drained, each Forge
    /// machine, the pool's counters and each worker.
    pub fn backends(&self) -> Value {
        let workers = self.pool.as_deref().map(PoolStats::snapshot);
        let worker_list: Option<Arc<[WorkerView]>> = self
            .pool
            .as_deref()
            .map(|pool| pool.workers().borrow().clone());
        let drained: Vec<&String> = self
            .drains
            .names()
            .iter()
            .filter(|name| self.drains.is_drained(name))
            .collect();
        json!({
            "host": self.jobs.host(),
            "backends": self.drains.names(),
            "drained": drained,
            "forge": self.offer.states(),
            "workers": workers,
            "worker_list": worker_list.as_deref().unwrap_or(&[]),
        })
    }

    /// The plugins (`GET /api/admin/plugins`), as `easel plugin list` shows them.
    pub fn plugins(&self) -> Value {
        let registry = &self.plugins;
        let roles: Vec<Value> = registry
            .roles()
            .into_iter()
            .map(|(role, plugin, serving, policy)| {
                json!({
                    "role": role.as_str(),
                    "plugin": plugin,
                    "served_by": serving,
                    "on_failure": policy.as_str(),
                })
            })
            .collect();
        json!({
            "dir": registry.dir(),
            "plugins": registry.list(),
            "roles": roles,
            "admission": registry.admission(),
        })
    }

    /// The latest pictures with their prompts, and the latest failures.
    async fn recent(&self) -> Result<(Value, Value), crate::jobs::JobError> {
        let prompt = |row: &crate::store::JobRow| {
            serde_json::from_str::<crate::jobs::Txt2Img>(&row.request)
                .map(|r| r.prompt)
                .unwrap_or_default()
        };
        let front_end = |row: &crate::store::JobRow| {
            crate::jobs::Origin::parse(row.origin.as_deref()).front_end()
        };
        let images: Vec<Value> = self
            .jobs
            .recent(JobStatus::Finished, GALLERY_SHOWN)
            .await?
            .iter()
            .map(|row| {
                json!({
                    "id": row.id,
                    "prompt": prompt(row),
                    "model": row.model,
                    "owner_id": row.owner_id,
                    "front_end": front_end(row),
                    "backend": row.backend,
                    "finished_at": row.finished_at,
                })
            })
            .collect();
        let failures: Vec<Value> = self
            .jobs
            .recent(JobStatus::Failed, FAILURES_SHOWN)
            .await?
            .iter()
            .map(|row| {
                json!({
                    "id": row.id,
                    "prompt": prompt(row),
                    "owner_id": row.owner_id,
                    "front_end": front_end(row),
                    "error": row.last_error,
                    "attempts": row.attempts,
                    "faults": row.faults,
                    "finished_at": row.finished_at,
                })
            })
            .collect();
        Ok((Value::Array(images), Value::Array(failures)))
    }
}

/// Jobs finished and their mean queue wait, per [`BUCKET`], for the sparklines.
#[derive(Debug)]
struct Sparklines {
    /// The newest bucket last: (finished, started, wait seconds summed over `started`).
    buckets: VecDeque<(u64, u64, f64)>,
    current_since: Instant,
    /// Queue time of the jobs seen queued and not started yet.
    queued_at: HashMap<JobId, Instant>,
}

impl Sparklines {
    fn new() -> Self {
        Self {
            buckets: VecDeque::from(vec![(0, 0, 0.0); BUCKETS]),
            current_since: Instant::now(),
            queued_at: HashMap::new(),
        }
    }

    fn roll(&mut self) {
        while self.current_since.elapsed() >= BUCKET {
            self.buckets.pop_front();
            self.buckets.push_back((0, 0, 0.0));
            self.current_since += BUCKET;
        }
    }

    fn record(&mut self, job: &JobId, kind: &EventKind) {
        self.roll();
        let current = self.buckets.back_mut().expect("BUCKETS > 0");
        match kind {
            EventKind::Queued | EventKind::Requeued { .. }
                if self.queued_at.len() < QUEUED_MEMORY =>
            {
                self.queued_at.insert(job.clone(), Instant::now());
            }
            EventKind::Started { .. } => {
                if let Some(at) = self.queued_at.remove(job) {
                    current.1 += 1;
                    current.2 += at.elapsed().as_secs_f64();
                }
            }
            EventKind::Finished { .. } => current.0 += 1,
            EventKind::Failed { .. } | EventKind::Interrupted { .. } => {
                self.queued_at.remove(job);
            }
            _ => {}
        }
    }

    fn view(&mut self) -> Value {
        self.roll();
        let finished: Vec<u64> = self.buckets.iter().map(|b| b.0).collect();
        let wait: Vec<f64> = self
            .buckets
            .iter()
            .map(|&(_, started, sum)| {
                if started == 0 {
                    0.0
                } else {
                    sum / started as f64
                }
            })
            .collect();
        json!({"bucket_s": BUCKET.as_secs(), "finished": finished, "wait_s": wait})
    }
}

/// The dashboard's live state, as JSON text; cheap to clone. The task that builds it works
/// only while somebody follows it, and ends when the last `Feed` is dropped.
#[derive(Clone, Debug)]
pub struct Feed {
    state: watch::Sender<Arc<str>>,
    /// A new follower: the task sends the state at once.
    joined: Arc<tokio::sync::Notify>,
}

impl Feed {
    /// Starts the task that builds the state from `views` and `events` (every job event).
    pub fn start(views: Views, events: crate::jobs::Subscription) -> Self {
        let feed = Self {
            state: watch::Sender::new(Arc::from("{}")),
            joined: Arc::default(),
        };
        tokio::spawn(run(views, events, feed.clone()));
        feed
    }

    /// Follows the state: the first change is the current state, sent at once.
    fn follow(&self) -> watch::Receiver<Arc<str>> {
        let rx = self.state.subscribe();
        self.joined.notify_one();
        rx
    }
}

/// The feed's task: see the module docs.
async fn run(views: Views, mut events: crate::jobs::Subscription, feed: Feed) {
    let tx = &feed.state;
    let mut plugins = views.plugins.changes();
    let mut drains = views.drains.changes();
    let mut workers = views.pool.as_deref().map(PoolStats::workers);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sparklines = Sparklines::new();
    let mut stored = (Value::Null, Value::Null, Value::Null);
    let mut store_due = true;
    let mut store_read: Option<Instant> = None;
    let mut events_open = true;
    // What was sent last, without its clock.
    let mut last = String::new();
    loop {
        if tx.sender_count() == 1 {
            // Only this task's own handle is left.
            return;
        }
        let watched = tx.receiver_count() > 0;
        if !watched {
            // Read afresh for the next follower.
            store_due = true;
        }
        if watched
            && (store_due && store_read.is_none_or(|at| at.elapsed() >= STORE_REFRESH)
                || store_read.is_none_or(|at| at.elapsed() >= STORE_RESYNC))
        {
            match read_store(&views).await {
                Ok(fresh) => {
                    stored = fresh;
                    store_due = false;
                }
                Err(err) => tracing::warn!(error = %err, "the dashboard cannot read the store"),
            }
            store_read = Some(Instant::now());
        }
        if watched {
            let body = json!({
                "queue": stored.0,
                "images": stored.1,
                "failures": stored.2,
                "backends": views.backends(),
                "plugins": views.plugins(),
                "sparklines": sparklines.view(),
            })
            .to_string();
            if body != last {
                // `now` first, for the page's clock (ages are computed against it).
                let state = format!("{{\"now\":{},{}", crate::store::now_ms(), &body[1..]);
                tx.send_replace(Arc::from(state));
                last = body;
            }
        }
        let refresh_in = if store_due {
            STORE_REFRESH.saturating_sub(store_read.map_or(Duration::ZERO, |at| at.elapsed()))
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            received = events.recv(), if events_open => match received {
                Received::Event(event) => {
                    sparklines.record(&event.job, &event.kind);
                    store_due = true;
                    // Whatever else has arrived goes in the same state.
                    while let Some(Received::Event(event)) = events.try_recv() {
                        sparklines.record(&event.job, &event.kind);
                    }
                }
                Received::Lagged(_) => store_due = true,
                Received::Closed => events_open = false,
            },
            _ = plugins.changed() => {}
            _ = drains.changed() => {}
            _ = async {
                match workers.as_mut() {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = tokio::time::sleep(refresh_in) => {}
            _ = tick.tick() => {}
            () = feed.joined.notified() => {
                // The newcomer gets the state even when nothing changed.
                last.clear();
                if store_due {
                    store_read = None;
                }
            }
        }
    }
}

async fn read_store(views: &Views) -> Result<(Value, Value, Value), crate::jobs::JobError> {
    let queue = views.queue().await?;
    let (images, failures) = views.recent().await?;
    Ok((queue, images, failures))
}

/// What the page and the admin routes share: the dashboard's views and feed.
#[derive(Clone, Debug)]
pub struct Dashboard {
    /// The views.
    pub views: Views,
    feed: Feed,
}

impl Dashboard {
    /// The views, and a feed over them that follows `events`.
    pub fn start(views: Views, events: crate::jobs::Subscription) -> Self {
        Self {
            feed: Feed::start(views.clone(), events),
            views,
        }
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; \
                     script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
                ),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /dashboard`: the page (public; it asks for a token and holds no data).
#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "dashboard",
    summary = "The operator dashboard",
    description = "One HTML page: the queue, backends and workers, plugins, recent images and \
        failures, throughput and wait sparklines, live from `GET /api/admin/stream`. It asks \
        for the superuser token or a JWT of role ≥ 3 and keeps it in the tab's session storage.",
    responses((status = 200, description = "The page", content_type = "text/html"))
)]
pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /dashboard/dashboard.js`.
#[utoipa::path(
    get,
    path = "/dashboard/dashboard.js",
    tag = "dashboard",
    summary = "The dashboard's script",
    description = "The page's script (embedded in the binary): logs in, follows the stream, \
        renders the tables and sends the actions.",
    responses((status = 200, description = "The script", content_type = "text/javascript"))
)]
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard/dashboard.css`.
#[utoipa::path(
    get,
    path = "/dashboard/dashboard.css",
    tag = "dashboard",
    summary = "The dashboard's style sheet",
    description = "The page's style sheet (embedded in the binary).",
    responses((status = 200, description = "The style sheet", content_type = "text/css"))
)]
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /api/admin/stream`: the dashboard's state as server-sent events.
#[utoipa::path(
    get,
    path = "/api/admin/stream",
    tag = "dashboard",
    summary = "The dashboard's live state",
    description = "Server-sent events (`text/event-stream`): one `state` event at once, then one \
        whenever something shown changed (at most every 250 ms after job events; backends, \
        workers and plugins within a second). Each `data` is one JSON object: `now` (Unix \
        ms), `queue` (as `GET /api/admin/queue`), `images` (the latest finished jobs: `id`, \
        `prompt`, `model`, `owner_id`, `front_end`, `backend`, `finished_at`), `failures` \
        (the latest failed jobs, with `error`, `attempts`, `faults`), `backends` (as `GET \
        /api/admin/backends`), `plugins` (as `GET /api/admin/plugins`) and `sparklines` \
        (`bucket_s`, `finished` and `wait_s` per bucket, oldest first). The credentials are \
        checked again every 30 s; the stream ends when they no longer hold.",
    security(("bearer" = []), ("superuser" = [])),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream"),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or has a role below 3", body = openapi::Forbidden,
            example = json!({"error": "You do not have permission to view the dashboard!"})),
    )
)]
pub(super) async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    const WHAT: &str = "view the dashboard";
    administrator(&state, &headers, WHAT).await?;
    let rx = state.dashboard.feed.follow();
    let checked = Instant::now();
    let events = futures_util::stream::unfold(
        (rx, state, headers, checked),
        |(mut rx, state, headers, mut checked)| async move {
            loop {
                let changed = tokio::time::timeout(REAUTHENTICATE, rx.changed()).await;
                if checked.elapsed() >= REAUTHENTICATE {
                    if administrator(&state, &headers, WHAT).await.is_err() {
                        return None;
                    }
                    checked = Instant::now();
                }
                match changed {
                    Ok(Ok(())) => {
                        let data = rx.borrow_and_update().clone();
                        let event = Event::default().event("state").data(&*data);
                        return Some((Ok::<_, Infallible>(event), (rx, state, headers, checked)));
                    }
                    Ok(Err(_)) => return None,
                    Err(_) => {}
                }
            }
        },
    );
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Sse::new(events).keep_alive(KeepAlive::default()),
    )
        .into_response())
}

/// `POST /api/admin/jobs/:id/cancel`: stops a running job or removes a queued one.
#[utoipa::path(
    post,
    path = "/api/admin/jobs/{job_id}/cancel",
    tag = "dashboard",
    summary = "Cancel a job",
    description = "Removes a queued job from the queue, or stops a running one (its backend \
        learns it at its next progress report); the owner gets `task-interrupted`.",
    params(("job_id" = String, Path, description = "The job id")),
    security(("bearer" = []), ("superuser" = [])),
    responses(
        (status = 200, description = "Cancelled", body = openapi::Action,
            example = json!({"message": "Job cancelled", "id": "0a1b2c3d", "was": "queued"})),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or has a role below 3", body = openapi::Forbidden),
        (status = 404, description = "No such job", body = openapi::ErrorBody),
        (status = 409, description = "The job has ended", body = openapi::ErrorBody,
            example = json!({"error": "Job 0a1b2c3d is finished, not queued or running"})),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(job_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    job_action(&state, &headers, &job_id, Verb::Cancel).await
}

/// What an operator does to a job.
#[derive(Clone, Copy)]
enum Verb {
    Cancel,
    Requeue,
}

/// Runs `verb` on job `job_id` as an administrator: 404 for an unknown job, 409 when its
/// status does not allow it.
async fn job_action(
    state: &AppState,
    headers: &HeaderMap,
    job_id: &str,
    verb: Verb,
) -> Result<Json<Value>, ApiError> {
    let (what, done, allowed) = match verb {
        Verb::Cancel => ("cancel jobs", "cancelled", "queued or running"),
        Verb::Requeue => ("requeue jobs", "requeued", "failed"),
    };
    let caller = administrator(state, headers, what).await?;
    let row = existing(state, job_id).await?;
    let was = match verb {
        Verb::Cancel => state
            .intake
            .interrupt(job_id)
            .await
            .map_err(ApiError::internal)?
            .map(|was| was.as_str()),
        Verb::Requeue => state
            .intake
            .requeue_failed(job_id)
            .await
            .map_err(ApiError::internal)?
            .then_some("failed"),
    };
    let Some(was) = was else {
        return Err(ended(job_id, &row.status, allowed));
    };
    tracing::info!(job_id, by = %caller.discord_id, "job {done} by an operator");
    Ok(Json(
        json!({"message": format!("Job {done}"), "id": job_id, "was": was}),
    ))
}

/// `POST /api/admin/jobs/:id/requeue`: puts a failed job back in the queue.
#[utoipa::path(
    post,
    path = "/api/admin/jobs/{job_id}/requeue",
    tag = "dashboard",
    summary = "Requeue a failed job",
    description = "Puts a failed job back in the queue at its old place with its fault count \
        cleared (the fault limit applies again from zero).",
    params(("job_id" = String, Path, description = "The job id")),
    security(("bearer" = []), ("superuser" = [])),
    responses(
        (status = 200, description = "Requeued", body = openapi::Action,
            example = json!({"message": "Job requeued", "id": "0a1b2c3d", "was": "failed"})),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or has a role below 3", body = openapi::Forbidden),
        (status = 404, description = "No such job", body = openapi::ErrorBody),
        (status = 409, description = "The job is not failed", body = openapi::ErrorBody,
            example = json!({"error": "Job 0a1b2c3d is finished, not failed"})),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn requeue(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(job_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    job_action(&state, &headers, &job_id, Verb::Requeue).await
}

async fn existing(state: &AppState, job_id: &str) -> Result<crate::store::JobRow, ApiError> {
    state
        .jobs
        .job(job_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                json!({"error": format!("No job {job_id}")}),
            )
        })
}

fn ended(job_id: &str, status: &str, wanted: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        json!({"error": format!("Job {job_id} is {status}, not {wanted}")}),
    )
}

/// `POST /api/admin/backends/:name/drain`: the backend claims no more jobs.
#[utoipa::path(
    post,
    path = "/api/admin/backends/{name}/drain",
    tag = "dashboard",
    summary = "Drain a backend",
    description = "The backend (`simulated`, `forge`, `workers`: see `GET /api/admin/backends`) \
        claims no new jobs; what it runs goes on to its end. Queued jobs wait for another \
        backend, or for `resume`. A drain lasts until resumed or until the server restarts.",
    params(("name" = String, Path, description = "The backend's name")),
    security(("bearer" = []), ("superuser" = [])),
    responses(
        (status = 200, description = "Drained (or already drained: `changed` false)", body = openapi::DrainAnswer,
            example = json!({"message": "Backend drained", "backend": "workers", "drained": true, "changed": true})),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or has a role below 3", body = openapi::Forbidden),
        (status = 404, description = "No such backend", body = openapi::ErrorBody,
            example = json!({"error": "no backend named \"gpu\" runs here"})),
    )
)]
pub(super) async fn drain(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    switch(&state, &headers, &name, true).await
}

/// `POST /api/admin/backends/:name/resume`: the backend claims jobs again.
#[utoipa::path(
    post,
    path = "/api/admin/backends/{name}/resume",
    tag = "dashboard",
    summary = "Resume a drained backend",
    description = "The backend claims queued jobs again (at once: it is woken).",
    params(("name" = String, Path, description = "The backend's name")),
    security(("bearer" = []), ("superuser" = [])),
    responses(
        (status = 200, description = "Resumed (or was not drained: `changed` false)", body = openapi::DrainAnswer,
            example = json!({"message": "Backend resumed", "backend": "workers", "drained": false, "changed": true})),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or has a role below 3", body = openapi::Forbidden),
        (status = 404, description = "No such backend", body = openapi::ErrorBody),
    )
)]
pub(super) async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    switch(&state, &headers, &name, false).await
}

async fn switch(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
    drained: bool,
) -> Result<Json<Value>, ApiError> {
    let caller = administrator(
        state,
        headers,
        if drained {
            "drain backends"
        } else {
            "resume backends"
        },
    )
    .await?;
    let drains = state.dashboard.views.drains();
    let result = if drained {
        drains.drain(name)
    } else {
        drains.resume(name)
    };
    match result {
        Ok(changed) => {
            if changed {
                tracing::info!(backend = name, drained, by = %caller.discord_id, "backend switched by an operator");
            }
            Ok(Json(json!({
                "message": if drained { "Backend drained" } else { "Backend resumed" },
                "backend": name,
                "drained": drained,
                "changed": changed,
            })))
        }
        Err(err @ DrainError::UnknownBackend(_)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            json!({"error": err.to_string()}),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_count_finished_and_mean_wait() {
        let mut lines = Sparklines::new();
        let a = JobId::from("a");
        let b = JobId::from("b");
        lines.record(&a, &EventKind::Queued);
        lines.record(&b, &EventKind::Queued);
        let started = EventKind::Started {
            backend: Arc::from("simulated"),
            attempt: 1,
        };
        lines.record(&a, &started);
        lines.record(&b, &started);
        // Started twice: counted once.
        lines.record(&b, &started);
        let finished = EventKind::Finished {
            backend: Arc::from("simulated"),
        };
        lines.record(&a, &finished);
        let view = lines.view();
        assert_eq!(view["finished"].as_array().unwrap().len(), BUCKETS);
        assert_eq!(view["finished"][BUCKETS - 1], 1);
        assert!(view["wait_s"][BUCKETS - 1].as_f64().unwrap() < 1.0);
        assert!(lines.queued_at.is_empty());
    }
}
