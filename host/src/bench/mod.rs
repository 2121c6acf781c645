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

/// A seed-protocol worker in this process: READY, take a job, report when it arrived, answer
/// with a tiny PNG at once, READY again.
async fn bench_worker(
    endpoint: String,
    arrivals: tokio::sync::mpsc::UnboundedSender<(usize, Instant)>,
) -> Result<(), zeromq::ZmqError> {
    use base64::Engine as _;
    use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};
    let png = sim::render(&Txt2Img {
        prompt: "bench".into(),
        width: 8,
        height: 8,
        ..Txt2Img::default()
    })
    .expect("render");
    let image_data = base64::engine::general_purpose::STANDARD.encode(png);
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

/// Runs `easel bench pool` and prints the report.
pub async fn pool(options: PoolBenchOptions) -> Result<(), BenchError> {
    let options = &options;
    on_database(options.database.as_deref(), |url| async move {
        pool_on(&url, options).await
    })
    .await
}

async fn pool_on(url: &str, options: &PoolBenchOptions) -> Result<(), BenchError> {
    let store = Arc::new(Store::connect(url).await?);
    let run = format!("{:08x}", rand::random::<u32>());
    let jobs = Arc::new(JobService::new(store.clone(), format!("bench-{run}")));
    let config = crate::config::Workers {
        bind: "tcp://127.0.0.1:0".into(),
        ..crate::config::Workers::default()
    };
    let handle = crate::workers::start(jobs.clone(), config)
        .await
        .map_err(|err| BenchError::Io(std::io::Error::other(err.to_string())))?;
    println!(
        "easel bench pool: {} jobs, {} workers (in-process, seed protocol, no delay), {:?} database",
        options.jobs,
        options.workers,
        store.kind()
    );
    let done = |h: &crate::workers::PoolHandle| {
        h.stats.finished.load(std::sync::atomic::Ordering::Relaxed)
            + h.stats.failed.load(std::sync::atomic::Ordering::Relaxed)
    };

    // Phase 1, dispatch alone: the jobs are queued before any worker is there.
    let started = Instant::now();
    for i in 0..options.jobs {
        jobs.enqueue(&format!("d{run}{i}"), "bench", None, &request(i, 8))
            .await?;
    }
    let enqueue_rate = options.jobs as f64 / started.elapsed().as_secs_f64();
    let (arrivals_tx, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.workers {
        workers.spawn(bench_worker(handle.endpoint.clone(), arrivals_tx.clone()));
    }
    while done(&handle) < options.jobs as u64 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let dispatch_elapsed = started.elapsed();
    let dispatch_rate = options.jobs as f64 / dispatch_elapsed.as_secs_f64();
    while arrivals.try_recv().is_ok() {}

    // Phase 2, queueing while the workers run: enqueue → worker → stored, end to end (a burst
    // this size would overrun the event stream of a slow reader, so the pool counts).
    let started = Instant::now();
    let mut queued_at = Vec::with_capacity(options.jobs);
    for i in 0..options.jobs {
        queued_at.push(Instant::now());
        jobs.enqueue(&format!("t{run}{i}"), "bench", None, &request(i, 8))
            .await?;
    }
    while done(&handle) < 2 * options.jobs as u64 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = started.elapsed();
    let mut loaded = Vec::with_capacity(options.jobs);
    while let Ok((index, at)) = arrivals.try_recv() {
        if let Some(queued) = queued_at.get(index) {
            loaded.push(at - *queued);
        }
    }
    loaded.sort();
    let rate = options.jobs as f64 / elapsed.as_secs_f64();

    // Latency with idle workers: one job at a time.
    let mut events = jobs.subscribe();
    let mut idle = Vec::with_capacity(options.probes);
    for i in 0..options.probes {
        let queued = Instant::now();
        jobs.enqueue(&format!("l{run}{i}"), "bench", None, &request(i, 8))
            .await?;
        let (_, at) = arrivals.recv().await.expect("workers running");
        idle.push(at - queued);
        // Let the result come back so the next probe finds the workers idle.
        loop {
            match events.recv().await {
                Ok(JobEvent::Finished { .. } | JobEvent::Failed { .. }) => break,
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => return Err(BenchError::Lagged(n)),
                Err(RecvError::Closed) => break,
            }
        }
    }
    idle.sort();
    workers.shutdown().await;
    handle.shutdown().await;
    store.close().await;

    println!("enqueue alone: {enqueue_rate:>8.1} jobs/s");
    println!(
        "dispatch (jobs already queued): {dispatch_rate:>8.1} jobs/s ({} jobs in {dispatch_elapsed:.2?}); ratio to the seed's design (1 job/s): {:.0}x",
        options.jobs,
        dispatch_rate / SEED_JOBS_PER_SECOND
    );
    println!(
        "end to end (queued while running): {rate:>8.1} jobs/s ({} jobs in {elapsed:.2?}); ratio to the seed's design: {:.0}x",
        options.jobs,
        rate / SEED_JOBS_PER_SECOND
    );
    println!(
        "queue -> worker under load: p50 {:.2?}  p99 {:.2?}",
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

/// A copy of a component with a custom section appended: the same code under a new hash, so
/// the runtime has to compile it afresh.
fn tagged(component: &[u8], tag: usize) -> Vec<u8> {
    let name = format!("easel-bench-{tag}");
    let mut payload = vec![u8::try_from(name.len()).expect("short name")];
    payload.extend_from_slice(name.as_bytes());
    let mut out = component.to_vec();
    out.push(0); // custom section
    let mut size = payload.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&payload);
    out
}

/// Call times (sorted) and the times of the baseline calls paired with them.
struct Measured {
    times: Vec<Duration>,
    baseline: Vec<Duration>,
}

impl Measured {
    /// p50 over the p50 of the paired baseline calls.
    fn ratio(&self) -> f64 {
        percentile(&self.times, 50.0).as_secs_f64() / percentile(&self.baseline, 50.0).as_secs_f64()
    }
}

/// `easel bench plugins`: per-call cost of each default plugin and of the whole pipeline
/// against a trivial component in the same runtime, and reload latency (file written → new
/// version answering), cold (new code) and from the precompiled cache.
pub fn plugins(dir: &std::path::Path, calls: usize) -> Result<(), BenchError> {
    use crate::plugins::{
        Decision, Limits, Outcome, PluginSettings, PolicyLimits, Registry, Role, Runtime, Stage,
        Verdict, example_caller,
    };
    let io = |e: crate::plugins::PluginError| BenchError::Io(std::io::Error::other(e.to_string()));
    let other = |message: String| BenchError::Io(std::io::Error::other(message));
    let runtime = Runtime::new(Limits::default()).map_err(io)?;
    let trivial = runtime
        .load(&dir.join("fixtures/hostile.wasm"))
        .map_err(io)?;
    let settings = PluginSettings::from_config(&crate::config::Config::default());
    let load = |role: Role| runtime.load(&dir.join(format!("{role}.wasm"))).map_err(io);
    let (access, parser, policy, reactions) = (
        load(Role::Access)?,
        load(Role::Parser)?,
        load(Role::ModelPolicy)?,
        load(Role::Reactions)?,
    );
    let config = |role: Role| settings.config_for(role.as_str());
    let caller = example_caller();
    let message = "/art a red fox --steps 20 --cfg 6";
    let limits = PolicyLimits {
        max_pixels: 3_686_400,
    };
    let request = crate::plugins::JobRequest {
        cfg: 6.0,
        steps: 20,
        ..crate::plugins::example_request()
    };
    let baseline_call = || {
        trivial
            .parse(&config(Role::Parser), "x", &caller)
            .map(drop)
            .map_err(io)
    };
    // Each call measured is paired with a baseline call just before it, so a ratio compares
    // calls made under the same conditions (this machine's speed drifts over a run).
    let measure = |f: &dyn Fn() -> Result<(), BenchError>| -> Result<Measured, BenchError> {
        for _ in 0..calls.min(500) {
            baseline_call()?;
            f()?;
        }
        let mut measured = Measured {
            times: Vec::with_capacity(calls),
            baseline: Vec::with_capacity(calls),
        };
        for _ in 0..calls {
            let started = Instant::now();
            baseline_call()?;
            measured.baseline.push(started.elapsed());
            let started = Instant::now();
            f()?;
            measured.times.push(started.elapsed());
        }
        measured.times.sort();
        measured.baseline.sort();
        Ok(measured)
    };
    let p50 = |times: &[Duration]| percentile(times, 50.0);
    let base = measure(&baseline_call)?;
    println!("easel bench plugins: {calls} calls each, fresh instance per call, pooling allocator");
    println!("(each call is paired with a baseline call made just before it; ratios are to those)");
    println!(
        "{:<58} p50 {:>9.2?}  p99 {:>9.2?}",
        "baseline: trivial component, instantiate + one call",
        p50(&base.times),
        percentile(&base.times, 99.0)
    );
    let row = |label: &str, measured: &Measured| {
        println!(
            "{label:<58} p50 {:>9.2?}  p99 {:>9.2?}  {:>5.2}x baseline",
            p50(&measured.times),
            percentile(&measured.times, 99.0),
            measured.ratio()
        );
    };
    row(
        "access.check",
        &measure(&|| {
            access
                .check(&config(Role::Access), &caller)
                .map(drop)
                .map_err(io)
        })?,
    );
    row(
        "parser.parse",
        &measure(&|| {
            parser
                .parse(&config(Role::Parser), message, &caller)
                .map(drop)
                .map_err(io)
        })?,
    );
    row(
        "model-policy.decide",
        &measure(&|| {
            policy
                .decide(&config(Role::ModelPolicy), &request, &caller, &[], limits)
                .map(drop)
                .map_err(io)
        })?,
    );
    row(
        "reactions.on-stage (finished)",
        &measure(&|| {
            reactions
                .on_stage(
                    &config(Role::Reactions),
                    Stage::Finished,
                    &caller,
                    Some(&request),
                    "gpu-box",
                )
                .map(drop)
                .map_err(io)
        })?,
    );

    // The whole pipeline of a chat message, through the registry (role lookup, settings,
    // failure policy) as the front ends call it: four fresh instances.
    let registry = Registry::open(runtime.clone(), dir, settings.clone());
    let pipeline = measure(&|| {
        if registry.check(&caller) != Decision::Allow {
            return Err(other("access refused the example caller".into()));
        }
        let Outcome::Request(parsed) = registry.parse(message, &caller) else {
            return Err(other("the parser did not make a request".into()));
        };
        let Verdict::Allow(request) = registry.decide(&parsed.request, &caller, &[], limits) else {
            return Err(other("the model policy refused the request".into()));
        };
        registry.on_stage(Stage::Accepted, &caller, Some(&request), "");
        Ok(())
    })?;
    row(
        "pipeline: access + parser + model-policy + reactions",
        &pipeline,
    );
    // No pipeline of four fresh instances can beat four instances of the trivial component.
    let floor = measure(&|| {
        for _ in 0..4 {
            baseline_call()?;
        }
        Ok(())
    })?;
    row("floor: four trivial calls in a row", &floor);
    println!(
        "targets: pipeline p50 <= 25 us: {}; <= 8x baseline: {}",
        if p50(&pipeline.times) <= Duration::from_micros(25) {
            "met".to_owned()
        } else if p50(&floor.times) > Duration::from_micros(25) {
            format!(
                "NOT met (below this machine's floor of {:.2?})",
                p50(&floor.times)
            )
        } else {
            "NOT met".to_owned()
        },
        if pipeline.ratio() <= 8.0 {
            "met"
        } else {
            "NOT met"
        },
    );

    // Reload latency: replace the file under one name, time until the new version answers.
    let tmp = std::env::temp_dir().join(format!("easel-bench-plugins-{}", std::process::id()));
    let cache = tmp.join("cache");
    let watched = tmp.join("plugins");
    std::fs::create_dir_all(&watched)?;
    let sources = [
        std::fs::read(dir.join("parser.wasm"))?,
        std::fs::read(dir.join("fixtures/hostile.wasm"))?,
    ];
    let cached_runtime = Runtime::with_cache(Limits::default(), Some(&cache)).map_err(io)?;
    std::fs::write(watched.join("parser.wasm"), &sources[0])?;
    let registry = Registry::open(cached_runtime, &watched, settings.clone());
    let _watcher = registry.watch().map_err(|e| other(e.to_string()))?;
    let reload = |version: &[u8], parser_version: bool| -> Result<Duration, BenchError> {
        let staged = watched.join(".parser.tmp");
        std::fs::write(&staged, version)?;
        let written = Instant::now();
        std::fs::rename(&staged, watched.join("parser.wasm"))?;
        let deadline = written + Duration::from_secs(10);
        loop {
            // The parser answers with a request; the trivial component with help.
            let answer = registry
                .plugin("parser")
                .map(|p| p.parse(&config(Role::Parser), "/art x", &caller));
            let is_new = match answer {
                Some(Ok(Outcome::Request(_))) => parser_version,
                Some(Ok(Outcome::Help(_))) => !parser_version,
                _ => false,
            };
            if is_new {
                return Ok(written.elapsed());
            }
            if Instant::now() > deadline {
                return Err(other("reload not seen in 10 s".into()));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for i in 1..=10 {
        // New bytes each time: compiled afresh.
        cold.push(reload(&tagged(&sources[i % 2], i), i % 2 == 0)?);
    }
    for i in 1..=10 {
        // The two plain files, alternately: the second time on, read from the cache.
        warm.push(reload(&sources[i % 2], i % 2 == 0)?);
    }
    drop(_watcher);
    let _ = std::fs::remove_dir_all(&tmp);
    cold.sort();
    warm.sort();
    let reload_row = |label: &str, times: &[Duration]| {
        println!(
            "{label:<58} p50 {:>9.2?}  max {:>9.2?}",
            p50(times),
            times.last().copied().unwrap_or_default()
        );
    };
    reload_row(
        "reload, new code (file renamed in -> new version answers)",
        &cold,
    );
    reload_row("reload, version seen before (precompiled cache)", &warm);
    // What a reload of new code cannot go below: compiling it.
    let mut compiles = Vec::new();
    for i in 11..=20 {
        let bytes = tagged(&sources[0], i);
        let started = Instant::now();
        runtime.from_bytes("parser", &bytes).map_err(io)?;
        compiles.push(started.elapsed());
    }
    compiles.sort();
    reload_row("compile alone (new code, no watcher, no cache)", &compiles);
    println!(
        "target: reload <= 100 ms: {}",
        if p50(&cold) <= Duration::from_millis(100) {
            "met"
        } else {
            "NOT met"
        },
    );

    // The deadline: an endless loop in a plugin, stopped by epoch interruption.
    let deadline = Limits::default().deadline;
    let mut stops = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        if trivial
            .parse(&config(Role::Parser), "loop", &caller)
            .is_ok()
        {
            return Err(other("the endless loop answered".into()));
        }
        stops.push(started.elapsed());
    }
    stops.sort();
    println!(
        "{:<58} p50 {:>9.2?}  max {:>9.2?}  (deadline {deadline:?}; target: within deadline + 20 ms: {})",
        "endless loop stopped after",
        p50(&stops),
        stops.last().copied().unwrap_or_default(),
        if stops.last().copied().unwrap_or_default() <= deadline + Duration::from_millis(20) {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
