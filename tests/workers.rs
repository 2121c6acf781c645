//! The worker pool against real peers: pyzmq workers that behave like Stably Discordant's,
//! raw pyzmq sockets sending garbage, and the `easel worker` binary (sim and forge backends).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Server, ServerOptions, png_size};
use easel::store::{JobStatus, Store};
use serde_json::{Value, json};

const SEED_WORKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/peers/seed_worker.py");

/// A peer process whose stdout and stderr lines are collected; killed on drop.
struct Peer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Peer {
    fn spawn(command: &mut Command) -> Peer {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start peer");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Peer { child, lines }
    }

    fn seed(server: &Server, hostname: &str, delay: f64) -> Peer {
        Peer::spawn(Command::new("python3").args([
            SEED_WORKER,
            "--host-ip",
            "127.0.0.1",
            "--host-port",
            &server.pool_port.to_string(),
            "--hostname",
            hostname,
            "--delay",
            &delay.to_string(),
        ]))
    }

    fn easel(pool_port: u16, extra: &[&str], token: Option<&str>) -> Peer {
        let mut command = Command::new(common::easel_bin());
        command.args([
            "worker",
            "--host-ip",
            "127.0.0.1",
            "--host-port",
            &pool_port.to_string(),
        ]);
        command.args(extra);
        command.env_remove("EASEL_WORKER_TOKEN");
        if let Some(token) = token {
            command.env("EASEL_WORKER_TOKEN", token);
        }
        Peer::spawn(&mut command)
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Jobs received (the seed worker prints each as JSON).
    fn jobs(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("id_num").is_some())
            .collect()
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&Peer) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pred(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn start(dir: &std::path::Path, workers_toml: &str) -> Server {
    let url = format!("sqlite://{}", dir.join("easel.db").display());
    Server::start(ServerOptions {
        db_url: &url,
        dir,
        workers: 0,
        workers_toml,
        ..ServerOptions::default()
    })
    .await
}

async fn store_of(dir: &std::path::Path) -> Store {
    Store::connect(&format!("sqlite://{}", dir.join("easel.db").display()))
        .await
        .unwrap()
}

async fn queue(server: &Server, prompt: &str) -> String {
    let job = server
        .queue(
            json!({"model_name": "m", "prompt": prompt, "steps": 5, "cfg_scale": 7.5,
                      "width": 64, "height": 48}),
        )
        .await;
    job["job_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_workers_fifo_exact_keys_intact_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "").await;

    // One worker first: it must see the jobs in queue order.
    let first = Peer::seed(&server, "gpu-a", 0.0);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(queue(&server, &format!("fifo {i}")).await);
    }
    first.wait_for("5 jobs", |p| p.jobs().len() >= 5).await;
    let prompts: Vec<String> = first
        .jobs()
        .iter()
        .map(|j| j["prompt"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        prompts,
        (0..5).map(|i| format!("fifo {i}")).collect::<Vec<_>>()
    );

    // Two more workers share the rest.
    let others = [
        Peer::seed(&server, "gpu-b", 0.05),
        Peer::seed(&server, "gpu-c", 0.05),
    ];
    server.wait_log("worker joined", 3).await;
    for i in 5..24 {
        ids.push(queue(&server, &format!("pool {i}")).await);
    }
    let mut stored = HashMap::new();
    for id in &ids {
        let png = server.wait_image(id, Duration::from_secs(60)).await;
        assert_eq!(png_size(&png), (24, 16));
        stored.insert(id.clone(), png);
    }
    let peers = [&first, &others[0], &others[1]];
    let all_jobs: Vec<Value> = peers.iter().flat_map(|p| p.jobs()).collect();
    assert_eq!(all_jobs.len(), ids.len(), "every job sent exactly once");
    let mut id_nums = HashSet::new();
    for job in &all_jobs {
        let keys = common::keys(job);
        assert_eq!(keys, ["prompt", "cfg", "steps", "id_num"], "{job}");
        assert_eq!(job["cfg"], json!(7.5));
        assert_eq!(job["steps"], json!(5));
        let id_num = job["id_num"].as_str().unwrap();
        assert!(
            id_num.len() == 32
                && id_num
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        assert!(id_nums.insert(id_num.to_owned()), "id_num reused");
    }
    for peer in peers {
        assert!(
            !peer.lines().iter().any(|l| l.contains("VIOLATION")),
            "a worker got two jobs at once"
        );
    }
    assert!(
        others.iter().all(|p| !p.jobs().is_empty()),
        "the load was shared"
    );
    // Intact: the stored PNG is the worker's PNG (colour from the prompt's SHA-256).
    let store = store_of(dir.path()).await;
    for row in store.jobs().await.unwrap() {
        let request: Value = serde_json::from_str(&row.request).unwrap();
        let png = &stored[&row.id];
        let expected = python_png(request["prompt"].as_str().unwrap());
        assert_eq!(png, &expected, "job {} image altered", row.id);
        assert_eq!(row.status(), JobStatus::Finished);
    }
    store.close().await;
}

/// The PNG the seed worker script draws for `prompt`, computed by the same script.
fn python_png(prompt: &str) -> Vec<u8> {
    let output = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import base64,sys; sys.path.insert(0, {dir:?}); import seed_worker as w; \
             print(base64.b64encode(w.make_image({prompt:?}, 7.5, 5)).decode())",
                dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/peers"),
            ),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8(output.stdout).unwrap().trim())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_job_finishes_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "deadline_min_s = 30.0").await;
    let mut slow = Peer::seed(&server, "doomed", 600.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = queue(&server, "survivor").await;
    slow.wait_for("the job", |p| !p.jobs().is_empty()).await;
    slow.kill(); // kill -9 mid-job
    let _fast = Peer::seed(&server, "rescuer", 0.0);
    // Well before the 30 s deadline: the lost connection gives the job back.
    let png = server.wait_image(&id, Duration::from_secs(20)).await;
    assert_eq!(png, python_png("survivor"));
    let store = store_of(dir.path()).await;
    let row = store.job(&id).await.unwrap().unwrap();
    assert_eq!(
        (row.status(), row.faults, row.attempts),
        (JobStatus::Finished, 1, 2)
    );
    store.close().await;
    // /metrics: the killed worker is gone from the pool, its job counted as a fault.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = server.metrics().await;
        let has = |line: &str| text.lines().any(|l| l == line);
        if has("easel_workers_connected 1") && has("easel_worker_faults_total 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics do not show one worker left and one fault:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The dashboard's worker list: the rescuer up with one job done, the killed one down
    // with its fault and why it left.
    let backends: Value = easel::forge::http_client()
        .get(server.url("/api/admin/backends"))
        .header("Authorization", &server.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = backends["worker_list"].as_array().unwrap();
    let by_name = |name: &str| list.iter().find(|w| w["hostname"] == name).unwrap().clone();
    let rescuer = by_name("rescuer");
    assert_eq!(
        (&rescuer["up"], &rescuer["done"], &rescuer["kind"]),
        (&json!(true), &json!(1), &json!("seed")),
        "{list:?}"
    );
    let doomed = by_name("doomed");
    assert_eq!(
        (&doomed["up"], &doomed["faults"]),
        (&json!(false), &json!(1))
    );
    assert_eq!(doomed["left"][0], "worker disconnected", "{doomed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_requeues_and_late_output_is_judged() {
    let dir = tempfile::tempdir().unwrap();
    // A 1 s deadline: a worker taking 2.5 s misses it.
    let server = start(
        dir.path(),
        "deadline_min_s = 1.0\ndeadline_scale = 0.001\nmax_faults = 5",
    )
    .await;
    let slow = Peer::seed(&server, "slowpoke", 2.5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = queue(&server, "late").await;
    slow.wait_for("the job", |p| !p.jobs().is_empty()).await;
    // Nobody else is there: after the deadline the job is queued again, and the slow worker's
    // late OUTPUT is accepted because nobody finished the job yet.
    let png = server.wait_image(&id, Duration::from_secs(30)).await;
    assert_eq!(png, python_png("late"));
    server.wait_log("late result accepted", 1).await;
    server.wait_log("deadline passed", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_faults_fails_the_job_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        "deadline_min_s = 0.5\ndeadline_scale = 0.0001\nmax_faults = 2",
    )
    .await;
    let id = queue(&server, "cursed").await;
    // Each worker takes the job and dies with it.
    for n in 0..2 {
        let mut doomed = Peer::seed(&server, &format!("doomed-{n}"), 600.0);
        doomed.wait_for("the job", |p| !p.jobs().is_empty()).await;
        doomed.kill();
    }
    let store = store_of(dir.path()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let row = loop {
        let row = store.job(&id).await.unwrap().unwrap();
        if row.status() == JobStatus::Failed {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "job not failed: {row:?}\n{}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(row.faults, 2);
    assert!(row.last_error.unwrap().contains("worker disconnected"));
    server.wait_log("gave up after 2 worker faults", 1).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_traffic_is_dropped_and_others_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "max_message_bytes = 100000").await;
    let script = format!(
        r#"
import base64, json, time, zmq
s = zmq.Context().socket(zmq.DEALER)
s.connect("tcp://127.0.0.1:{port}")
png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0").decode()
s.send_multipart([b'{{"type": "READY"}}', b"extra"])
s.send(b"{{not json")
s.send(json.dumps({{"type": "DANCE"}}).encode())
s.send(json.dumps({{"type": "OUTPUT", "image_data": png, "id_num": "0" * 32, "hostname": "x"}}).encode())
s.send(json.dumps({{"type": "OUTPUT", "image_data": "!!!not base64", "id_num": "1" * 32}}).encode())
s.send(json.dumps({{"type": "OUTPUT", "image_data": base64.b64encode(b"GIF89a").decode(), "id_num": "2" * 32}}).encode())
s.send(b'{{"type": "READY", "hostname": "' + b"x" * 200000 + b'"}}')
time.sleep(0.5)
print("sent", flush=True)
"#,
        port = server.pool_port
    );
    let vandal = Peer::spawn(Command::new("python3").args(["-c", &script]));
    vandal
        .wait_for("garbage sent", |p| p.lines().iter().any(|l| l == "sent"))
        .await;
    let worker = Peer::seed(&server, "honest", 0.0);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(queue(&server, &format!("after garbage {i}")).await);
    }
    for id in &ids {
        server.wait_image(id, Duration::from_secs(30)).await;
    }
    assert_eq!(worker.jobs().len(), 3, "the vandal got no job");
    for expected in [
        "expected exactly one frame",
        "invalid JSON",
        "unknown or malformed message",
        "not marked as outstanding",
        "bad base64",
        "not a PNG",
        "oversized message",
    ] {
        server.wait_log(expected, 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn easel_worker_sim_gets_extended_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "").await;
    let _worker = Peer::easel(
        server.pool_port,
        &["--backend", "sim", "--step-ms", "1", "--hostname", "rusty"],
        None,
    );
    let sizes = [(64u32, 48u32), (200, 100), (32, 320)];
    let mut ids = Vec::new();
    for (i, (w, h)) in sizes.iter().enumerate() {
        let job = server
            .queue(
                json!({"model_name": "m", "prompt": format!("sized {i}"), "steps": 3,
                          "width": w, "height": h, "seed": 42}),
            )
            .await;
        ids.push(job["job_id"].as_str().unwrap().to_owned());
    }
    for (id, (w, h)) in ids.iter().zip(sizes) {
        let png = server.wait_image(id, Duration::from_secs(60)).await;
        // The extended job carried the size, so the worker drew exactly it.
        assert_eq!(png_size(&png), (w, h));
    }
    let store = store_of(dir.path()).await;
    let row = store.job(&ids[0]).await.unwrap().unwrap();
    assert_eq!(row.backend.as_deref(), Some("worker:rusty"), "who drew it");
    store.close().await;
    server.wait_log("backend=\"worker:rusty\"", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn easel_worker_forge_backend_against_a_fake_forge() {
    use axum::{Json, Router, routing::post};
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = seen.clone();
    let picture = easel::sim::render(&easel::jobs::Txt2Img {
        prompt: "from forge".into(),
        width: 40,
        height: 30,
        ..Default::default()
    })
    .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&picture);
    let app = Router::new().route(
        "/sdapi/v1/txt2img",
        post(move |Json(body): Json<Value>| {
            let sink = sink.clone();
            let b64 = b64.clone();
            async move {
                sink.lock().unwrap().push(body);
                Json(json!({"images": [b64], "parameters": {}, "info": "{}"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forge_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "").await;
    let _worker = Peer::easel(
        server.pool_port,
        &["--backend", "forge", "--forge-url", &forge_url],
        None,
    );
    let job = server
        .queue(
            json!({"model_name": "sdxl_base", "prompt": "a red fox", "negative_prompt": "blur",
                      "steps": 12, "width": 640, "height": 384, "seed": 7, "cfg_scale": 6}),
        )
        .await;
    let png = server
        .wait_image(job["job_id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(png, picture);
    let bodies = seen.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    let body = &bodies[0];
    assert_eq!(body["prompt"], "a red fox");
    assert_eq!(body["negative_prompt"], "blur");
    assert_eq!(
        (
            body["steps"].clone(),
            body["width"].clone(),
            body["height"].clone()
        ),
        (json!(12), json!(640), json!(384))
    );
    assert_eq!(body["seed"], json!(7));
    assert_eq!(body["cfg_scale"], json!(6.0));
    assert_eq!(body["sampler_name"], "DPM++ 2M");
    assert_eq!(
        body["override_settings"]["sd_model_checkpoint"],
        "sdxl_base"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_token_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "token = \"sekrit-token\"").await;
    let seed = Peer::seed(&server, "no-token", 0.0);
    let mut wrong = Peer::easel(server.pool_port, &["--backend", "sim"], Some("nope"));
    // The reader threads may still be draining the pipes when the process has exited: wait
    // for the line itself, then for the exit.
    wrong
        .wait_for("the refusal", |p| {
            p.lines()
                .iter()
                .any(|l| l.contains("the host refused this worker: invalid worker token"))
        })
        .await;
    let status = tokio::task::spawn_blocking(move || wrong.child.wait().unwrap())
        .await
        .unwrap();
    assert!(!status.success());

    let id = queue(&server, "tokened").await;
    let _right = Peer::easel(
        server.pool_port,
        &["--backend", "sim", "--step-ms", "1"],
        Some("sekrit-token"),
    );
    server.wait_image(&id, Duration::from_secs(30)).await;
    assert!(
        seed.jobs().is_empty(),
        "a worker without the token got a job"
    );
    server.wait_log("READY refused", 2).await;
    assert!(!server.stderr().contains("sekrit-token"), "token logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_restart_workers_reconnect_and_every_job_finishes_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("easel.db").display());
    let pool_port = common::free_port();
    let options = || ServerOptions {
        db_url: &url,
        dir: dir.path(),
        workers: 0,
        workers_toml: "",
        ..ServerOptions::default()
    };
    let mut host = Server::start_with_pool_port(options(), pool_port).await;
    let workers: Vec<Peer> = (0..3)
        .map(|i| {
            Peer::easel(
                pool_port,
                &[
                    "--backend",
                    "sim",
                    "--step-ms",
                    "30",
                    "--hostname",
                    &format!("w{i}"),
                ],
                None,
            )
        })
        .collect();
    let mut ids = Vec::new();
    for i in 0..24 {
        let job = host
            .queue(json!({"model_name": "m", "prompt": format!("restart {i}"), "steps": 5, "width": 32, "height": 32}))
            .await;
        ids.push(job["job_id"].as_str().unwrap().to_owned());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while host.lines_with("job finished").len() < 5 {
        assert!(Instant::now() < deadline, "{}", host.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.kill();
    let finished_before: HashSet<String> = host
        .lines_with("job finished")
        .iter()
        .filter_map(|l| {
            l.split("job_id=")
                .nth(1)
                .map(|r| r.trim_start_matches('"').chars().take(8).collect())
        })
        .collect();
    // Long enough for the workers to notice (a failed send, or 3 s of silence) and to be
    // retrying with back-off.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let host = Server::start_with_pool_port(options(), pool_port).await;
    for id in &ids {
        host.wait_image(id, Duration::from_secs(90)).await;
    }
    let finished_after: Vec<String> = host
        .lines_with("job finished")
        .iter()
        .filter_map(|l| {
            l.split("job_id=")
                .nth(1)
                .map(|r| r.trim_start_matches('"').chars().take(8).collect())
        })
        .collect();
    let unique: HashSet<&String> = finished_after.iter().collect();
    assert_eq!(
        unique.len(),
        finished_after.len(),
        "a job finished twice after the restart"
    );
    for id in &finished_before {
        assert!(
            !unique.contains(id),
            "job {id} finished before and after the crash"
        );
    }
    // Every worker announced itself to the new host (asked to by REANNOUNCE, or after
    // reconnecting) and took part.
    host.wait_log("worker joined", 3).await;
    for worker in &workers {
        assert!(
            worker.lines().iter().any(|l| l.contains("retry_in=")),
            "{:?}",
            worker.lines()
        );
    }
}

/// 1,000 jobs, 20 worker processes killed and restarted at random: every job ends finished
/// (or failed after the fault limit, with a reason); none lost, none finished twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    const JOBS: usize = 1000;
    const WORKERS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "deadline_min_s = 3.0\ndeadline_scale = 0.001").await;
    let mut ids = Vec::new();
    let client = easel::forge::http_client();
    for i in 0..JOBS {
        let response = client
            .post(server.url("/api/queue/user/txt2img"))
            .header("Authorization", &server.token)
            .json(&json!({"model_name": "m", "prompt": format!("chaos {i}"), "steps": 1, "width": 8, "height": 8}))
            .send()
            .await
            .unwrap();
        let job: Value = response.json().await.unwrap();
        ids.push(job["job_id"].as_str().unwrap().to_owned());
    }
    let mut workers: Vec<Peer> = (0..WORKERS)
        .map(|i| Peer::seed(&server, &format!("chaos-{i}"), 0.05))
        .collect();
    let store = store_of(dir.path()).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut kills = 0;
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    loop {
        let open = store.count_jobs(JobStatus::Queued).await.unwrap()
            + store.count_jobs(JobStatus::Running).await.unwrap();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} jobs still open after 300 s"
        );
        // Kill -9 a random worker and start a fresh one in its place.
        let victim = (next() % WORKERS as u64) as usize;
        workers[victim].kill();
        kills += 1;
        workers[victim] = Peer::seed(&server, &format!("chaos-{victim}-{kills}"), 0.05);
        tokio::time::sleep(Duration::from_millis(20 + next() % 80)).await;
    }
    let rows = store.jobs().await.unwrap();
    assert_eq!(rows.len(), JOBS, "no job lost");
    let mut failed = 0;
    for row in &rows {
        match row.status() {
            JobStatus::Finished => assert!(store.image_png(&row.id).await.unwrap().is_some()),
            JobStatus::Failed => {
                failed += 1;
                assert!(
                    row.last_error.as_deref().unwrap_or("").contains("worker"),
                    "{row:?}"
                );
                assert_eq!(row.faults, 2);
            }
            other => panic!("job {} ended {other:?}", row.id),
        }
    }
    // Every finished job's log line, including those still in the pipe.
    let finished_lines = server.wait_log("job finished", JOBS - failed).await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for line in &finished_lines {
        if let Some(rest) = line.split("job_id=").nth(1) {
            *per_id
                .entry(rest.trim_start_matches('"').chars().take(8).collect())
                .or_default() += 1;
        }
    }
    assert!(per_id.values().all(|&n| n == 1), "a job finished twice");
    assert_eq!(per_id.len() + failed, JOBS);
    eprintln!("chaos: {JOBS} jobs, {kills} kills, {failed} failed after 2 faults");
    store.close().await;
}
