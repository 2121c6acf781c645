//! `POST /api/queue/user/txt2img`: Navigator's normalisation (JavaScript `||` defaults), its
//! validation messages and its response object, in its key order.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value, json};

use super::{ApiError, AppState, origin};
use crate::intake::{Caller, LimitExceeded, Limits, Refusal};
use crate::jobs::{Origin, Txt2Img};

/// The job object Navigator answers with (and later sends in socket events).
#[derive(Debug, Serialize)]
struct NavigatorJob<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    model_name: &'a str,
    prompt: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    negative_prompt: Option<&'a str>,
    owner_id: &'a str,
    job_id: &'a str,
    width: u32,
    height: u32,
    steps: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
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
    category_id: Option<i64>,
    image_enhancements: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    subseed: Option<i64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "js_number_opt"
    )]
    subseed_strength: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upscaler_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
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

/// Navigator's normalisation of a txt2img body.
fn normalise(body: &Map<String, Value>, pixel_limit: u64) -> Result<Txt2Img, ApiError> {
    let (Some(model_name), Some(prompt)) = (text(body, "model_name")?, text(body, "prompt")?)
    else {
        return Err(ApiError::bad_request("Missing required parameters"));
    };
    let width = whole(body, "width", 1.0, MAX_SIDE)?.unwrap_or(512) as u32;
    let height = whole(body, "height", 1.0, MAX_SIDE)?.unwrap_or(512) as u32;
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
    })
}

pub(super) async fn txt2img(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let user = state.auth.authenticate(&headers, &state.accounts).await?;
    let body = body.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            json!({"error": format!("Invalid request body: {}", rejection.body_text())}),
        )
    })?;
    let body: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(ApiError::bad_request("Request body must be a JSON object")),
            Err(err) => return Err(ApiError::bad_request(format!("Invalid JSON: {err}"))),
        }
    };
    let request = normalise(&body, state.intake.limits().max_pixels)?;
    if let Some(category) = request.category_id {
        let owned = state
            .accounts
            .category_owned_by(category, &user.discord_id)
            .await
            .map_err(ApiError::internal)?;
        if !owned {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                json!({"error": "Category does not exist or you do not own it"}),
            ));
        }
    }
    let origin = origin(&headers, peer);
    let admitted = state
        .intake
        .admit(Caller::http(&user.discord_id, user.role))
        .await
        .map_err(|refusal| refused(&user.discord_id, refusal))?;
    let submitted = state
        .intake
        .submit(
            &admitted,
            request,
            Origin::Http {
                client: origin.clone(),
            },
        )
        .await
        .map_err(|refusal| refused(&user.discord_id, refusal))?;
    let request = &submitted.request;
    let job = NavigatorJob {
        kind: "txt2img",
        model_name: &request.model_name,
        prompt: &request.prompt,
        negative_prompt: request.negative_prompt.as_deref(),
        owner_id: &user.discord_id,
        job_id: submitted.job.as_str(),
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
        queue_size: i64::try_from(submitted.queue_depth).unwrap_or(i64::MAX),
        task_type: "txt2img",
        status: "queued",
        origin: &origin,
        category_id: request.category_id,
        image_enhancements: request.image_enhancements,
        subseed: request.subseed,
        subseed_strength: request.subseed_strength,
        upscaler_name: request.upscaler_name.as_deref(),
        modules: request.modules.as_deref(),
    };
    Ok(Json(job).into_response())
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
