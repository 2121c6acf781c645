//! Navigator's authentication: the superuser token sent raw in `Authorization`, or
//! `Bearer <JWT>` signed HS256 with `secret_key`. The role always comes from the accounts
//! service (re-read for every request, through its cache).

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};

use super::ApiError;
use crate::accounts::{Accounts, role};

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

/// The credentials the API accepts.
#[derive(Clone)]
pub struct Authenticator {
    superuser_token: String,
    jwt_key: Option<DecodingKey>,
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
    /// Accepts `superuser_token` (if non-empty) and JWTs signed with `secret_key` (if non-empty).
    pub fn new(superuser_token: &str, secret_key: &str) -> Self {
        Self {
            superuser_token: superuser_token.to_owned(),
            jwt_key: (!secret_key.is_empty())
                .then(|| DecodingKey::from_secret(secret_key.as_bytes())),
        }
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
        // Navigator issues tokens without `exp` when expiration is disabled.
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
