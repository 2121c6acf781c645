//! `GET /healthz` (the process answers) and `GET /readyz` (it can serve: the store answers and
//! every plugin role is served, by its plugin or the built-in fallback), for load balancers and
//! orchestrators. Public: they say nothing but these facts.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::{AppState, openapi};

/// `GET /healthz`.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "config",
    summary = "Liveness",
    description = "`200 {\"status\":\"ok\"}` while the process answers HTTP.",
    responses((status = 200, description = "Alive", body = openapi::Health))
)]
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "config",
    summary = "Readiness",
    description = "Ready when the store answers and every plugin role is served (by its plugin, or \
        by the built-in where the role's failure policy allows it). `plugins` says what serves \
        each role: `plugin`, `builtin` or `none`.",
    responses(
        (status = 200, description = "Ready", body = openapi::Readiness,
            example = json!({"status": "ready", "store": "ok", "plugins": {"parser": "plugin", "access": "plugin", "reactions": "plugin", "model-policy": "plugin"}})),
        (status = 503, description = "Not ready, with the reasons", body = openapi::Readiness,
            example = json!({"status": "not ready", "store": "unreachable", "plugins": {"parser": "none"}, "reasons": ["the store does not answer"]})),
    )
)]
pub(super) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut reasons = Vec::new();
    let store = match state.jobs.ping().await {
        Ok(()) => "ok",
        Err(err) => {
            tracing::warn!(error = %err, "readiness: the store does not answer");
            reasons.push("the store does not answer".to_owned());
            "unreachable"
        }
    };
    let mut plugins = Map::new();
    for (role, plugin, serving, _) in state.plugins.roles() {
        if serving == "none" {
            reasons.push(format!(
                "no plugin serves {} ({plugin} is not loaded)",
                role.as_str()
            ));
        }
        plugins.insert(role.as_str().to_owned(), json!(serving));
    }
    let mut body = json!({"store": store, "plugins": plugins});
    if reasons.is_empty() {
        body["status"] = json!("ready");
        (StatusCode::OK, Json(body))
    } else {
        body["status"] = json!("not ready");
        body["reasons"] = json!(reasons);
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}
