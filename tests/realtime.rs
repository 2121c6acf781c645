//! socket.io with the real `socket.io-client` 4.8 from npm: the events of compat.md §2.6 with
//! their keys, on polling and on websocket, routed to the job's owner and origin and to nobody
//! else; a reconnecting client gets its running job back; a client that follows a job only
//! once the HTTP answer arrived (Compass) still sees the end of a job an instant backend
//! finished before that.

mod common;

use std::time::Duration;

use common::forge::{FakeForge, ForgeOptions};
use common::socketio::{SocketClient, SocketOptions};
use common::{Server, ServerOptions};
use serde_json::{Value, json};

const SECRET: &str = "realtime-test-secret";
const WAIT: Duration = Duration::from_secs(30);

async fn start(dir: &std::path::Path, step_ms: u64, extra: &str) -> Server {
    let url = format!("sqlite://{}", dir.join("easel.db").display());
    Server::start(ServerOptions {
        db_url: &url,
        dir,
        step_ms,
        secret_key: SECRET,
        extra_toml: extra,
        ..ServerOptions::default()
    })
    .await
}

async fn queue_from(server: &Server, address: &str, body: Value) -> String {
    let response = easel::forge::http_client()
        .post(server.url("/api/queue/user/txt2img"))
        .header("Authorization", &server.token)
        .header("X-Forwarded-For", address)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["origin"], address);
    job["job_id"].as_str().unwrap().to_owned()
}

fn client(
    server: &Server,
    transports: Option<Vec<&'static str>>,
    token: Option<String>,
    address: Option<&str>,
) -> SocketClient {
    SocketClient::connect(
        &format!("http://127.0.0.1:{}", server.rt_port),
        SocketOptions {
            transports,
            token,
            headers: address
                .map(|a| vec![("x-forwarded-for".to_owned(), a.to_owned())])
                .unwrap_or_default(),
            ..SocketOptions::default()
        },
    )
}

const TASK_KEYS: [&str; 16] = [
    "type",
    "model_name",
    "job_id",
    "steps",
    "hrf_steps",
    "seed",
    "cfg_scale",
    "distilled_cfg",
    "sampler_name",
    "scheduler_name",
    "denoising_strength",
    "force_hr_fix",
    "task_type",
    "status",
    "origin",
    "image_enhancements",
];

fn keys_with(extra: &[&'static str]) -> Vec<&'static str> {
    TASK_KEYS
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

async fn events_reach_owner_and_origin_only(transports: Vec<&'static str>) {
    let forge = FakeForge::start(ForgeOptions {
        steps_ms: 40,
        ..ForgeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        0,
        &format!("[[forge]]\nurl = \"{}\"\nprogress_ms = 60\n", forge.url()),
    )
    .await;
    server.wait_log("Forge machine up", 1).await;
    let store = common::sqlite_store(dir.path()).await;
    store.set_user_role("222", 1).await.unwrap();

    let t = Some(transports.clone());
    let mut from_origin = client(&server, t.clone(), None, Some("198.51.100.7"));
    let mut owner = client(&server, t.clone(), Some(server.token.clone()), None);
    let mut stranger = client(
        &server,
        t.clone(),
        Some(format!("Bearer {}", common::jwt(SECRET, "222", 3600))),
        None,
    );
    let mut elsewhere = client(&server, t.clone(), None, Some("203.0.113.9"));
    for socket in [&mut from_origin, &mut owner, &mut stranger, &mut elsewhere] {
        let hello = socket.wait_for("connected", WAIT).await;
        assert_eq!(
            hello["data"],
            json!({"message": "Welcome aboard! We're navigating uncharted territories together."})
        );
    }
    let job = queue_from(
        &server,
        "198.51.100.7",
        json!({"model_name": "flux1-dev", "prompt": "a fox", "steps": 12}),
    )
    .await;
    for socket in [&mut from_origin, &mut owner] {
        let started = socket.wait_for_job("task-started", &job, WAIT).await;
        assert_eq!(common::keys(&started["data"]), keys_with(&[]));
        assert_eq!(started["data"]["status"], "started");
        let changed = socket.wait_for_job("model-changed", &job, WAIT).await;
        assert_eq!(
            changed["data"],
            json!({"model_name": "flux1-dev", "job_id": job})
        );
        let progress = socket.wait_for_job("task-progress", &job, WAIT).await;
        assert_eq!(
            common::keys(&progress["data"]),
            keys_with(&[
                "progress",
                "eta_relative",
                "current_step",
                "total_steps",
                "progress_path"
            ]),
        );
        assert_eq!(
            progress["data"]["progress_path"],
            format!("/api/previews/{job}")
        );
        assert_eq!(progress["data"]["status"], "processing");
        let finished = socket.wait_for_job("task-finished", &job, WAIT).await;
        assert_eq!(common::keys(&finished["data"]), keys_with(&["img_path"]));
        assert_eq!(finished["data"]["img_path"], format!("/api/images/{job}"));
        if transports == ["websocket"] {
            assert_eq!(finished["transport"], "websocket");
        }
    }
    for socket in [&mut stranger, &mut elsewhere] {
        let heard: Vec<Value> = socket.quiet_for(Duration::from_millis(300)).await;
        let theirs: Vec<&Value> = socket
            .seen()
            .iter()
            .chain(heard.iter())
            .filter(|e| e["data"]["job_id"] == job.as_str())
            .collect();
        assert!(
            theirs.is_empty(),
            "another user / address heard: {theirs:?}"
        );
    }
    // models-refreshed goes to everyone.
    let response = easel::forge::http_client()
        .get(server.url("/api/models?refresh=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for socket in [&mut from_origin, &mut owner, &mut stranger, &mut elsewhere] {
        let refreshed = socket.wait_for("models-refreshed", WAIT).await;
        assert_eq!(
            refreshed["data"],
            json!({"message": "Models have been refreshed!"})
        );
    }
    // Bad credentials are refused.
    let mut bad = client(&server, t, Some("Bearer not-a-jwt".into()), None);
    bad.wait_for("disconnect", WAIT).await;
    assert!(!bad.seen().iter().any(|e| e["event"] == "connected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_polling() {
    events_reach_owner_and_origin_only(vec!["polling"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_websocket() {
    events_reach_owner_and_origin_only(vec!["websocket"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_waits_for_the_answer_still_sees_the_end() {
    // An instant backend: the job may finish before the HTTP answer reaches the client.
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 0, "").await;
    let mut socket = client(&server, None, None, None);
    socket.wait_for("connected", WAIT).await;
    for n in 0..3 {
        let job = queue_from(
            &server,
            "127.0.0.1",
            json!({"model_name": "m", "prompt": format!("instant {n}"), "steps": 2,
                   "width": 64, "height": 64}),
        )
        .await;
        // Like Compass: only from now on are this job's events looked at. Whatever arrived
        // before the answer is consumed unread.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while socket.next(Duration::from_millis(1)).await.is_some() {}
        let finished = socket.wait_for_job("task-finished", &job, WAIT).await;
        assert_eq!(finished["data"]["img_path"], format!("/api/images/{job}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_gets_its_running_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 60, "").await;
    let mut first = client(&server, None, None, None);
    first.wait_for("connected", WAIT).await;
    let job = queue_from(
        &server,
        "127.0.0.1",
        json!({"model_name": "m", "prompt": "slow", "steps": 60, "width": 64, "height": 64}),
    )
    .await;
    first.wait_for_job("task-progress", &job, WAIT).await;
    first.close();
    // A page reload: the new socket is told at once where the job stands.
    let mut again = client(&server, None, None, None);
    again.wait_for("connected", WAIT).await;
    let next = loop {
        let event = again.next(WAIT).await.expect("an event after connecting");
        if event["event"] != "upgrade" && event["event"] != "connect" {
            break event;
        }
    };
    assert_eq!(next["event"], "task-started", "{next}");
    assert_eq!(next["data"]["job_id"], job.as_str());
    let progress = again.wait_for_job("task-progress", &job, WAIT).await;
    assert!(progress["data"]["current_step"].as_u64().unwrap() > 0);
    again.wait_for_job("task-finished", &job, WAIT).await;
}
