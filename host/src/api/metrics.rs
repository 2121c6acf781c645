//! `GET /metrics`: the Prometheus text format of [`crate::metrics`], and the layer that times
//! every HTTP request by its route template. Loopback callers read the metrics freely; others
//! need `Authorization: Bearer <[metrics] token>`.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState, openapi};

/// Whether a caller may read the metrics: loopback without a proxy in between, or the token.
pub(super) fn may_read(peer: SocketAddr, headers: &HeaderMap, token: &str) -> Result<(), ApiError> {
    let proxied = headers.contains_key("x-forwarded-for");
    if peer.ip().is_loopback() && !proxied {
        return Ok(());
    }
    if token.is_empty() {
        return Err(ApiError::forbidden(
            "Metrics are served to loopback only: set [metrics] token to read them from elsewhere",
        ));
    }
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match sent {
        Some(sent) if super::auth::constant_time_eq(sent.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(ApiError::unauthorized(None)),
    }
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "config",
    summary = "Prometheus metrics",
    description = "Jobs by state and front end, queue wait and run time by backend, the queue \
        depth, Forge machines up and busy, plugin reloads, failures and deadline overruns, HTTP \
        requests by route and status with their latency; Prometheus' text format 0.0.4. \
        Loopback callers read it freely; others send `Authorization: Bearer <[metrics] token>`.",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "text/plain"),
        (status = 401, description = "Off loopback without the token", body = openapi::Unauthorized),
        (status = 403, description = "Off loopback, and no token is configured", body = openapi::ErrorBody),
    )
)]
pub(super) async fn metrics(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    may_read(peer, &headers, &state.metrics_token)?;
    let plugins = state.plugins.list();
    crate::metrics::set_snapshots(
        state.jobs.queue_depth(),
        &plugins,
        state.plugins.admission().waits,
        &state.offer.states(),
        state
            .pool
            .as_deref()
            .map(crate::workers::PoolStats::snapshot),
    );
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response())
}

/// Times every request and counts it by route template, method and status.
pub(super) async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Only the methods easel serves: a label value per made-up method would be unbounded.
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" | "HEAD") => m,
        _ => "other",
    }
    .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    crate::metrics::http_request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
