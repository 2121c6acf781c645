//! `easel bench jobs --hosts N`: several `easel serve` processes on one PostgreSQL or MariaDB
//! database, in one run:
//!
//! * throughput with 1, 2, … N hosts: the same batch of jobs (written to the store at once)
//!   drained by each cluster's simulated backends; jobs/s is the batch over the time from
//!   its first claim to its last finish, as the store recorded them, and each cluster's
//!   figure is printed beside the one-host figure;
//! * recovery: two hosts with slow jobs, `kill -9` of the one running a job, and the time
//!   until another host runs that job again, beside the lease length.
//!
//! The hosts are child processes of this one (the real server binary, simulated backends, no
//! worker pool, no Discord); on one machine they share its cores, so what this shows is that
//! throughput holds as hosts are added and that a dead host's jobs come back after the lease.

use std::time::{Duration, Instant};

use super::api::{Server, start_server};
use super::{BenchError, request};
use crate::store::{DatabaseKind, JobStatus, NewJob, Store};

/// What `easel bench jobs --hosts N` measures.
#[derive(Clone, Debug)]
pub struct HostsBenchOptions {
    /// Most hosts (clusters of 1 to `hosts` are measured).
    pub hosts: usize,
    /// Jobs per cluster.
    pub jobs: usize,
    /// Simulated backends per host.
    pub workers: u32,
    /// A PostgreSQL or MariaDB URL.
    pub database: String,
    /// The lease of the recovery phase, in seconds.
    pub lease_s: f64,
}

/// Runs both phases and prints the report.
pub async fn hosts(options: HostsBenchOptions) -> Result<(), BenchError> {
    let store = Store::connect(&options.database).await?;
    if store.kind() == DatabaseKind::Sqlite {
        return Err(BenchError::Other(
            "--hosts needs a PostgreSQL or MariaDB --database: SQLite serves one host".to_owned(),
        ));
    }
    let run = format!("{:08x}", rand::random::<u32>());
    println!(
        "easel bench jobs --hosts {}: {} jobs per cluster, {} simulated workers per host, {:?} database",
        options.hosts,
        options.jobs,
        options.workers,
        store.kind()
    );
    let mut first = None;
    for n in 1..=options.hosts.max(1) {
        let servers = cluster(&options, &run, &format!("t{n}"), n, "step_ms = 0").await?;
        let rate = throughput(&store, &run, n, options.jobs).await?;
        drop(servers);
        let one = *first.get_or_insert(rate);
        println!(
            "  {n} host{}: {rate:>8.1} jobs/s  ({:.2}x one host)",
            if n == 1 { " " } else { "s" },
            rate / one
        );
    }
    recovery(&store, &options, &run).await?;
    store.close().await;
    Ok(())
}

/// `n` hosts named `bench-<run>-<phase>-<i>` on the options' database.
async fn cluster(
    options: &HostsBenchOptions,
    run: &str,
    phase: &str,
    n: usize,
    simulated: &str,
) -> Result<Vec<Server>, BenchError> {
    let mut servers = Vec::with_capacity(n);
    for i in 0..n {
        let database = format!(
            "host_id = \"bench-{run}-{phase}-{i}\"\nlease_s = {}",
            options.lease_s
        );
        let extra = format!("[simulated]\nworkers = {}\n{simulated}\n", options.workers);
        servers.push(start_server(&options.database, &database, &extra).await?);
    }
    Ok(servers)
}

/// Writes `jobs` jobs at once and waits until they finished; jobs/s from their first claim
/// to their last finish.
async fn throughput(store: &Store, run: &str, n: usize, jobs: usize) -> Result<f64, BenchError> {
    let ids = insert(store, &format!("h{run}t{n}-"), jobs, 1).await?;
    let (first_start, last_end) = wait_finished(store, &ids, Duration::from_secs(600)).await?;
    let window = (last_end - first_start).max(1) as f64 / 1000.0;
    Ok(jobs as f64 / window)
}

async fn insert(
    store: &Store,
    prefix: &str,
    jobs: usize,
    steps: u32,
) -> Result<Vec<String>, BenchError> {
    let ids: Vec<String> = (0..jobs).map(|i| format!("{prefix}{i}")).collect();
    let mut job = request(0, 64);
    job.steps = steps;
    let json = serde_json::to_string(&job).expect("a request encodes");
    let rows: Vec<NewJob<'_>> = ids
        .iter()
        .map(|id| NewJob {
            id,
            kind: "txt2img",
            request: &json,
            owner_id: "bench",
            origin: Some("easel:bench"),
            model: "",
            pixels: 64 * 64,
            category_id: None,
        })
        .collect();
    for chunk in rows.chunks(500) {
        store.insert_jobs(chunk).await?;
    }
    Ok(ids)
}

/// Waits until every job in `ids` finished; the earliest claim and latest finish (Unix ms).
async fn wait_finished(
    store: &Store,
    ids: &[String],
    timeout: Duration,
) -> Result<(i64, i64), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut span = (i64::MAX, i64::MIN);
        let mut done = 0;
        for id in ids {
            let Some(row) = store.job(id).await? else {
                continue;
            };
            if row.status() == JobStatus::Finished {
                done += 1;
                span.0 = span.0.min(row.started_at.unwrap_or(i64::MAX));
                span.1 = span.1.max(row.finished_at.unwrap_or(i64::MIN));
            }
        }
        if done == ids.len() {
            return Ok(span);
        }
        if Instant::now() > deadline {
            return Err(BenchError::Other(format!(
                "only {done} of {} jobs finished in {timeout:?}",
                ids.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two hosts with slow jobs; the first is killed while it runs one; how long until another
/// host runs it.
async fn recovery(store: &Store, options: &HostsBenchOptions, run: &str) -> Result<(), BenchError> {
    let mut servers = cluster(options, run, "r", 2, "step_ms = 50").await?;
    let victim = format!("bench-{run}-r-0");
    let ids = insert(store, &format!("h{run}r-"), 8, 20).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        let running = store.unfinished_jobs(100).await?;
        if let Some(row) = running.into_iter().find(|row| {
            row.status() == JobStatus::Running && row.claimed_by.as_deref() == Some(&victim)
        }) {
            break row.id;
        }
        if Instant::now() > deadline {
            return Err(BenchError::Other(
                "the first host never ran a job".to_owned(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    drop(servers.remove(0));
    let killed = Instant::now();
    let limit = Duration::from_secs_f64(options.lease_s * 4.0 + 30.0);
    let mut requeued = None;
    let running = loop {
        let row = store.job(&held).await?.expect("the held job exists");
        let elsewhere = row.claimed_by.as_deref() != Some(victim.as_str());
        if requeued.is_none() && (row.status() != JobStatus::Running || elsewhere) {
            requeued = Some(killed.elapsed());
        }
        if elsewhere {
            break killed.elapsed();
        }
        if killed.elapsed() > limit {
            return Err(BenchError::Other(format!(
                "job {held} did not come back after the first host died"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let requeued = requeued.unwrap_or(running);
    let lease = options.lease_s;
    println!(
        "  recovery (lease {lease:.2} s): a killed host's job was back in the queue after \
         {:.2} s ({:.2}x the lease; expected 2/3 to 4/3: the last renewal is up to a third of a \
         lease old, and the survivors look every third of one) and ran on another host after \
         {:.2} s (plus the wait for a free backend of the survivor)",
        requeued.as_secs_f64(),
        requeued.as_secs_f64() / lease,
        running.as_secs_f64(),
    );
    wait_finished(store, &ids, Duration::from_secs(120)).await?;
    drop(servers);
    Ok(())
}
