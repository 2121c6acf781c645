//! Discord as identity provider: the authorization-code exchange and `/users/@me` of a login,
//! and `/users/<id>` (with the bot token) when an administrator enrols someone. Against a
//! configurable API base (`[oauth] discord_api`). The client secret and tokens are never logged.

use std::time::Duration;

use serde_json::Value;

use crate::config::Config;

/// How long one call to Discord may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A failed call to Discord.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Login is not configured (`[oauth] client_id` / `client_secret` empty).
    #[error("Discord login is not configured ([oauth] client_id and client_secret)")]
    NotConfigured,
    /// Discord could not be reached or did not answer in time.
    #[error("Discord did not answer: {0}")]
    Unreachable(String),
    /// Discord answered with an error status.
    #[error("Discord answered {status} to {what}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Which call.
        what: &'static str,
    },
    /// Discord's answer was not what it documents.
    #[error("Discord's answer to {0} is not what Discord documents")]
    BadAnswer(&'static str),
}

/// Discord's OAuth and user lookups.
#[derive(Clone)]
pub struct DiscordIdentity {
    http: reqwest::Client,
    base: String,
    client_id: String,
    client_secret: String,
    redirect_uri: String,
    bot_token: Option<String>,
}

impl std::fmt::Debug for DiscordIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordIdentity")
            .field("base", &self.base)
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("checks_ids", &self.bot_token.is_some())
            .finish_non_exhaustive()
    }
}

impl DiscordIdentity {
    /// From `[oauth]`, and the bot token (`[auth] discord_token`) for id checks when one is
    /// configured.
    pub fn from_config(config: &Config) -> Self {
        Self {
            http: crate::forge::http_client(),
            base: config.oauth.discord_api.trim_end_matches('/').to_owned(),
            client_id: config.oauth.client_id.clone(),
            client_secret: config.oauth.client_secret.clone(),
            redirect_uri: config.oauth.redirect_uri.clone(),
            bot_token: config
                .discord_enabled()
                .then(|| config.auth.discord_token.trim().to_owned()),
        }
    }

    /// Whether administrators' ids are checked against Discord (a bot token is configured).
    pub fn checks_ids(&self) -> bool {
        self.bot_token.is_some()
    }

    /// The Discord user behind an authorization `code` (`/oauth2/token`, then `/users/@me`).
    pub async fn login(&self, code: &str) -> Result<Value, IdentityError> {
        if self.client_id.is_empty() || self.client_secret.is_empty() {
            return Err(IdentityError::NotConfigured);
        }
        let form = [
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.as_str()),
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("scope", "identify"),
        ];
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let answer = self
            .http
            .post(format!("{}/oauth2/token", self.base))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(unreachable)?;
        let token = json_of(answer, "the code exchange").await?;
        let access = token
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or(IdentityError::BadAnswer("the code exchange"))?;
        let answer = self
            .http
            .get(format!("{}/users/@me", self.base))
            .bearer_auth(access)
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(unreachable)?;
        user_of(json_of(answer, "/users/@me").await?, "/users/@me")
    }

    /// The Discord user `id` (with the bot token); `Ok(None)` when Discord does not know it.
    pub async fn user(&self, id: &str) -> Result<Option<Value>, IdentityError> {
        let Some(bot) = &self.bot_token else {
            return Err(IdentityError::NotConfigured);
        };
        let answer = self
            .http
            .get(format!("{}/users/{id}", self.base))
            .header(reqwest::header::AUTHORIZATION, format!("Bot {bot}"))
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(unreachable)?;
        if answer.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        user_of(json_of(answer, "/users/<id>").await?, "/users/<id>").map(Some)
    }
}

fn unreachable(err: reqwest::Error) -> IdentityError {
    // Without the URL: a query could carry a secret one day.
    IdentityError::Unreachable(err.without_url().to_string())
}

async fn json_of(answer: reqwest::Response, what: &'static str) -> Result<Value, IdentityError> {
    let status = answer.status();
    if !status.is_success() {
        return Err(IdentityError::Refused {
            status: status.as_u16(),
            what,
        });
    }
    answer
        .json()
        .await
        .map_err(|_| IdentityError::BadAnswer(what))
}

fn user_of(user: Value, what: &'static str) -> Result<Value, IdentityError> {
    let id = user.get("id").and_then(Value::as_str).unwrap_or_default();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdentityError::BadAnswer(what));
    }
    Ok(user)
}
