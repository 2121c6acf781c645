//! `GET /metrics` read by Prometheus' own text-format parser (prometheus-client from PyPI):
//! every family easel exports is documented and typed, values move as jobs run and plugins
//! reload, and the route is loopback-only without a token.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, ServerOptions};
use serde_json::{Value, json};

const REPO_PLUGINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins");

/// Scrapes `/metrics` and parses it with `tests/peers/prom_parse.py`.
async fn scrape(server: &Server) -> Value {
    let response = easel::forge::http_client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/peers/prom_parse.py"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "Prometheus' parser refused easel's metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The family of an exported metric name, as the parser names it (counters lose `_total`).
fn family<'a>(scraped: &'a Value, name: &str) -> &'a Value {
    let key = name.strip_suffix("_total").unwrap_or(name);
    &scraped[key]
}

/// The value of the sample `name` whose labels include `labels` (0 when there is none).
fn value(scraped: &Value, family_name: &str, sample: &str, labels: Value) -> f64 {
    let wanted = labels.as_object().unwrap();
    family(scraped, family_name)["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == sample)
        .filter(|s| wanted.iter().all(|(k, v)| &s["labels"][k] == v))
        .map(|s| s["value"].as_f64().unwrap_or(f64::INFINITY))
        .sum()
}

#[tokio::test]
async fn metrics_move_with_jobs_plugins_and_requests() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = common::access_plugin_in(dir.path());
    let db = format!("sqlite://{}", dir.path().join("easel.db").display());
    let server = Server::start(ServerOptions {
        db_url: &db,
        dir: dir.path(),
        step_ms: 1,
        workers: 2,
        ..ServerOptions::default()
    })
    .await;

    // Every exported family is one easel documents, with its type and help.
    let before = scrape(&server).await;
    for (name, kind, help) in easel::metrics::FAMILIES {
        let family = family(&before, name);
        if family.is_null() {
            continue; // Nothing recorded yet (e.g. no Forge machine).
        }
        assert_eq!(family["type"], *kind, "{name}");
        assert_eq!(family["documentation"], *help, "{name}");
    }
    for (name, _) in before.as_object().unwrap() {
        assert!(
            easel::metrics::FAMILIES
                .iter()
                .any(|(n, _, _)| n.strip_suffix("_total").unwrap_or(n) == name),
            "{name} is exported but not documented in easel::metrics::FAMILIES"
        );
    }
    assert_eq!(
        value(
            &before,
            "easel_build_info",
            "easel_build_info",
            json!({"version": env!("CARGO_PKG_VERSION")})
        ),
        1.0
    );
    assert_eq!(
        value(
            &before,
            "easel_plugin_loaded",
            "easel_plugin_loaded",
            json!({"plugin": "access"})
        ),
        1.0
    );

    // Three jobs through the HTTP API.
    for n in 0..3 {
        let job = server
            .queue(json!({"model_name": "m", "prompt": format!("fox {n}"), "width": 64, "height": 64, "steps": 3}))
            .await;
        server
            .wait_image(job["job_id"].as_str().unwrap(), Duration::from_secs(30))
            .await;
    }
    // The follower sees the events right after they happen; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = scrape(&server).await;
        if value(
            &after,
            "easel_jobs_finished_total",
            "easel_jobs_finished_total",
            json!({}),
        ) >= 3.0
            || Instant::now() > deadline
        {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let count = |family: &str, sample: &str, labels: Value| value(&after, family, sample, labels);
    assert_eq!(
        count(
            "easel_jobs_queued_total",
            "easel_jobs_queued_total",
            json!({"front_end": "http"})
        ),
        3.0
    );
    assert_eq!(
        count(
            "easel_jobs_started_total",
            "easel_jobs_started_total",
            json!({})
        ),
        3.0
    );
    assert_eq!(
        count(
            "easel_jobs_finished_total",
            "easel_jobs_finished_total",
            json!({})
        ),
        3.0
    );
    assert_eq!(
        count(
            "easel_job_queue_wait_seconds",
            "easel_job_queue_wait_seconds_count",
            json!({})
        ),
        3.0
    );
    assert_eq!(
        count(
            "easel_job_run_seconds",
            "easel_job_run_seconds_count",
            json!({})
        ),
        3.0
    );
    let backends: Vec<&str> = family(&after, "easel_jobs_finished_total")["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["labels"]["backend"].as_str())
        .collect();
    assert!(
        !backends.is_empty() && backends.iter().all(|b| b.starts_with("sim")),
        "{backends:?}"
    );
    assert_eq!(
        count("easel_queue_depth", "easel_queue_depth", json!({})),
        0.0
    );
    // The worker pool runs (on a free port) with nobody connected.
    assert_eq!(
        family(&after, "easel_workers_connected")["samples"][0]["value"],
        0.0
    );
    assert_eq!(
        count(
            "easel_http_requests_total",
            "easel_http_requests_total",
            json!({"route": "/api/queue/user/txt2img", "method": "POST", "status": "200"})
        ),
        3.0
    );
    assert_eq!(
        count(
            "easel_http_request_duration_seconds",
            "easel_http_request_duration_seconds_count",
            json!({"route": "/api/queue/user/txt2img", "method": "POST"})
        ),
        3.0
    );
    // Routes are their templates, never a job id.
    let routes: Vec<String> = family(&after, "easel_http_requests_total")["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["labels"]["route"].as_str().map(str::to_owned))
        .collect();
    assert!(
        routes.iter().any(|r| r == "/api/images/{job_id}"),
        "{routes:?}"
    );
    assert!(routes.iter().all(|r| !r.contains("fox")), "{routes:?}");

    // A reload is counted; so is a broken one, and the plugin then shows as not current.
    let mut changed = std::fs::read(format!("{REPO_PLUGINS}/access.wasm")).unwrap();
    // A custom section at the end: the same plugin, a different file.
    changed.extend_from_slice(&[0, 6, 5, b'e', b'a', b's', b'e', b'l']);
    std::fs::write(&plugin, &changed).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while value(
        &scrape(&server).await,
        "easel_plugin_reloads_total",
        "easel_plugin_reloads_total",
        json!({"plugin": "access"}),
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "the reload was not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    std::fs::write(&plugin, b"not a wasm component").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = scrape(&server).await;
        let loaded = value(
            &now,
            "easel_plugin_loaded",
            "easel_plugin_loaded",
            json!({"plugin": "access"}),
        );
        let failed = value(
            &now,
            "easel_plugin_failed_loads_total",
            "easel_plugin_failed_loads_total",
            json!({"plugin": "access"}),
        );
        if loaded == 0.0 && failed >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed reload not counted: loaded {loaded}, failed {failed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Behind a proxy (or off loopback) the token is needed; without one configured, never.
    let proxied = easel::forge::http_client()
        .get(server.url("/metrics"))
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 403);
}

#[tokio::test]
async fn off_loopback_the_metrics_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("easel.db").display());
    let server = Server::start(ServerOptions {
        db_url: &db,
        dir: dir.path(),
        env: &[("EASEL_METRICS_TOKEN", "scrape-me")],
        ..ServerOptions::default()
    })
    .await;
    let http = easel::forge::http_client();
    let proxied = |auth: Option<&'static str>| {
        let mut request = http
            .get(server.url("/metrics"))
            .header("X-Forwarded-For", "203.0.113.9");
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        request.send()
    };
    assert_eq!(proxied(None).await.unwrap().status(), 401);
    assert_eq!(proxied(Some("Bearer wrong")).await.unwrap().status(), 401);
    let ok = proxied(Some("Bearer scrape-me")).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.unwrap().contains("easel_build_info"));
    assert!(
        !server.stderr().contains("scrape-me"),
        "the token is never logged"
    );
}
