//! Prometheus metrics: what the job event stream, the HTTP API, the plugins and the Forge
//! machines are doing, rendered at `GET /metrics` in Prometheus' text format.
//!
//! Owns the process's metrics recorder (installed once) and one task that follows the job
//! event stream (it consumes every [`JobEvent`]; it emits nothing). Counters and histograms
//! move as things happen; the gauges of what other subsystems own (queue depth, plugins, Forge
//! machines) are read from their snapshots at each scrape. Names follow Prometheus'
//! conventions (`easel_` prefix, `_total` counters, `_seconds` durations); label values are
//! bounded (backend, machine and plugin names, front end kinds, route templates, status codes;
//! never job or user ids).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::jobs::{EventKind, JobEvent, JobId, Received, Subscription};

/// Upper bounds of the duration histograms, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// Jobs the follower keeps timestamps for (older ones are forgotten when it is full).
const FOLLOWED: usize = 100_000;

/// Every metric family easel exports: name, kind, help.
pub const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "easel_build_info",
        "gauge",
        "Always 1; the version is its label",
    ),
    (
        "easel_host_info",
        "gauge",
        "Always 1; this host's id (the claims' claimed_by) is its label",
    ),
    (
        "easel_job_leases_expired_total",
        "counter",
        "Running jobs requeued (as a fault) because their host's lease on them ran out",
    ),
    (
        "easel_jobs_queued_total",
        "counter",
        "Jobs queued, by front end",
    ),
    (
        "easel_jobs_started_total",
        "counter",
        "Claims of jobs by a backend (a requeued job is started again)",
    ),
    (
        "easel_jobs_finished_total",
        "counter",
        "Jobs finished with a picture, by backend",
    ),
    (
        "easel_jobs_failed_total",
        "counter",
        "Jobs given up, by front end",
    ),
    (
        "easel_jobs_requeued_total",
        "counter",
        "Attempts that ended with the job back in the queue (faults, lost workers, restarts)",
    ),
    (
        "easel_jobs_interrupted_total",
        "counter",
        "Jobs stopped or removed on request",
    ),
    (
        "easel_job_queue_wait_seconds",
        "histogram",
        "Time from queued to claimed, by backend",
    ),
    (
        "easel_job_run_seconds",
        "histogram",
        "Time from claimed to finished, by backend",
    ),
    ("easel_queue_depth", "gauge", "Jobs waiting in the queue"),
    (
        "easel_forge_machine_up",
        "gauge",
        "1 while a Forge machine answers, by machine",
    ),
    (
        "easel_forge_machine_busy",
        "gauge",
        "1 while a Forge machine runs a job, by machine",
    ),
    (
        "easel_forge_jobs_total",
        "counter",
        "Jobs a Forge machine finished, by machine",
    ),
    (
        "easel_forge_faults_total",
        "counter",
        "Jobs a Forge machine could not run (unreachable, timed out), by machine",
    ),
    (
        "easel_workers_connected",
        "gauge",
        "ZeroMQ workers known to the pool (ready, busy or idle)",
    ),
    (
        "easel_workers_busy",
        "gauge",
        "ZeroMQ workers holding a job",
    ),
    (
        "easel_worker_jobs_dispatched_total",
        "counter",
        "Jobs sent to ZeroMQ workers",
    ),
    (
        "easel_worker_jobs_finished_total",
        "counter",
        "Results of ZeroMQ workers stored",
    ),
    (
        "easel_worker_faults_total",
        "counter",
        "Jobs put back in the queue after a worker fault (deadline, lost worker)",
    ),
    (
        "easel_worker_jobs_failed_total",
        "counter",
        "Jobs failed after too many worker faults",
    ),
    (
        "easel_worker_frames_dropped_total",
        "counter",
        "Malformed ZeroMQ frames dropped",
    ),
    (
        "easel_plugin_loaded",
        "gauge",
        "1 while a plugin's newest file is loaded and serving (0: it failed to load, or an older version serves), by plugin",
    ),
    (
        "easel_plugin_reloads_total",
        "counter",
        "Successful reloads of a plugin (after its first load), by plugin",
    ),
    (
        "easel_plugin_failed_loads_total",
        "counter",
        "Loads and reloads of a plugin that failed (an older version keeps serving), by plugin",
    ),
    (
        "easel_plugin_failed_calls_total",
        "counter",
        "Plugin calls that failed (trap, bad answer, deadline), by plugin",
    ),
    (
        "easel_plugin_deadline_overruns_total",
        "counter",
        "Plugin calls stopped at their deadline, by plugin",
    ),
    (
        "easel_plugin_admission_waits_total",
        "counter",
        "Plugin calls that waited for a free instance",
    ),
    (
        "easel_discord_gateway_connected",
        "gauge",
        "1 while the shard's Discord gateway session is ready (0 after an error, until it resumes), by shard",
    ),
    (
        "easel_discord_rest_429_total",
        "counter",
        "Discord REST 429s (rate limited) met by the bot: replies, reactions, progress edits and the gRPC API's sends, waited out or given up",
    ),
    (
        "easel_http_requests_total",
        "counter",
        "HTTP requests, by route template, method and status",
    ),
    (
        "easel_http_request_duration_seconds",
        "histogram",
        "HTTP request latency, by route template and method",
    ),
];

/// A failed metrics set-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Another recorder is installed in this process.
    #[error("cannot install the metrics recorder: {0}")]
    Install(String),
}

/// The process's metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// The process's recorder, installed on first use (later calls share it).
    pub fn install() -> Result<Self, MetricsError> {
        static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
        let handle = HANDLE.get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            describe();
            gauge!("easel_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Ok(handle)
        });
        match handle {
            Ok(handle) => Ok(Self {
                handle: handle.clone(),
            }),
            Err(err) => Err(MetricsError::Install(err.clone())),
        }
    }

    /// Labels this process's series with its host id (`easel_host_info`).
    pub fn set_host(&self, host_id: &str) {
        gauge!("easel_host_info", "host_id" => host_id.to_owned()).set(1.0);
    }

    /// Follows the job event stream until it closes.
    pub fn follow_jobs(&self, events: Subscription) -> tokio::task::JoinHandle<()> {
        tokio::spawn(follow(events))
    }

    /// Everything, in Prometheus' text format.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

fn describe() {
    for (name, kind, help) in FAMILIES {
        match *kind {
            "counter" => describe_counter!(*name, *help),
            "histogram" => describe_histogram!(*name, metrics::Unit::Seconds, *help),
            _ => describe_gauge!(*name, *help),
        }
    }
}

/// When this process saw a job queued and claimed.
#[derive(Default)]
struct Times {
    queued: Option<Instant>,
    started: Option<(Instant, std::sync::Arc<str>)>,
}

async fn follow(mut events: Subscription) {
    let mut jobs: HashMap<JobId, Times> = HashMap::new();
    loop {
        match events.recv().await {
            Received::Event(event) => record(&mut jobs, event, Instant::now()),
            // Missed events are not counted: the counters stay monotonic, just short.
            Received::Lagged(n) => tracing::debug!(missed = n, "metrics missed job events"),
            Received::Closed => return,
        }
    }
}

fn record(jobs: &mut HashMap<JobId, Times>, event: JobEvent, now: Instant) {
    if jobs.len() >= FOLLOWED {
        jobs.clear();
    }
    if event.relayed {
        // Another host's work is counted there; only when a job was queued matters here (its
        // queue wait if this host runs it).
        if event.kind == EventKind::Queued {
            jobs.entry(event.job).or_default().queued = Some(now);
        }
        return;
    }
    let front_end = event.origin.front_end();
    match event.kind {
        EventKind::Queued => {
            counter!("easel_jobs_queued_total", "front_end" => front_end).increment(1);
            jobs.entry(event.job).or_default().queued = Some(now);
        }
        EventKind::Started { backend, .. } => {
            counter!("easel_jobs_started_total", "backend" => backend.to_string()).increment(1);
            let times = jobs.entry(event.job).or_default();
            if let Some(queued) = times.queued.take() {
                histogram!("easel_job_queue_wait_seconds", "backend" => backend.to_string())
                    .record(now.duration_since(queued));
            }
            times.started = Some((now, backend));
        }
        EventKind::Finished { backend } => {
            counter!("easel_jobs_finished_total", "backend" => backend.to_string()).increment(1);
            if let Some((started, _)) = jobs.remove(&event.job).and_then(|t| t.started) {
                histogram!("easel_job_run_seconds", "backend" => backend.to_string())
                    .record(now.duration_since(started));
            }
        }
        EventKind::Failed { .. } => {
            counter!("easel_jobs_failed_total", "front_end" => front_end).increment(1);
            jobs.remove(&event.job);
        }
        EventKind::Requeued { .. } => {
            counter!("easel_jobs_requeued_total").increment(1);
            let times = jobs.entry(event.job).or_default();
            times.started = None;
            times.queued = Some(now);
        }
        EventKind::Interrupted { .. } => {
            counter!("easel_jobs_interrupted_total").increment(1);
            jobs.remove(&event.job);
        }
        _ => {}
    }
}

/// Records one HTTP request (`route`: the matched template, or `unmatched`).
pub fn http_request(route: &str, method: &str, status: u16, took: Duration) {
    counter!(
        "easel_http_requests_total",
        "route" => route.to_owned(),
        "method" => method.to_owned(),
        "status" => status.to_string()
    )
    .increment(1);
    histogram!(
        "easel_http_request_duration_seconds",
        "route" => route.to_owned(),
        "method" => method.to_owned()
    )
    .record(took);
}

/// The snapshots of what other subsystems own, set as gauges and absolute counters before a
/// scrape.
pub fn set_snapshots(
    queue_depth: u64,
    plugins: &[crate::plugins::PluginStatus],
    admission_waits: u64,
    machines: &[crate::forge::MachineState],
    pool: Option<crate::workers::PoolSnapshot>,
) {
    if let Some(pool) = pool {
        gauge!("easel_workers_connected").set(pool.connected as f64);
        gauge!("easel_workers_busy").set(pool.busy as f64);
        counter!("easel_worker_jobs_dispatched_total").absolute(pool.dispatched);
        counter!("easel_worker_jobs_finished_total").absolute(pool.finished);
        counter!("easel_worker_faults_total").absolute(pool.requeued);
        counter!("easel_worker_jobs_failed_total").absolute(pool.failed);
        counter!("easel_worker_frames_dropped_total").absolute(pool.dropped);
    }
    gauge!("easel_queue_depth").set(queue_depth as f64);
    for plugin in plugins {
        let name = plugin.name.clone();
        gauge!("easel_plugin_loaded", "plugin" => name.clone()).set(if plugin.status == "ok" {
            1.0
        } else {
            0.0
        });
        counter!("easel_plugin_reloads_total", "plugin" => name.clone()).absolute(plugin.reloads);
        counter!("easel_plugin_failed_loads_total", "plugin" => name.clone())
            .absolute(plugin.failed_loads);
        counter!("easel_plugin_failed_calls_total", "plugin" => name.clone())
            .absolute(plugin.failed_calls);
        counter!("easel_plugin_deadline_overruns_total", "plugin" => name)
            .absolute(plugin.deadline_overruns);
    }
    counter!("easel_plugin_admission_waits_total").absolute(admission_waits);
    for machine in machines {
        let name = machine.name.clone();
        gauge!("easel_forge_machine_up", "machine" => name.clone()).set(if machine.up {
            1.0
        } else {
            0.0
        });
        gauge!("easel_forge_machine_busy", "machine" => name.clone()).set(
            if machine.current_job.is_some() {
                1.0
            } else {
                0.0
            },
        );
        counter!("easel_forge_jobs_total", "machine" => name.clone()).absolute(machine.jobs_done);
        counter!("easel_forge_faults_total", "machine" => name).absolute(machine.faults);
    }
}
