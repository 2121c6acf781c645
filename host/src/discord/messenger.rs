//! The bot's Discord REST client as one cloneable handle, shared by the Discord front end and the
//! gRPC API, so one process holds the token and one rate limiter (twilight's, with Discord's
//! global limit from `[discord] global_rate_limit`).
//!
//! On top of twilight-http it does what discordproxy's library did for its callers: a 429 is
//! waited out and retried (twilight's rate limiter waits; here the attempts are capped), a
//! 500/502/503/504 is retried after `unit × (1 + 2·try)` (1, 3, 5, 7, 9 s with the default unit),
//! and after [`RetryPolicy::tries`] attempts the last answer is the error. DM channels are
//! opened once per user and remembered. Consumes and emits no job events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use twilight_http::Response;
use twilight_http::error::ErrorType;
use twilight_http::response::ResponseFuture;
use twilight_model::channel::Channel;
use twilight_model::channel::message::{Embed, Message};
use twilight_model::id::Id;
use twilight_model::id::marker::{ChannelMarker, GuildMarker, UserMarker};

use crate::error_chain;

/// Why a send (or a read) did not happen. Each kind maps onto one gRPC status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Discord answered with an error status (after the retries): its status, JSON error code
    /// (0 if none) and message, with the flattened `errors` of a 400 appended.
    #[error("HTTP {status} from Discord (code {code}): {text}")]
    Http {
        /// HTTP status.
        status: u16,
        /// Discord's JSON error code.
        code: u64,
        /// Discord's message.
        text: String,
    },
    /// Discord did not answer within the client's timeout.
    #[error("Discord did not answer in time")]
    Timeout,
    /// Discord could not be reached (connection refused, DNS, TLS).
    #[error("cannot reach Discord: {0}")]
    Unreachable(String),
    /// The request itself is invalid (twilight's validation: content too long, too many fields…).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Discord's answer could not be read.
    #[error("unexpected answer from Discord: {0}")]
    BadAnswer(String),
}

/// How often and how patiently to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, for rate limits and for server errors alike.
    pub tries: u32,
    /// Back-off unit after a server error: the wait after try `n` (from 0) is `unit × (1 + 2n)`.
    pub server_error_unit: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            tries: 5,
            server_error_unit: Duration::from_secs(1),
        }
    }
}

/// A message that was sent, with the guild of its channel (Discord's answer to a send does not
/// say it).
#[derive(Clone, Debug)]
pub struct Sent {
    /// The message as Discord returned it.
    pub message: Message,
    /// The channel's guild; `None` for a DM.
    pub guild_id: Option<Id<GuildMarker>>,
}

/// The cloneable handle.
#[derive(Clone, Debug)]
pub struct Messenger {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: twilight_http::Client,
    retry: RetryPolicy,
    dms: DmChannels,
}

/// DM channel of each user the bot wrote to (Discord returns the same channel every time).
#[derive(Debug, Default)]
struct DmChannels(Mutex<HashMap<Id<UserMarker>, Id<ChannelMarker>>>);

impl DmChannels {
    fn get(&self, user: Id<UserMarker>) -> Option<Id<ChannelMarker>> {
        self.0
            .lock()
            .expect("DM cache poisoned")
            .get(&user)
            .copied()
    }

    fn insert(&self, user: Id<UserMarker>, channel: Id<ChannelMarker>) {
        self.0
            .lock()
            .expect("DM cache poisoned")
            .insert(user, channel);
    }
}

impl Messenger {
    /// Wraps a configured twilight client.
    pub fn new(http: twilight_http::Client, retry: RetryPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                retry,
                dms: DmChannels::default(),
            }),
        }
    }

    /// The twilight client, for the front end's own calls.
    pub fn http(&self) -> &twilight_http::Client {
        &self.inner.http
    }

    /// Sends `content` (and `embed`, if any) to a channel: `GET /channels/{id}` (which also
    /// tells the guild), then `POST /channels/{id}/messages`.
    pub async fn send_channel(
        &self,
        channel: Id<ChannelMarker>,
        content: &str,
        embed: Option<&Embed>,
    ) -> Result<Sent, SendError> {
        let http = self.http();
        let target = self.call(|| http.channel(channel).into_future()).await?;
        let target = model(target).await?;
        let message = self.post(channel, content, embed).await?;
        Ok(Sent {
            message,
            guild_id: target.guild_id,
        })
    }

    /// Sends a direct message: `GET /users/{id}`, `POST /users/@me/channels` (the first time
    /// only), then the send.
    pub async fn send_direct(
        &self,
        user: Id<UserMarker>,
        content: &str,
        embed: Option<&Embed>,
    ) -> Result<Sent, SendError> {
        let http = self.http();
        let channel = match self.inner.dms.get(user) {
            Some(channel) => channel,
            None => {
                model(self.call(|| http.user(user).into_future()).await?).await?;
                let dm = self
                    .call(|| http.create_private_channel(user).into_future())
                    .await?;
                let dm = model(dm).await?;
                self.inner.dms.insert(user, dm.id);
                dm.id
            }
        };
        let message = self.post(channel, content, embed).await?;
        Ok(Sent {
            message,
            guild_id: None,
        })
    }

    /// A guild's channels: `GET /guilds/{id}` (so an unknown guild is a 404, not an empty
    /// list), then `GET /guilds/{id}/channels`.
    pub async fn guild_channels(&self, guild: Id<GuildMarker>) -> Result<Vec<Channel>, SendError> {
        let http = self.http();
        model(self.call(|| http.guild(guild).into_future()).await?).await?;
        let channels = self
            .call(|| http.guild_channels(guild).into_future())
            .await?;
        channels
            .models()
            .await
            .map_err(|err| SendError::BadAnswer(err.to_string()))
    }

    async fn post(
        &self,
        channel: Id<ChannelMarker>,
        content: &str,
        embed: Option<&Embed>,
    ) -> Result<Message, SendError> {
        let http = self.http();
        let embeds: Vec<Embed> = embed.cloned().into_iter().collect();
        let sent = self
            .call(|| {
                http.create_message(channel)
                    .content(content)
                    .embeds(&embeds)
                    .into_future()
            })
            .await?;
        model(sent).await
    }

    /// Runs one request with the retry policy.
    async fn call<T: Unpin>(
        &self,
        request: impl Fn() -> ResponseFuture<T>,
    ) -> Result<Response<T>, SendError> {
        let RetryPolicy {
            tries,
            server_error_unit,
        } = self.inner.retry;
        let mut last = None;
        for attempt in 0..tries {
            let done = counted(request(), Some(tries)).await;
            let err = match done {
                Ok(response) => return Ok(response),
                Err(err) => err,
            };
            let failure = match err.kind() {
                ErrorType::Response { body, status, .. } => http_error(status.get(), body),
                ErrorType::RequestCanceled => SendError::Http {
                    status: 429,
                    code: 0,
                    text: "You are being rate limited.".to_owned(),
                },
                ErrorType::RequestTimedOut => SendError::Timeout,
                ErrorType::RequestError => SendError::Unreachable(error_chain(&err)),
                ErrorType::Unauthorized => SendError::Http {
                    status: 401,
                    code: 0,
                    text: "401: Unauthorized".to_owned(),
                },
                ErrorType::Validation | ErrorType::BuildingRequest | ErrorType::Json => {
                    SendError::Invalid(error_chain(&err))
                }
                _ => SendError::BadAnswer(error_chain(&err)),
            };
            match failure {
                SendError::Http {
                    status: 500 | 502 | 503 | 504,
                    ..
                } => {
                    tracing::debug!(error = %failure, attempt, "Discord server error; retrying");
                    last = Some(failure);
                    tokio::time::sleep(server_error_unit * (1 + 2 * attempt)).await;
                }
                other => return Err(other),
            }
        }
        Err(last.unwrap_or(SendError::Timeout))
    }
}

/// Reads a response's body as its model.
async fn model<T: serde::de::DeserializeOwned + Unpin>(
    response: Response<T>,
) -> Result<T, SendError> {
    response
        .model()
        .await
        .map_err(|err| SendError::BadAnswer(err.to_string()))
}

/// Awaits one REST request, counting in `easel_discord_rest_429_total` every 429 it met: those
/// twilight waited out and retried (its rate limiter holds the retry until `retry_after`), and a
/// last one given up. `cap`: how many attempts twilight may make (`None`: as many as it takes).
pub(super) async fn counted<T: Unpin>(
    mut future: ResponseFuture<T>,
    cap: Option<u32>,
) -> Result<Response<T>, twilight_http::Error> {
    // The predicate runs before each attempt; every attempt after the first follows a 429.
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    future.set_pre_flight(move || seen.fetch_add(1, Ordering::Relaxed) < cap.unwrap_or(u32::MAX));
    let done = future.await;
    let mut met = attempts.load(Ordering::Relaxed).saturating_sub(1);
    if let Err(err) = &done
        && matches!(err.kind(), ErrorType::Response { status, .. } if status.get() == 429)
    {
        met += 1; // No rate limiter in between: the 429 itself is the answer.
    }
    if met > 0 {
        metrics::counter!("easel_discord_rest_429_total").increment(u64::from(met));
    }
    done
}

/// Discord's error body as discordproxy reported it: `message` (or the body itself when it is
/// not JSON), plus one line `In <path>: <messages>` per flattened entry of `errors`.
pub fn http_error(status: u16, body: &[u8]) -> SendError {
    let Ok(serde_json::Value::Object(json)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return SendError::Http {
            status,
            code: 0,
            text: String::from_utf8_lossy(body).into_owned(),
        };
    };
    let code = json
        .get("code")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let mut text = json
        .get("message")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
        .to_owned();
    if let Some(serde_json::Value::Object(errors)) = json.get("errors") {
        let mut flat = Vec::new();
        flatten_errors(errors, "", &mut flat);
        if !flat.is_empty() {
            text.push('\n');
            let lines: Vec<String> = flat
                .iter()
                .map(|(path, messages)| format!("In {path}: {messages}"))
                .collect();
            text.push_str(&lines.join("\n"));
        }
    }
    SendError::Http { status, code, text }
}

fn flatten_errors(
    errors: &serde_json::Map<String, serde_json::Value>,
    prefix: &str,
    out: &mut Vec<(String, String)>,
) {
    for (key, value) in errors {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            serde_json::Value::Object(inner) => match inner.get("_errors") {
                Some(serde_json::Value::Array(list)) => {
                    let messages: Vec<&str> = list
                        .iter()
                        .map(|e| e.get("message").and_then(|m| m.as_str()).unwrap_or(""))
                        .collect();
                    out.push((path, messages.join(" ")));
                }
                _ => flatten_errors(inner, &path, out),
            },
            other => out.push((
                path,
                other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_owned),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_read_as_discordproxy_reported_them() {
        assert_eq!(
            http_error(404, br#"{"message": "Unknown Channel", "code": 10003}"#),
            SendError::Http {
                status: 404,
                code: 10003,
                text: "Unknown Channel".into()
            }
        );
        let body = br#"{"message": "Invalid Form Body", "code": 50035, "errors": {"embeds": {"0": {"title": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 256 or fewer in length."}]}}}, "content": {"_errors": [{"message": "a"}, {"message": "b"}]}}}"#;
        assert_eq!(
            http_error(400, body),
            SendError::Http {
                status: 400,
                code: 50035,
                text: "Invalid Form Body\nIn embeds.0.title: Must be 256 or fewer in length.\nIn content: a b"
                    .into()
            }
        );
        assert_eq!(
            http_error(502, b"<html>Bad Gateway</html>"),
            SendError::Http {
                status: 502,
                code: 0,
                text: "<html>Bad Gateway</html>".into()
            }
        );
    }
}
