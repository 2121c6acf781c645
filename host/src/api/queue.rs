//! Navigator's queue routes: `POST /api/queue/user/txt2img`, `/api/queue/user/img2img`,
//! `/api/queue/user/txt2img/upscale-hrf/:jobId`, `/api/queue/interrupt/:jobId`, and the
//! legacy bot routes `/api/queue/txt2img` / `/api/queue/img2img` (off unless
//! `[api] allow_legacy_bot_endpoints`). Navigator's normalisation (JavaScript `||` defaults),
//! its queue-time name resolution, its validation messages and its response objects, in its
//! key order. Fixed quirks: img2img's argument order, interrupt checks ownership and removes
//! the job asked for.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value, json};

use super::realtime::Followed;
use super::{ApiError, AppState, openapi, origin};
use crate::accounts::role::APPRENTICE;
use crate::forge::body;
use crate::intake::{Caller, LimitExceeded, Limits, Refusal};
use crate::jobs::{Origin, Task, Txt2Img};
use crate::store::JobStatus;

/// The job object Navigator answers with (and later sends in socket events, without
/// `prompt`, `negative_prompt`, `owner_id`, `width`, `height` and `queue_size`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"type": "txt2img", "model_name": "sdxl_base", "prompt": "Puppies",
    "negative_prompt": "blurry", "owner_id": "123456789012345678", "job_id": "59feab77",
    "width": 1024, "height": 1024, "steps": 30, "hrf_steps": 30, "seed": -1, "cfg_scale": 7,
    "distilled_cfg": 3.5, "sampler_name": "DPM++ 2M", "scheduler_name": "automatic",
    "denoising_strength": 0, "force_hr_fix": false, "queue_size": 1, "task_type": "txt2img",
    "status": "queued", "origin": "203.0.113.9", "categoryId": 3, "image_enhancements": false}))]
struct NavigatorJob<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    model_name: &'a str,
    prompt: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    negative_prompt: Option<&'a str>,
    owner_id: &'a str,
    job_id: &'a str,
    width: u32,
    height: u32,
    steps: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    hrf_steps: Option<u32>,
    seed: i64,
    #[serde(serialize_with = "js_number")]
    cfg_scale: f64,
    #[serde(serialize_with = "js_number")]
    distilled_cfg: f64,
    sampler_name: &'a str,
    scheduler_name: &'a str,
    #[serde(serialize_with = "js_number")]
    denoising_strength: f64,
    force_hr_fix: bool,
    queue_size: i64,
    task_type: &'static str,
    status: &'static str,
    origin: &'a str,
    #[serde(rename = "categoryId", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    category_id: Option<i64>,
    image_enhancements: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    subseed: Option<i64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "js_number_opt"
    )]
    #[schema(nullable = false)]
    subseed_strength: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    upscaler_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    modules: Option<&'a [String]>,
}

/// Numbers as JavaScript prints them: `7`, not `7.0`.
fn js_number<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        serializer.serialize_i64(*value as i64)
    } else {
        serializer.serialize_f64(*value)
    }
}

fn js_number_opt<S: Serializer>(value: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => js_number(v, serializer),
        None => serializer.serialize_none(),
    }
}

/// JavaScript truthiness of a JSON value.
fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(_) | Value::Object(_)) => true,
    }
}

/// `body[key] || default` for numbers: falsy values fall back; numbers and numeric strings are
/// taken; anything else is a clear 400.
fn number(body: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    let value = body.get(key);
    if !truthy(value) {
        return Ok(None);
    }
    let parsed = match value {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match parsed {
        Some(n) if n.is_finite() => Ok(Some(n)),
        _ => Err(ApiError::bad_request(format!(
            "Invalid value for {key}: expected a number"
        ))),
    }
}

/// A whole number in `min..=max`.
fn whole(
    body: &Map<String, Value>,
    key: &str,
    min: f64,
    max: f64,
) -> Result<Option<i64>, ApiError> {
    match number(body, key)? {
        None => Ok(None),
        Some(n) if n.fract() == 0.0 && (min..=max).contains(&n) => Ok(Some(n as i64)),
        Some(_) => Err(ApiError::bad_request(format!(
            "Invalid value for {key}: expected a whole number between {min} and {max}"
        ))),
    }
}

/// `body[key] || default` for strings.
fn text<'a>(body: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(key) {
        v if !truthy(v) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        _ => Err(ApiError::bad_request(format!(
            "Invalid value for {key}: expected a string"
        ))),
    }
}

/// Largest side accepted, whatever the pixel limit (keeps `width * height` meaningful).
const MAX_SIDE: f64 = Limits::MAX_SIDE as f64;
/// Most sampling steps accepted.
const MAX_STEPS: f64 = Limits::MAX_STEPS as f64;

/// `width` and `height` (`default` each when not given), within the pixel limit.
fn size(body: &Map<String, Value>, default: i64, pixel_limit: u64) -> Result<(u32, u32), ApiError> {
    let width = whole(body, "width", 1.0, MAX_SIDE)?.unwrap_or(default) as u32;
    let height = whole(body, "height", 1.0, MAX_SIDE)?.unwrap_or(default) as u32;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > pixel_limit {
        return Err(ApiError::bad_request(
            LimitExceeded::Pixels {
                limit: pixel_limit,
                asked: pixels,
            }
            .to_string(),
        ));
    }
    Ok((width, height))
}

/// Navigator's normalisation of a txt2img body.
fn normalise(body: &Map<String, Value>, pixel_limit: u64) -> Result<Txt2Img, ApiError> {
    let (Some(model_name), Some(prompt)) = (text(body, "model_name")?, text(body, "prompt")?)
    else {
        return Err(ApiError::bad_request("Missing required parameters"));
    };
    let (width, height) = size(body, 512, pixel_limit)?;
    let raw_steps = whole(body, "steps", 1.0, MAX_STEPS)?.map(|s| s as u32);
    let steps = raw_steps.unwrap_or(50);
    let hrf_steps = whole(body, "hrf_steps", 1.0, MAX_STEPS)?
        .map(|s| s as u32)
        .or(raw_steps);
    let (subseed, subseed_strength) = match (
        whole(body, "subseed", -1.0, 9.0e15)?,
        number(body, "subseed_strength")?,
    ) {
        (Some(seed), Some(strength)) => (Some(seed), Some(strength)),
        _ => (None, None),
    };
    let modules = match body.get("modules") {
        Some(Value::Array(items)) if !items.is_empty() => Some(
            items
                .iter()
                .map(|item| {
                    item.as_str().map(str::to_owned).ok_or_else(|| {
                        ApiError::bad_request("Invalid value for modules: expected strings")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None | Some(Value::Null | Value::Array(_)) => None,
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid value for modules: expected a list of strings",
            ));
        }
    };
    let denoising_strength = number(body, "denoising_strength")?.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&denoising_strength) {
        return Err(ApiError::bad_request(
            "Denoising strength must be between 0.0 and 1.0",
        ));
    }
    Ok(Txt2Img {
        model_name: model_name.to_owned(),
        prompt: prompt.to_owned(),
        negative_prompt: match body.get("negative_prompt") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "Invalid value for negative_prompt: expected a string",
                ));
            }
        },
        width,
        height,
        steps,
        hrf_steps,
        seed: whole(body, "seed", -1.0, 9.0e15)?.unwrap_or(-1),
        cfg_scale: number(body, "cfg_scale")?.unwrap_or(7.0),
        distilled_cfg: number(body, "distilled_cfg")?.unwrap_or(3.5),
        sampler_name: text(body, "sampler_name")?.unwrap_or("DPM++ 2M").to_owned(),
        scheduler_name: text(body, "scheduler_name")?
            .unwrap_or("automatic")
            .to_owned(),
        denoising_strength,
        force_hr_fix: truthy(body.get("force_hr_fix")),
        subseed,
        subseed_strength,
        upscaler_name: text(body, "upscaler_name")?.map(str::to_owned),
        image_enhancements: truthy(body.get("image_enhancements")),
        modules,
        category_id: whole(body, "categoryId", 0.0, 9.0e15)?,
        ..Txt2Img::default()
    })
}

/// The JSON object of a request body (an empty body is an empty object).
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let body = body.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            json!({"error": format!("Invalid request body: {}", rejection.body_text())}),
        )
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("Request body must be a JSON object")),
        Err(err) => Err(ApiError::bad_request(format!("Invalid JSON: {err}"))),
    }
}

/// Who queues: the authenticated user, or (legacy bot routes, when enabled) the body's
/// `owner_id` with the default role.
async fn queuer(
    state: &AppState,
    headers: &HeaderMap,
    body: &Map<String, Value>,
    legacy: Option<&str>,
) -> Result<(String, i64), ApiError> {
    let Some(instead) = legacy else {
        let user = state.auth.authenticate(headers, &state.accounts).await?;
        return Ok((user.discord_id, user.role));
    };
    if !state.allow_legacy {
        return Err(ApiError::bad_request(format!(
            "This endpoint is not enabled. Please use {instead} instead."
        )));
    }
    match body.get("owner_id") {
        Some(Value::String(id)) if !id.is_empty() => Ok((id.clone(), APPRENTICE)),
        Some(Value::Number(id)) => Ok((id.to_string(), APPRENTICE)),
        _ => Err(ApiError::bad_request("Missing authentication data")),
    }
}

/// `403` unless `owner` owns the category.
async fn check_category(
    state: &AppState,
    category: Option<i64>,
    owner: &str,
) -> Result<(), ApiError> {
    let Some(category) = category else {
        return Ok(());
    };
    let owned = state
        .accounts
        .category_owned_by(category, owner)
        .await
        .map_err(ApiError::internal)?;
    if owned {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            json!({"error": "Category does not exist or you do not own it"}),
        ))
    }
}

/// `POST /api/queue/user/txt2img`.
#[utoipa::path(
    post,
    path = "/api/queue/user/txt2img",
    tag = "queue",
    summary = "Queue a txt2img job",
    description = "Queues a text-to-image job for the caller. Navigator's JavaScript `||` \
        defaults apply (a missing, null, 0, empty or false value takes the default); names are \
        resolved against what the backends offer when the job is queued; the access and \
        model-policy plugins and the server's limits then admit it.",
    security(("bearer" = []), ("superuser" = [])),
    request_body(content = openapi::Txt2ImgRequest, description = "The request"),
    responses(
        (status = 200, description = "Queued: the job object (its events follow on socket.io)", body = NavigatorJob),
        (status = 400, description = "A missing or invalid field, a limit, or a policy refusal", body = openapi::ErrorBody,
            examples(
                ("Missing" = (value = json!({"error": "Missing required parameters"}))),
                ("Pixels" = (value = json!({"error": "The total value of (Width * Height) must not exceed 3686400"}))),
                ("Invalid" = (value = json!({"error": "Invalid value for steps: expected a number"}))),
            )),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, the category is not theirs, or the access plugin refuses", body = openapi::Forbidden,
            examples(
                ("Category" = (value = json!({"error": "Category does not exist or you do not own it"}))),
                ("Access" = (value = json!({"error": "You are not allowed to queue jobs."}))),
            )),
        (status = 413, description = "The body is over 50 MB", body = openapi::ErrorBody),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn txt2img(
    state: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    queue::<false, false>(state, peer, headers, body).await
}

/// `POST /api/queue/user/img2img`.
#[utoipa::path(
    post,
    path = "/api/queue/user/img2img",
    tag = "queue",
    summary = "Queue an img2img job",
    description = "Queues an image-to-image (with a mask: inpainting) job for the caller; `init_image` \
        `NAVIGATOR_<job_id>` starts from a stored picture (500 when there is none). \
        Navigator's JavaScript `||` defaults apply; names are resolved against what the \
        backends offer; the access and model-policy plugins and the server's limits admit it.",
    security(("bearer" = []), ("superuser" = [])),
    request_body(content = openapi::Img2ImgRequest, description = "The request"),
    responses(
        (status = 200, description = "Queued: the job object (its events follow on socket.io)", body = openapi::Img2ImgJob),
        (status = 400, description = "A missing or invalid field, a limit, or a policy refusal", body = openapi::ErrorBody,
            examples(
                ("Missing" = (value = json!({"error": "Missing required parameters"}))),
                ("Denoising" = (value = json!({"error": "Denoising strength must be between 0.0 and 1.0"}))),
            )),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, the category is not theirs, or the access plugin refuses", body = openapi::Forbidden,
            examples(
                ("Category" = (value = json!({"error": "Category does not exist or you do not own it"}))),
                ("Access" = (value = json!({"error": "You are not allowed to queue jobs."}))),
            )),
        (status = 413, description = "The body is over 50 MB", body = openapi::ErrorBody),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn img2img(
    state: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    queue::<true, false>(state, peer, headers, body).await
}

/// `POST /api/queue/txt2img`: the legacy bot route.
#[utoipa::path(
    post,
    path = "/api/queue/txt2img",
    tag = "queue",
    summary = "Queue a txt2img job for a bot (legacy)",
    description = "Navigator's unauthenticated bot route: the job is the body's `owner_id`'s (role 1). Off \
        unless `[api] allow_legacy_bot_endpoints`. Otherwise as the user route: \
        Navigator's `||` defaults, name resolution, the plugins and the limits.",
    request_body(content = openapi::LegacyTxt2ImgRequest, description = "The request"),
    responses(
        (status = 200, description = "Queued: the job object (its events follow on socket.io)", body = NavigatorJob),
        (status = 400, description = "The route is off, no `owner_id`, a missing or invalid field, a limit, or a policy refusal", body = openapi::ErrorBody,
            examples(
                ("Off" = (value = json!({"error": "This endpoint is not enabled. Please use /api/queue/user/txt2img instead."}))),
                ("No owner" = (value = json!({"error": "Missing authentication data"}))),
                ("Missing" = (value = json!({"error": "Missing required parameters"}))),
            )),
        (status = 403, description = "The category is not the owner's, or the access plugin refuses", body = openapi::ErrorBody,
            examples(
                ("Category" = (value = json!({"error": "Category does not exist or you do not own it"}))),
                ("Access" = (value = json!({"error": "You are not allowed to queue jobs."}))),
            )),
        (status = 413, description = "The body is over 50 MB", body = openapi::ErrorBody),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn legacy_txt2img(
    state: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    queue::<false, true>(state, peer, headers, body).await
}

/// `POST /api/queue/img2img`: the legacy bot route.
#[utoipa::path(
    post,
    path = "/api/queue/img2img",
    tag = "queue",
    summary = "Queue an img2img job for a bot (legacy)",
    description = "Navigator's unauthenticated bot route: the job is the body's `owner_id`'s (role 1). Off \
        unless `[api] allow_legacy_bot_endpoints`. Otherwise as the user route: \
        Navigator's `||` defaults, name resolution, the plugins and the limits.",
    request_body(content = openapi::LegacyImg2ImgRequest, description = "The request"),
    responses(
        (status = 200, description = "Queued: the job object (its events follow on socket.io)", body = openapi::Img2ImgJob),
        (status = 400, description = "The route is off, no `owner_id`, a missing or invalid field, a limit, or a policy refusal", body = openapi::ErrorBody,
            examples(
                ("Off" = (value = json!({"error": "This endpoint is not enabled. Please use /api/queue/user/img2img instead."}))),
                ("No owner" = (value = json!({"error": "Missing authentication data"}))),
                ("Missing" = (value = json!({"error": "Missing required parameters"}))),
            )),
        (status = 403, description = "The category is not the owner's, or the access plugin refuses", body = openapi::ErrorBody,
            examples(
                ("Category" = (value = json!({"error": "Category does not exist or you do not own it"}))),
                ("Access" = (value = json!({"error": "You are not allowed to queue jobs."}))),
            )),
        (status = 413, description = "The body is over 50 MB", body = openapi::ErrorBody),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn legacy_img2img(
    state: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    queue::<true, true>(state, peer, headers, body).await
}

/// `POST /api/queue/user/txt2img` (`IMG2IMG`: `/img2img`); `LEGACY`: the unauthenticated
/// bot route `/api/queue/txt2img` (`/img2img`). Routed through the four described functions
/// above (`routes!` takes no generic handler).
async fn queue<const IMG2IMG: bool, const LEGACY: bool>(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    let instead = if IMG2IMG {
        "/api/queue/user/img2img"
    } else {
        "/api/queue/user/txt2img"
    };
    let (owner, role) = queuer(&state, &headers, &body, LEGACY.then_some(instead)).await?;
    if IMG2IMG {
        queue_img2img(state, peer, headers, body, owner, role).await
    } else {
        let request = normalise(&body, state.intake.limits().max_pixels)?;
        check_category(&state, request.category_id, &owner).await?;
        queue_txt2img(&state, &owner, role, request, origin(&headers, peer)).await
    }
}

/// Navigator's queue-time name resolution against what the backends offer (skipped, with a
/// warning, when no backend answers: the names go as asked).
async fn resolve_names(state: &AppState, request: &mut Txt2Img) {
    let lists = match state.offer.lists().await {
        Ok(lists) => lists,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the backends' lists; names are not checked");
            return;
        }
    };
    match request.task {
        Task::Txt2Img => {
            request.sampler_name = body::resolve_sampler(&request.sampler_name, &lists, false);
            request.scheduler_name = body::resolve_scheduler(&request.scheduler_name, &lists, true);
            if let Some(upscaler) = &request.upscaler_name {
                request.upscaler_name = Some(body::resolve_upscaler(Some(upscaler), &lists));
            }
        }
        Task::Img2Img => {
            let friendly: Vec<(String, String)> = match state.catalog.models().await {
                Ok(models) => models
                    .iter()
                    .filter_map(|m| Some((m.name.clone(), m.friendly_name.clone()?)))
                    .collect(),
                Err(_) => Vec::new(),
            };
            request.model_name =
                body::resolve_img2img_model(&request.model_name, &friendly, &lists);
            request.sampler_name = body::resolve_sampler(&request.sampler_name, &lists, true);
            request.scheduler_name =
                body::resolve_scheduler(&request.scheduler_name, &lists, false);
        }
    }
}

/// Navigator's job object for a queued txt2img job, and the cleansed task its socket.io
/// events carry (no prompt, owner, size or queue size).
pub(super) fn txt2img_job(
    request: &Txt2Img,
    job_id: &str,
    owner: &str,
    origin: &str,
    queue_size: i64,
) -> Result<(Value, Map<String, Value>), ApiError> {
    let job = NavigatorJob {
        kind: "txt2img",
        model_name: &request.model_name,
        prompt: &request.prompt,
        negative_prompt: request.negative_prompt.as_deref(),
        owner_id: owner,
        job_id,
        width: request.width,
        height: request.height,
        steps: request.steps,
        hrf_steps: request.hrf_steps,
        seed: request.seed,
        cfg_scale: request.cfg_scale,
        distilled_cfg: request.distilled_cfg,
        sampler_name: &request.sampler_name,
        scheduler_name: &request.scheduler_name,
        denoising_strength: request.denoising_strength,
        force_hr_fix: request.force_hr_fix,
        queue_size,
        task_type: "txt2img",
        status: "queued",
        origin,
        category_id: request.category_id,
        image_enhancements: request.image_enhancements,
        subseed: request.subseed,
        subseed_strength: request.subseed_strength,
        upscaler_name: request.upscaler_name.as_deref(),
        modules: request.modules.as_deref(),
    };
    let answer = serde_json::to_value(&job).map_err(ApiError::internal)?;
    let mut task = answer.as_object().cloned().unwrap_or_default();
    for key in [
        "prompt",
        "negative_prompt",
        "owner_id",
        "width",
        "height",
        "queue_size",
    ] {
        task.shift_remove(key);
    }
    Ok((answer, task))
}

/// Queues a normalised txt2img request for `owner` and answers with Navigator's job object;
/// the job's events go to socket.io.
async fn queue_txt2img(
    state: &AppState,
    owner: &str,
    role: i64,
    mut request: Txt2Img,
    origin: String,
) -> Result<Response, ApiError> {
    resolve_names(state, &mut request).await;
    let submitted = submit(state, owner, role, request, &origin).await?;
    let queue_size = i64::try_from(submitted.queue_depth).unwrap_or(i64::MAX);
    let (answer, task) = txt2img_job(
        &submitted.request,
        submitted.job.as_str(),
        owner,
        &origin,
        queue_size,
    )?;
    follow(state, submitted, task, owner, &origin, true);
    Ok(Json(answer).into_response())
}

/// The intake: access, model policy, limits, the durable queue.
async fn submit(
    state: &AppState,
    owner: &str,
    role: i64,
    request: Txt2Img,
    origin: &str,
) -> Result<crate::intake::Submitted, ApiError> {
    let admitted = state
        .intake
        .admit(Caller::http(owner, role))
        .await
        .map_err(|refusal| refused(owner, refusal))?;
    state
        .intake
        .submit_and_watch(
            &admitted,
            request,
            Origin::Http {
                client: origin.to_owned(),
            },
        )
        .await
        .map_err(|refusal| refused(owner, refusal))
}

fn follow(
    state: &AppState,
    submitted: crate::intake::Submitted,
    task: Map<String, Value>,
    owner: &str,
    origin: &str,
    reports_seed: bool,
) {
    if let Some(watch) = submitted.watch {
        state.realtime.follow(
            watch,
            Followed {
                task,
                owner: owner.to_owned(),
                origin: Some(origin.to_owned()),
                reports_seed,
            },
        );
    }
}

/// Navigator's img2img normalisation (its intended argument mapping, not the shifted one).
fn normalise_img2img(body: &Map<String, Value>, pixel_limit: u64) -> Result<Txt2Img, ApiError> {
    let (Some(model_name), Some(prompt)) = (text(body, "model_name")?, text(body, "prompt")?)
    else {
        return Err(ApiError::bad_request("Missing required parameters"));
    };
    let denoising_strength = number(body, "denoising_strength")?.unwrap_or(0.75);
    if !(0.0..=1.0).contains(&denoising_strength) {
        return Err(ApiError::bad_request(
            "Denoising strength must be between 0.0 and 1.0",
        ));
    }
    let (width, height) = size(body, IMG2IMG_SIDE, pixel_limit)?;
    let image = |key: &str| -> Result<Option<String>, ApiError> {
        Ok(text(body, key)?.map(|s| {
            s.split_once("base64,")
                .map_or(s, |(_, rest)| rest)
                .to_owned()
        }))
    };
    Ok(Txt2Img {
        task: Task::Img2Img,
        model_name: model_name.to_owned(),
        prompt: prompt.to_owned(),
        negative_prompt: text(body, "negative_prompt")?.map(str::to_owned),
        width,
        height,
        steps: whole(body, "steps", 1.0, MAX_STEPS)?.unwrap_or(50) as u32,
        seed: whole(body, "seed", -1.0, 9.0e15)?.unwrap_or(-1),
        cfg_scale: number(body, "cfg_scale")?.unwrap_or(5.0),
        distilled_cfg: 3.5,
        sampler_name: text(body, "sampler_name")?.unwrap_or("DPM++ 2M").to_owned(),
        scheduler_name: text(body, "scheduler_name")?
            .unwrap_or("automatic")
            .to_owned(),
        denoising_strength,
        image_enhancements: body.contains_key("image_enhancements"),
        category_id: whole(body, "categoryId", 0.0, 9.0e15)?,
        init_image: image("init_image")?,
        mask: image("mask")?,
        ..Txt2Img::default()
    })
}

/// img2img's size when the body gives none (Navigator's base-class default).
const IMG2IMG_SIDE: i64 = 500;

async fn queue_img2img(
    state: AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Map<String, Value>,
    owner: String,
    role: i64,
) -> Result<Response, ApiError> {
    let mut request = normalise_img2img(&body, state.intake.limits().max_pixels)?;
    check_category(&state, request.category_id, &owner).await?;
    if let Some(stored) = request
        .init_image
        .as_deref()
        .and_then(|i| i.strip_prefix("NAVIGATOR_"))
    {
        // A stored picture (of any owner, as Navigator).
        let png = state
            .jobs
            .image_png(stored)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::internal(format!("no stored image {stored}")))?;
        request.init_image = Some(base64::engine::general_purpose::STANDARD.encode(png));
    }
    resolve_names(&state, &mut request).await;
    let origin = origin(&headers, peer);
    let submitted = submit(&state, &owner, role, request, &origin).await?;
    let category = submitted.request.category_id;
    let image_enhancements = submitted.request.image_enhancements;
    let mut answer = Map::new();
    answer.insert("type".into(), json!("img2img"));
    answer.insert("job_id".into(), json!(submitted.job.as_str()));
    answer.insert("owner_id".into(), json!(owner));
    answer.insert(
        "queue_size".into(),
        json!(i64::try_from(submitted.queue_depth).unwrap_or(i64::MAX)),
    );
    answer.insert("task_type".into(), json!("img2img"));
    answer.insert("status".into(), json!("queued"));
    answer.insert("origin".into(), json!(origin));
    answer.insert("image_enhancements".into(), json!(image_enhancements));
    if let Some(category) = category {
        answer.insert("categoryId".into(), json!(category));
    }
    let mut task = answer.clone();
    for key in ["owner_id", "queue_size"] {
        task.shift_remove(key);
    }
    follow(&state, submitted, task, &owner, &origin, false);
    Ok(Json(Value::Object(answer)).into_response())
}

/// `POST /api/queue/user/txt2img/upscale-hrf/:jobId`: the stored picture again, with the
/// high-res fix from its own first pass (its parameters from its png-info).
#[utoipa::path(
    post,
    path = "/api/queue/user/txt2img/upscale-hrf/{job_id}",
    tag = "queue",
    summary = "Queue a high-res-fix upscale of a stored picture",
    description = "Queues a txt2img job for the caller that redraws a stored picture with the \
        high-res fix, its parameters read from the picture's png-info; the body may override the \
        upscaler, the denoising strength and the high-res steps. The category comes along only if \
        it is the caller's.",
    security(("bearer" = []), ("superuser" = [])),
    params(("job_id" = String, Path, description = "The stored picture's job id")),
    request_body(content = openapi::UpscaleRequest, description = "Optional overrides"),
    responses(
        (status = 200, description = "Queued: the job object", body = NavigatorJob),
        (status = 400, description = "No such picture, no parameters in it, too large, an invalid override, or a refusal", body = openapi::ErrorBody,
            examples(
                ("Unknown" = (value = json!({"error": "Job not found"}))),
                ("Too large" = (value = json!({"error": "Image is too large to upscale"}))),
                ("No parameters" = (value = json!({"error": "The picture has no generation parameters"}))),
            )),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or the access plugin refuses", body = openapi::Forbidden,
            example = json!({"error": "You are not allowed to queue jobs."})),
        (status = 413, description = "The body is over 50 MB", body = openapi::ErrorBody),
        (status = 500, description = "The store or the Forge machine failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn upscale_hrf(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let user = state.auth.authenticate(&headers, &state.accounts).await?;
    let body = json_body(body)?;
    let not_found = || ApiError::bad_request("Job not found");
    let png = state
        .jobs
        .image_png(&job_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(not_found)?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let stored = state
        .jobs
        .image_info(&job_id)
        .await
        .map_err(ApiError::internal)?
        .and_then(|info| serde_json::from_str::<Value>(&info).ok())
        .filter(|info| info.get("parameters").is_some_and(Value::is_object));
    let info = match stored {
        Some(info) => info,
        None => state
            .offer
            .png_info(&b64)
            .await
            .map_err(|err| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": err.to_string()}),
                )
            })?
            .ok_or_else(|| ApiError::bad_request("The picture has no generation parameters"))?,
    };
    let overrides = body::UpscaleOverrides {
        upscaler_name: text(&body, "upscaler_name")?.map(str::to_owned),
        denoising_strength: number(&body, "denoising_strength")?,
        hrf_steps: whole(&body, "hrf_steps", 1.0, MAX_STEPS)?.map(|s| s as u32),
    };
    let mut request = body::upscale_request(&info, b64, &overrides)
        .map_err(|err| ApiError::bad_request(err.to_string()))?;
    if !body::size_limit_ok(
        request.width,
        request.height,
        state.intake.limits().max_pixels,
    ) {
        return Err(ApiError::bad_request("Image is too large to upscale"));
    }
    // The category comes along only if the caller owns it.
    let source = state
        .jobs
        .request(&job_id)
        .await
        .map_err(ApiError::internal)?;
    request.category_id = None;
    if let Some(category) = source.and_then(|s| s.category_id)
        && check_category(&state, Some(category), &user.discord_id)
            .await
            .is_ok()
    {
        request.category_id = Some(category);
    }
    queue_txt2img(
        &state,
        &user.discord_id,
        user.role,
        request,
        origin(&headers, peer),
    )
    .await
}

/// `POST /api/queue/interrupt/:jobId`: the owner stops their running job (Forge hands back
/// the partial picture, then `task-finished`) or removes their queued one.
#[utoipa::path(
    post,
    path = "/api/queue/interrupt/{job_id}",
    tag = "queue",
    summary = "Interrupt or remove one of the caller's jobs",
    description = "Stops the caller's running job (`task-interrupted`, then usually \
        `task-finished` with the partial picture) or removes their queued one.",
    security(("bearer" = []), ("superuser" = [])),
    params(("job_id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "Interrupted (it was running) or removed (it was queued)", body = openapi::Interrupted,
            examples(
                ("Running" = (value = json!({"message": "Task interrupted!", "status": "interrupted"}))),
                ("Queued" = (value = json!({"message": "Task removed!", "status": "removed"}))),
            )),
        (status = 401, description = "No or refused credentials", body = openapi::Unauthorized),
        (status = 403, description = "The user is disabled, or the job is another user's", body = openapi::Forbidden,
            example = json!({"error": "Unauthorized"})),
        (status = 404, description = "No such job queued or running", body = openapi::ErrorBody,
            example = json!({"error": "Task not found"})),
        (status = 500, description = "The store failed", body = openapi::ErrorBody),
    )
)]
pub(super) async fn interrupt(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = state.auth.authenticate(&headers, &state.accounts).await?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, json!({"error": "Task not found"}));
    let row = state
        .jobs
        .job(&job_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(not_found)?;
    if !matches!(row.status(), JobStatus::Queued | JobStatus::Running) {
        return Err(not_found());
    }
    if row.owner_id != user.discord_id {
        return Err(ApiError::forbidden("Unauthorized"));
    }
    match state
        .intake
        .interrupt(&job_id)
        .await
        .map_err(ApiError::internal)?
    {
        Some(JobStatus::Running) => Ok(Json(
            json!({"message": "Task interrupted!", "status": "interrupted"}),
        )
        .into_response()),
        Some(_) => {
            Ok(Json(json!({"message": "Task removed!", "status": "removed"})).into_response())
        }
        None => Err(not_found()),
    }
}

/// A refusal of the intake as Navigator words it: access 403 (the reason is logged, not
/// sent), the policy's text and broken limits 400, a store failure 400 without internals.
fn refused(user: &str, refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Access { reason } => {
            tracing::info!(user, reason, "the access plugin refused an API request");
            ApiError::forbidden("You are not allowed to queue jobs.")
        }
        Refusal::Policy { message } => ApiError::bad_request(message),
        Refusal::Limit(limit) => ApiError::bad_request(limit.to_string()),
        Refusal::Store(err) => {
            tracing::error!(error = %err, "could not queue a job");
            ApiError::new(
                StatusCode::BAD_REQUEST,
                json!({"error": "Could not queue the job: the database refused the job"}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn javascript_defaults() {
        let r = normalise(
            &body(json!({"model_name": "m", "prompt": "p", "seed": 0, "width": 0, "steps": "30"})),
            3_686_400,
        )
        .unwrap();
        assert_eq!((r.width, r.height, r.steps, r.seed), (512, 512, 30, -1));
        assert_eq!(r.hrf_steps, Some(30));
        assert_eq!(r.cfg_scale, 7.0);
        assert_eq!(r.sampler_name, "DPM++ 2M");
        assert_eq!(r.scheduler_name, "automatic");
    }

    #[test]
    fn hrf_steps_absent_without_steps() {
        let r = normalise(
            &body(json!({"model_name": "m", "prompt": "p"})),
            100_000_000,
        )
        .unwrap();
        assert_eq!(r.steps, 50);
        assert_eq!(r.hrf_steps, None);
    }

    #[test]
    fn missing_and_limits() {
        let err = normalise(&body(json!({"prompt": "p"})), 10).unwrap_err();
        assert_eq!(err.body, json!({"error": "Missing required parameters"}));
        let err = normalise(
            &body(json!({"model_name": "m", "prompt": "p", "width": 2000, "height": 2000})),
            3_686_400,
        )
        .unwrap_err();
        assert_eq!(
            err.body,
            json!({"error": "The total value of (Width * Height) must not exceed 3686400"})
        );
        let err = normalise(
            &body(json!({"model_name": "m", "prompt": "p", "width": "wide"})),
            3_686_400,
        )
        .unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn subseed_needs_both() {
        let r = normalise(
            &body(json!({"model_name": "m", "prompt": "p", "subseed": 5})),
            3_686_400,
        )
        .unwrap();
        assert_eq!((r.subseed, r.subseed_strength), (None, None));
    }
}
