//! The HTTP API, compatible with BitForged Navigator's routes and JSON shapes.
//!
//! Every answer is JSON (or a PNG): bad JSON, missing fields, limits, unknown routes and
//! internal failures all get a JSON body and a status code, never an HTML page or a hang.
//! Requests become jobs through the intake only; jobs and images are read through the job
//! reader, users through the accounts service. Consumes no job events yet (socket.io will).

mod admin;
mod auth;
mod civitai;
mod images;
mod lists;
mod queue;
pub mod realtime;
mod user;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use auth::{Authenticator, SUPERUSER_ID, User, parse_expiration};
pub use realtime::Realtime;

use crate::accounts::Accounts;
use crate::accounts::discord::DiscordIdentity;
use crate::catalog::Catalog;
use crate::forge::Offer;
use crate::intake::Intake;
use crate::jobs::JobReader;
use crate::plugins::Registry;

/// What the routes share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The one way requests become jobs.
    pub intake: Intake,
    /// Jobs and images, read-only.
    pub jobs: JobReader,
    /// Users and roles.
    pub accounts: Arc<Accounts>,
    /// Accepted credentials.
    pub auth: Authenticator,
    /// The policy plugins (for the admin view).
    pub plugins: Arc<Registry>,
    /// What the backends offer (list routes, name resolution, png-info).
    pub offer: Offer,
    /// The model catalog (friendly names, restrictions).
    pub catalog: Arc<Catalog>,
    /// socket.io: job events to their owners.
    pub realtime: Realtime,
    /// Discord, for logins and id checks.
    pub identity: DiscordIdentity,
    /// The backends running (for the admin view).
    pub backends: Vec<String>,
    /// Serve the unauthenticated legacy bot routes.
    pub allow_legacy: bool,
    /// CivitAI: LoRA metadata, model downloads, the API proxy.
    pub civitai: crate::civitai::Services,
}

/// Express' `json({limit: "50mb"})`.
const BODY_LIMIT: usize = 50 * 1024 * 1024;

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
            Method::PATCH,
        ])
        .allow_headers([
            header::ORIGIN,
            header::HeaderName::from_static("x-requested-with"),
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::AUTHORIZATION,
        ]);
    let api = Router::new()
        .route("/config/limits", get(limits))
        .route("/config/version", get(version))
        .route("/auth/login", post(auth::login))
        .route("/user/me", get(me))
        .route("/user/jobs", get(user::jobs))
        .route("/user/image/{image_id}", delete(user::delete_image))
        .route("/user/image/{image_id}/meta", get(user::image_meta))
        .route(
            "/user/image/{image_id}/category",
            put(user::set_image_category),
        )
        .route("/user/categories", get(user::categories))
        .route("/user/category", post(user::create_category))
        .route(
            "/user/category/{category_id}",
            delete(user::delete_category).patch(user::rename_category),
        )
        .route("/models", get(lists::models))
        .route("/samplers", get(lists::samplers))
        .route("/upscalers", get(lists::upscalers))
        .route("/schedulers", get(lists::schedulers))
        .route("/modules", get(lists::modules))
        .route("/queue/user/txt2img", post(queue::queue::<false, false>))
        .route("/queue/user/img2img", post(queue::queue::<true, false>))
        .route(
            "/queue/user/txt2img/upscale-hrf/{job_id}",
            post(queue::upscale_hrf),
        )
        .route("/queue/txt2img", post(queue::queue::<false, true>))
        .route("/queue/img2img", post(queue::queue::<true, true>))
        .route("/queue/interrupt/{job_id}", post(queue::interrupt))
        .route("/images/{job_id}", get(images::image))
        .route("/images/{job_id}/info", get(images::info))
        .route("/previews/{job_id}", get(images::preview))
        .route(
            "/admin/authorize-user/{discord_id}",
            get(admin::authorize_user),
        )
        .route("/admin/disable-user/{discord_id}", get(admin::disable_user))
        .route("/admin/users/{discord_id}/role", put(admin::set_role))
        .route("/admin/plugins", get(admin::plugins))
        .route("/admin/backends", get(admin::backends))
        .merge(civitai::model_routes());
    // CORS on everything but `GET /` (as Navigator), unknown routes and preflights included,
    // so a browser client sees easel's JSON errors.
    let with_cors = Router::new()
        .route("/embed/{job_id}", get(images::embed))
        .nest("/api", api)
        .nest("/3papi", civitai::third_party_routes())
        .fallback(not_found)
        .layer(cors);
    Router::new()
        .route("/", get(root))
        .merge(with_cors)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// A handler that panicked: a JSON 500, never a dropped connection (Express 4 hangs there).
fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": "Internal Server Error"})),
    )
        .into_response()
}

/// `GET /api/user/me`: the token's payload with the role read afresh (the superuser:
/// `{discord_id, role: 4}`).
async fn me(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = state.auth.authenticate(&headers, &state.accounts).await?;
    let mut payload = user.claims;
    payload
        .entry("discord_id")
        .or_insert_with(|| json!(user.discord_id));
    payload.insert("role".into(), json!(user.role));
    Ok(Json(json!({"user": payload})))
}

async fn root() -> Json<serde_json::Value> {
    Json(json!({"message": "Hello World!", "status": "online"}))
}

async fn limits(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"max_pixels": state.intake.limits().max_pixels}))
}

/// `{"branch", "commit"}`: Navigator's `BRANCH` / `COMMIT_SHA` when set, else easel's
/// own name and version.
async fn version() -> Json<serde_json::Value> {
    let branch = std::env::var("BRANCH").unwrap_or_else(|_| "easel".to_owned());
    let commit =
        std::env::var("COMMIT_SHA").unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_owned());
    Json(json!({"branch": branch, "commit": commit}))
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        json!({"error": format!("Cannot {method} {}", uri.path())}),
    )
}

/// The client's address as Navigator sees it (`trust proxy`: left-most `X-Forwarded-For`).
fn origin(headers: &HeaderMap, peer: SocketAddr) -> String {
    let forwarded = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    forwarded.map_or_else(|| peer.ip().to_string(), str::to_owned)
}

/// An error answer: a status and a JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    /// Any status and body.
    pub fn new(status: StatusCode, body: serde_json::Value) -> Self {
        Self { status, body }
    }

    /// `400 {"error": message}`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, json!({"error": message.into()}))
    }

    /// `401 {"message":"Unauthorized"}`, with `error` when there is a reason.
    pub fn unauthorized(error: Option<&str>) -> Self {
        let body = match error {
            Some(error) => json!({"message": "Unauthorized", "error": error}),
            None => json!({"message": "Unauthorized"}),
        };
        Self::new(StatusCode::UNAUTHORIZED, body)
    }

    /// `403` for a user whose role is 0.
    pub fn user_disabled() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            json!({"message": "Forbidden", "error": "User is disabled", "error_code": "USER_DISABLED"}),
        )
    }

    /// `403 {"error": message}`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, json!({"error": message.into()}))
    }

    /// `500 {"error":"Internal Server Error"}`; the cause is logged, not sent.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "Internal Server Error"}),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
