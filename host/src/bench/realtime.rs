//! The socket.io half of `easel bench api`: how long a job takes from its submit to its
//! `task-finished` at a socket.io client (websocket), on an idle server with an instant
//! backend and under load, and end-to-end throughput (submit N jobs, wait for every
//! `task-finished`) with the simulated backend and with one and several fake Forge machines
//! (answering at once, and taking 20 ms per picture as a stand-in for a GPU). Each figure stands beside a baseline of the same run: the HTTP answer of
//! the same submits.
//!
//! The client is a small Engine.IO v4 / socket.io v5 websocket client (open, connect to `/`,
//! answer pings, read `42[...]` events); the fake Forge answers every call at once with a
//! 64×64 PNG.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_websockets::Message;

use super::BenchError;

/// A `task-finished` as the client saw it.
type Finished = (String, Instant);

/// Connects a socket.io client (no credentials: it hears the jobs queued from its address);
/// returns the `task-finished` events as they arrive.
pub(super) async fn listen(rt_port: u16) -> Result<mpsc::UnboundedReceiver<Finished>, BenchError> {
    let uri = format!("ws://127.0.0.1:{rt_port}/socket.io/?EIO=4&transport=websocket")
        .parse()
        .map_err(|err| BenchError::Other(format!("socket.io URL: {err}")))?;
    let (mut ws, _) = tokio_websockets::ClientBuilder::from_uri(uri)
        .connect()
        .await
        .map_err(|err| BenchError::Other(format!("socket.io connect: {err}")))?;
    // "0{sid…}" (open), then connect to the default namespace and wait for "40{sid}".
    let mut connected = false;
    while !connected {
        let Some(message) = ws.next().await else {
            return Err(BenchError::Other(
                "socket.io closed during the handshake".into(),
            ));
        };
        let message = message.map_err(|err| BenchError::Other(err.to_string()))?;
        let Some(text) = message.as_text() else {
            continue;
        };
        if text == "2" {
            ws.send(Message::text("3"))
                .await
                .map_err(|err| BenchError::Other(err.to_string()))?;
        } else if text.starts_with('0') {
            ws.send(Message::text("40"))
                .await
                .map_err(|err| BenchError::Other(err.to_string()))?;
        } else if text.starts_with("40") {
            connected = true;
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            let Some(text) = message.as_text() else {
                continue;
            };
            if text == "2" {
                if ws.send(Message::text("3")).await.is_err() {
                    return;
                }
                continue;
            }
            let Some(packet) = text.strip_prefix("42") else {
                continue;
            };
            let at = Instant::now();
            let Ok(Value::Array(parts)) = serde_json::from_str::<Value>(packet) else {
                continue;
            };
            if parts.first().and_then(Value::as_str) == Some("task-finished")
                && let Some(job) = parts.get(1).and_then(|d| d["job_id"].as_str())
                && tx.send((job.to_owned(), at)).is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}

/// Percentile of sorted durations.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What one round of submits measured.
pub(super) struct Round {
    /// Submit → HTTP answer, sorted.
    pub answered: Vec<Duration>,
    /// Submit → `task-finished` at the client, sorted.
    pub finished: Vec<Duration>,
    /// Wall time from the first submit to the last `task-finished`.
    pub wall: Duration,
    /// Wall time from the first submit to the last HTTP answer.
    pub submit_wall: Duration,
}

impl Round {
    pub(super) fn line(&self, what: &str) -> String {
        let n = self.finished.len() as f64;
        format!(
            "{what:<34} {:>5} jobs  answer p50 {:>8.2?} p99 {:>8.2?}  finished p50 {:>8.2?} p99 {:>8.2?}  \
             {:>7.0} submits/s  {:>7.0} finished/s  ({:.2}x)",
            self.finished.len(),
            pct(&self.answered, 0.5),
            pct(&self.answered, 0.99),
            pct(&self.finished, 0.5),
            pct(&self.finished, 0.99),
            n / self.submit_wall.as_secs_f64().max(1e-9),
            n / self.wall.as_secs_f64().max(1e-9),
            self.submit_wall.as_secs_f64() / self.wall.as_secs_f64().max(1e-9),
        )
    }

    /// Jobs finished per second, end to end.
    pub(super) fn rate(&self) -> f64 {
        self.finished.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Submits `jobs` jobs, one at a time, each after the previous one's `task-finished` arrived
/// (an idle server).
pub(super) async fn one_by_one(
    http_port: u16,
    authorization: &str,
    body: &Value,
    jobs: usize,
    events: &mut mpsc::UnboundedReceiver<Finished>,
) -> Result<Round, BenchError> {
    let http = crate::forge::http_client();
    let url = format!("http://127.0.0.1:{http_port}/api/queue/user/txt2img");
    let started = Instant::now();
    let (mut answered, mut finished) = (Vec::new(), Vec::new());
    let mut submit_time = Duration::ZERO;
    for _ in 0..jobs {
        let at = Instant::now();
        let job: Value = http
            .post(&url)
            .header("authorization", authorization)
            .json(body)
            .send()
            .await
            .map_err(|err| BenchError::Other(err.to_string()))?
            .json()
            .await
            .map_err(|err| BenchError::Other(err.to_string()))?;
        answered.push(at.elapsed());
        submit_time += at.elapsed();
        let id = job["job_id"]
            .as_str()
            .ok_or_else(|| BenchError::Other(format!("submit refused: {job}")))?
            .to_owned();
        loop {
            let got = tokio::time::timeout(Duration::from_secs(30), events.recv())
                .await
                .map_err(|_| BenchError::Other(format!("job {id} did not finish in 30 s")))?;
            let Some((done, when)) = got else {
                return Err(BenchError::Other("socket.io client closed".into()));
            };
            if done == id {
                finished.push(when - at);
                break;
            }
        }
    }
    answered.sort();
    finished.sort();
    Ok(Round {
        answered,
        finished,
        wall: started.elapsed(),
        submit_wall: submit_time,
    })
}

/// Submits `jobs` jobs over `concurrency` connections (`body` for each) and waits for every
/// `task-finished` at `events`.
pub(super) async fn round(
    http_port: u16,
    authorization: &str,
    body: &Value,
    jobs: usize,
    concurrency: usize,
    events: &mut mpsc::UnboundedReceiver<Finished>,
) -> Result<Round, BenchError> {
    let http = crate::forge::http_client();
    let url = format!("http://127.0.0.1:{http_port}/api/queue/user/txt2img");
    let started = Instant::now();
    let (submitted_tx, mut submitted) = mpsc::unbounded_channel::<(String, Instant, Duration)>();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (http, url, body, auth) = (
            http.clone(),
            url.clone(),
            body.clone(),
            authorization.to_owned(),
        );
        let (next, submitted_tx) = (next.clone(), submitted_tx.clone());
        senders.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < jobs {
                let at = Instant::now();
                let answer = http
                    .post(&url)
                    .header("authorization", &auth)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|err| BenchError::Other(err.to_string()))?;
                let job: Value = answer
                    .json()
                    .await
                    .map_err(|err| BenchError::Other(err.to_string()))?;
                let Some(id) = job["job_id"].as_str() else {
                    return Err(BenchError::Other(format!("submit refused: {job}")));
                };
                let _ = submitted_tx.send((id.to_owned(), at, at.elapsed()));
            }
            Ok::<_, BenchError>(())
        });
    }
    drop(submitted_tx);
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut early: HashMap<String, Instant> = HashMap::new();
    let (mut answered, mut finished) = (Vec::new(), Vec::new());
    let mut submit_wall = Duration::ZERO;
    let mut senders_done = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while finished.len() < jobs {
        tokio::select! {
            got = submitted.recv(), if !senders_done => match got {
                Some((id, at, answer)) => {
                    answered.push(answer);
                    submit_wall = started.elapsed();
                    match early.remove(&id) {
                        Some(done) => finished.push(done - at),
                        None => { pending.insert(id, at); }
                    }
                }
                None => senders_done = true,
            },
            got = events.recv() => {
                let Some((id, done)) = got else {
                    return Err(BenchError::Other("socket.io client closed".into()));
                };
                match pending.remove(&id) {
                    Some(at) => finished.push(done - at),
                    // Replays of earlier jobs, or the answer is still on its way.
                    None => { early.entry(id).or_insert(done); }
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                return Err(BenchError::Other(format!(
                    "{} of {jobs} jobs finished within 120 s", finished.len()
                )));
            }
        }
    }
    while let Some(done) = senders.join_next().await {
        done.map_err(|err| BenchError::Other(err.to_string()))??;
    }
    let wall = started.elapsed();
    answered.sort();
    finished.sort();
    // Drain the replays of this round before the next one.
    tokio::time::sleep(Duration::from_millis(50)).await;
    while events.try_recv().is_ok() {}
    Ok(Round {
        answered,
        finished,
        wall,
        submit_wall,
    })
}

/// A Forge that answers every call at once, generations after `delay` (one generation at a
/// time, as Forge).
pub(super) async fn fake_forge(delay: Duration) -> Result<u16, BenchError> {
    use axum::routing::{get, post};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let image = {
        use base64::Engine as _;
        let png = crate::sim::render(&crate::jobs::Txt2Img {
            prompt: "bench".into(),
            width: 64,
            height: 64,
            ..crate::jobs::Txt2Img::default()
        })
        .map_err(|err| BenchError::Other(err.to_string()))?;
        base64::engine::general_purpose::STANDARD.encode(png)
    };
    let busy = std::sync::Arc::new(tokio::sync::Mutex::new(()));
    let generate = move || {
        let (image, busy) = (image.clone(), busy.clone());
        async move {
            let _turn = busy.lock().await;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            axum::Json(json!({"images": [image], "parameters": {}, "info": "{\"seed\": 1234}"}))
        }
    };
    let app = axum::Router::new()
        .route(
            "/sdapi/v1/options",
            get(|| async {
                axum::Json(json!({"sd_model_checkpoint": "m.safetensors [0000000000]"}))
            }),
        )
        .route(
            "/sdapi/v1/sd-models",
            get(|| async {
                axum::Json(json!([{"title": "m.safetensors [0000000000]", "model_name": "m"}]))
            }),
        )
        .route(
            "/sdapi/v1/samplers",
            get(|| async { axum::Json(json!([{"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"]}])) }),
        )
        .route(
            "/sdapi/v1/schedulers",
            get(|| async { axum::Json(json!([{"name": "automatic", "label": "Automatic"}])) }),
        )
        .route(
            "/sdapi/v1/upscalers",
            get(|| async { axum::Json(json!([{"name": "None"}, {"name": "R-ESRGAN 4x+"}])) }),
        )
        .route(
            "/sdapi/v1/sd-modules",
            get(|| async { axum::Json(json!([])) }),
        )
        .route("/sdapi/v1/txt2img", post(generate.clone()))
        .route("/sdapi/v1/img2img", post(generate))
        .route(
            "/sdapi/v1/png-info",
            post(|| async {
                axum::Json(json!({"info": "bench", "items": {}, "parameters": {"Seed": "1234"}}))
            }),
        )
        .route(
            "/internal/progress",
            post(|| async { axum::Json(json!({"active": false})) }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(port)
}
