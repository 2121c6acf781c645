//! `/api/admin`: Navigator's authorize-user and disable-user, the role route Navigator lacks
//! (`PUT /api/admin/users/:id/role`), and easel's views of the running server: plugins (what
//! `easel plugin list` shows, with reload counts) and backends. Superuser token or role ≥ 3;
//! users are written through the accounts service.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::{ApiError, AppState, User, openapi};
use crate::accounts::role::{APEX, APPRENTICE, ARCHITECT, ARTIFICER};

/// The superuser token or a role ≥ 3, else `403 {"error": "You do not have permission to
/// <what>!"}`.
pub(super) async fn administrator(
    state: &AppState,
    headers: &HeaderMap,
    what: &str,
) -> Result<User, ApiError> {
    let user = state.auth.authenticate(headers, &state.accounts).await?;
    if user.role < ARCHITECT {
        return Err(ApiError::forbidden(format!(
            "You do not have permission to {what}!"
        )));
    }
    Ok(user)
}

/// A Discord id from the path: digits only, never the caller's own.
fn target(id: &str, caller: &User, yourself: &str) -> Result<(), ApiError> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || id.len() > 20 {
        return Err(ApiError::bad_request("Discord ID must be a number"));
    }
    if id == caller.discord_id {
        return Err(ApiError::bad_request(yourself));
    }
    Ok(())
}

/// With a bot token configured, the Discord user `id` (`400` when Discord does not know it).
async fn validated(state: &AppState, id: &str) -> Result<Option<Value>, ApiError> {
    if !state.identity.checks_ids() {
        return Ok(None);
    }
    match state.identity.user(id).await {
        Ok(Some(user)) => Ok(Some(user)),
        Ok(None) => Err(ApiError::bad_request("Failed to validate Discord ID!")),
        Err(err) => {
            tracing::warn!(error = %err, "checking a Discord id failed");
            Err(ApiError::bad_request("Failed to validate Discord ID!"))
        }
    }
}

/// `GET /api/admin/authorize-user/:discordId`: role 1 (4 for the very first user).
#[utoipa::path(
    get,
    path = "/api/admin/authorize-user/{discord_id}",
    tag = "admin",
    summary = "Authorize a user",
    description = "Gives the user role 1 (apprentice; 4 when no user is enabled yet). With a bot \
        token configured, the id is checked with Discord first and Discord's user object comes back.",
    security(("bearer" = []), ("superuser" = [])),
    params(("discord_id" = String, Path, description = "The user's Discord id (digits)")),
    responses(
        (status = 200, description = "Authorized", body = openapi::Authorized,
            example = json!({"message": "User authorized!", "discord_id": "123456789012345678"})),
        (status = 400, description = "Not a Discord id, the caller's own, or unknown to Discord", body = openapi::ErrorBody,
            examples(
                ("Not a number" = (value = json!({"error": "Discord ID must be a number"}))),
                ("Yourself" = (value = json!({"error": "You cannot authorize yourself!"}))),
                ("Unknown to Discord" = (value = json!({"error": "Failed to validate Discord ID!"}))),
            )),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or has a role below 3", body = openapi::Forbidden,
            example = json!({"error": "You do not have permission to authorize users!"})),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn authorize_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = administrator(&state, &headers, "authorize users").await?;
    target(&id, &caller, "You cannot authorize yourself!")?;
    let user = validated(&state, &id).await?;
    let role = state
        .accounts
        .authorize(&id)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(discord_id = %id, role, by = %caller.discord_id, "user authorized");
    let mut answer = json!({"message": "User authorized!", "discord_id": id});
    if let Some(user) = user {
        answer["user"] = user;
    }
    Ok(Json(answer))
}

/// `GET /api/admin/disable-user/:discordId`: role 0; the user's images stay.
#[utoipa::path(
    get,
    path = "/api/admin/disable-user/{discord_id}",
    tag = "admin",
    summary = "Disable a user",
    description = "Sets the user's role to 0: their tokens then get `403 USER_DISABLED`. Their \
        images stay.",
    security(("bearer" = []), ("superuser" = [])),
    params(("discord_id" = String, Path, description = "The user's Discord id (digits)")),
    responses(
        (status = 200, description = "Disabled", body = openapi::Disabled),
        (status = 400, description = "Not a Discord id, the caller's own, or unknown to Discord", body = openapi::ErrorBody,
            examples(
                ("Not a number" = (value = json!({"error": "Discord ID must be a number"}))),
                ("Yourself" = (value = json!({"error": "You cannot disable yourself!"}))),
                ("Unknown to Discord" = (value = json!({"error": "Failed to validate Discord ID!"}))),
            )),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or has a role below 3", body = openapi::Forbidden,
            example = json!({"error": "You do not have permission to disable users!"})),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn disable_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = administrator(&state, &headers, "disable users").await?;
    target(&id, &caller, "You cannot disable yourself!")?;
    validated(&state, &id).await?;
    state
        .accounts
        .disable(&id)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(discord_id = %id, by = %caller.discord_id, "user disabled");
    Ok(Json(json!({"message": "User disabled!", "discord_id": id})))
}

/// `PUT /api/admin/users/:discordId/role {"role": 1|2|3}`: what Navigator's README asks for.
/// An architect (3) may give roles 1 and 2; only the superuser may make architects.
#[utoipa::path(
    put,
    path = "/api/admin/users/{discord_id}/role",
    tag = "admin",
    summary = "Set a user's role",
    description = "Sets role 1 (apprentice), 2 (artificer) or 3 (architect). An architect may \
        give roles 1 and 2; only the superuser makes architects. Navigator has no such route.",
    security(("bearer" = []), ("superuser" = [])),
    params(("discord_id" = String, Path, description = "The user's Discord id (digits)")),
    request_body(content = openapi::RoleRequest, description = "The role"),
    responses(
        (status = 200, description = "Set", body = openapi::RoleSet),
        (status = 400, description = "Not a Discord id, the caller's own, unknown to Discord, or not a role 1 to 3", body = openapi::ErrorBody,
            examples(
                ("Not a number" = (value = json!({"error": "Discord ID must be a number"}))),
                ("Yourself" = (value = json!({"error": "You cannot change your own role!"}))),
                ("Unknown to Discord" = (value = json!({"error": "Failed to validate Discord ID!"}))),
                ("Bad role" = (value = json!({"error": "role must be 1 (apprentice), 2 (artificer) or 3 (architect); disable-user sets 0"}))),
            )),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, has a role below 3, or (an architect) asks for role 3", body = openapi::Forbidden,
            examples(
                ("Not an administrator" = (value = json!({"error": "You do not have permission to set roles!"}))),
                ("Not the superuser" = (value = json!({"error": "You do not have permission to make administrators!"}))),
            )),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn set_role(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let caller = administrator(&state, &headers, "set roles").await?;
    target(&id, &caller, "You cannot change your own role!")?;
    let role = body
        .as_ref()
        .and_then(|Json(body)| body.get("role"))
        .and_then(Value::as_i64)
        .filter(|role| (APPRENTICE..=ARCHITECT).contains(role))
        .ok_or_else(|| {
            ApiError::bad_request(
                "role must be 1 (apprentice), 2 (artificer) or 3 (architect); \
                 disable-user sets 0",
            )
        })?;
    if role > ARTIFICER && caller.role < APEX {
        return Err(ApiError::forbidden(
            "You do not have permission to make administrators!",
        ));
    }
    validated(&state, &id).await?;
    state
        .accounts
        .set_role(&id, role)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(discord_id = %id, role, by = %caller.discord_id, "role set");
    Ok(Json(
        json!({"message": "Role set!", "discord_id": id, "role": role}),
    ))
}

/// `GET /api/admin/plugins`: the policy plugins, as `easel plugin list` shows them.
#[utoipa::path(
    get,
    path = "/api/admin/plugins",
    tag = "admin",
    summary = "The policy plugins",
    description = "What `easel plugin list` shows: the plugins with their reload counts, which \
        plugin serves each role, and the admission of plugin calls.",
    security(("bearer" = []), ("superuser" = [])),
    responses(
        (status = 200, description = "The plugins", body = openapi::Plugins),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or has a role below 3", body = openapi::Forbidden,
            example = json!({"error": "You do not have permission to view plugins!"})),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn plugins(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    administrator(&state, &headers, "view plugins").await?;
    Ok(Json(state.dashboard.views.plugins()))
}

/// `GET /api/admin/backends`: every backend's state (Forge machines: up, loaded model,
/// current job, counters), superuser token or role ≥ 3.
#[utoipa::path(
    get,
    path = "/api/admin/backends",
    tag = "admin",
    summary = "The backends",
    description = "Every backend running and which are drained, each Forge machine's state \
        (up, loaded model, current job, counters), the worker pool's counters and each worker \
        (up or gone and why, current job and since when, jobs done, faults, models).",
    security(("bearer" = []), ("superuser" = [])),
    responses(
        (status = 200, description = "The backends", body = openapi::Backends),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or has a role below 3", body = openapi::Forbidden,
            example = json!({"error": "You do not have permission to view backends!"})),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn backends(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    administrator(&state, &headers, "view backends").await?;
    Ok(Json(state.dashboard.views.backends()))
}

/// `GET /api/admin/queue`: the queue as it stands (role ≥ 3).
#[utoipa::path(
    get,
    path = "/api/admin/queue",
    tag = "admin",
    summary = "The queue",
    description = "Running jobs, then queued ones in the order backends will claim them (at most \
        500): position, owner, front end, model, size, state, age, backend, attempts.",
    security(("bearer" = []), ("superuser" = [])),
    responses(
        (status = 200, description = "The queue", body = openapi::Queue),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or has a role below 3", body = openapi::Forbidden,
            example = json!({"error": "You do not have permission to view the queue!"})),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn queue(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    administrator(&state, &headers, "view the queue").await?;
    let queue = state.dashboard.views.queue().await;
    Ok(Json(queue.map_err(ApiError::internal)?))
}
