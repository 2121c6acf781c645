//! `easel worker`: a volunteer worker speaking the pool protocol from the other side.
//!
//! It connects a DEALER to the host, announces itself (READY with protocol, token and
//! capabilities), heartbeats every second, runs each job on its backend (`sim` draws the
//! simulated picture; `forge` asks a local Forge/A1111 `POST /sdapi/v1/txt2img`) and returns the
//! PNG in OUTPUT. When the host stops answering heartbeats it reconnects with back-off (1 s
//! doubling to 32 s) and announces itself again.

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use tokio::sync::mpsc;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use super::protocol::{Capabilities, Control, ExtendedJob, PROTOCOL};
use crate::jobs::Txt2Img;

/// Where a worker draws.
#[derive(Clone, Debug)]
pub enum Backend {
    /// The simulated picture, with a delay per step.
    Sim {
        /// Delay per step.
        step: Duration,
    },
    /// A Forge / AUTOMATIC1111 server started with `--api`.
    Forge {
        /// Its base URL, e.g. `http://127.0.0.1:7860`.
        url: String,
    },
}

/// How to run a worker.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// `tcp://IP:PORT` of the host.
    pub endpoint: String,
    /// Where to draw.
    pub backend: Backend,
    /// The pool token, if the host requires one.
    pub token: Option<String>,
    /// Name sent as `hostname`.
    pub hostname: String,
    /// Models announced (empty: any); the host sends only jobs for these.
    pub models: Vec<String>,
    /// Largest `width * height` announced; the host sends nothing larger.
    pub max_pixels: Option<u64>,
}

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The host refused this worker (e.g. wrong token).
    #[error("the host refused this worker: {0}")]
    Refused(String),
}

const HEARTBEAT: Duration = Duration::from_secs(1);
const HOST_SILENCE: Duration = Duration::from_secs(3);
const BACKOFF_MAX: Duration = Duration::from_secs(32);

/// Runs until refused; reconnects whenever the host goes away.
pub async fn run(options: WorkerOptions) -> Result<(), WorkerError> {
    let http = crate::forge::http_client();
    let mut backoff = Duration::from_secs(1);
    loop {
        match session(&options, &http).await {
            Ok(SessionEnd::Refused(reason)) => return Err(WorkerError::Refused(reason)),
            Ok(SessionEnd::HostSilent { was_healthy }) => {
                if was_healthy {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(retry_in = ?backoff, "host stopped answering; reconnecting");
            }
            Err(err) => tracing::warn!(error = %err, retry_in = ?backoff, "cannot reach the host"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum SessionEnd {
    Refused(String),
    HostSilent { was_healthy: bool },
}

fn frame(json: String) -> ZmqMessage {
    ZmqMessage::from(Bytes::from(json))
}

fn ready_message(options: &WorkerOptions) -> String {
    let capabilities = Capabilities {
        backend: match options.backend {
            Backend::Sim { .. } => "sim".into(),
            Backend::Forge { .. } => "forge".into(),
        },
        models: options.models.clone(),
        max_pixels: options.max_pixels,
    };
    serde_json::json!({
        "type": "READY",
        "hostname": options.hostname,
        "protocol": PROTOCOL,
        "token": options.token,
        "capabilities": capabilities,
    })
    .to_string()
}

async fn session(
    options: &WorkerOptions,
    http: &reqwest::Client,
) -> Result<SessionEnd, zeromq::ZmqError> {
    let mut socket = zeromq::DealerSocket::new();
    socket.connect(&options.endpoint).await?;
    tracing::info!(endpoint = %options.endpoint, "connected to the host");
    let (mut send, mut recv) = socket.split();
    send.send(frame(ready_message(options))).await?;

    let (done_tx, mut done_rx) = mpsc::channel::<String>(1);
    let mut running: Option<tokio::task::JoinHandle<()>> = None;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut last_heard = Instant::now();
    let mut healthy = false;
    let end = loop {
        tokio::select! {
            message = recv.recv() => {
                let message = message?;
                last_heard = Instant::now();
                let Some(body) = message.into_vec().pop() else { continue };
                if let Ok(control) = serde_json::from_slice::<Control>(&body) {
                    match control {
                        Control::Pong => healthy = true,
                        Control::Reannounce => {
                            if running.is_none() {
                                send.send(frame(ready_message(options))).await?;
                            }
                        }
                        Control::Refused { reason } => break SessionEnd::Refused(reason),
                    }
                    continue;
                }
                match serde_json::from_slice::<ExtendedJob>(&body) {
                    Ok(job) => {
                        tracing::info!(id_num = %job.id_num, "job received");
                        let backend = options.backend.clone();
                        let hostname = options.hostname.clone();
                        let http = http.clone();
                        let done = done_tx.clone();
                        running = Some(tokio::spawn(async move {
                            let reply = run_job(&backend, &http, &job, &hostname).await;
                            let _ = done.send(reply).await;
                        }));
                    }
                    Err(err) => tracing::warn!(error = %err, "ignored a message from the host"),
                }
            }
            Some(reply) = done_rx.recv() => {
                running = None;
                send.send(frame(reply)).await?;
                send.send(frame(ready_message(options))).await?;
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > HOST_SILENCE {
                    break SessionEnd::HostSilent { was_healthy: healthy };
                }
                send.send(frame(serde_json::json!({"type": "HEARTBEAT"}).to_string())).await?;
            }
        }
    };
    if let Some(task) = running {
        // The host that gave this job is gone; it requeued the job itself.
        task.abort();
    }
    Ok(end)
}

/// Runs one job; returns the OUTPUT or FAILED message.
async fn run_job(
    backend: &Backend,
    http: &reqwest::Client,
    job: &ExtendedJob,
    hostname: &str,
) -> String {
    let result = match backend {
        Backend::Sim { step } => {
            let request = job.request();
            for _ in 0..request.steps {
                if !step.is_zero() {
                    tokio::time::sleep(*step).await;
                }
            }
            tokio::task::spawn_blocking(move || crate::sim::render(&request))
                .await
                .map_err(|err| err.to_string())
                .and_then(|png| png.map_err(|err| err.to_string()))
        }
        Backend::Forge { url } => forge_txt2img(http, url, &job.request()).await,
    };
    match result {
        Ok(png) => serde_json::json!({
            "type": "OUTPUT",
            "image_data": base64::engine::general_purpose::STANDARD.encode(png),
            "id_num": job.id_num,
            "hostname": hostname,
        })
        .to_string(),
        Err(error) => {
            tracing::warn!(id_num = %job.id_num, %error, "job failed");
            serde_json::json!({"type": "FAILED", "id_num": job.id_num, "error": error}).to_string()
        }
    }
}

/// `POST {url}/sdapi/v1/txt2img`; returns the first image's PNG bytes.
async fn forge_txt2img(
    http: &reqwest::Client,
    url: &str,
    request: &Txt2Img,
) -> Result<Vec<u8>, String> {
    let mut body = serde_json::json!({
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt.clone().unwrap_or_default(),
        "seed": request.seed,
        "steps": request.steps,
        "width": request.width,
        "height": request.height,
        "cfg_scale": request.cfg_scale,
        "save_images": false,
    });
    if !request.sampler_name.is_empty() {
        body["sampler_name"] = request.sampler_name.clone().into();
    }
    if !request.model_name.is_empty() {
        body["override_settings"] = serde_json::json!({"sd_model_checkpoint": request.model_name});
        body["override_settings_restore_afterwards"] = false.into();
    }
    let endpoint = format!("{}/sdapi/v1/txt2img", url.trim_end_matches('/'));
    let response = http
        .post(&endpoint)
        .json(&body)
        .send()
        .await
        .map_err(|err| format!("Forge at {url} unreachable: {err}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("Forge answered {status}"));
    }
    let reply: serde_json::Value = response
        .json()
        .await
        .map_err(|err| format!("Forge answered something that is not JSON: {err}"))?;
    let first = reply["images"]
        .get(0)
        .and_then(|v| v.as_str())
        .ok_or("No images were generated.")?;
    let png = base64::engine::general_purpose::STANDARD
        .decode(first.trim())
        .map_err(|err| format!("Forge image is not base64: {err}"))?;
    crate::jobs::png_size(&png).ok_or("Forge image is not a PNG")?;
    Ok(png)
}
