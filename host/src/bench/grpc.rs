//! `easel bench grpc`: `SendChannelMessage` calls through the gRPC API, which make their two
//! Discord REST calls against a minimal in-process Discord REST stand-in, beside the gRPC
//! health check on the same server (what tonic, HTTP/2 and the loopback cost) in the same run.
//!
//! Discord's global rate limit (50 requests/s) is lifted to 50,000/s here: the bench measures
//! easel, not the limit.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::Path;
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{BenchError, Load};
use crate::config::Config;
use crate::grpc::proto;

/// What to measure.
#[derive(Clone, Debug)]
pub struct GrpcBenchOptions {
    /// Seconds per measurement.
    pub seconds: f64,
    /// Concurrencies (each a connection of its own).
    pub concurrency: Vec<usize>,
}

/// Runs the bench and prints a table.
pub async fn grpc(options: GrpcBenchOptions) -> Result<(), BenchError> {
    let discord = fake_discord().await?;
    let mut config = Config::default();
    config.auth.discord_token = "bench-token".into();
    config.discord.api_base = format!("http://{discord}");
    config.discord.global_rate_limit = 50_000;
    config.grpc.port = 0;
    let messenger =
        crate::discord::messenger(&config).map_err(|err| BenchError::Other(err.to_string()))?;
    let server = crate::grpc::start(&config.grpc, messenger)
        .await
        .map_err(|err| BenchError::Other(err.to_string()))?;
    let target = format!("http://{}", server.local_addr());
    println!(
        "easel bench grpc: SendChannelMessage (GET channel + POST message to an in-process Discord REST), {:.0} s per measurement",
        options.seconds
    );
    // Warm up.
    load(&target, 4, 1.0, Call::Send).await?;
    println!(
        "{:>4}  {:>30}  {:>32}  {:>7}",
        "c", "baseline health check", "SendChannelMessage", "ratio"
    );
    for &c in &options.concurrency {
        let baseline = load(&target, c, options.seconds, Call::Health).await?;
        let sends = load(&target, c, options.seconds, Call::Send).await?;
        println!(
            "{c:>4}  {:>8.0}/s p50 {:>7.2?} p99 {:>7.2?}  {:>8.0}/s p50 {:>7.2?} p99 {:>7.2?}  {:>6.3}x{}",
            baseline.rate,
            baseline.p50,
            baseline.p99,
            sends.rate,
            sends.p50,
            sends.p99,
            sends.rate / baseline.rate,
            if sends.errors + baseline.errors > 0 {
                format!("  ({} failed calls)", sends.errors + baseline.errors)
            } else {
                String::new()
            }
        );
    }
    server.shutdown().await;
    Ok(())
}

/// Answers `GET /api/v10/channels/{id}` and `POST /api/v10/channels/{id}/messages` as Discord
/// would, with nothing else.
async fn fake_discord() -> Result<SocketAddr, BenchError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/api/v10/channels/{id}",
            get(|Path(id): Path<u64>| async move {
                Json(json!({
                    "id": id.to_string(), "type": 0, "guild_id": "100", "name": "bench",
                    "position": 0, "permission_overwrites": [], "nsfw": false, "topic": null,
                    "last_message_id": null, "rate_limit_per_user": 0, "parent_id": null,
                    "flags": 0,
                }))
            }),
        )
        .route(
            "/api/v10/channels/{id}/messages",
            post(|Path(id): Path<u64>, Json(body): Json<Value>| async move {
                Json(json!({
                    "id": "1", "channel_id": id.to_string(),
                    "author": {"id": "1000", "username": "easel", "discriminator": "0",
                               "avatar": null, "bot": true},
                    "content": body.get("content").cloned().unwrap_or(json!("")),
                    "timestamp": "2026-01-01T00:00:00.000000+00:00", "edited_timestamp": null,
                    "tts": false, "mention_everyone": false, "mentions": [], "mention_roles": [],
                    "attachments": [], "embeds": [], "pinned": false, "type": 0, "flags": 0,
                }))
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

#[derive(Clone, Copy)]
enum Call {
    Health,
    Send,
}

/// `concurrency` connections making `call` back to back for `seconds`.
async fn load(
    target: &str,
    concurrency: usize,
    seconds: f64,
    call: Call,
) -> Result<Load, BenchError> {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let channel = tonic::transport::Endpoint::from_shared(target.to_owned())
            .map_err(|err| BenchError::Other(err.to_string()))?
            .connect()
            .await
            .map_err(|err| BenchError::Other(err.to_string()))?;
        clients.spawn(async move {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            let mut api = proto::discord_api_client::DiscordApiClient::new(channel);
            let mut times = Vec::new();
            let mut errors = 0usize;
            while Instant::now() < until {
                let started = Instant::now();
                let ok = match call {
                    Call::Health => health
                        .check(tonic_health::pb::HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .is_ok(),
                    Call::Send => api
                        .send_channel_message(proto::SendChannelMessageRequest {
                            channel_id: 10,
                            content: "bench".into(),
                            embed: None,
                        })
                        .await
                        .is_ok(),
                };
                times.push(started.elapsed());
                errors += usize::from(!ok);
            }
            (times, errors)
        });
    }
    let started = Instant::now();
    let mut times = Vec::new();
    let mut errors = 0;
    while let Some(done) = clients.join_next().await {
        let (mut t, e) = done.expect("load task");
        times.append(&mut t);
        errors += e;
    }
    Ok(Load::from_times(times, errors, started, seconds))
}
