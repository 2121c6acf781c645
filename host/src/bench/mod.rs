//! `easel bench`: measurements printed beside a baseline taken in the same run, on the same
//! machine (these machines are noisy: a ratio to a same-run baseline is what compares).
//!
//! * `jobs` — the job pipeline against the store alone; with `--hosts N`, clusters of 1 to N
//!   `easel serve` processes on one database, and a killed host's jobs coming back;
//! * `pool` — worker-pool dispatch against a bare ZeroMQ round-trip loop;
//! * `plugins` — plugin calls against a trivial component, and reload latency;
//! * `api` — authenticated submits over HTTP against `GET /` on the same server;
//! * `grpc` — gRPC sends (to an in-process Discord REST) against the gRPC health check.

mod api;
mod grpc;
mod hosts;
mod jobs;
mod plugins;
mod pool;
mod realtime;

use std::time::Duration;

pub use api::{ApiBenchOptions, api};
pub use grpc::{GrpcBenchOptions, grpc};
pub use hosts::{HostsBenchOptions, hosts};
pub use jobs::{BenchOptions, run};
pub use plugins::plugins;
pub use pool::{PoolBenchOptions, pool};

use crate::jobs::Txt2Img;
use crate::store::StoreError;

/// A bench that could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The job service failed.
    #[error(transparent)]
    Jobs(#[from] crate::jobs::JobError),
    /// No temporary directory, a socket, a file.
    #[error("i/o failed: {0}")]
    Io(#[from] std::io::Error),
    /// Events were lost, so latencies would be wrong.
    #[error("the event stream lagged by {0} events; use fewer jobs")]
    Lagged(u64),
    /// Something else (a server that would not start, a request that failed).
    #[error("{0}")]
    Other(String),
}

fn request(i: usize, size: u32) -> Txt2Img {
    Txt2Img {
        model_name: "bench".into(),
        prompt: format!("bench {i}"),
        width: size,
        height: size,
        steps: 1,
        seed: i as i64,
        ..Txt2Img::default()
    }
    .with_defaults()
}

/// One load measurement: calls answered per second, and latency percentiles.
struct Load {
    rate: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

impl Load {
    /// From the times of the calls made since `started` by clients that ran for `seconds`.
    fn from_times(
        mut times: Vec<Duration>,
        errors: usize,
        started: std::time::Instant,
        seconds: f64,
    ) -> Self {
        let elapsed = started.elapsed().max(Duration::from_secs_f64(seconds));
        times.sort();
        Load {
            rate: times.len() as f64 / elapsed.as_secs_f64(),
            p50: percentile(&times, 50.0),
            p99: percentile(&times, 99.0),
            errors,
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Runs `bench` on `database`, or on a fresh SQLite file removed afterwards.
async fn on_database<'a, F, Fut>(database: Option<&'a str>, bench: F) -> Result<(), BenchError>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<(), BenchError>> + 'a,
{
    if let Some(url) = database {
        return bench(url.to_owned()).await;
    }
    let tmp = std::env::temp_dir().join(format!(
        "easel-bench-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&tmp)?;
    let result = bench(format!("sqlite://{}", tmp.join("bench.db").display())).await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// A job service for a bench: its own host name, an event buffer no bench burst overruns.
fn job_service(
    store: std::sync::Arc<crate::store::Store>,
    run: &str,
) -> std::sync::Arc<crate::jobs::JobService> {
    let mut settings = crate::jobs::JobSettings::new(format!("bench-{run}"));
    settings.event_buffer = 1 << 20;
    crate::jobs::JobService::new(store, settings)
}

/// Where bench jobs say they come from.
fn origin() -> crate::jobs::Origin {
    crate::jobs::Origin::Internal {
        what: "bench".into(),
    }
}
