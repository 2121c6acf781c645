//! `GET /api/admin/plugins`: what `easel plugin list` shows, from the running server, with
//! each plugin's reload count and last reload time (superuser token or role ≥ 3).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::accounts::role::ARCHITECT;

/// The superuser token or a role ≥ 3, else `403`.
async fn administrator(state: &AppState, headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
    let user = state.auth.authenticate(headers, &state.accounts).await?;
    if user.role < ARCHITECT {
        return Err(ApiError::forbidden(format!(
            "You do not have permission to view {what}!"
        )));
    }
    Ok(())
}

pub(super) async fn plugins(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    administrator(&state, &headers, "plugins").await?;
    let registry = &state.plugins;
    let roles: Vec<Value> = registry
        .roles()
        .into_iter()
        .map(|(role, plugin, serving, policy)| {
            json!({
                "role": role.as_str(),
                "plugin": plugin,
                "served_by": serving,
                "on_failure": policy.as_str(),
            })
        })
        .collect();
    Ok(Json(json!({
        "dir": registry.dir(),
        "plugins": registry.list(),
        "roles": roles,
        "admission": registry.admission(),
    })))
}

/// `GET /api/admin/backends`: every backend's state (Forge machines: up, loaded model,
/// current job, counters), superuser token or role ≥ 3.
pub(super) async fn backends(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    administrator(&state, &headers, "backends").await?;
    Ok(Json(json!({
        "backends": state.backends,
        "forge": state.offer.states(),
    })))
}
