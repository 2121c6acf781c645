//! `easel bench jobs`: throughput and latency of the job pipeline, measured against a baseline
//! taken in the same run on the same database.
//!
//! * baseline: the store alone — insert, claim and finish each job one after the other, no
//!   events, no drawing (the floor any pipeline on this database pays);
//! * pipeline: the job service with `workers` simulated backends (no step delay, one step,
//!   small images): enqueue → claim → progress → PNG drawn → finished, with events.
//!
//! It prints jobs/s for both, their ratio, and the queue→start latency percentiles.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;

use crate::jobs::{JobEvent, JobService, Txt2Img};
use crate::sim;
use crate::store::{NewImage, NewJob, Store, StoreError};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Jobs per phase.
    pub jobs: usize,
    /// Simulated backends in the pipeline phase.
    pub workers: u32,
    /// Database URL; `None`: a fresh SQLite file in a temporary directory.
    pub database: Option<String>,
    /// Side of the square images drawn.
    pub size: u32,
}

/// A bench that could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The job service failed.
    #[error(transparent)]
    Jobs(#[from] crate::jobs::JobError),
    /// No temporary directory.
    #[error("cannot create a temporary database: {0}")]
    Io(#[from] std::io::Error),
    /// Events were lost, so latencies would be wrong.
    #[error("the event stream lagged by {0} events; use fewer jobs")]
    Lagged(u64),
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
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Runs both phases and prints the report.
pub async fn run(options: BenchOptions) -> Result<(), BenchError> {
    let tmp = std::env::temp_dir().join(format!("easel-bench-{}", std::process::id()));
    let url = match &options.database {
        Some(url) => url.clone(),
        None => {
            std::fs::create_dir_all(&tmp)?;
            format!("sqlite://{}", tmp.join("bench.db").display())
        }
    };
    let result = run_on(&url, &options).await;
    if options.database.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

async fn run_on(url: &str, options: &BenchOptions) -> Result<(), BenchError> {
    let store = Arc::new(Store::connect(url).await?);
    let run = format!("{:08x}", rand::random::<u32>());
    println!(
        "easel bench jobs: {} jobs, {} simulated workers, {}x{} images, {:?} database",
        options.jobs,
        options.workers,
        options.size,
        options.size,
        store.kind()
    );

    // Baseline: the store alone.
    let png = sim::render(&request(0, options.size)).expect("render");
    let json = serde_json::to_string(&request(0, options.size)).expect("json");
    let started = Instant::now();
    for i in 0..options.jobs {
        let id = format!("b{run}{i}");
        store
            .insert_job(&NewJob {
                id: &id,
                kind: "txt2img",
                request: &json,
                owner_id: "bench",
                origin: None,
            })
            .await?;
        let row = store
            .claim_job("bench", "baseline")
            .await?
            .expect("the job just inserted");
        store
            .finish_job(
                &row.id,
                Some(row.attempts),
                &NewImage {
                    png: &png,
                    info: "{}",
                    width: options.size,
                    height: options.size,
                    category_id: None,
                },
            )
            .await?;
    }
    let baseline = started.elapsed();
    let baseline_rate = options.jobs as f64 / baseline.as_secs_f64();
    println!(
        "baseline (store only: insert + claim + finish, sequential): {:>9.1} jobs/s  ({:.2?})",
        baseline_rate, baseline
    );

    // Pipeline: job service + simulated backends.
    let jobs = Arc::new(JobService::new(store.clone(), format!("bench-{run}")));
    let mut events = jobs.subscribe();
    let mut workers = sim::spawn(jobs.clone(), options.workers, Duration::ZERO);
    let total = options.jobs;
    let collector = tokio::spawn(async move {
        let mut queued_at = HashMap::with_capacity(total);
        let mut latencies = Vec::with_capacity(total);
        let mut finished = 0;
        while finished < total {
            match events.recv().await {
                Ok(JobEvent::Queued { job_id }) => {
                    queued_at.insert(job_id, Instant::now());
                }
                Ok(JobEvent::Started { job_id, .. }) => {
                    if let Some(at) = queued_at.get(&job_id) {
                        latencies.push(at.elapsed());
                    }
                }
                Ok(JobEvent::Finished { .. } | JobEvent::Failed { .. }) => finished += 1,
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => return Err(n),
                Err(RecvError::Closed) => break,
            }
        }
        Ok((latencies, Instant::now()))
    });
    let started = Instant::now();
    for i in 0..options.jobs {
        jobs.enqueue(
            &format!("p{run}{i}"),
            "bench",
            None,
            &request(i, options.size),
        )
        .await?;
    }
    let enqueued = started.elapsed();
    let outcome = collector.await.expect("collector task");
    workers.shutdown().await;
    store.close().await;
    let (mut latencies, done_at) = outcome.map_err(BenchError::Lagged)?;
    let pipeline = done_at - started;
    let pipeline_rate = options.jobs as f64 / pipeline.as_secs_f64();
    latencies.sort();
    println!(
        "pipeline (job service + {} simulated workers):            {:>9.1} jobs/s  ({:.2?}; enqueue alone {:.1} jobs/s)",
        options.workers,
        pipeline_rate,
        pipeline,
        options.jobs as f64 / enqueued.as_secs_f64()
    );
    println!(
        "queue -> start latency: p50 {:.2?}  p99 {:.2?}  max {:.2?}",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or_default()
    );
    println!(
        "ratio pipeline / baseline: {:.2}x",
        pipeline_rate / baseline_rate
    );
    Ok(())
}
