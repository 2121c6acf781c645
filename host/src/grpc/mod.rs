//! The gRPC API: discordproxy's `discord_api.DiscordApi` service (its PyPI client and CLI work
//! unchanged), plus gRPC health checking and server reflection, so `grpcurl` works without
//! the proto file.
//!
//! Sends go through the bot's [`Messenger`] (one token, one rate limiter with the Discord
//! front end). Errors are discordproxy's (compat.md §4.4): a Discord HTTP error becomes the
//! gRPC status of its HTTP status, with the details JSON `{"type": "HTTPException", "status",
//! "code", "text"}`. Where discordproxy answered OK with an empty message (Discord unreachable,
//! a timeout, an unreadable answer), easel answers `UNAVAILABLE`, `DEADLINE_EXCEEDED`,
//! `INVALID_ARGUMENT` or `INTERNAL` with details `{"type": "<kind>", "text": …}`, so a client
//! never takes a message that was not sent for one that was. Consumes and emits no job events.

mod convert;

use std::net::SocketAddr;
use std::time::Duration;

use tonic::{Request, Response, Status};
use twilight_model::id::Id;

use crate::config::Grpc as GrpcConfig;
use crate::discord::{Messenger, SendError};

/// The code generated from `proto/discord_api.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("discord_api");
}

/// The encoded descriptors of `discord_api.proto`, for server reflection.
const DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/discord_api_descriptor.bin"));

/// The metadata key a client puts the `[grpc] token` in, as `Bearer <token>`.
pub const AUTH_METADATA: &str = "authorization";

/// Why the gRPC server could not start.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// `[grpc] host` / `port` do not make an address.
    #[error("[grpc] host {host:?} port {port} is not an address to listen on")]
    Address {
        /// As configured.
        host: String,
        /// As configured.
        port: u16,
    },
    /// A listener off loopback without `[grpc] token`.
    #[error(
        "[grpc] host {0} is not a loopback address: set [grpc] token (clients send it as `authorization: Bearer <token>`)"
    )]
    TokenRequired(String),
    /// The port is taken or not allowed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reflection could not read the descriptors (a build defect).
    #[error("gRPC reflection: {0}")]
    Reflection(String),
}

/// The running server; stops when [`GrpcHandle::shutdown`] is awaited.
pub struct GrpcHandle {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcHandle {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting calls, lets running ones finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The address `[grpc]` asks for, refused off loopback without a token.
pub fn listen_addr(config: &GrpcConfig) -> Result<SocketAddr, GrpcError> {
    let host = config.host.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = if host == "localhost" {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        host.parse().map_err(|_| GrpcError::Address {
            host: config.host.clone(),
            port: config.port,
        })?
    };
    if !ip.is_loopback() && config.token.is_empty() {
        return Err(GrpcError::TokenRequired(config.host.clone()));
    }
    Ok(SocketAddr::new(ip, config.port))
}

/// Binds `[grpc] host:port` and serves until shut down.
pub async fn start(config: &GrpcConfig, messenger: Messenger) -> Result<GrpcHandle, GrpcError> {
    let addr = listen_addr(config)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GrpcError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| GrpcError::Bind { addr, source })?;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTOR)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|err| GrpcError::Reflection(err.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTOR)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|err| GrpcError::Reflection(err.to_string()))?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<proto::discord_api_server::DiscordApiServer<Api>>()
        .await;
    let token = (!config.token.is_empty()).then(|| format!("Bearer {}", config.token));
    let api = proto::discord_api_server::DiscordApiServer::with_interceptor(
        Api { messenger },
        move |request: Request<()>| check_token(token.as_deref(), request),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "gRPC server stopped");
        }
    });
    let auth = if config.token.is_empty() {
        "none"
    } else {
        "token"
    };
    tracing::info!(%addr, auth, "Started gRPC server");
    Ok(GrpcHandle { addr, stop, task })
}

/// Lets a call through when no token is configured or it carries the token.
fn check_token(token: Option<&str>, request: Request<()>) -> Result<Request<()>, Status> {
    let Some(token) = token else {
        return Ok(request);
    };
    let given = request
        .metadata()
        .get(AUTH_METADATA)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if constant_time_eq(given, token.as_bytes()) {
        Ok(request)
    } else {
        Err(Status::unauthenticated(details(
            "Unauthenticated",
            "this server needs `authorization: Bearer <token>` metadata",
        )))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The service.
struct Api {
    messenger: Messenger,
}

fn nonzero<T>(value: u64, what: &str) -> Result<Id<T>, Status> {
    Id::new_checked(value)
        .ok_or_else(|| status_of(SendError::Invalid(format!("{what} must not be 0"))))
}

#[tonic::async_trait]
impl proto::discord_api_server::DiscordApi for Api {
    async fn send_channel_message(
        &self,
        request: Request<proto::SendChannelMessageRequest>,
    ) -> Result<Response<proto::SendChannelMessageResponse>, Status> {
        let deadline = deadline_of(&request);
        let request = request.into_inner();
        tracing::info!(
            "Received request: SendChannelMessageRequest(channel_id={})",
            request.channel_id
        );
        tracing::debug!(content = %request.content, "SendChannelMessageRequest");
        let channel = nonzero(request.channel_id, "channel_id")?;
        let embed = convert::embed_to_discord(request.embed.as_ref()).map_err(status_of)?;
        let sent = within(
            deadline,
            self.messenger
                .send_channel(channel, &request.content, embed.as_ref()),
        )
        .await?;
        Ok(Response::new(proto::SendChannelMessageResponse {
            message: Some(convert::message(&sent)),
        }))
    }

    async fn send_direct_message(
        &self,
        request: Request<proto::SendDirectMessageRequest>,
    ) -> Result<Response<proto::SendDirectMessageResponse>, Status> {
        let deadline = deadline_of(&request);
        let request = request.into_inner();
        tracing::info!(
            "Received request: SendDirectMessageRequest(user_id={})",
            request.user_id
        );
        tracing::debug!(content = %request.content, "SendDirectMessageRequest");
        let user = nonzero(request.user_id, "user_id")?;
        let embed = convert::embed_to_discord(request.embed.as_ref()).map_err(status_of)?;
        let sent = within(
            deadline,
            self.messenger
                .send_direct(user, &request.content, embed.as_ref()),
        )
        .await?;
        Ok(Response::new(proto::SendDirectMessageResponse {
            message: Some(convert::message(&sent)),
        }))
    }

    async fn get_guild_channels(
        &self,
        request: Request<proto::GetGuildChannelsRequest>,
    ) -> Result<Response<proto::GetGuildChannelsResponse>, Status> {
        let deadline = deadline_of(&request);
        let request = request.into_inner();
        tracing::info!(
            "Received request: GetGuildChannelsRequest(guild_id={})",
            request.guild_id
        );
        let guild = nonzero(request.guild_id, "guild_id")?;
        let channels = within(deadline, self.messenger.guild_channels(guild)).await?;
        Ok(Response::new(proto::GetGuildChannelsResponse {
            channels: channels.iter().map(convert::channel).collect(),
        }))
    }
}

/// How long the client waits for this call (its `grpc-timeout`), if it said.
fn deadline_of<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// How much earlier than the client's deadline a call gives up, so that the client hears
/// `DEADLINE_EXCEEDED` from easel rather than tonic's `CANCELLED` at the deadline itself.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// Runs a send within the client's deadline: past it, `DEADLINE_EXCEEDED` (what discordproxy's
/// client turns into `DiscordProxyTimeoutError`).
async fn within<T>(
    deadline: Option<Duration>,
    send: impl Future<Output = Result<T, SendError>>,
) -> Result<T, Status> {
    let Some(deadline) = deadline else {
        return send.await.map_err(status_of);
    };
    match tokio::time::timeout(deadline.saturating_sub(DEADLINE_MARGIN), send).await {
        Ok(done) => done.map_err(status_of),
        Err(_) => Err(Status::deadline_exceeded(details(
            "Timeout",
            "the call's deadline passed before Discord answered",
        ))),
    }
}

/// discordproxy's status for a Discord HTTP status (its code, not its docs: only 500 is
/// `INTERNAL`).
pub fn code_of_http(status: u16) -> tonic::Code {
    use tonic::Code;
    match status {
        400 | 405 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        429 => Code::ResourceExhausted,
        500 => Code::Internal,
        502 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Unknown,
    }
}

/// The gRPC status of a failed send.
pub fn status_of(err: SendError) -> Status {
    match &err {
        SendError::Http { status, code, text } => Status::new(
            code_of_http(*status),
            format!(
                "{{\"type\": \"HTTPException\", \"status\": {status}, \"code\": {code}, \"text\": {}}}",
                python_json_string(text)
            ),
        ),
        SendError::Timeout => Status::deadline_exceeded(details("Timeout", &err.to_string())),
        SendError::Unreachable(_) => Status::unavailable(details("Unavailable", &err.to_string())),
        SendError::Invalid(_) => {
            Status::invalid_argument(details("InvalidRequest", &err.to_string()))
        }
        SendError::BadAnswer(_) => Status::internal(details("BadAnswer", &err.to_string())),
    }
}

fn details(kind: &str, text: &str) -> String {
    format!(
        "{{\"type\": {}, \"text\": {}}}",
        python_json_string(kind),
        python_json_string(text)
    )
}

/// A JSON string as Python's `json.dumps` writes it (non-ASCII as `\uXXXX`), so details match
/// discordproxy's byte for byte.
fn python_json_string(text: &str) -> String {
    let json = serde_json::to_string(text).expect("a string serialises");
    let mut out = String::with_capacity(json.len());
    for ch in json.chars() {
        if ch.is_ascii() {
            out.push(ch);
        } else {
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Who `easel send` writes to.
#[derive(Clone, Copy, Debug)]
pub enum Recipient {
    /// A user, by direct message.
    User(u64),
    /// A channel.
    Channel(u64),
}

/// Why `easel send` failed; `Display` words it as discordproxy's client did.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Not a gRPC server there.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// The server.
        target: String,
        /// Why.
        reason: String,
    },
    /// Discord refused.
    #[error(
        "HTTP error from the Discord API. HTTP status code: {status} - JSON error code: {code} - Error message: {text}"
    )]
    Http {
        /// HTTP status.
        status: u64,
        /// Discord's code.
        code: u64,
        /// Discord's message.
        text: String,
    },
    /// Anything else.
    #[error("gRPC error. Status code: {code} - Error message: {details}")]
    Grpc {
        /// The status code's name (`NOT_FOUND`).
        code: &'static str,
        /// The status details.
        details: String,
    },
}

impl ClientError {
    fn from_status(status: &Status) -> Self {
        if let Ok(serde_json::Value::Object(details)) =
            serde_json::from_str::<serde_json::Value>(status.message())
            && details.get("type").and_then(|t| t.as_str()) == Some("HTTPException")
        {
            return Self::Http {
                status: details.get("status").and_then(|s| s.as_u64()).unwrap_or(0),
                code: details.get("code").and_then(|c| c.as_u64()).unwrap_or(0),
                text: details
                    .get("text")
                    .and_then(|t| t.as_str())
                    .unwrap_or("")
                    .to_owned(),
            };
        }
        Self::Grpc {
            code: code_name(status.code()),
            details: status.message().to_owned(),
        }
    }
}

/// gRPC's name of a status code, as Python's `grpc.StatusCode` prints it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn authorized<T>(
    message: T,
    auth: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(auth) = auth {
        request.metadata_mut().insert(AUTH_METADATA, auth.clone());
    }
    request
}

/// `easel send`: one message through the gRPC API at `target` (`http://host:port`).
pub async fn send(
    target: &str,
    token: Option<&str>,
    to: Recipient,
    content: &str,
) -> Result<(), ClientError> {
    let connect_error = |reason: String| ClientError::Connect {
        target: target.to_owned(),
        reason,
    };
    let channel = tonic::transport::Endpoint::from_shared(target.to_owned())
        .map_err(|err| connect_error(err.to_string()))?
        .connect()
        .await
        .map_err(|err| connect_error(err.to_string()))?;
    let mut client = proto::discord_api_client::DiscordApiClient::new(channel);
    let auth = token
        .map(|t| {
            tonic::metadata::MetadataValue::try_from(format!("Bearer {t}"))
                .map_err(|_| connect_error("the token is not valid metadata".to_owned()))
        })
        .transpose()?;
    let sent = match to {
        Recipient::User(user_id) => client
            .send_direct_message(authorized(
                proto::SendDirectMessageRequest {
                    user_id,
                    content: content.to_owned(),
                    embed: None,
                },
                auth.as_ref(),
            ))
            .await
            .map(drop),
        Recipient::Channel(channel_id) => client
            .send_channel_message(authorized(
                proto::SendChannelMessageRequest {
                    channel_id,
                    content: content.to_owned(),
                    embed: None,
                },
                auth.as_ref(),
            ))
            .await
            .map(drop),
    };
    sent.map_err(|status| ClientError::from_status(&status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_errors_carry_discordproxy_details() {
        let status = status_of(SendError::Http {
            status: 403,
            code: 50001,
            text: "Missing Access".into(),
        });
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status.message(),
            r#"{"type": "HTTPException", "status": 403, "code": 50001, "text": "Missing Access"}"#
        );
        let status = status_of(SendError::Http {
            status: 400,
            code: 0,
            text: "Füchse\n\"🦊\"".into(),
        });
        assert_eq!(
            status.message(),
            r#"{"type": "HTTPException", "status": 400, "code": 0, "text": "F\u00fcchse\n\"\ud83e\udd8a\""}"#
        );
        for (http, code) in [
            (405, tonic::Code::InvalidArgument),
            (401, tonic::Code::Unauthenticated),
            (404, tonic::Code::NotFound),
            (429, tonic::Code::ResourceExhausted),
            (500, tonic::Code::Internal),
            (502, tonic::Code::Unavailable),
            (503, tonic::Code::Unknown),
            (504, tonic::Code::DeadlineExceeded),
            (599, tonic::Code::Unknown),
        ] {
            assert_eq!(code_of_http(http), code, "{http}");
        }
    }

    #[test]
    fn listening_off_loopback_needs_a_token() {
        let mut config = GrpcConfig::default();
        assert_eq!(
            listen_addr(&config).unwrap(),
            "127.0.0.1:50051".parse().unwrap()
        );
        config.host = "0.0.0.0".into();
        assert!(matches!(
            listen_addr(&config),
            Err(GrpcError::TokenRequired(_))
        ));
        config.token = "s3cret".into();
        assert!(listen_addr(&config).is_ok());
        config.host = "not an ip".into();
        assert!(matches!(
            listen_addr(&config),
            Err(GrpcError::Address { .. })
        ));
    }
}
