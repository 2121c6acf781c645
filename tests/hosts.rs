//! Several easel hosts on one database, as separate processes on loopback: one queue shared
//! through PostgreSQL or MariaDB (2,000 jobs submitted round-robin over the hosts' HTTP APIs,
//! run by ZeroMQ workers on every host), claims that are leases (a `kill -9`ed host's running
//! jobs finish on the others once its lease runs out, none twice, none lost), host ids in the
//! claims and in `/metrics`, events relayed between hosts (a socket.io client on one host
//! sees a job queued on a second and run on a third; an interrupt taken on the first stops
//! the third's backend), and SQLite refusing a second host.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::discord::{Author, Channel, FakeDiscord, Guild};
use common::socketio::{SocketClient, SocketOptions};
use common::{Engine, Server, ServerOptions, TestDb};
use easel::store::{JobStatus, Store};
use serde_json::json;

const JOBS: usize = 2000;
const LEASE: &str = "lease_s = 1.5";

/// An `easel worker` on a host's pool, killed when dropped.
struct Worker(std::process::Child);

impl Worker {
    /// 1 ms per step.
    fn start(pool_port: u16) -> Worker {
        Worker::start_with(pool_port, "1")
    }

    fn start_with(pool_port: u16, step_ms: &str) -> Worker {
        let child = std::process::Command::new(common::easel_bin())
            .args(["worker", "--host-ip", "127.0.0.1", "--host-port"])
            .arg(pool_port.to_string())
            .args(["--step-ms", step_ms])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Worker(child)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The jobs `host` runs, as the store says.
async fn held_by(store: &Store, host: &str) -> Vec<String> {
    store
        .unfinished_jobs(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.status() == JobStatus::Running && row.claimed_by.as_deref() == Some(host))
        .map(|row| row.id)
        .collect()
}

async fn dead_hosts_jobs_finish_elsewhere(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Hosts a and b are named in their configuration; the third generates its id.
    let tomls = [
        format!("host_id = \"host-a\"\n{LEASE}"),
        format!("host_id = \"host-b\"\n{LEASE}"),
        LEASE.to_owned(),
    ];
    let mut servers = Vec::new();
    for (dir, toml) in dirs.iter().zip(&tomls) {
        servers.push(
            Server::start(ServerOptions {
                db_url: &db.url,
                database_toml: toml,
                dir: dir.path(),
                workers: 0,
                ..ServerOptions::default()
            })
            .await,
        );
    }
    // Two ZeroMQ workers (`easel worker`) on each host's pool: 1 ms per step, but 40 ms on
    // host-a, so that it is always running something when it is killed.
    let _workers: Vec<Worker> = servers
        .iter()
        .enumerate()
        .flat_map(|(i, server)| {
            let step_ms = if i == 0 { "40" } else { "1" };
            [
                Worker::start_with(server.pool_port, step_ms),
                Worker::start_with(server.pool_port, step_ms),
            ]
        })
        .collect();
    let generated = std::fs::read_to_string(dirs[2].path().join("easel-host-id")).unwrap();
    let generated = generated.trim().to_owned();
    assert!(
        generated.len() > 9 && generated.rsplit('-').next().unwrap().len() == 8,
        "{generated:?}"
    );
    let hosts = ["host-a".to_owned(), "host-b".to_owned(), generated.clone()];

    // Each host says who it is in /metrics.
    for (server, host) in servers.iter().zip(&hosts) {
        let text = server.metrics().await;
        let line = format!("easel_host_info{{host_id=\"{host}\"}} 1");
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }

    // Jobs submitted round-robin over the three HTTP APIs, 48 requests in flight.
    let mut ids = Vec::new();
    let numbers: Vec<usize> = (0..JOBS).collect();
    for chunk in numbers.chunks(48) {
        let answers = futures_util::future::join_all(chunk.iter().map(|n| {
            servers[n % 3].queue(json!({
                "model_name": "m", "prompt": format!("job {n}"), "steps": 2,
                "width": 64, "height": 64,
            }))
        }))
        .await;
        ids.extend(
            answers
                .iter()
                .map(|job| job["job_id"].as_str().unwrap().to_owned()),
        );
    }

    // kill -9 host-a mid-run (jobs finishing), while it holds jobs.
    let store = Store::connect(&db.url).await.unwrap();
    // (The hosts tests share two cores when they run together: deadlines are generous.)
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let finished = store.count_jobs(JobStatus::Finished).await.unwrap();
        if finished > 0 && !held_by(&store, "host-a").await.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "host-a never ran a job mid-run ({finished} finished)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    servers[0].kill();
    let killed = Instant::now();
    // What host-a held when it died (it claims its next job as soon as one ends).
    let held = held_by(&store, "host-a").await;
    assert!(!held.is_empty(), "host-a held nothing when it died");

    // Every job finishes, on b or the third host for what a held.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = store.count_jobs(JobStatus::Finished).await.unwrap();
        if done == JOBS as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {JOBS} finished; host b:\n{}",
            servers[1].stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held: HashSet<String> = held.into_iter().collect();
    let rows = store.jobs().await.unwrap();
    assert_eq!(rows.len(), JOBS);
    let ids: HashSet<&String> = ids.iter().collect();
    for row in &rows {
        let id = &row.id;
        assert!(ids.contains(id), "{row:?}");
        if held.contains(id) {
            // Ran once on host-a (lost), once more elsewhere after the lease: one fault.
            assert_eq!((row.attempts, row.faults), (2, 1), "{row:?}");
            assert_ne!(row.claimed_by.as_deref(), Some("host-a"), "{row:?}");
            let picture = store.image_png(id).await.unwrap().expect("its picture");
            assert!(picture.starts_with(b"\x89PNG"));
        } else {
            // Nothing else ran twice.
            assert_eq!((row.attempts, row.faults), (1, 0), "{row:?}");
        }
        assert!(hosts.contains(row.claimed_by.as_ref().unwrap()), "{row:?}");
    }
    // The survivors said why, and not before the lease could run out.
    let expired: Vec<String> = servers[1..]
        .iter()
        .flat_map(|s| s.lines_with("a job's lease ran out"))
        .collect();
    assert_eq!(expired.len(), held.len(), "{expired:?}");
    assert!(expired.iter().all(|l| l.contains("host-a")), "{expired:?}");
    assert!(killed.elapsed() >= Duration::from_millis(1000));
    store.close().await;
    drop(servers);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dead_hosts_jobs_finish_elsewhere() {
    dead_hosts_jobs_finish_elsewhere(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_dead_hosts_jobs_finish_elsewhere() {
    dead_hosts_jobs_finish_elsewhere(Engine::MySql).await;
}

/// Hosts a and b have no backend; c runs everything.
async fn events_and_interrupts_cross_hosts(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let toml = format!("host_id = \"host-{}\"", ["a", "b", "c"][i]);
        servers.push(
            Server::start(ServerOptions {
                db_url: &db.url,
                database_toml: &toml,
                dir: dir.path(),
                step_ms: 100,
                workers: u32::from(i == 2),
                ..ServerOptions::default()
            })
            .await,
        );
    }
    let (a, b, c) = (&servers[0], &servers[1], &servers[2]);
    // A socket.io client of host a, reached by its address (as Compass is).
    let mut socket = SocketClient::connect(
        &format!("http://127.0.0.1:{}", a.rt_port),
        SocketOptions::default(),
    );
    socket.wait_for("connect", Duration::from_secs(20)).await;

    let job = b
        .queue(json!({"model_name": "m", "prompt": "a fox", "steps": 5}))
        .await;
    let id = job["job_id"].as_str().unwrap().to_owned();
    let started = socket
        .wait_for_job("task-started", &id, Duration::from_secs(20))
        .await;
    assert_eq!(started["data"]["status"], "started", "{started}");
    assert_eq!(started["data"]["origin"], "127.0.0.1", "{started}");
    assert!(
        started["data"].get("prompt").is_none(),
        "cleansed: {started}"
    );
    socket
        .wait_for_job("task-finished", &id, Duration::from_secs(20))
        .await;
    let store = Store::connect(&db.url).await.unwrap();
    let row = store.job(&id).await.unwrap().unwrap();
    assert_eq!(row.claimed_by.as_deref(), Some("host-c"));

    // A long job runs on c; a's interrupt reaches c's backend, which takes the next job.
    let long = b
        .queue(json!({"model_name": "m", "prompt": "a long fox", "steps": 200}))
        .await;
    let long = long["job_id"].as_str().unwrap().to_owned();
    let next = b
        .queue(json!({"model_name": "m", "prompt": "the next fox", "steps": 2}))
        .await;
    let next = next["job_id"].as_str().unwrap().to_owned();
    socket
        .wait_for_job("task-started", &long, Duration::from_secs(20))
        .await;
    let interrupted = easel::forge::http_client()
        .post(a.url(&format!("/api/queue/interrupt/{long}")))
        .header("Authorization", &a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        interrupted.status(),
        200,
        "{}",
        interrupted.text().await.unwrap()
    );
    let asked = Instant::now();
    socket
        .wait_for_job("task-interrupted", &long, Duration::from_secs(20))
        .await;
    // The long job had 19 s to go: c's backend must have stopped it to run the next one.
    socket
        .wait_for_job("task-finished", &next, Duration::from_secs(10))
        .await;
    assert!(asked.elapsed() < Duration::from_secs(10));
    c.wait_log("job interrupted on another host", 1).await;
    assert_eq!(
        store
            .job(&next)
            .await
            .unwrap()
            .unwrap()
            .claimed_by
            .as_deref(),
        Some("host-c")
    );
    store.close().await;
    drop(socket);
    drop(servers);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_events_and_interrupts_cross_hosts() {
    events_and_interrupts_cross_hosts(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_events_and_interrupts_cross_hosts() {
    events_and_interrupts_cross_hosts(Engine::MySql).await;
}

/// The Discord bot on one host, the backend on another: the user's picture comes back. Then a
/// job that failed there is requeued on the backend's host (its dashboard action): the bot's
/// host follows it again and answers.
async fn a_discord_job_runs_on_another_host(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeDiscord::start(
        Author::bot(1000, "easel"),
        3000,
        vec![Guild {
            id: 100,
            name: "Studio".into(),
            channels: vec![Channel::text(10, "art")],
        }],
    )
    .await;
    let discord = format!(
        "[auth]\ndiscord_token = \"test-token\"\n[grpc]\nenabled = false\n[discord]\n\
         gateway_url = {:?}\napi_base = \"http://{}\"\nannounce = false\ncommands = \"off\"\n",
        fake.gateway_url, fake.api_host
    );
    let (bot_dir, gpu_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _bot = Server::start(ServerOptions {
        db_url: &db.url,
        database_toml: "host_id = \"bot-host\"",
        dir: bot_dir.path(),
        workers: 0,
        extra_toml: &discord,
        ..ServerOptions::default()
    })
    .await;
    // The backend host: one simulated worker, and a ZeroMQ pool whose jobs fail at their
    // first missed deadline.
    let gpu = Server::start(ServerOptions {
        db_url: &db.url,
        database_toml: "host_id = \"gpu-host\"",
        dir: gpu_dir.path(),
        workers: 1,
        step_ms: 10,
        workers_toml: "deadline_min_s = 0.5\ndeadline_scale = 0.001\nmax_faults = 1",
        ..ServerOptions::default()
    })
    .await;
    fake.wait_ready(Duration::from_secs(20)).await;
    let message = fake
        .message(10, &Author::user(2000, "alice"), "/art a red fox --steps 3")
        .await;
    let replied = |c: &common::discord::RestCall| {
        c.is("POST", "/api/v10/channels/10/messages")
            && !c.files.is_empty()
            && c.json.as_ref().is_some_and(|j| {
                j["message_reference"]["message_id"].as_str() == Some(&message.to_string())
            })
    };
    let calls = fake
        .wait_for_calls(1, replied, Duration::from_secs(30))
        .await;
    let text = calls[0].json.as_ref().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.starts_with("Parsed args: "), "{text}");
    let store = Store::connect(&db.url).await.unwrap();
    let rows = store.jobs().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].claimed_by.as_deref(), Some("gpu-host"));

    // A job that fails: the simulated backend drained, a worker too slow for its deadline.
    let drained = easel::forge::http_client()
        .post(gpu.url("/api/admin/backends/simulated/drain"))
        .header("Authorization", &gpu.token)
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status(), 200);
    let slow = Worker::start_with(gpu.pool_port, "100000");
    let failing = fake
        .message(
            10,
            &Author::user(2000, "alice"),
            "/art a slow fox --steps 3",
        )
        .await;
    let failed = |c: &common::discord::RestCall| {
        c.is("POST", "/api/v10/channels/10/messages")
            && c.json.as_ref().is_some_and(|j| {
                j["message_reference"]["message_id"].as_str() == Some(&failing.to_string())
                    && j["content"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("Sorry, this request failed"))
            })
    };
    fake.wait_for_calls(1, failed, Duration::from_secs(30))
        .await;
    drop(slow);
    let job_id = store
        .jobs()
        .await
        .unwrap()
        .into_iter()
        .find(|row| row.status() == JobStatus::Failed)
        .expect("the failed job")
        .id;
    let _quick = Worker::start(gpu.pool_port);
    let requeued = easel::forge::http_client()
        .post(gpu.url(&format!("/api/admin/jobs/{job_id}/requeue")))
        .header("Authorization", &gpu.token)
        .send()
        .await
        .unwrap();
    assert_eq!(requeued.status(), 200);
    let answered = |c: &common::discord::RestCall| {
        c.is("POST", "/api/v10/channels/10/messages")
            && !c.files.is_empty()
            && c.json.as_ref().is_some_and(|j| {
                j["message_reference"]["message_id"].as_str() == Some(&failing.to_string())
            })
    };
    fake.wait_for_calls(1, answered, Duration::from_secs(30))
        .await;
    store.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_discord_job_runs_on_another_host() {
    a_discord_job_runs_on_another_host(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_discord_job_runs_on_another_host() {
    a_discord_job_runs_on_another_host(Engine::MySql).await;
}

/// SQLite serves one host: a second `easel serve` on the same file stops at start and says
/// why; once the first is gone the file is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_a_second_host() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("easel.db").display());
    let mut first = Server::start(ServerOptions {
        db_url: &db,
        dir: dir.path(),
        ..ServerOptions::default()
    })
    .await;
    let second_dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[database]\nurl = {db:?}\n[api]\nhttp_port = {}\nrt_port = {}\n\
         [workers]\nbind = \"\"\n[misc_settings]\nlog_dir = \"logs\"\n",
        common::free_port(),
        common::free_port()
    );
    std::fs::write(second_dir.path().join("config.toml"), config).unwrap();
    let second = std::process::Command::new(common::easel_bin())
        .arg("serve")
        .arg("--config")
        .arg(second_dir.path().join("config.toml"))
        .current_dir(second_dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("another easel host is using the SQLite database")
            && stderr.contains("PostgreSQL or MariaDB"),
        "{stderr}"
    );
    // The first host is unharmed, and after it stops the file serves a new host.
    first
        .queue(json!({"model_name": "m", "prompt": "still here", "steps": 2}))
        .await;
    first.kill();
    let again = Server::start(ServerOptions {
        db_url: &db,
        dir: dir.path(),
        ..ServerOptions::default()
    })
    .await;
    drop(again);
}
