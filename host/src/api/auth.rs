//! Navigator's authentication: the superuser token sent raw in `Authorization`, or
//! `Bearer <JWT>` signed HS256 with `secret_key`. The role always comes from the accounts
//! service (re-read for every request, through its cache). Also the tokens easel issues at
//! login (`POST /api/auth/login`: Discord's authorization-code flow, or the demo user).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde_json::{Value, json};

use super::{ApiError, AppState, openapi};
use crate::accounts::{Accounts, DEMO_USER, role};

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Discord id (or the superuser marker).
    pub discord_id: String,
    /// Role from the store.
    pub role: i64,
    /// The JWT's verified payload (`discord_id`, `role`, `iat`, `exp`); empty for the
    /// superuser token.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// The credentials the API accepts, and the tokens it issues.
#[derive(Clone)]
pub struct Authenticator {
    superuser_token: String,
    jwt_key: Option<DecodingKey>,
    signing_key: Option<EncodingKey>,
    /// Lifetime of issued tokens; `None`: no `exp`.
    expiration: Option<Duration>,
}

/// Lifetime of the demo user's tokens (Navigator's `"3hr"`).
const DEMO_EXPIRATION: Duration = Duration::from_secs(3 * 3600);

/// A vercel/ms duration (`"72h"`, `"14d"`, `"90 minutes"`, `"1.5h"`, a bare number is
/// milliseconds) as jsonwebtoken's `expiresIn` reads it; `"-1"` means "no expiry" (`None`).
pub fn parse_expiration(text: &str) -> Result<Option<Duration>, &'static str> {
    const EXPECTED: &str =
        "a duration such as \"72h\", \"14d\" or \"90m\" (vercel/ms), or \"-1\" for no expiry";
    let text = text.trim();
    if text == "-1" {
        return Ok(None);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| EXPECTED)?;
    let ms_per_unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1e3,
        "m" | "min" | "mins" | "minute" | "minutes" => 60e3,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600e3,
        "d" | "day" | "days" => 86_400e3,
        "w" | "week" | "weeks" => 604_800e3,
        "y" | "yr" | "yrs" | "year" | "years" => 31_557_600e3,
        _ => return Err(EXPECTED),
    };
    let ms = number * ms_per_unit;
    if !ms.is_finite() || !(1000.0..=1e15).contains(&ms) {
        return Err(EXPECTED);
    }
    Ok(Some(Duration::from_millis(ms as u64)))
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("superuser_token", &"<redacted>")
            .field("jwt", &self.jwt_key.is_some())
            .finish()
    }
}

/// The id the superuser acts as (Navigator uses the token string itself; easel does not put a
/// secret into stored rows).
pub const SUPERUSER_ID: &str = "superuser";

impl Authenticator {
    /// Accepts `superuser_token` (if non-empty) and JWTs signed with `secret_key` (if
    /// non-empty), and issues tokens living `expiration` (`None`: without `exp`).
    pub fn new(superuser_token: &str, secret_key: &str, expiration: Option<Duration>) -> Self {
        let secret = (!secret_key.is_empty()).then_some(secret_key.as_bytes());
        Self {
            superuser_token: superuser_token.to_owned(),
            jwt_key: secret.map(DecodingKey::from_secret),
            signing_key: secret.map(EncodingKey::from_secret),
            expiration,
        }
    }

    /// A token for `discord_id`, as Navigator signs them: HS256,
    /// `{discord_id, role, iat, exp}` (no `exp` without an expiration). `None` without a
    /// secret key.
    pub fn issue(&self, discord_id: &str, role: i64, lifetime: Option<Duration>) -> Option<String> {
        let key = self.signing_key.as_ref()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut claims = json!({"discord_id": discord_id, "role": role, "iat": now});
        if let Some(lifetime) = lifetime {
            claims["exp"] = json!(now + lifetime.as_secs());
        }
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key).ok()
    }

    /// Navigator's `isAuthenticated`: the caller, or the 401/403 it gets.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        accounts: &Accounts,
    ) -> Result<User, ApiError> {
        let Some(header) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(None));
        };
        let header = header
            .to_str()
            .map_err(|_| ApiError::unauthorized(Some("jwt malformed")))?;
        if !self.superuser_token.is_empty()
            && constant_time_eq(header.as_bytes(), self.superuser_token.as_bytes())
        {
            return Ok(User {
                discord_id: SUPERUSER_ID.to_owned(),
                role: role::APEX,
                claims: serde_json::Map::new(),
            });
        }
        let token = header.split(' ').nth(1).unwrap_or_default();
        let Some(key) = &self.jwt_key else {
            return Err(ApiError::unauthorized(Some(
                "JWT authentication is not configured (no secret_key)",
            )));
        };
        let mut validation = Validation::new(Algorithm::HS256);
        // What npm's jsonwebtoken accepts for a secret key when, as in Navigator, no
        // algorithm is named.
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        // Navigator issues tokens without `exp` when expiration is disabled.
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        // npm's jsonwebtoken allows no clock skew unless asked to.
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            key,
            &validation,
        )
        .map_err(|err| {
            // The messages of the npm `jsonwebtoken` package, which clients may match on.
            let message = match err.kind() {
                ErrorKind::ExpiredSignature => "jwt expired",
                ErrorKind::InvalidSignature => "invalid signature",
                ErrorKind::InvalidAlgorithm => "invalid algorithm",
                ErrorKind::ImmatureSignature => "jwt not active",
                _ if token.is_empty() => "jwt must be provided",
                // `alg: none` and other unsigned tokens.
                _ if token.ends_with('.') && token.matches('.').count() == 2 => {
                    "jwt signature is required"
                }
                _ => "jwt malformed",
            };
            ApiError::unauthorized(Some(message))
        })?;
        let claims = claims.claims;
        let discord_id = match claims.get("discord_id").cloned() {
            Some(serde_json::Value::String(id)) if !id.is_empty() => id,
            Some(serde_json::Value::Number(id)) => id.to_string(),
            _ => return Err(ApiError::unauthorized(Some("Malformed token!"))),
        };
        if discord_id == DEMO_USER && !accounts.demo_enabled() {
            return Err(ApiError::unauthorized(Some("Demo user was disabled")));
        }
        let role = accounts
            .permission_role(&discord_id)
            .await
            .map_err(ApiError::internal)?;
        if role <= role::NONE {
            return Err(ApiError::user_disabled());
        }
        Ok(User {
            discord_id,
            role,
            claims,
        })
    }
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /api/auth/login {"code"}`: Discord's authorization code (or `DEMO_USER`) for a token.
#[utoipa::path(
    post,
    path = "/api/auth/login",
    tag = "auth",
    summary = "Log in",
    description = "Trades Discord's OAuth2 authorization code (the server side of the \
        authorization-code flow, `identify` scope) for a JWT, if the user has a role of at least 1; \
        `DEMO_USER` logs in as the demo user (role 2, 3 hours) when it is enabled.",
    request_body(content = openapi::LoginRequest, description = "The code"),
    responses(
        (status = 200, description = "A token for the user", body = openapi::LoginAnswer),
        (status = 400, description = "No code", body = openapi::MessageBody,
            example = json!({"message": "Code is required"})),
        (status = 401, description = "Discord refused the code", body = openapi::ErrorBody,
            example = json!({"error": "Authentication through Discord failed"})),
        (status = 403, description = "The demo user is off, or the user has no access yet", body = openapi::LoginRefused,
            examples(
                ("Demo disabled" = (value = json!({"error": "Demo user is not enabled", "error_code": "DEMO_USER_DISABLED"}))),
                ("No access" = (value = json!({"error": "This user does not have API access yet. Please contact an Administrator to get access."}))),
            )),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
        (status = 503, description = "No `secret_key`: the server cannot sign tokens", body = openapi::ErrorBody,
            example = json!({"error": "Login is not configured on this server (no [api] secret_key)"})),
    )
)]
pub(super) async fn login(
    State(state): State<AppState>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let code = body
        .as_ref()
        .and_then(|Json(body)| body.get("code"))
        .and_then(Value::as_str)
        .filter(|code| !code.is_empty());
    let Some(code) = code else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            json!({"message": "Code is required"}),
        ));
    };
    let not_configured = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "Login is not configured on this server (no [api] secret_key)"}),
        )
    };
    if code == "DEMO_USER" {
        if !state.accounts.demo_enabled() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                json!({"error": "Demo user is not enabled", "error_code": "DEMO_USER_DISABLED"}),
            ));
        }
        let token = state
            .auth
            .issue(DEMO_USER, role::ARTIFICER, Some(DEMO_EXPIRATION))
            .ok_or_else(not_configured)?;
        return Ok(Json(json!({
            "token": token,
            "user": {
                "id": DEMO_USER, "username": "DemoUser", "global_name": "Demo User",
                "discriminator": "0000", "avatar": null, "bot": false, "system": false,
                "mfa_enabled": false, "locale": "en-US", "verified": true,
            },
            "role": role::ARTIFICER,
        })));
    }
    let user = state.identity.login(code).await.map_err(|err| {
        tracing::warn!(error = %err, "Discord login failed");
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            json!({"error": "Authentication through Discord failed"}),
        )
    })?;
    let id = user.get("id").and_then(Value::as_str).unwrap_or_default();
    let role = state
        .accounts
        .permission_role(id)
        .await
        .map_err(ApiError::internal)?;
    if role < role::APPRENTICE {
        return Err(ApiError::forbidden(
            "This user does not have API access yet. Please contact an Administrator to get access.",
        ));
    }
    let token = state
        .auth
        .issue(id, role, state.auth.expiration)
        .ok_or_else(not_configured)?;
    tracing::info!(discord_id = id, role, "logged in through Discord");
    Ok(Json(json!({"token": token, "user": user, "role": role})))
}

#[cfg(test)]
mod tests {
    use super::parse_expiration;
    use std::time::Duration;

    #[test]
    fn expirations_read_as_vercel_ms() {
        let h = |n: u64| Some(Duration::from_secs(n * 3600));
        assert_eq!(parse_expiration("72h"), Ok(h(72)));
        assert_eq!(parse_expiration("14d"), Ok(h(14 * 24)));
        assert_eq!(parse_expiration("3hr"), Ok(h(3)));
        assert_eq!(
            parse_expiration("1.5 hours"),
            Ok(Some(Duration::from_secs(5400)))
        );
        assert_eq!(parse_expiration("90m"), Ok(Some(Duration::from_secs(5400))));
        assert_eq!(parse_expiration("2w"), Ok(h(14 * 24)));
        assert_eq!(parse_expiration("60000"), Ok(Some(Duration::from_secs(60))));
        assert_eq!(parse_expiration(" -1 "), Ok(None));
        for bad in ["", "-2h", "forever", "10 parsecs", "500", "h"] {
            assert!(parse_expiration(bad).is_err(), "{bad:?}");
        }
    }
}
