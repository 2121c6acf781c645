//! What the backends offer, as Navigator's list routes answer it: `/api/models` (with
//! `refresh=true` → `models-refreshed` to every socket), `/api/samplers` (the first 24 unless
//! `all`), `/api/upscalers` (without "None"), `/api/schedulers`, `/api/modules`. With several
//! Forge machines the lists are their union; with none, the simulated backend's catalog.
//! Error statuses are Navigator's: 200 with `{"error"}` for models and samplers, 500 for the
//! others.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{AppState, openapi};
use crate::forge::ListKind;

/// Samplers shown unless `all` is asked for (Discord autocomplete takes 25).
const SAMPLERS_SHOWN: usize = 24;

/// `{"error": err}` with `status`: how the backend lists report a backend's failure.
pub(super) fn error(status: StatusCode, err: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": err.to_string()}))).into_response()
}

/// `GET /api/models[?refresh=true]`: the checkpoints with their catalog rows.
#[utoipa::path(
    get,
    path = "/api/models",
    tag = "lists",
    summary = "Checkpoints",
    description = "The checkpoints the backends offer (Forge's `/sd-models`, the union over the \
        Forge machines; without any, the simulated backend's), each merged with easel's catalog \
        row of the same `model_name` (`known`). `refresh=true` first rescans the Forge machines \
        and sends `models-refreshed` to every socket. A failure is answered with status 200 and \
        `{\"error\"}`, as Navigator.",
    params(("refresh" = Option<String>, Query, description = "`true`: rescan the checkpoints first and emit `models-refreshed`")),
    responses((status = 200, description = "The checkpoints, or `{\"error\"}`", body = openapi::ModelsAnswer))
)]
pub(super) async fn models(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if query.get("refresh").is_some_and(|v| v == "true") {
        if let Err(err) = state.offer.refresh_models().await {
            return error(StatusCode::OK, err);
        }
        state
            .realtime
            .to_all(
                "models-refreshed",
                &json!({"message": "Models have been refreshed!"}),
            )
            .await;
    }
    let list = match state.offer.list(ListKind::Models).await {
        Ok(list) => list,
        Err(err) => return error(StatusCode::OK, err),
    };
    let known = match state.catalog.models().await {
        Ok(known) => known,
        Err(err) => return error(StatusCode::OK, err),
    };
    let models: Vec<Value> = list
        .iter()
        .map(|model| {
            let mut model = model.clone();
            let name = model
                .get("model_name")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let row = name.and_then(|n| known.iter().find(|k| k.name == n));
            if let Some(object) = model.as_object_mut() {
                object.insert("known".into(), Value::Bool(row.is_some()));
                if let Some(row) = row {
                    object.insert("id".into(), json!(row.id));
                    object.insert("model_name".into(), json!(row.name));
                    object.insert("friendly_name".into(), json!(row.friendly_name));
                    object.insert("is_restricted".into(), json!(row.restricted));
                }
            }
            model
        })
        .collect();
    Json(json!({"models": models})).into_response()
}

/// `GET /api/samplers[?all]`: the first 24 samplers, or all.
#[utoipa::path(
    get,
    path = "/api/samplers",
    tag = "lists",
    summary = "Samplers",
    description = "Forge's `/samplers`: the first 24 (Discord's autocomplete shows 25) unless \
        `all` is present. A failure is answered with status 200 and `{\"error\"}`, as Navigator.",
    params(("all" = Option<String>, Query, description = "Present (any value, even empty): every sampler")),
    responses((status = 200, description = "The samplers, or `{\"error\"}`", body = openapi::SamplersAnswer))
)]
pub(super) async fn samplers(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match state.offer.list(ListKind::Samplers).await {
        Ok(list) => {
            let shown = if query.contains_key("all") {
                list.len()
            } else {
                SAMPLERS_SHOWN
            };
            Json(list.iter().take(shown).collect::<Vec<_>>()).into_response()
        }
        Err(err) => error(StatusCode::OK, err),
    }
}

/// `GET /api/upscalers`: Forge's upscalers but `None`.
#[utoipa::path(
    get,
    path = "/api/upscalers",
    tag = "lists",
    summary = "Upscalers",
    description = "Forge's `/upscalers` without the entry named `None`.",
    responses(
        (status = 200, description = "The upscalers", body = Vec<openapi::Upscaler>),
        (status = 500, description = "No backend answered", body = openapi::ErrorBody),
    )
)]
pub(super) async fn upscalers(State(state): State<AppState>) -> Response {
    match state.offer.list(ListKind::Upscalers).await {
        Ok(list) => Json(
            list.iter()
                .filter(|u| u.get("name").and_then(Value::as_str) != Some("None"))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}

/// `GET /api/schedulers`: Forge's schedulers.
#[utoipa::path(
    get,
    path = "/api/schedulers",
    tag = "lists",
    summary = "Schedulers",
    description = "Forge's `/schedulers`, passed through.",
    responses(
        (status = 200, description = "The schedulers", body = Vec<openapi::Scheduler>),
        (status = 500, description = "No backend answered", body = openapi::ErrorBody),
    )
)]
pub(super) async fn schedulers(State(state): State<AppState>) -> Response {
    passthrough(&state, ListKind::Schedulers).await
}

/// `GET /api/modules`: Forge's modules (VAE, text encoders).
#[utoipa::path(
    get,
    path = "/api/modules",
    tag = "lists",
    summary = "Modules",
    description = "Forge's `/sd-modules` (VAE and text encoders, for `modules`), passed through.",
    responses(
        (status = 200, description = "The modules", body = Vec<openapi::Module>),
        (status = 500, description = "No backend answered", body = openapi::ErrorBody),
    )
)]
pub(super) async fn modules(State(state): State<AppState>) -> Response {
    passthrough(&state, ListKind::Modules).await
}

async fn passthrough(state: &AppState, kind: ListKind) -> Response {
    match state.offer.list(kind).await {
        Ok(list) => Json(&*list).into_response(),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}
