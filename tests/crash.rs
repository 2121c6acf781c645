//! Crash safety: queue 50 jobs with a slow simulated backend, `kill -9` the server mid-run,
//! start it again on the same database: all 50 finish, none twice, and no job that had
//! finished before the crash runs again.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Engine, Server, ServerOptions, TestDb, png_size};
use easel::store::{JobStatus, Store};
use serde_json::json;

const JOBS: usize = 50;

/// The job id of a `job started` / `job finished` log line.
fn job_id(line: &str) -> Option<String> {
    let start = line.find("job_id=")? + "job_id=".len();
    let rest = line[start..].trim_start_matches('"');
    Some(rest.chars().take_while(char::is_ascii_hexdigit).collect())
}

fn count_by_id(lines: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in lines {
        if let Some(id) = job_id(line) {
            *counts.entry(id).or_default() += 1;
        }
    }
    counts
}

async fn crash_and_restart(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let options = || ServerOptions {
        db_url: &db.url,
        dir: dir.path(),
        step_ms: 15,
        workers: 2,
        secret_key: "",
        ..ServerOptions::default()
    };

    let mut first = Server::start(options()).await;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let job = first
            .queue(json!({"model_name": "m", "prompt": format!("crash {i}"),
                          "width": 48 + i, "height": 32, "steps": 10}))
            .await;
        ids.push(job["job_id"].as_str().unwrap().to_owned());
    }
    // Let some finish, then kill -9 while others run.
    let deadline = Instant::now() + Duration::from_secs(60);
    while first.lines_with("job finished").len() < 10 {
        assert!(
            Instant::now() < deadline,
            "no progress:\n{}",
            first.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Jobs take 150 ms and the two workers run in step, so right after a "finished" line both
    // may be between jobs: kill mid-job instead.
    tokio::time::sleep(Duration::from_millis(60)).await;
    first.kill();
    let finished_before = count_by_id(&first.lines_with("job finished"));
    assert!(
        finished_before.len() < JOBS,
        "the crash came too late to test anything"
    );

    let second = Server::start(options()).await;
    for (i, id) in ids.iter().enumerate() {
        let png = second.wait_image(id, Duration::from_secs(120)).await;
        assert_eq!(png_size(&png), (48 + i as u32, 32));
    }
    let started_after = count_by_id(&second.lines_with("job started"));
    let finished_after = count_by_id(&second.lines_with("job finished"));
    for id in finished_before.keys() {
        assert!(
            !started_after.contains_key(id),
            "job {id} finished before the crash and ran again"
        );
    }
    for id in &ids {
        let times = finished_before.get(id).copied().unwrap_or(0)
            + finished_after.get(id).copied().unwrap_or(0);
        assert!(times <= 1, "job {id} finished {times} times");
    }
    assert!(
        second
            .stderr()
            .contains("requeued jobs left running by a previous run"),
        "jobs running at the crash were not requeued:\n{}",
        second.stderr()
    );
    drop(second);

    let store = Store::connect(&db.url).await.unwrap();
    let rows = store.jobs().await.unwrap();
    assert_eq!(rows.len(), JOBS);
    assert!(rows.iter().all(|r| r.status() == JobStatus::Finished));
    assert!(
        rows.iter().any(|r| r.attempts >= 2),
        "no job was interrupted by the crash"
    );
    store.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    crash_and_restart(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    crash_and_restart(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql() {
    crash_and_restart(Engine::MySql).await;
}
