//! The intake and the backend contract inside the real server, on SQLite, MariaDB and
//! PostgreSQL: a burst of submits against a small plugin pool (callers wait for an instance,
//! nobody is refused), a plugin slower than its deadline (the failure policy answers, the
//! overruns are counted), and workers that can run only some jobs (they get only those; the
//! rest wait, visibly).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Engine, Server, ServerOptions, TestDb};
use easel::store::{JobStatus, Store};
use serde_json::{Value, json};

const REPO_PLUGINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins");

/// A plugin directory in `dir` with these files of the repository's `plugins/`.
fn plugin_dir(dir: &std::path::Path, files: &[&str]) {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for file in files {
        let name = std::path::Path::new(file).file_name().unwrap();
        std::fs::copy(format!("{REPO_PLUGINS}/{file}"), plugins.join(name)).unwrap();
    }
}

async fn admin_view(server: &Server) -> Value {
    let response = easel::forge::http_client()
        .get(server.url("/api/admin/plugins"))
        .header("Authorization", &server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn plugin<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no plugin {name} in {view}"))
}

/// `n` submits at once, as the superuser (an enrolled API caller of role 4); their statuses.
async fn burst(server: &Server, n: usize) -> Vec<u16> {
    let client = easel::forge::http_client();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let request = client
            .post(server.url("/api/queue/user/txt2img"))
            .header("Authorization", &server.token)
            .json(
                &json!({"model_name": "m", "prompt": format!("burst {i}"), "steps": 1,
                          "width": 64, "height": 64}),
            );
        tasks.spawn(async move { request.send().await.unwrap().status().as_u16() });
    }
    let mut statuses = Vec::with_capacity(n);
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.unwrap());
    }
    statuses
}

/// 500 concurrent submits, 8 plugin instances: every caller waits its turn; no plugin failure,
/// no refusal.
async fn callers_wait_for_a_free_instance(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    plugin_dir(dir.path(), &["access.wasm", "model-policy.wasm"]);
    let server = Server::start(ServerOptions {
        db_url: &db.url,
        dir: dir.path(),
        workers: 0,
        extra_toml: "[plugins]\ninstances = 8\ndeadline_ms = 1000\n",
        ..ServerOptions::default()
    })
    .await;
    let statuses = burst(&server, 500).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let view = admin_view(&server).await;
    for name in ["access", "model-policy"] {
        let p = plugin(&view, name);
        assert_eq!(
            (p["failed_calls"].as_u64(), p["deadline_overruns"].as_u64()),
            (Some(0), Some(0)),
            "{p}"
        );
    }
    let admission = &view["admission"];
    assert_eq!(admission["instances"], 8);
    assert_eq!(admission["timeouts"], 0, "{admission}");
    eprintln!("admission after 500 concurrent submits: {admission}");
    let store = Store::connect(&db.url).await.unwrap();
    assert_eq!(store.count_jobs(JobStatus::Queued).await.unwrap(), 500);
    store.close().await;
    drop(server);
    db.cleanup().await;
}

/// An access plugin that never answers, a 5 ms deadline, 8 instances: every call runs past
/// its deadline or waits past it for an instance, and is answered by the failure policy
/// (`builtin`: the default access plugin allows) — counted as an overrun or an admission
/// timeout, never as a refusal.
async fn a_plugin_past_its_deadline_gets_the_failure_policy(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    plugin_dir(dir.path(), &["fixtures/slow.wasm", "model-policy.wasm"]);
    let server = Server::start(ServerOptions {
        db_url: &db.url,
        dir: dir.path(),
        workers: 0,
        extra_toml: "[plugins]\ninstances = 8\ndeadline_ms = 5\n\
                     [plugins.roles]\naccess = \"slow\"\n\
                     [plugins.slow]\nspin = \"forever\"\n",
        ..ServerOptions::default()
    })
    .await;
    let statuses = burst(&server, 500).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let view = admin_view(&server).await;
    let slow = plugin(&view, "slow");
    let overruns = slow["deadline_overruns"].as_u64().unwrap();
    let timeouts = view["admission"]["timeouts"].as_u64().unwrap();
    assert_eq!(slow["failed_calls"], 0, "{slow}");
    assert!(overruns > 0, "{slow}");
    // Each access call was stopped at its deadline or waited past it (the model-policy calls
    // that waited past theirs count as admission timeouts too).
    assert!(overruns + timeouts >= 500, "{overruns} + {timeouts}");
    // Under this load even the fast model policy may pass 5 ms of wall-clock time (its task
    // yields and waits its turn): then it too is answered by its failure policy, and counted
    // as an overrun, not as a failure.
    let policy = plugin(&view, "model-policy");
    assert_eq!(policy["failed_calls"], 0, "{policy}");
    eprintln!("slow plugin: {overruns} overruns, {timeouts} admission timeouts");
    drop(server);
    db.cleanup().await;
}

fn easel_worker(pool_port: u16, extra: &[&str]) -> std::process::Child {
    Command::new(common::easel_bin())
        .args(["worker", "--host-ip", "127.0.0.1", "--host-port"])
        .arg(pool_port.to_string())
        .args(["--step-ms", "1"])
        .args(extra)
        .env_remove("EASEL_WORKER_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn status_of(store: &Store, id: &str) -> JobStatus {
    store.job(id).await.unwrap().unwrap().status()
}

/// A worker that announced models and a pixel limit gets only jobs it can run; the others
/// stay queued (the log says why) until a worker that can run them comes.
async fn workers_get_only_what_they_can_run(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions {
        db_url: &db.url,
        dir: dir.path(),
        workers: 0,
        ..ServerOptions::default()
    })
    .await;
    let queue = |model: &'static str, side: u32| {
        let server = &server;
        async move {
            server
                .queue(
                    json!({"model_name": model, "prompt": format!("{model} {side}"),
                              "steps": 2, "width": side, "height": side}),
                )
                .await["job_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let flux = queue("flux", 256).await;
    let big = queue("sdxl", 1024).await;
    let small = queue("sdxl", 256).await;
    let mut restricted = easel_worker(
        server.pool_port,
        &["--models", "sdxl,sd15", "--max-pixels", "262144"],
    );
    // The one job it can run is behind two it cannot: it runs, they stay.
    server.wait_image(&small, Duration::from_secs(30)).await;
    let store = Store::connect(&db.url).await.unwrap();
    assert_eq!(status_of(&store, &flux).await, JobStatus::Queued);
    assert_eq!(status_of(&store, &big).await, JobStatus::Queued);
    let row = store.job(&small).await.unwrap().unwrap();
    assert_eq!(row.attempts, 1);
    // And so for every job it takes afterwards, while the others wait, visibly.
    let later = queue("sd15", 512).await;
    server.wait_image(&later, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while server
        .lines_with("none fits the models or size limits of the idle workers")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "{}", server.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in [&flux, &big] {
        let row = store.job(id).await.unwrap().unwrap();
        assert_eq!((row.status(), row.attempts), (JobStatus::Queued, 0));
    }
    // A worker that can run anything takes them.
    let mut any = easel_worker(server.pool_port, &[]);
    server.wait_image(&flux, Duration::from_secs(30)).await;
    server.wait_image(&big, Duration::from_secs(30)).await;
    for child in [&mut restricted, &mut any] {
        let _ = child.kill();
        let _ = child.wait();
    }
    store.close().await;
    drop(server);
    db.cleanup().await;
}

per_engine!(
    callers_wait_for_a_free_instance,
    a_plugin_past_its_deadline_gets_the_failure_policy,
    workers_get_only_what_they_can_run,
);
