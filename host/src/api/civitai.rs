//! Navigator's model routes (`/api/models/loras`, `/api/models/loras/override/:hash`,
//! `/api/models/embeddings`) and its third-party routes (`/3papi`: the CivitAI key check,
//! downloads, the API proxy), answered by [`crate::civitai`]'s services.
//!
//! Unlike Navigator, a download answers `202` at once and runs in the background; clients
//! follow it through the socket.io events `model-download-progress`,
//! `model-download-finished` / `model-download-failed` and `models-refreshed`.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, extract::RawQuery};
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::accounts::role::{ARCHITECT, ARTIFICER};
use crate::civitai::{CivitAiError, LocalOverride, Refusal};

/// The routes under `/api`.
pub(super) fn model_routes() -> Router<AppState> {
    Router::new()
        .route("/models/loras", get(loras))
        .route("/models/loras/override/{hash}", post(set_override))
        .route("/models/embeddings", get(embeddings))
}

/// The routes under `/3papi`.
pub(super) fn third_party_routes() -> Router<AppState> {
    Router::new()
        .route("/test_civitai", get(test_civitai))
        .route("/civitai/downloads_enabled", get(downloads_enabled))
        .route("/civitai/download/{model_version_id}", get(download))
        .route("/civitai/api-proxy/{*rest}", get(api_proxy))
}

/// express-query-boolean's reading: `false` and an empty value are false, any other value
/// true; absent is false.
fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query
        .get(name)
        .is_some_and(|v| !v.is_empty() && v != "false")
}

/// `GET /api/models/loras?force_update_metadata&forge_only`.
async fn loras(
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
async fn set_override(
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
async fn embeddings(State(state): State<AppState>) -> Response {
    match state.offer.embeddings().await {
        Ok(names) => Json(&*names).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": err.to_string()})),
        )
            .into_response(),
    }
}

/// `GET /3papi/test_civitai`.
async fn test_civitai(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"isAuthenticated": state.civitai.client.authenticated().await}))
}

/// `GET /3papi/civitai/downloads_enabled`.
async fn downloads_enabled(
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

fn message(status: StatusCode, text: &str) -> ApiError {
    ApiError::new(status, json!({"message": text}))
}

/// `GET /3papi/civitai/download/:modelVersionId` (role ≥ 2): `202` with the download, which
/// then runs in the background.
async fn download(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(model_version_id): Path<String>,
) -> Result<Response, ApiError> {
    let user = state.auth.authenticate(&headers, &state.accounts).await?;
    if user.role < ARTIFICER {
        return Err(message(
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
        Refusal::NoModelDir => message(S::INTERNAL_SERVER_ERROR, "Model directory not set"),
        Refusal::NotAuthenticated => {
            message(S::INTERNAL_SERVER_ERROR, "CivitAI authentication failed")
        }
        Refusal::NotFound => message(S::NOT_FOUND, "Model not found"),
        Refusal::UnsupportedType(_) => message(S::BAD_REQUEST, "Unsupported model type"),
        Refusal::NoPrimaryFile => message(S::BAD_REQUEST, "Model has no primary file"),
        Refusal::BadFileName(_) => message(S::BAD_REQUEST, "Invalid model file name"),
        Refusal::AlreadyDownloaded => message(S::BAD_REQUEST, "Model already downloaded"),
        Refusal::Busy => message(S::CONFLICT, "Model is already being downloaded"),
        Refusal::LowStorage { .. } => ApiError::new(
            S::INTERNAL_SERVER_ERROR,
            json!({"message": "Low storage space", "error": "LOW_STORAGE_SPACE"}),
        ),
        err @ (Refusal::Statvfs { .. } | Refusal::Stopped) => {
            tracing::error!(error = %crate::error_chain(&err), "model download not started");
            message(S::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
    }
}

/// `GET /3papi/civitai/api-proxy/*`: CivitAI's status and JSON body; `500` text when it does
/// not answer.
async fn api_proxy(
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
