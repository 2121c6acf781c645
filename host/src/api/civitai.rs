//! Navigator's model routes (`/api/models/loras`, `/api/models/loras/override/:hash`,
//! `/api/models/embeddings`) and its third-party routes (`/3papi`: the CivitAI key check,
//! downloads, the API proxy), answered by [`crate::civitai`]'s services.
//!
//! Unlike Navigator, a download answers `202` at once and runs in the background; clients
//! follow it through the socket.io events `model-download-progress`,
//! `model-download-finished` / `model-download-failed` and `models-refreshed`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, extract::RawQuery};
use serde_json::{Value, json};

use super::{ApiError, AppState, openapi};
use crate::accounts::role::{ARCHITECT, ARTIFICER};
use crate::civitai::{CivitAiError, LocalOverride, Refusal};

/// express-query-boolean's reading: `false` and an empty value are false, any other value
/// true; absent is false.
fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query
        .get(name)
        .is_some_and(|v| !v.is_empty() && v != "false")
}

/// `GET /api/models/loras?force_update_metadata&forge_only`.
#[utoipa::path(
    get,
    path = "/api/models/loras",
    tag = "models",
    summary = "LoRAs with their metadata",
    description = "The Forge's LoRAs (with `[civitai] lora_requests`; else `[]`), each with its \
        CivitAI metadata (cached 7 days) or local override; LoRAs without metadata are left out. \
        `forge_only=true`: Forge's list as it is (training statistics removed).",
    security(("bearer" = []), ("superuser" = [])),
    params(
        ("force_update_metadata" = Option<bool>, Query, description = "`true`: refetch CivitAI's metadata (role 2 or more)"),
        ("forge_only" = Option<bool>, Query, description = "`true`: the Forge's list only"),
    ),
    responses(
        (status = 200, description = "The LoRAs (with `forge_only`: Forge's objects)", body = Vec<openapi::NavigatorLora>),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or a forced refresh below role 2", body = openapi::Forbidden),
    )
)]
pub(super) async fn loras(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let user = state.auth.authenticate(&headers, &state.accounts).await?;
    let force = flag(&query, "force_update_metadata");
    if force && user.role < ARTIFICER {
        return Err(ApiError::forbidden(
            "You are not authorized to force refresh metadata.",
        ));
    }
    if flag(&query, "forge_only") {
        return Ok(Json(state.civitai.loras.forge_list().await));
    }
    if force {
        tracing::info!(by = %user.discord_id, "LoRA metadata refresh forced");
    }
    Ok(Json(state.civitai.loras.list(force).await))
}

/// `POST /api/models/loras/override/:hash` (role ≥ 3).
#[utoipa::path(
    post,
    path = "/api/models/loras/override/{hash}",
    tag = "models",
    summary = "Set a LoRA's local metadata",
    description = "Local metadata for the LoRA of this hash, used instead of CivitAI's (role 3 or more).",
    security(("bearer" = []), ("superuser" = [])),
    params(("hash" = String, Path, description = "The LoRA's short hash (AutoV3), file SHA-256 or alias")),
    request_body = openapi::LocalOverride,
    responses(
        (status = 200, description = "Set", body = openapi::MessageBody,
            example = json!({"message": "Successfully set local override for lora Fox style (0123456789ab)"})),
        (status = 400, description = "The body is not an override", body = openapi::ErrorBody,
            example = json!({"error": "Invalid override format!"})),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or below role 3", body = openapi::Forbidden),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn set_override(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(hash): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let user = state.auth.authenticate(&headers, &state.accounts).await?;
    if user.role < ARCHITECT {
        return Err(ApiError::forbidden(
            "You are not authorized to set local overrides.",
        ));
    }
    let value: LocalOverride = serde_json::from_slice(&body)
        .map_err(|_| ApiError::bad_request("Invalid override format!"))?;
    state
        .civitai
        .loras
        .set_override(&hash, &value)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "message": format!("Successfully set local override for lora {} ({hash})", value.name)
    })))
}

/// `GET /api/models/embeddings` (no authentication, as in Navigator): the loaded embeddings'
/// names.
#[utoipa::path(
    get,
    path = "/api/models/embeddings",
    tag = "models",
    summary = "Embeddings",
    description = "The names of the embeddings the Forge machines have loaded (none without a Forge).",
    responses(
        (status = 200, description = "The names", body = Vec<String>, example = json!(["easynegative"])),
        (status = 500, description = "Forge failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn embeddings(State(state): State<AppState>) -> Response {
    match state.offer.embeddings().await {
        Ok(names) => Json(&*names).into_response(),
        Err(err) => super::lists::error(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}

/// `GET /3papi/test_civitai`.
#[utoipa::path(
    get,
    path = "/3papi/test_civitai",
    tag = "civitai",
    summary = "Does the CivitAI key work",
    description = "Whether CivitAI accepts the configured key (no key: false).",
    responses((status = 200, description = "The answer", body = openapi::CivitAiKey))
)]
pub(super) async fn test_civitai(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"isAuthenticated": state.civitai.client.authenticated().await}))
}

/// `GET /3papi/civitai/downloads_enabled`.
#[utoipa::path(
    get,
    path = "/3papi/civitai/downloads_enabled",
    tag = "civitai",
    summary = "Can models be downloaded",
    description = "Downloads need a model folder (`MODEL_DIR`) and a working CivitAI key.",
    security(("bearer" = []), ("superuser" = [])),
    responses(
        (status = 200, description = "The answer", body = openapi::DownloadsEnabled),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled", body = openapi::UserDisabled),
    )
)]
pub(super) async fn downloads_enabled(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.auth.authenticate(&headers, &state.accounts).await?;
    Ok(Json(if !state.civitai.downloads.has_model_dir() {
        json!({"downloadsEnabled": false, "message": "Model directory not set"})
    } else if !state.civitai.client.authenticated().await {
        json!({"downloadsEnabled": false, "message": "CivitAI authentication failed"})
    } else {
        json!({"downloadsEnabled": true})
    }))
}

/// `GET /3papi/civitai/download/:modelVersionId` (role ≥ 2): `202` with the download, which
/// then runs in the background.
#[utoipa::path(
    get,
    path = "/3papi/civitai/download/{model_version_id}",
    tag = "civitai",
    summary = "Download a model from CivitAI",
    description = "Starts downloading the model version's primary file into the Forge's model \
        folder (by type: `Lora`, `Stable-diffusion`, `ControlNet`, `../embeddings`, \
        `hypernetworks`) and answers at once (role 2 or more). socket.io then tells every client \
        `model-download-progress`, `model-download-finished` or `model-download-failed`, and \
        `models-refreshed` once the Forge machines have rescanned.",
    security(("bearer" = []), ("superuser" = [])),
    params(("model_version_id" = String, Path, description = "CivitAI's model version id")),
    responses(
        (status = 202, description = "Started", body = openapi::DownloadStarted),
        (status = 400, description = "Unsupported type, no or a bad primary file, or already downloaded", body = openapi::MessageBody,
            example = json!({"message": "Model already downloaded"})),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or below role 2", body = openapi::ForbiddenMessage),
        (status = 404, description = "CivitAI does not know the version", body = openapi::MessageBody,
            example = json!({"message": "Model not found"})),
        (status = 409, description = "The same file is downloading", body = openapi::MessageBody),
        (status = 500, description = "No model folder, the key fails, or the disk is nearly full", body = openapi::DownloadRefused,
            example = json!({"message": "Model directory not set"})),
    )
)]
pub(super) async fn download(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(model_version_id): Path<String>,
) -> Result<Response, ApiError> {
    let user = state.auth.authenticate(&headers, &state.accounts).await?;
    if user.role < ARTIFICER {
        return Err(ApiError::message(
            StatusCode::FORBIDDEN,
            "You are not authorized to download models.",
        ));
    }
    match state.civitai.downloads.request(&model_version_id).await {
        Ok(started) => {
            tracing::info!(id = %started.id, model_version_id = started.model_version_id, file = %started.file, by = %user.discord_id, "model download requested");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"message": "Model download started", "download": started})),
            )
                .into_response())
        }
        Err(refusal) => Err(refused(refusal)),
    }
}

/// Navigator's answers to a download that cannot start (409 and the file-name refusals are
/// easel's).
fn refused(refusal: Refusal) -> ApiError {
    use StatusCode as S;
    match refusal {
        Refusal::NoModelDir => {
            ApiError::message(S::INTERNAL_SERVER_ERROR, "Model directory not set")
        }
        Refusal::NotAuthenticated => {
            ApiError::message(S::INTERNAL_SERVER_ERROR, "CivitAI authentication failed")
        }
        Refusal::NotFound => ApiError::message(S::NOT_FOUND, "Model not found"),
        Refusal::UnsupportedType(_) => ApiError::message(S::BAD_REQUEST, "Unsupported model type"),
        Refusal::NoPrimaryFile => ApiError::message(S::BAD_REQUEST, "Model has no primary file"),
        Refusal::BadFileName(_) => ApiError::message(S::BAD_REQUEST, "Invalid model file name"),
        Refusal::AlreadyDownloaded => ApiError::message(S::BAD_REQUEST, "Model already downloaded"),
        Refusal::Busy => ApiError::message(S::CONFLICT, "Model is already being downloaded"),
        Refusal::LowStorage { .. } => ApiError::new(
            S::INTERNAL_SERVER_ERROR,
            json!({"message": "Low storage space", "error": "LOW_STORAGE_SPACE"}),
        ),
        err @ (Refusal::Statvfs { .. } | Refusal::Stopped) => {
            tracing::error!(error = %crate::error_chain(&err), "model download not started");
            ApiError::message(S::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
    }
}

/// `GET /3papi/civitai/api-proxy/*`: CivitAI's status and JSON body; `500` text when it does
/// not answer.
#[utoipa::path(
    get,
    path = "/3papi/civitai/api-proxy/{*rest}",
    tag = "civitai",
    summary = "CivitAI's API, through easel",
    description = "`GET <civitai api>/<rest>` with the same query, easel's key and \
        `User-Agent: Navigator`; CivitAI's status and JSON body are relayed. No answer: `500` \
        text `Upstream API did not respond`; any other failure: `500` text `An error occurred`.",
    security(("bearer" = []), ("superuser" = [])),
    params(("rest" = String, Path, description = "The CivitAI API path, e.g. `models` or `models/4201`")),
    responses(
        (status = 200, description = "CivitAI's answer", body = Object),
        (status = "default", description = "CivitAI's status and JSON body, relayed", body = Object),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled", body = openapi::UserDisabled),
        (status = 500, description = "CivitAI did not answer, or failed", body = String, content_type = "text/html"),
    )
)]
pub(super) async fn api_proxy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    state.auth.authenticate(&headers, &state.accounts).await?;
    let text = |body: &'static str| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response()
    };
    Ok(
        match state.civitai.client.proxy(&rest, query.as_deref()).await {
            Ok(relayed) => (
                StatusCode::from_u16(relayed.status).unwrap_or(StatusCode::BAD_GATEWAY),
                [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
                relayed.body,
            )
                .into_response(),
            Err(err @ CivitAiError::Unreachable { .. }) => {
                tracing::warn!(error = %crate::error_chain(&err), "CivitAI proxy: no answer");
                text("Upstream API did not respond")
            }
            Err(err) => {
                tracing::warn!(error = %crate::error_chain(&err), "CivitAI proxy failed");
                text("An error occurred")
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_as_express_query_boolean_reads_them() {
        let q: HashMap<String, String> = [("a", "true"), ("b", "false"), ("c", ""), ("d", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert!(flag(&q, "a"));
        assert!(!flag(&q, "b"));
        assert!(!flag(&q, "c"));
        assert!(flag(&q, "d"));
        assert!(!flag(&q, "e"));
    }
}
