//! The HTTP API, compatible with BitForged Navigator's routes and JSON shapes.
//!
//! Every answer is JSON (or a PNG): bad JSON, missing fields, limits, unknown routes and
//! internal failures all get a JSON body and a status code, never an HTML page or a hang.
//! Requests become jobs through the intake only; jobs and images are read through the job
//! reader, users through the accounts service. The dashboard ([`dashboard`]) consumes every
//! job event; socket.io ([`realtime`]) the events of each client's jobs.
//!
//! Every route is described in an OpenAPI 3.1 document served at `GET /api/openapi.json`
//! ([`openapi`]): the router is built from the handlers' `#[utoipa::path]` descriptions with
//! utoipa-axum, so the two cannot drift apart.

mod admin;
mod auth;
mod civitai;
pub mod dashboard;
mod health;
mod images;
mod lists;
mod metrics;
mod openapi;
mod queue;
pub mod realtime;
mod user;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// The process's metrics.
    pub metrics: crate::metrics::Metrics,
    /// `[metrics] token`: what callers off loopback send for `/metrics`.
    pub metrics_token: String,
    /// The worker pool's counters, when the pool runs.
    pub pool: Option<Arc<crate::workers::PoolStats>>,
    /// The operator dashboard: its views (also the admin routes') and live feed.
    pub dashboard: dashboard::Dashboard,
    /// Serve the unauthenticated legacy bot routes.
    pub allow_legacy: bool,
    /// CivitAI: LoRA metadata, model downloads, the API proxy.
    pub civitai: crate::civitai::Services,
}

/// Express' `json({limit: "50mb"})`.
const BODY_LIMIT: usize = 50 * 1024 * 1024;

/// Every route, described: each is registered with utoipa-axum's `routes!`, which routes by
/// the method and path of the handler's `#[utoipa::path]` and adds that description to the
/// document (see [`openapi`]). A plain `.route(…)` here would be served but undocumented
/// (`tests/openapi.rs` fails on one).
fn app() -> OpenApiRouter<AppState> {
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
    // CORS on everything but `GET /` (as Navigator), unknown routes and preflights included,
    // so a browser client sees easel's JSON errors.
    let with_cors = OpenApiRouter::default()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(limits))
        .routes(routes!(version))
        .routes(routes!(openapi::document))
        .routes(routes!(auth::login))
        .routes(routes!(me))
        .routes(routes!(user::jobs))
        .routes(routes!(user::delete_image))
        .routes(routes!(user::image_meta))
        .routes(routes!(user::set_image_category))
        .routes(routes!(user::categories))
        .routes(routes!(user::create_category))
        .routes(routes!(user::delete_category, user::rename_category))
        .routes(routes!(lists::models))
        .routes(routes!(lists::samplers))
        .routes(routes!(lists::upscalers))
        .routes(routes!(lists::schedulers))
        .routes(routes!(lists::modules))
        .routes(routes!(queue::txt2img))
        .routes(routes!(queue::img2img))
        .routes(routes!(queue::upscale_hrf))
        .routes(routes!(queue::legacy_txt2img))
        .routes(routes!(queue::legacy_img2img))
        .routes(routes!(queue::interrupt))
        .routes(routes!(images::image))
        .routes(routes!(images::info))
        .routes(routes!(images::preview))
        .routes(routes!(images::embed))
        .routes(routes!(admin::authorize_user))
        .routes(routes!(admin::disable_user))
        .routes(routes!(admin::set_role))
        .routes(routes!(admin::plugins))
        .routes(routes!(admin::backends))
        .routes(routes!(admin::queue))
        .routes(routes!(dashboard::stream))
        .routes(routes!(dashboard::cancel))
        .routes(routes!(dashboard::requeue))
        .routes(routes!(dashboard::drain))
        .routes(routes!(dashboard::resume))
        .routes(routes!(civitai::loras))
        .routes(routes!(civitai::set_override))
        .routes(routes!(civitai::embeddings))
        .routes(routes!(civitai::test_civitai))
        .routes(routes!(civitai::downloads_enabled))
        .routes(routes!(civitai::download))
        .routes(routes!(civitai::api_proxy))
        .fallback(not_found)
        .layer(cors);
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(root))
        .routes(routes!(dashboard::page))
        .routes(routes!(dashboard::script))
        .routes(routes!(dashboard::style))
        .merge(with_cors)
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let (router, _) = app().split_for_parts();
    router
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        // Outside the panic catcher, so a panic is counted as the 500 it becomes.
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}

/// The OpenAPI 3.1 document of [`router`]'s routes, as `GET /api/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = app().into_openapi();
    openapi::catch_alls_as_parameters(&mut doc);
    doc
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
#[utoipa::path(
    get,
    path = "/api/user/me",
    tag = "user",
    summary = "Who the credentials are",
    description = "The token's payload with the role read from the store now (the superuser \
        token: `{\"discord_id\": \"superuser\", \"role\": 4}`).",
    security(("bearer" = []), ("superuser" = [])),
    responses(
        (status = 200, description = "The caller", body = openapi::Me,
            example = json!({"user": {"discord_id": "123456789012345678", "role": 1, "iat": 1700000000, "exp": 1700259200}})),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled", body = openapi::UserDisabled),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
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

/// `GET /`: a liveness answer (no CORS headers, as Navigator).
#[utoipa::path(
    get,
    path = "/",
    tag = "config",
    summary = "Liveness",
    description = "Always `{\"message\":\"Hello World!\",\"status\":\"online\"}`; the one route without CORS headers, as Navigator.",
    responses((status = 200, description = "The server is up", body = openapi::Root))
)]
async fn root() -> Json<serde_json::Value> {
    Json(json!({"message": "Hello World!", "status": "online"}))
}

/// `GET /api/config/limits`: the pixel limit of a job.
#[utoipa::path(
    get,
    path = "/api/config/limits",
    tag = "config",
    summary = "Limits",
    description = "The most pixels (`width * height`) a job may ask for (`IMAGE_PIXEL_LIMIT`); always a number.",
    responses((status = 200, description = "The limits", body = openapi::Limits))
)]
async fn limits(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"max_pixels": state.intake.limits().max_pixels}))
}

/// `{"branch", "commit"}`: Navigator's `BRANCH` / `COMMIT_SHA` when set, else `easel` and the
/// commit easel was built from.
#[utoipa::path(
    get,
    path = "/api/config/version",
    tag = "config",
    summary = "Version",
    description = "Navigator's `BRANCH` and `COMMIT_SHA` when set, else `easel` and the commit easel was built from (`unknown` outside a git checkout).",
    responses((status = 200, description = "The version", body = openapi::Version))
)]
async fn version() -> Json<serde_json::Value> {
    let branch = std::env::var("BRANCH").unwrap_or_else(|_| "easel".to_owned());
    let commit = std::env::var("COMMIT_SHA").unwrap_or_else(|_| env!("EASEL_COMMIT").to_owned());
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

    /// `{"message": text}` with `status`: the refusal shape of the `/api/user` and `/3papi`
    /// routes.
    pub fn message(status: StatusCode, text: &str) -> Self {
        Self::new(status, json!({"message": text}))
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
