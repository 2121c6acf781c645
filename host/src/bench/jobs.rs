//! `easel bench jobs`: throughput and latency of the job pipeline against the store alone.
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

use super::{BenchError, job_service, on_database, origin, percentile, request};
use crate::jobs::{Backends, EventKind, JobId, Received};
use crate::sim::{self, Simulated};
use crate::store::{ClaimFilter, Completion, DEFAULT_LEASE, Fence, NewImage, NewJob, Store};

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

/// Runs both phases and prints the report.
pub async fn run(options: BenchOptions) -> Result<(), BenchError> {
    let options = &options;
    on_database(options.database.as_deref(), |url| async move {
        run_on(&url, options).await
    })
    .await
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
                model: "bench",
                pixels: i64::from(options.size * options.size),
                category_id: None,
            })
            .await?;
        let row = store
            .claim_jobs(
                "bench",
                "baseline",
                ClaimFilter::default(),
                1,
                DEFAULT_LEASE,
            )
            .await?
            .pop()
            .expect("the job just inserted");
        store
            .finish_jobs(&[Completion {
                id: &row.id,
                fence: Fence::Claim(row.event_seq),
                backend: "baseline",
                image: NewImage {
                    png: &png,
                    info: "{}",
                    width: options.size,
                    height: options.size,
                    category_id: None,
                },
            }])
            .await?;
    }
    let baseline = started.elapsed();
    let baseline_rate = options.jobs as f64 / baseline.as_secs_f64();
    println!(
        "baseline (store only: insert + claim + finish, sequential): {:>9.1} jobs/s  ({:.2?})",
        baseline_rate, baseline
    );

    // Pipeline: job service + simulated backends.
    let jobs = job_service(store.clone(), &run);
    let mut events = jobs.subscribe();
    let mut backends = Backends::new(jobs.clone());
    backends.start(Simulated {
        workers: options.workers,
        step: Duration::ZERO,
    });
    let total = options.jobs;
    let collector = tokio::spawn(async move {
        let mut queued_at: HashMap<JobId, Instant> = HashMap::with_capacity(total);
        let mut latencies = Vec::with_capacity(total);
        let mut finished = 0;
        while finished < total {
            match events.recv().await {
                Received::Event(event) => match event.kind {
                    EventKind::Queued => {
                        queued_at.insert(event.job, Instant::now());
                    }
                    EventKind::Started { .. } => {
                        if let Some(at) = queued_at.get(&event.job) {
                            latencies.push(at.elapsed());
                        }
                    }
                    EventKind::Finished { .. } | EventKind::Failed { .. } => finished += 1,
                    _ => {}
                },
                Received::Lagged(n) => return Err(n),
                Received::Closed => break,
            }
        }
        Ok((latencies, Instant::now()))
    });
    let started = Instant::now();
    let mut submits = tokio::task::JoinSet::new();
    for i in 0..options.jobs {
        let (jobs, size) = (jobs.clone(), options.size);
        let id = JobId::from(format!("p{run}{i}"));
        // Submitted as front ends do: many at once, group-committed.
        submits.spawn(async move {
            jobs.enqueue(&id, "bench", &origin(), &request(i, size), false)
                .await
                .map(drop)
        });
    }
    while let Some(done) = submits.join_next().await {
        done.expect("enqueue task")?;
    }
    let enqueued = started.elapsed();
    let outcome = collector.await.expect("collector task");
    backends.shutdown().await;
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
