//! Pictures by job id (no auth, as Navigator: whoever knows the id may read):
//! `/api/images/:jobId` (a first `.png` is stripped), `/api/previews/:jobId` (the latest live
//! preview; any query such as Compass' `?step=` is ignored), `/api/images/:jobId/info`
//! (Forge's png-info shape, with `parameters.owner_id`), and `/embed/:jobId` (an Open Graph
//! page for Discord).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use super::{ApiError, AppState, openapi};

fn png(bytes: Vec<u8>) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("image/png"))],
        bytes,
    )
        .into_response()
}

/// A stored PNG, else `404 {"error": missing}`.
fn png_or(
    stored: Result<Option<Vec<u8>>, crate::jobs::JobError>,
    missing: &str,
) -> Result<Response, ApiError> {
    match stored {
        Ok(Some(bytes)) => Ok(png(bytes)),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            json!({"error": missing}),
        )),
        Err(err) => Err(ApiError::internal(err)),
    }
}

fn id_of(job_id: &str) -> String {
    job_id.replacen(".png", "", 1)
}

/// `GET /api/images/:jobId`: the finished picture.
#[utoipa::path(
    get,
    path = "/api/images/{job_id}",
    tag = "images",
    summary = "A finished picture",
    description = "The job's PNG. No authentication (whoever knows the id may read, as Navigator); \
        a first `.png` in the id is ignored (`/api/images/59feab77.png`).",
    params(("job_id" = String, Path, description = "The job id (8 hex digits), optionally with `.png`")),
    responses(
        (status = 200, description = "The picture", body = openapi::Png, content_type = "image/png"),
        (status = 404, description = "No such job, or not finished", body = openapi::ErrorBody,
            example = json!({"error": "Image not found"})),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn image(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    png_or(
        state.jobs.image_png(&id_of(&job_id)).await,
        "Image not found",
    )
}

/// `GET /api/previews/:jobId`: the latest live preview.
#[utoipa::path(
    get,
    path = "/api/previews/{job_id}",
    tag = "images",
    summary = "A running job's preview",
    description = "The latest live preview of a running job (`task-progress` events name it in \
        `progress_path`). No authentication; any query (Compass' `?step=` cache-buster) is ignored.",
    params(
        ("job_id" = String, Path, description = "The job id, optionally with `.png`"),
        ("step" = Option<String>, Query, description = "Ignored (a cache-buster)"),
    ),
    responses(
        (status = 200, description = "The preview", body = openapi::Png, content_type = "image/png"),
        (status = 404, description = "No preview", body = openapi::ErrorBody,
            example = json!({"error": "Preview not found"})),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn preview(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    png_or(
        state.jobs.preview_png(&id_of(&job_id)).await,
        "Preview not found",
    )
}

/// The png-info of a finished job: as stored with the picture, else from a Forge machine
/// (for pictures a ZeroMQ worker drew), else an empty one; `parameters.owner_id` is the
/// owner's id (Navigator's quirk of storing the whole row object there is not kept).
#[utoipa::path(
    get,
    path = "/api/images/{job_id}/info",
    tag = "images",
    summary = "A finished picture's parameters",
    description = "Forge's png-info of the picture (as stored with it, else read by a Forge \
        machine, else empty), with `parameters.owner_id` the owner's id. No authentication.",
    params(("job_id" = String, Path, description = "The job id, optionally with `.png`")),
    responses(
        (status = 200, description = "The png-info", body = openapi::PngInfo),
        (status = 404, description = "No such job, or not finished", body = openapi::ErrorBody,
            example = json!({"error": "Image not found"})),
        (status = 500, description = "The store or the Forge machine failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn info(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_of(&job_id);
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, json!({"error": "Image not found"}));
    let Some(row) = state.jobs.job(&id).await.map_err(ApiError::internal)? else {
        return Err(not_found());
    };
    let stored = state
        .jobs
        .image_info(&id)
        .await
        .map_err(ApiError::internal)?;
    let Some(stored) = stored else {
        return Err(not_found());
    };
    let mut info = match serde_json::from_str::<Value>(&stored) {
        Ok(info) if info.get("parameters").is_some_and(Value::is_object) => info,
        _ if state.offer.has_forge() => {
            let Some(bytes) = state
                .jobs
                .image_png(&id)
                .await
                .map_err(ApiError::internal)?
            else {
                return Err(not_found());
            };
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            match state.offer.png_info(&b64).await {
                Ok(Some(info)) => info,
                Ok(None) => json!({"info": "", "items": {}, "parameters": {}}),
                Err(err) => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({"error": err.to_string()}),
                    ));
                }
            }
        }
        _ => json!({"info": "", "items": {}, "parameters": {}}),
    };
    if let Some(object) = info.as_object_mut() {
        object.shift_remove("seed");
        if let Some(parameters) = object.get_mut("parameters").and_then(Value::as_object_mut) {
            parameters.insert("owner_id".into(), Value::String(row.owner_id.clone()));
        }
    }
    Ok(Json(info).into_response())
}

/// Escapes text for HTML attributes and content.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `GET /embed/:jobId`: an Open Graph page showing the picture (for Discord's embeds).
#[utoipa::path(
    get,
    path = "/embed/{job_id}",
    tag = "images",
    summary = "A picture's embed page",
    description = "An HTML page with Open Graph and `twitter:card` tags whose image is \
        `https://<Host>/api/images/<job_id>`, for Discord's link previews.",
    params(("job_id" = String, Path, description = "The job id, optionally with `.png`")),
    responses(
        (status = 200, description = "The page", body = String, content_type = "text/html"),
        (status = 404, description = "No such picture", body = openapi::MessageBody,
            example = json!({"message": "Job not found"})),
        (status = 500, description = "The store failed", body = openapi::MessageBody,
            example = json!({"message": "Internal Server Error"})),
    )
)]
pub(super) async fn embed(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let exists = state
        .jobs
        .image_png(&id_of(&job_id))
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "embed page failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"message": "Internal Server Error"}),
            )
        })?
        .is_some();
    if !exists {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            json!({"message": "Job not found"}),
        ));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let image = escape(&format!("https://{host}/api/images/{}", id_of(&job_id)));
    Ok(Html(format!(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n\
         <title>BitJourney Job</title>\n\
         <meta property=\"og:title\" content=\"BitJourney Job\">\n\
         <meta property=\"og:description\" content=\"Served by BitJourney Navigator\">\n\
         <meta property=\"og:image\" content=\"{image}\">\n\
         <meta name=\"twitter:card\" content=\"summary_large_image\">\n\
         <meta name=\"twitter:image\" content=\"{image}\">\n\
         </head>\n<body>\n<img src=\"{image}\" alt=\"BitJourney Job\">\n</body>\n</html>\n"
    ))
    .into_response())
}
