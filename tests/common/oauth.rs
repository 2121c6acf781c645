//! A fake of Discord's OAuth2 and user API (`/api/v10`) on 127.0.0.1, for easel's
//! `POST /api/auth/login` and the admin routes' id checks.
//!
//! `POST /api/v10/oauth2/token` (form-urlencoded) answers `{"access_token": "token-<code>"}`
//! for a code registered with [`FakeOAuth::user`] and `400 {"error":"invalid_grant"}` for any
//! other; `GET /api/v10/users/@me` with `Bearer token-<code>` answers that user;
//! `GET /api/v10/users/<id>` with `Bot <token>` answers a registered user by id or
//! `404 {"message":"Unknown User","code":10013}`. [`FakeOAuth::set_down`] makes every call a
//! 502. Every request is recorded before anything else.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One request as received.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    /// Form fields of a form body.
    pub form: HashMap<String, String>,
}

#[derive(Default)]
struct Inner {
    users: HashMap<String, Value>,
    calls: Vec<Call>,
    down: bool,
}

/// The fake; stops when dropped.
pub struct FakeOAuth {
    /// `http://127.0.0.1:P/api/v10`, for `[oauth] discord_api`.
    pub base: String,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeOAuth {
    pub async fn start() -> FakeOAuth {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeOAuth {
            base: format!("http://127.0.0.1:{port}/api/v10"),
            inner,
            task,
        }
    }

    /// Registers the Discord user `id` (`username`), who logs in with `code`.
    pub fn user(&self, code: &str, id: &str, username: &str) -> Value {
        let user = json!({
            "id": id, "username": username, "global_name": username.to_uppercase(),
            "discriminator": "0", "avatar": null, "bot": false, "mfa_enabled": false,
            "locale": "en-US", "verified": true, "flags": 0, "public_flags": 0,
        });
        self.lock().users.insert(code.to_owned(), user.clone());
        user
    }

    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The `[oauth]` section pointing easel here.
    pub fn toml(&self) -> String {
        format!(
            "[oauth]\ndiscord_api = \"{}\"\nclient_id = \"4242\"\nclient_secret = \
             \"very-secret-client\"\nredirect_uri = \"http://127.0.0.1:4173/\"\n",
            self.base
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FakeOAuth {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
    inner.calls.push(Call {
        method: method.to_string(),
        path: uri.path().to_owned(),
        authorization: authorization.clone(),
        form: form.clone(),
    });
    if inner.down {
        return (StatusCode::BAD_GATEWAY, "upstream down").into_response();
    }
    let answer = |status: StatusCode, body: Value| (status, axum::Json(body)).into_response();
    match (method.as_str(), uri.path()) {
        ("POST", "/api/v10/oauth2/token") => match form.get("code") {
            Some(code) if inner.users.contains_key(code) => answer(
                StatusCode::OK,
                json!({"access_token": format!("token-{code}"), "token_type": "Bearer",
                       "expires_in": 604800, "refresh_token": "r", "scope": "identify"}),
            ),
            _ => answer(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"})),
        },
        ("GET", "/api/v10/users/@me") => {
            let code = authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer token-"));
            match code.and_then(|c| inner.users.get(c)) {
                Some(user) => answer(StatusCode::OK, user.clone()),
                None => answer(
                    StatusCode::UNAUTHORIZED,
                    json!({"message": "401: Unauthorized", "code": 0}),
                ),
            }
        }
        ("GET", path) if path.starts_with("/api/v10/users/") => {
            if !authorization
                .as_deref()
                .is_some_and(|a| a.starts_with("Bot "))
            {
                return answer(
                    StatusCode::UNAUTHORIZED,
                    json!({"message": "401: Unauthorized", "code": 0}),
                );
            }
            let id = &path["/api/v10/users/".len()..];
            match inner.users.values().find(|u| u["id"] == id) {
                Some(user) => answer(StatusCode::OK, user.clone()),
                None => answer(
                    StatusCode::NOT_FOUND,
                    json!({"message": "Unknown User", "code": 10013}),
                ),
            }
        }
        _ => answer(
            StatusCode::NOT_FOUND,
            json!({"message": "404: Not Found", "code": 0}),
        ),
    }
}
