//! Navigator's `/api/user` routes: the caller's jobs (a paged gallery), one image's meta data,
//! category and deletion, and the caller's categories. Everything is the caller's own: another
//! user's image is `403` where Navigator says so and never shown or changed, an unknown one is
//! `404`. Jobs are written through the intake, categories through the accounts service.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, AppState, User, openapi};
use crate::accounts::AccountError;

/// Most jobs one page may hold.
const MAX_LIMIT: i64 = 1000;

/// `400 {"message": …}` (this router's error shape, as Navigator's).
fn bad(message: &str) -> ApiError {
    ApiError::message(StatusCode::BAD_REQUEST, message)
}

fn forbidden(message: &str) -> ApiError {
    ApiError::message(StatusCode::FORBIDDEN, message)
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

async fn caller(state: &AppState, headers: &HeaderMap) -> Result<User, ApiError> {
    state.auth.authenticate(headers, &state.accounts).await
}

/// A whole positive number from the query, or `default` when absent.
fn positive(query: &HashMap<String, String>, key: &str, default: i64) -> Result<i64, ApiError> {
    match query.get(key).map(|v| v.trim()) {
        None | Some("") => Ok(default),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| bad(&format!("{key} must be a whole number of at least 1"))),
    }
}

/// `GET /api/user/jobs?page&limit&category_id`.
#[utoipa::path(
    get,
    path = "/api/user/jobs",
    tag = "user",
    summary = "The caller's gallery",
    description = "One page of the caller's jobs, newest first, unfinished and failed ones \
        included; each image is read from `/api/images/{id}`.",
    security(("bearer" = []), ("superuser" = [])),
    params(
        ("page" = Option<i64>, Query, minimum = 1, description = "Page number, from 1 (default 1)"),
        ("limit" = Option<i64>, Query, minimum = 1, description = "Jobs per page (default 10, at most 1000)"),
        ("category_id" = Option<String>, Query, description = "Only this category's jobs (when a number other than 0)"),
    ),
    responses(
        (status = 200, description = "The page", body = openapi::JobsPage,
            example = json!({"count": 12, "totalPages": 2, "currentPage": 1, "previousPage": null, "nextPage": 2,
                "images": [{"id": "59feab77", "category_id": 3}]})),
        (status = 400, description = "`page` or `limit` is not a whole number of at least 1", body = openapi::MessageBody,
            example = json!({"message": "page must be a whole number of at least 1"})),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled", body = openapi::UserDisabled),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn jobs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let user = caller(&state, &headers).await?;
    let page = positive(&query, "page", 1)?;
    let limit = positive(&query, "limit", 10)?.min(MAX_LIMIT);
    // Navigator filters only on a number other than 0.
    let category = query
        .get("category_id")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|c| *c != 0);
    let offset = (page - 1).saturating_mul(limit);
    let (count, rows) = state
        .jobs
        .owner_jobs(&user.discord_id, category, limit, offset)
        .await
        .map_err(ApiError::internal)?;
    let total_pages = (count + limit - 1) / limit;
    let images: Vec<Value> = rows
        .into_iter()
        .map(|(id, category_id)| json!({"id": id, "category_id": category_id}))
        .collect();
    Ok(Json(json!({
        "count": count,
        "totalPages": total_pages,
        "currentPage": page,
        "previousPage": (page > 1).then_some(page - 1),
        "nextPage": (page < total_pages).then_some(page + 1),
        "images": images,
    })))
}

/// `DELETE /api/user/image/:id`: always `204` (nothing happens to another user's image).
#[utoipa::path(
    delete,
    path = "/api/user/image/{image_id}",
    tag = "user",
    summary = "Delete one of the caller's images",
    description = "Deletes the job and its picture if the caller owns it; `204` either way (another \
        user's image is left as it is).",
    security(("bearer" = []), ("superuser" = [])),
    params(("image_id" = String, Path, description = "The job id")),
    responses(
        (status = 204, description = "Deleted, or nothing to delete"),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled", body = openapi::UserDisabled),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn delete_image(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let user = caller(&state, &headers).await?;
    state
        .intake
        .delete(&id, &user.discord_id)
        .await
        .map_err(ApiError::internal)?;
    Ok(no_content())
}

/// `GET /api/user/image/:id/meta`.
#[utoipa::path(
    get,
    path = "/api/user/image/{image_id}/meta",
    tag = "user",
    summary = "One of the caller's images: its meta data",
    description = "Category, creation time, Discord message and owner of one of the caller's jobs.",
    security(("bearer" = []), ("superuser" = [])),
    params(("image_id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "The meta data", body = openapi::ImageMeta,
            example = json!({"category_id": null, "created_at": "2024-02-29T12:34:56.789Z", "message_id": null, "owner_id": "123456789012345678"})),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or the image is another user's", body = openapi::ForbiddenMessage,
            example = json!({"message": "You do not own this image"})),
        (status = 404, description = "No such image", body = openapi::MessageBody,
            example = json!({"message": "Image not found"})),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn image_meta(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = caller(&state, &headers).await?;
    let meta = state.jobs.meta(&id).await.map_err(ApiError::internal)?;
    let Some(meta) = meta else {
        return Err(ApiError::message(StatusCode::NOT_FOUND, "Image not found"));
    };
    if meta.owner_id != user.discord_id {
        return Err(forbidden("You do not own this image"));
    }
    Ok(Json(json!({
        "category_id": meta.category_id,
        "created_at": iso_time(meta.created_at),
        "message_id": meta.message_id,
        "owner_id": meta.owner_id,
    })))
}

/// Unix ms as the ISO 8601 UTC text a MariaDB `DATETIME` becomes in Navigator's JSON.
fn iso_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `PUT /api/user/image/:id/category {"categoryId"}` (`0` clears it).
#[utoipa::path(
    put,
    path = "/api/user/image/{image_id}/category",
    tag = "user",
    summary = "Move one of the caller's images to a category",
    description = "Sets the category of one of the caller's jobs to one of the caller's categories \
        (`0` clears it).",
    security(("bearer" = []), ("superuser" = [])),
    params(("image_id" = String, Path, description = "The job id")),
    request_body(content = openapi::ImageCategoryRequest, description = "The category"),
    responses(
        (status = 204, description = "Moved"),
        (status = 400, description = "No or a non-numeric `categoryId`", body = openapi::MessageBody,
            examples(
                ("Missing" = (value = json!({"message": "Missing required fields"}))),
                ("Not a number" = (value = json!({"message": "Category ID must be a number"}))),
            )),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or the image or the category is not the caller's", body = openapi::ForbiddenMessage,
            examples(
                ("Image" = (value = json!({"message": "Image does not exist or you do not own it"}))),
                ("Category" = (value = json!({"message": "Category does not exist or you do not own it"}))),
            )),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn set_image_category(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Response, ApiError> {
    let user = caller(&state, &headers).await?;
    let category = body
        .as_ref()
        .and_then(|Json(body)| body.get("categoryId"))
        .filter(|v| !v.is_null());
    let Some(category) = category else {
        return Err(bad("Missing required fields"));
    };
    let category = match category {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
    .ok_or_else(|| bad("Category ID must be a number"))?;
    let owner = &user.discord_id;
    let owns_image = state
        .jobs
        .meta(&id)
        .await
        .map_err(ApiError::internal)?
        .is_some_and(|meta| &meta.owner_id == owner);
    if !owns_image {
        return Err(forbidden("Image does not exist or you do not own it"));
    }
    if category != 0
        && !state
            .accounts
            .category_owned_by(category, owner)
            .await
            .map_err(ApiError::internal)?
    {
        return Err(forbidden("Category does not exist or you do not own it"));
    }
    let changed = state
        .intake
        .set_category(&id, owner, (category != 0).then_some(category))
        .await
        .map_err(ApiError::internal)?;
    if !changed {
        return Err(forbidden("Image does not exist or you do not own it"));
    }
    Ok(no_content())
}

/// `GET /api/user/categories`.
#[utoipa::path(
    get,
    path = "/api/user/categories",
    tag = "user",
    summary = "The caller's categories",
    description = "Every category the caller owns.",
    security(("bearer" = []), ("superuser" = [])),
    responses(
        (status = 200, description = "The categories", body = Vec<openapi::Category>,
            example = json!([{"id": 3, "owner_id": "123456789012345678", "name": "Foxes"}])),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled", body = openapi::UserDisabled),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn categories(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let user = caller(&state, &headers).await?;
    let categories = state
        .accounts
        .categories(&user.discord_id)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!(categories)))
}

/// The `name` of a category body (`400` as Navigator when missing or empty).
fn category_name(body: Option<&Json<Value>>) -> Result<String, ApiError> {
    body.and_then(|Json(body)| body.get("name"))
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| bad("missing required fields"))
}

fn category_error(err: AccountError) -> ApiError {
    match err {
        AccountError::NameTooLong => bad("Category name is too long"),
        other => ApiError::internal(other),
    }
}

/// A category id from the path (`400` unless it is a number).
fn category_id(text: &str) -> Result<i64, ApiError> {
    text.trim()
        .parse()
        .map_err(|_| bad("Category ID must be a number"))
}

/// `POST /api/user/category {"name"}` → `{"id"}`.
#[utoipa::path(
    post,
    path = "/api/user/category",
    tag = "user",
    summary = "Create a category",
    description = "A new category of the caller's.",
    security(("bearer" = []), ("superuser" = [])),
    request_body(content = openapi::CategoryName, description = "Its name"),
    responses(
        (status = 200, description = "Its id", body = openapi::Created, example = json!({"id": 3})),
        (status = 400, description = "No name, or too long a one", body = openapi::MessageBody,
            examples(
                ("Missing" = (value = json!({"message": "missing required fields"}))),
                ("Too long" = (value = json!({"message": "Category name is too long"}))),
            )),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled", body = openapi::UserDisabled),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn create_category(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let user = caller(&state, &headers).await?;
    let name = category_name(body.as_ref())?;
    let id = state
        .accounts
        .create_category(&name, &user.discord_id)
        .await
        .map_err(category_error)?;
    Ok(Json(json!({"id": id})))
}

/// `PATCH /api/user/category/:id {"name"}`: `204`; another user's category stays as it is.
#[utoipa::path(
    patch,
    path = "/api/user/category/{category_id}",
    tag = "user",
    summary = "Rename a category",
    description = "Renames one of the caller's categories; `204` either way (another user's \
        category is left as it is).",
    security(("bearer" = []), ("superuser" = [])),
    params(("category_id" = String, Path, description = "The category id (a number)")),
    request_body(content = openapi::CategoryName, description = "Its new name"),
    responses(
        (status = 204, description = "Renamed, or nothing to rename"),
        (status = 400, description = "A non-numeric id, no name, or too long a one", body = openapi::MessageBody,
            examples(
                ("Not a number" = (value = json!({"message": "Category ID must be a number"}))),
                ("Missing" = (value = json!({"message": "missing required fields"}))),
                ("Too long" = (value = json!({"message": "Category name is too long"}))),
            )),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled", body = openapi::UserDisabled),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn rename_category(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Response, ApiError> {
    let user = caller(&state, &headers).await?;
    let id = category_id(&id)?;
    let name = category_name(body.as_ref())?;
    state
        .accounts
        .rename_category(id, &user.discord_id, &name)
        .await
        .map_err(category_error)?;
    Ok(no_content())
}

/// `DELETE /api/user/category/:id`: `204`; its images stay, without a category.
#[utoipa::path(
    delete,
    path = "/api/user/category/{category_id}",
    tag = "user",
    summary = "Delete a category",
    description = "Deletes one of the caller's categories; its images stay, without a category. \
        `204` either way.",
    security(("bearer" = []), ("superuser" = [])),
    params(("category_id" = String, Path, description = "The category id (a number)")),
    responses(
        (status = 204, description = "Deleted, or nothing to delete"),
        (status = 400, description = "A non-numeric id", body = openapi::MessageBody,
            example = json!({"message": "Category ID must be a number"})),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled", body = openapi::UserDisabled),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn delete_category(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let user = caller(&state, &headers).await?;
    let id = category_id(&id)?;
    state
        .accounts
        .delete_category(id, &user.discord_id)
        .await
        .map_err(ApiError::internal)?;
    Ok(no_content())
}

#[cfg(test)]
mod tests {
    use super::iso_time;

    #[test]
    fn times_read_as_mariadb_datetimes_in_json() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_time(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
        assert_eq!(iso_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
