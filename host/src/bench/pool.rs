//! `easel bench pool`: worker-pool dispatch with in-process seed-protocol workers, against a
//! bare ZeroMQ ROUTER/DEALER round-trip loop with as many workers in the same run (no store, no
//! scheduling: the transport's limit on this machine).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use super::{BenchError, job_service, on_database, origin, percentile, request};
use crate::jobs::{Backends, EventKind, JobId, Received, Txt2Img};
use crate::sim;
use crate::store::Store;
use crate::workers::{PoolStats, WorkerPool};

/// What `easel bench pool` measures.
#[derive(Clone, Debug)]
pub struct PoolBenchOptions {
    /// Jobs in the throughput phase.
    pub jobs: usize,
    /// In-process workers (seed protocol, no delay).
    pub workers: usize,
    /// Jobs in the idle-latency phase (one at a time).
    pub probes: usize,
    /// Database URL; `None`: a fresh SQLite file in a temporary directory.
    pub database: Option<String>,
}

/// The seed's design: one dispatch per 1-second loop iteration.
const SEED_JOBS_PER_SECOND: f64 = 1.0;

fn tiny_png_base64() -> String {
    let png = sim::render(&Txt2Img {
        prompt: "bench".into(),
        width: 8,
        height: 8,
        ..Txt2Img::default()
    })
    .expect("render");
    base64::engine::general_purpose::STANDARD.encode(png)
}

/// A seed-protocol worker in this process: READY, take a job, report when it arrived, answer
/// with a tiny PNG at once, READY again.
async fn bench_worker(
    endpoint: String,
    arrivals: tokio::sync::mpsc::UnboundedSender<(usize, Instant)>,
) -> Result<(), zeromq::ZmqError> {
    let image_data = tiny_png_base64();
    let mut socket = zeromq::DealerSocket::new();
    socket.connect(&endpoint).await?;
    let ready = || ZmqMessage::from(r#"{"type": "READY", "hostname": "bench"}"#.to_owned());
    socket.send(ready()).await?;
    loop {
        let message = socket.recv().await?;
        let arrived = Instant::now();
        let Some(body) = message.into_vec().pop() else {
            continue;
        };
        let job: crate::workers::protocol::SeedJob =
            serde_json::from_slice(&body).expect("a seed job");
        let index = job
            .prompt
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(usize::MAX);
        let _ = arrivals.send((index, arrived));
        let output = serde_json::json!({
            "type": "OUTPUT", "image_data": image_data, "id_num": job.id_num, "hostname": "bench"
        })
        .to_string();
        socket.send(ZmqMessage::from(output)).await?;
        socket.send(ready()).await?;
    }
}

/// The transport alone: a ROUTER that hands a seed job to each READY worker and counts the
/// OUTPUTs, with `workers` in-process workers doing what [`bench_worker`] does. Jobs/s.
async fn bare_round_trips(workers: usize, jobs: usize) -> Result<f64, BenchError> {
    let zmq = |err: zeromq::ZmqError| BenchError::Other(format!("zeromq: {err}"));
    let mut router = zeromq::RouterSocket::new();
    let endpoint = router
        .bind("tcp://127.0.0.1:0")
        .await
        .map_err(zmq)?
        .to_string();
    let (arrivals, _ignored) = tokio::sync::mpsc::unbounded_channel();
    let mut peers = tokio::task::JoinSet::new();
    for _ in 0..workers {
        peers.spawn(bench_worker(endpoint.clone(), arrivals.clone()));
    }
    let mut ready: VecDeque<Bytes> = VecDeque::new();
    let (mut sent, mut done) = (0usize, 0usize);
    let mut started = None;
    while done < jobs {
        let message = router.recv().await.map_err(zmq)?;
        let mut frames = message.into_vec();
        let (Some(body), Some(identity)) = (frames.pop(), frames.pop()) else {
            continue;
        };
        let text = std::str::from_utf8(&body).unwrap_or_default();
        if text.contains("\"OUTPUT\"") {
            done += 1;
        } else if text.contains("\"READY\"") {
            ready.push_back(identity);
            if ready.len() == workers && started.is_none() {
                // Every worker is there: the clock starts, as it does for the pool.
                started = Some(Instant::now());
            }
        }
        if started.is_none() {
            continue;
        }
        while sent < jobs {
            let Some(worker) = ready.pop_front() else {
                break;
            };
            let job = serde_json::json!({
                "prompt": format!("bench {sent}"), "cfg": 7.5, "steps": 1,
                "id_num": format!("{sent:032x}")
            })
            .to_string();
            let reply = ZmqMessage::try_from(vec![worker, Bytes::from(job)]).expect("two frames");
            router.send(reply).await.map_err(zmq)?;
            sent += 1;
        }
    }
    let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
    peers.shutdown().await;
    Ok(jobs as f64 / elapsed.as_secs_f64())
}

/// Runs `easel bench pool` and prints the report.
pub async fn pool(options: PoolBenchOptions) -> Result<(), BenchError> {
    let options = &options;
    on_database(options.database.as_deref(), |url| async move {
        pool_on(&url, options).await
    })
    .await
}

async fn pool_on(url: &str, options: &PoolBenchOptions) -> Result<(), BenchError> {
    let store = std::sync::Arc::new(Store::connect(url).await?);
    let run = format!("{:08x}", rand::random::<u32>());
    let jobs = job_service(store.clone(), &run);
    println!(
        "easel bench pool: {} jobs, {} workers (in-process, seed protocol, no delay), {:?} database",
        options.jobs,
        options.workers,
        store.kind()
    );
    let bare = bare_round_trips(options.workers, options.jobs).await?;
    println!(
        "baseline: bare ZeroMQ ROUTER/DEALER round trips, same workers, no store: {bare:>8.1} jobs/s"
    );

    let pool = WorkerPool::bind(crate::config::Workers {
        bind: "tcp://127.0.0.1:0".into(),
        ..crate::config::Workers::default()
    })
    .await
    .map_err(|err| BenchError::Other(err.to_string()))?;
    let endpoint = pool.endpoint().to_owned();
    let stats = pool.stats();
    let mut backends = Backends::new(jobs.clone());
    backends.start(pool);
    let done = |stats: &PoolStats| {
        stats.finished.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed)
    };
    let enqueue_all = |prefix: &'static str| {
        let jobs = jobs.clone();
        let run = run.clone();
        let count = options.jobs;
        async move {
            let mut submits = tokio::task::JoinSet::new();
            for i in 0..count {
                let jobs = jobs.clone();
                let id = JobId::from(format!("{prefix}{run}{i}"));
                submits.spawn(async move {
                    jobs.enqueue(&id, "bench", &origin(), &request(i, 8), false)
                        .await
                        .map(drop)
                });
            }
            while let Some(done) = submits.join_next().await {
                done.expect("enqueue task")?;
            }
            Ok::<_, BenchError>(())
        }
    };

    // Phase 1, dispatch alone: the jobs are queued before any worker is there.
    let started = Instant::now();
    enqueue_all("d").await?;
    let enqueue_rate = options.jobs as f64 / started.elapsed().as_secs_f64();
    let (arrivals_tx, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.workers {
        workers.spawn(bench_worker(endpoint.clone(), arrivals_tx.clone()));
    }
    while done(&stats) < options.jobs as u64 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let dispatch_elapsed = started.elapsed();
    let dispatch_rate = options.jobs as f64 / dispatch_elapsed.as_secs_f64();
    while arrivals.try_recv().is_ok() {}

    // Phase 2, queueing while the workers run: enqueue → worker → stored, end to end.
    let started = Instant::now();
    let queued_at = Instant::now();
    enqueue_all("t").await?;
    while done(&stats) < 2 * options.jobs as u64 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = started.elapsed();
    let mut loaded = Vec::with_capacity(options.jobs);
    while let Ok((_, at)) = arrivals.try_recv() {
        loaded.push(at - queued_at);
    }
    loaded.sort();
    let rate = options.jobs as f64 / elapsed.as_secs_f64();

    // Latency with idle workers: one job at a time.
    let mut events = jobs.subscribe();
    let mut idle = Vec::with_capacity(options.probes);
    for i in 0..options.probes {
        let queued = Instant::now();
        let id = JobId::from(format!("l{run}{i}"));
        jobs.enqueue(&id, "bench", &origin(), &request(i, 8), false)
            .await?;
        let (_, at) = arrivals.recv().await.expect("workers running");
        idle.push(at - queued);
        // Let the result come back so the next probe finds the workers idle.
        loop {
            match events.recv().await {
                Received::Event(event)
                    if event.job == id
                        && matches!(
                            event.kind,
                            EventKind::Finished { .. } | EventKind::Failed { .. }
                        ) =>
                {
                    break;
                }
                Received::Event(_) => {}
                Received::Lagged(n) => return Err(BenchError::Lagged(n)),
                Received::Closed => break,
            }
        }
    }
    idle.sort();
    workers.shutdown().await;
    backends.shutdown().await;
    store.close().await;

    println!("enqueue alone (concurrent submits): {enqueue_rate:>8.1} jobs/s");
    println!(
        "dispatch (jobs already queued): {dispatch_rate:>8.1} jobs/s ({} jobs in {dispatch_elapsed:.2?}); ratio to the bare loop: {:.2}x; to the seed's design (1 job/s): {:.0}x",
        options.jobs,
        dispatch_rate / bare,
        dispatch_rate / SEED_JOBS_PER_SECOND
    );
    println!(
        "end to end (queued while running): {rate:>8.1} jobs/s ({} jobs in {elapsed:.2?}); ratio to the bare loop: {:.2}x",
        options.jobs,
        rate / bare
    );
    println!(
        "queue -> worker under load (from the start of the burst): p50 {:.2?}  p99 {:.2?}",
        percentile(&loaded, 50.0),
        percentile(&loaded, 99.0)
    );
    println!(
        "queue -> worker, idle workers ({} probes): p50 {:.2?}  p99 {:.2?}",
        options.probes,
        percentile(&idle, 50.0),
        percentile(&idle, 99.0)
    );
    Ok(())
}
