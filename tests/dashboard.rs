//! The operator dashboard over real HTTP: the page and its assets, the live stream's
//! credentials (401 without a token, 403 below role 3), states pushed as jobs move without
//! polling, a drained backend claiming nothing until resumed, cancelling a queued job, the
//! refusals of the actions, and a plugin reload showing in the stream.

mod common;

use std::time::{Duration, Instant};

use common::{Server, ServerOptions};
use serde_json::{Value, json};

const REPO_PLUGINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins");

/// The server-sent events of `GET /api/admin/stream`, read as they arrive.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    async fn open(server: &Server, auth: &str) -> reqwest::Response {
        easel::forge::http_client()
            .get(server.url("/api/admin/stream"))
            .header("Authorization", auth)
            .send()
            .await
            .unwrap()
    }

    /// The next `state` event's data.
    async fn next(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if !block.lines().any(|l| l == "event: state") {
                    continue; // A keep-alive comment.
                }
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect::<Vec<_>>()
                    .join("\n");
                return serde_json::from_str(&data).unwrap();
            }
            let chunk = self.response.chunk().await.unwrap().expect("stream ended");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Reads states until one satisfies `pred` (within 20 s); returns it.
    async fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let state = tokio::time::timeout(left, self.next())
                .await
                .unwrap_or_else(|_| panic!("no state with {what} in 20 s"));
            if pred(&state) {
                return state;
            }
        }
    }
}

fn queued_ids(state: &Value) -> Vec<String> {
    state["queue"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn post(server: &Server, path: &str) -> (u16, Value) {
    let response = easel::forge::http_client()
        .post(server.url(path))
        .header("Authorization", &server.token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_stream_and_actions() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = common::access_plugin_in(dir.path());
    let db = format!("sqlite://{}", dir.path().join("easel.db").display());
    let server = Server::start(ServerOptions {
        db_url: &db,
        dir: dir.path(),
        step_ms: 1,
        workers: 1,
        secret_key: "dashboard-secret",
        ..ServerOptions::default()
    })
    .await;
    let client = easel::forge::http_client();

    // The page and its assets: public, embedded, with a strict content policy.
    for (path, kind) in [
        ("/dashboard", "text/html"),
        ("/dashboard/dashboard.js", "text/javascript"),
        ("/dashboard/dashboard.css", "text/css"),
    ] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'self'")
        );
        assert!(!response.text().await.unwrap().is_empty());
    }

    // The stream: 401 without credentials or with a bad one, 403 below role 3.
    let response = client
        .get(server.url("/api/admin/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"message": "Unauthorized"})
    );
    let response = Stream::open(&server, "Bearer not.a.jwt").await;
    assert_eq!(response.status(), 401);
    let low = common::jwt("dashboard-secret", "123456789012345678", 3600);
    let response = Stream::open(&server, &format!("Bearer {low}")).await;
    assert_eq!(response.status(), 403);
    // Actions are refused the same way.
    let response = client
        .post(server.url("/api/admin/backends/simulated/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let response = Stream::open(&server, &server.token).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = Stream {
        response,
        buffer: String::new(),
    };
    let first = stream.next().await;
    assert!(first["now"].as_i64().unwrap() > 0);
    assert_eq!(
        first["backends"]["backends"],
        json!(["simulated", "workers"])
    );
    // This host's id, generated at its first start (`easel-host-id` in its folder).
    let host = std::fs::read_to_string(dir.path().join("easel-host-id")).unwrap();
    assert_eq!(first["backends"]["host"], host.trim());
    assert_eq!(first["plugins"]["plugins"][0]["name"], "access");
    assert_eq!(
        first["sparklines"]["finished"].as_array().unwrap().len(),
        60
    );

    // Drained: a queued job stays queued, and shows in the stream.
    let (status, body) = post(&server, "/api/admin/backends/simulated/drain").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true);
    stream
        .until("simulated drained", |s| {
            s["backends"]["drained"] == json!(["simulated"])
        })
        .await;
    let (status, body) = post(&server, "/api/admin/backends/simulated/drain").await;
    assert_eq!((status, &body["changed"]), (200, &json!(false)));
    let (status, body) = post(&server, "/api/admin/backends/gpu/drain").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "no backend named \"gpu\" runs here");

    let doomed = server
        .queue(json!({"model_name": "m", "prompt": "a doomed fox", "steps": 2}))
        .await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let kept = server
        .queue(json!({"model_name": "m", "prompt": "a kept fox", "steps": 2}))
        .await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let state = stream
        .until("both jobs queued", |s| queued_ids(s).len() == 2)
        .await;
    assert_eq!(queued_ids(&state), [doomed.clone(), kept.clone()]);
    assert_eq!(state["queue"]["jobs"][0]["state"], "queued");
    assert_eq!(state["queue"]["jobs"][0]["position"], 1);
    assert_eq!(state["queue"]["jobs"][0]["front_end"], "http");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = client
        .get(server.url(&format!("/api/images/{kept}")))
        .send()
        .await
        .unwrap();
    assert_eq!(job.status(), 404, "a drained backend ran a job");

    // Cancel the first; the stream shows it gone.
    let (status, body) = post(&server, &format!("/api/admin/jobs/{doomed}/cancel")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["was"], "queued");
    stream
        .until("the cancelled job gone", |s| {
            queued_ids(s) == std::slice::from_ref(&kept)
        })
        .await;
    let (status, body) = post(&server, &format!("/api/admin/jobs/{doomed}/cancel")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"],
        format!("Job {doomed} is interrupted, not queued or running")
    );
    let (status, _) = post(&server, "/api/admin/jobs/ffffffff/cancel").await;
    assert_eq!(status, 404);
    let (status, body) = post(&server, &format!("/api/admin/jobs/{doomed}/requeue")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"],
        format!("Job {doomed} is interrupted, not failed")
    );

    // Resumed: the kept job runs, and appears in the gallery with its prompt.
    let (status, _) = post(&server, "/api/admin/backends/simulated/resume").await;
    assert_eq!(status, 200);
    let state = stream
        .until("the kept job in the gallery", |s| {
            s["images"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["id"] == kept.as_str())
        })
        .await;
    assert!(queued_ids(&state).is_empty());
    assert_eq!(state["images"][0]["prompt"], "a kept fox");
    assert_eq!(state["backends"]["drained"], json!([]));
    let finished: u64 = stream
        .until("a finished job counted", |s| {
            s["sparklines"]["finished"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n.as_u64() > Some(0))
        })
        .await["sparklines"]["finished"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(finished, 1);

    // A plugin reload shows, and so does a failed one with its error.
    let mut changed = std::fs::read(format!("{REPO_PLUGINS}/access.wasm")).unwrap();
    changed.extend_from_slice(&[0, 6, 5, b'e', b'a', b's', b'e', b'l']);
    std::fs::write(&plugin, &changed).unwrap();
    stream
        .until("the reload", |s| s["plugins"]["plugins"][0]["reloads"] == 1)
        .await;
    std::fs::write(&plugin, b"not a wasm component").unwrap();
    let state = stream
        .until("the failed reload", |s| {
            s["plugins"]["plugins"][0]["status"] == "stale"
        })
        .await;
    assert!(
        state["plugins"]["plugins"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("access is not a valid plugin"),
        "{}",
        state["plugins"]["plugins"][0]
    );

    // The admin views answer from the same code.
    let backends: Value = client
        .get(server.url("/api/admin/backends"))
        .header("Authorization", &server.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(backends["drained"], json!([]));
    assert_eq!(backends["worker_list"], json!([]));
}

/// Where screenshots of the browser test are kept (a test artifact).
fn screenshot_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: tests/run installs Debian's chromium package"
    );
    let dir = tempfile::tempdir().unwrap();
    let plugin = common::access_plugin_in(dir.path());
    let db = format!("sqlite://{}", dir.path().join("easel.db").display());
    let server = Server::start(ServerOptions {
        db_url: &db,
        dir: dir.path(),
        step_ms: 100,
        workers: 1,
        ..ServerOptions::default()
    })
    .await;
    let node_path = common::npm::node_modules("puppeteer-core", "24");
    let shots = screenshot_dir();
    let base = server.url("");
    let token = server.token.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/peers/dashboard_browser.mjs"
            ))
            .args([base.as_str(), token.as_str()])
            .arg(&plugin)
            .arg(&shots)
            .env("NODE_PATH", node_path)
            .env("CHROMIUM", chromium)
            .output()
            .expect("node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "the browser run failed ({}):\n{stdout}\n{}\nserver:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.stderr()
    );
    for name in [
        "01-refused.png",
        "02-queued.png",
        "03-finished.png",
        "04-plugin-failed.png",
    ] {
        let png = std::fs::read(screenshot_dir().join(name)).unwrap();
        assert!(common::png_size(&png).0 >= 1000, "{name}");
    }
}
