//! The request bodies easel POSTs to Forge (`{SD}/txt2img`, `{SD}/img2img`), the name
//! resolution done at queue time against Forge's lists, and the png-info parsing behind
//! upscale-hrf.
//!
//! The rules are Navigator's (compat.md §2.4 "Queueing", §2.5 step 3, §2.5.1). This module
//! only builds values: it does no I/O and keeps no state.
//!
//! Deliberate deviations from Navigator (the bracketed rules of §2.5.1 and the QUIRK fixes):
//!
//! * img2img uses the intended argument mapping. Navigator's constructor shifts its arguments
//!   by one (`scheduler←steps`, `steps←cfg_scale`, …), so Forge answers 422.
//! * `force_hr_fix` without `hrf_steps` uses the effective `steps` for
//!   `hr_second_pass_steps`. Navigator sends `null`.
//! * upscale-hrf sends numbers, never the png-info strings, and carries `Variation seed` /
//!   `Variation seed strength` into `subseed` / `subseed_strength`. Navigator drops them.
//! * upscale-hrf uses `hrf_steps` (or else `steps`) as its hires steps, with no cap of 30 and
//!   no `min` with `steps`, so an `hrf_steps` override above the source's steps counts.
//! * png-info without parameters (e.g. from an img2img image) is an [`InfoError`].
//!   Navigator crashes there.
//! * A whole float goes out as an integer (`7`, not `7.0`), as JavaScript prints it.

use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::jobs::{Task, Txt2Img};

/// Denoising strength used by every hires pass that was not given one.
const HR_DENOISE: f64 = 0.35;
/// img2img denoising strength when the request left it unset (0).
const IMG2IMG_DENOISE: f64 = 0.75;
/// Flux "Distilled CFG" when unset.
const DISTILLED_CFG: f64 = 3.5;
/// Above this many pixels a txt2img is rendered at half size and upscaled by a hires pass.
const BIG_IMAGE_PIXELS: u64 = 1024 * 1024;
/// Hires steps cap of the automatic big-image pass.
const BIG_IMAGE_HR_STEPS: u32 = 30;
/// img2img steps cap.
const IMG2IMG_MAX_STEPS: u32 = 75;
/// Preferred upscaler when the requested one is not installed.
const PREFERRED_UPSCALER: &str = "4x_NMKD-Siax_200k";
/// Upscaler used when neither the requested nor the preferred one is installed.
const LAST_RESORT_UPSCALER: &str = "RealESRGAN_x4";
/// Steps of a txt2img that names none.
const DEFAULT_STEPS: u32 = 50;
/// CFG scale of a txt2img that names none.
const DEFAULT_CFG: f64 = 7.0;
/// Sampler of a txt2img that names none.
const DEFAULT_SAMPLER: &str = "DPM++ 2M";
/// Scheduler Forge picks by itself.
const AUTOMATIC_SCHEDULER: &str = "automatic";

/// One entry of Forge's `GET /samplers`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Sampler {
    /// Canonical name, e.g. `DPM++ 2M`.
    pub name: String,
    /// Other names Forge accepts, e.g. `k_dpmpp_2m`.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// One entry of Forge's `GET /schedulers`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Scheduler {
    /// Name sent to Forge, e.g. `karras`.
    pub name: String,
    /// Display label, e.g. `Karras` (what png-info's `Schedule type` shows).
    #[serde(default)]
    pub label: String,
}

/// One entry of Forge's `GET /upscalers`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Upscaler {
    /// Name sent as `hr_upscaler`.
    pub name: String,
}

/// What Forge offers; may be the union over several Forge machines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lists {
    /// `GET /samplers`.
    pub samplers: Vec<Sampler>,
    /// `GET /schedulers`.
    pub schedulers: Vec<Scheduler>,
    /// `GET /upscalers`.
    pub upscalers: Vec<Upscaler>,
    /// The `model_name` values of `GET /sd-models`.
    pub models: Vec<String>,
}

/// The canonical name of the first sampler named `name` or listing it as an alias.
///
/// An unknown name is passed through unchanged (txt2img, `fallback_first == false`) or
/// replaced by the first listed sampler (img2img, `fallback_first == true`; unchanged when
/// the list is empty).
#[must_use]
pub fn resolve_sampler(name: &str, lists: &Lists, fallback_first: bool) -> String {
    let known = lists
        .samplers
        .iter()
        .find(|s| s.name == name || s.aliases.iter().any(|a| a == name));
    let first = lists.samplers.first().filter(|_| fallback_first);
    known.or(first).map_or(name, |s| &s.name).to_owned()
}

/// The scheduler to send: `automatic` for an empty name, else the exact name if Forge lists
/// it, else (txt2img, `lower_case_retry`) its lower-cased form if listed, else `automatic`.
///
/// With no schedulers listed the name is kept.
#[must_use]
pub fn resolve_scheduler(name: &str, lists: &Lists, lower_case_retry: bool) -> String {
    if name.is_empty() {
        return AUTOMATIC_SCHEDULER.to_owned();
    }
    if lists.schedulers.is_empty() {
        return name.to_owned();
    }
    let listed = |n: &str| lists.schedulers.iter().any(|s| s.name == n);
    let lower = name.to_lowercase();
    if listed(name) {
        name.to_owned()
    } else if lower_case_retry && listed(&lower) {
        lower
    } else {
        AUTOMATIC_SCHEDULER.to_owned()
    }
}

/// The upscaler to send: `name` if Forge lists it, else `4x_NMKD-Siax_200k` if listed, else
/// `RealESRGAN_x4`.
#[must_use]
pub fn resolve_upscaler(name: Option<&str>, lists: &Lists) -> String {
    let listed = |n: &str| lists.upscalers.iter().any(|u| u.name == n);
    match name {
        Some(n) if listed(n) => n.to_owned(),
        _ if listed(PREFERRED_UPSCALER) => PREFERRED_UPSCALER.to_owned(),
        _ => LAST_RESORT_UPSCALER.to_owned(),
    }
}

/// The checkpoint for an img2img: `name` if it is a Forge `model_name`, else the
/// `model_name` whose DB `friendly_name` it is, else the first Forge model, else `name`.
///
/// `friendly` holds `(model_name, friendly_name)` pairs from the `models` table.
#[must_use]
pub fn resolve_img2img_model(name: &str, friendly: &[(String, String)], lists: &Lists) -> String {
    if lists.models.iter().any(|m| m == name) {
        return name.to_owned();
    }
    friendly
        .iter()
        .find(|(_, f)| f == name)
        .map(|(m, _)| m)
        .or(lists.models.first())
        .map_or(name, String::as_str)
        .to_owned()
}

/// The body of `POST {SD}/txt2img` for job `job_id`, with `upscaler` as `hr_upscaler`.
///
/// `request` must be normalised already (compat.md §2.4). Keys come in Navigator's order;
/// the conditional ones follow the fixed block.
#[must_use]
pub fn txt2img_body(job_id: &str, request: &Txt2Img, upscaler: &str) -> Value {
    let modules = request.modules.clone().unwrap_or_default();
    let distilled = if request.distilled_cfg == 0.0 {
        DISTILLED_CFG
    } else {
        request.distilled_cfg
    };

    let mut body = Map::new();
    body.insert("prompt".into(), json!(request.prompt));
    if let Some(negative) = &request.negative_prompt {
        body.insert("negative_prompt".into(), json!(negative));
    }
    body.insert("seed".into(), json!(request.seed));
    body.insert("steps".into(), json!(request.steps));
    body.insert("width".into(), json!(request.width));
    body.insert("height".into(), json!(request.height));
    body.insert("cfg_scale".into(), num(request.cfg_scale));
    body.insert("distilled_cfg_scale".into(), num(distilled));
    body.insert("sampler_name".into(), json!(request.sampler_name));
    body.insert("scheduler".into(), json!(request.scheduler_name));
    body.insert("enable_hr".into(), json!(false));
    body.insert("hr_upscaler".into(), json!(upscaler));
    body.insert("hr_additional_modules".into(), json!(modules));
    body.insert("save_images".into(), json!(false));
    body.insert(
        "override_settings".into(),
        json!({
            "sd_model_checkpoint": request.model_name,
            "forge_additional_modules": modules,
        }),
    );
    body.insert("override_settings_restore_afterwards".into(), json!(false));
    body.insert("force_task_id".into(), json!(task_id(job_id)));

    if request.image_enhancements {
        body.insert("alwayson_scripts".into(), enhancements());
    }
    if request.denoising_strength != 0.0 {
        body.insert("denoising_strength".into(), num(request.denoising_strength));
    }
    if let (Some(subseed), Some(strength)) = (request.subseed, request.subseed_strength)
        && subseed != 0
        && strength != 0.0
    {
        body.insert("subseed".into(), json!(subseed));
        body.insert("subseed_strength".into(), num(strength));
    }
    if let Some(first_pass) = &request.first_pass_image {
        body.insert("firstpass_image".into(), json!(first_pass));
    }

    let hires_steps = request
        .hrf_steps
        .filter(|&s| s != 0)
        .unwrap_or(request.steps);
    let pixels = u64::from(request.width) * u64::from(request.height);
    let hires = if request.force_hr_fix {
        // upscale-hrf: the first pass comes from png-info, its hires steps are taken as given.
        let steps = if request.first_pass_image.is_some() {
            hires_steps
        } else {
            hires_steps.min(request.steps)
        };
        Some((
            request.width.saturating_mul(2),
            request.height.saturating_mul(2),
            steps,
        ))
    } else if pixels > BIG_IMAGE_PIXELS {
        body.insert("width".into(), json!(request.width.div_ceil(2)));
        body.insert("height".into(), json!(request.height.div_ceil(2)));
        let steps = request.steps.min(BIG_IMAGE_HR_STEPS);
        Some((request.width, request.height, steps))
    } else {
        None
    };
    if let Some((resize_x, resize_y, steps)) = hires {
        body.insert("enable_hr".into(), json!(true));
        body.insert("hr_resize_x".into(), json!(resize_x));
        body.insert("hr_resize_y".into(), json!(resize_y));
        body.insert("hr_second_pass_steps".into(), json!(steps));
        body.entry("denoising_strength").or_insert(num(HR_DENOISE));
    }
    Value::Object(body)
}

/// The body of `POST {SD}/img2img` for job `job_id` (compat.md §2.4, intended mapping).
#[must_use]
pub fn img2img_body(job_id: &str, request: &Txt2Img) -> Value {
    let seed = if request.seed == 0 { -1 } else { request.seed };
    let denoise = if request.denoising_strength == 0.0 {
        IMG2IMG_DENOISE
    } else {
        request.denoising_strength
    };
    let init_images: Vec<&str> = request
        .init_image
        .as_deref()
        .filter(|i| !i.is_empty())
        .into_iter()
        .collect();

    let mut body = Map::new();
    body.insert("force_task_id".into(), json!(task_id(job_id)));
    body.insert("prompt".into(), json!(request.prompt));
    body.insert(
        "negative_prompt".into(),
        json!(request.negative_prompt.as_deref().unwrap_or_default()),
    );
    body.insert("seed".into(), json!(seed));
    body.insert("subseed".into(), json!(-1));
    body.insert("subseed_strength".into(), json!(0));
    body.insert("sampler_name".into(), json!(request.sampler_name));
    body.insert("scheduler".into(), json!(request.scheduler_name));
    body.insert("steps".into(), json!(request.steps.min(IMG2IMG_MAX_STEPS)));
    body.insert("cfg_scale".into(), num(request.cfg_scale));
    body.insert("width".into(), json!(request.width));
    body.insert("height".into(), json!(request.height));
    body.insert("denoising_strength".into(), num(denoise));
    body.insert("init_images".into(), json!(init_images));
    body.insert(
        "override_settings".into(),
        json!({ "sd_model_checkpoint": request.model_name }),
    );
    body.insert("override_settings_restore_afterwards".into(), json!(false));
    body.insert("save_images".into(), json!(false));
    if request.image_enhancements {
        body.insert("alwayson_scripts".into(), enhancements());
    }
    if let Some(mask) = request.mask.as_deref().filter(|m| !m.is_empty()) {
        body.insert("mask".into(), json!(mask));
    }
    let inpainting = json!({
        "initial_noise_multiplier": 1,
        "inpaint_full_res": 1,
        "mask_blur": 4,
        "mask_blur_x": 4,
        "mask_blur_y": 4,
        "mask_round": true,
        "inpainting_fill": 1,
        "inpaint_full_res_padding": 32,
        "inpainting_mask_invert": 0,
        "image_cfg_scale": 1.5,
    });
    if let Value::Object(inpainting) = inpainting {
        body.extend(inpainting);
    }
    Value::Object(body)
}

/// The Forge endpoint (`"txt2img"` or `"img2img"`, relative to `{SD}`) and body for a job.
///
/// `upscaler` is the resolved `hr_upscaler`; img2img ignores it.
#[must_use]
pub fn body(job_id: &str, request: &Txt2Img, upscaler: &str) -> (&'static str, Value) {
    match request.task {
        Task::Txt2Img => ("txt2img", txt2img_body(job_id, request, upscaler)),
        Task::Img2Img => ("img2img", img2img_body(job_id, request)),
    }
}

/// The id Forge tracks the job under (`force_task_id`, `/internal/progress`).
fn task_id(job_id: &str) -> String {
    format!("navigator-{job_id}")
}

/// The `alwayson_scripts` block of `image_enhancements`: `FreeU` and SAG.
fn enhancements() -> Value {
    json!({
        "FreeU Integrated (SD 1.x, SD 2.x, SDXL)": { "args": [true, 1.1, 1.2, 0.6, 0.4, 0, 1] },
        "SelfAttentionGuidance Integrated (SD 1.x, SD 2.x, SDXL)": { "args": [true, 0.5, 2, 1] },
    })
}

/// `f` as JavaScript's `JSON.stringify` prints it: whole values as integers, NaN and
/// infinities as `null`.
fn num(f: f64) -> Value {
    match whole(f) {
        Some(i) => json!(i),
        None => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
    }
}

/// Body fields of `POST /api/queue/user/txt2img/upscale-hrf/:jobId` that override what
/// png-info says. `None`, 0 and `""` leave the png-info value (JavaScript `||`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpscaleOverrides {
    /// `hr_upscaler`; without it the worker picks the fallback chain.
    pub upscaler_name: Option<String>,
    /// Denoising strength of the hires pass.
    pub denoising_strength: Option<f64>,
    /// Hires steps.
    pub hrf_steps: Option<u32>,
}

/// Why a png-info answer cannot be turned into an upscale-hrf request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InfoError {
    /// No (or an empty) `Prompt`: the image has no generation parameters.
    MissingPrompt,
    /// Neither `Size-1`/`Size-2` nor `Size: WxH`.
    MissingSize,
    /// Neither `Model` nor `Model: x`.
    MissingModel,
    /// The value under this key is not a number of the expected kind.
    BadNumber(String),
}

impl fmt::Display for InfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingPrompt => f.write_str("png info has no prompt"),
            Self::MissingSize => f.write_str("png info has no image size"),
            Self::MissingModel => f.write_str("png info has no model"),
            Self::BadNumber(key) => write!(f, "png info value `{key}` is not a valid number"),
        }
    }
}

impl std::error::Error for InfoError {}

/// A txt2img request that re-renders a stored image with a hires pass (upscale-hrf).
///
/// `info` is Forge's `POST /png-info` answer (or easel's cached copy): values under
/// `parameters` may be strings or numbers. `first_pass_b64` is the stored image, sent as
/// Forge's `firstpass_image`. The result is normalised like a queued txt2img; the caller still
/// resolves sampler, scheduler and upscaler and checks [`size_limit_ok`].
///
/// # Errors
///
/// [`InfoError`] when the prompt, the size or the model is missing (e.g. an img2img image
/// stored without parameters), or a number does not parse.
pub fn upscale_request(
    info: &Value,
    first_pass_b64: String,
    overrides: &UpscaleOverrides,
) -> Result<Txt2Img, InfoError> {
    let params = Params::new(info);

    let prompt = params.text("Prompt").ok_or(InfoError::MissingPrompt)?;
    let model_name = params.text("Model").ok_or(InfoError::MissingModel)?;
    let (width, height) = match (params.u32("Size-1")?, params.u32("Size-2")?) {
        (Some(w), Some(h)) => (w, h),
        _ => params.text_size()?.ok_or(InfoError::MissingSize)?,
    };
    let steps = params
        .u32("Steps")?
        .filter(|&s| s != 0)
        .unwrap_or(DEFAULT_STEPS);
    let distilled_cfg = match params.f64("distilled_cfg")? {
        Some(d) => Some(d),
        None => params.f64("Distilled CFG Scale")?,
    };
    let enabled = |key| params.get(key).is_some_and(is_true);

    Ok(Txt2Img {
        model_name,
        prompt,
        negative_prompt: params.text("Negative prompt"),
        width,
        height,
        steps,
        hrf_steps: Some(overrides.hrf_steps.filter(|&s| s != 0).unwrap_or(steps)),
        seed: params.i64("Seed")?.filter(|&s| s != 0).unwrap_or(-1),
        cfg_scale: params
            .f64("CFG scale")?
            .filter(|&c| c != 0.0)
            .unwrap_or(DEFAULT_CFG),
        distilled_cfg: distilled_cfg.filter(|&d| d != 0.0).unwrap_or(DISTILLED_CFG),
        sampler_name: params
            .text("Sampler")
            .unwrap_or_else(|| DEFAULT_SAMPLER.to_owned()),
        scheduler_name: params
            .text("Schedule type")
            .unwrap_or_else(|| AUTOMATIC_SCHEDULER.to_owned()),
        denoising_strength: match overrides.denoising_strength.filter(|&d| d != 0.0) {
            Some(d) => d,
            None => params.f64("Denoising strength")?.unwrap_or(0.0),
        },
        force_hr_fix: true,
        subseed: params.i64("Variation seed")?,
        subseed_strength: params.f64("Variation seed strength")?,
        upscaler_name: overrides.upscaler_name.clone().filter(|u| !u.is_empty()),
        image_enhancements: enabled("freeu_enabled") || enabled("sag_enabled"),
        modules: params.modules(),
        category_id: None,
        task: Task::Txt2Img,
        init_image: None,
        mask: None,
        first_pass_image: Some(first_pass_b64),
    })
}

/// Whether an image of `width`×`height` may be upscaled: `(w*2)*(h*2) <= limit`.
#[must_use]
pub fn size_limit_ok(width: u32, height: u32, limit: u64) -> bool {
    (u64::from(width) * 2)
        .checked_mul(u64::from(height) * 2)
        .is_some_and(|pixels| pixels <= limit)
}

/// The file suffix png-info leaves off module names.
const MODULE_SUFFIX: &str = ".safetensors";

/// png-info's `parameters` object plus the `key: value` pairs of the info text's last line.
struct Params<'a> {
    /// `parameters`, when it is an object.
    map: Option<&'a Map<String, Value>>,
    /// The pairs of the A1111 parameters line, in order.
    line: Vec<(String, String)>,
}

impl<'a> Params<'a> {
    /// Reads `info` (a png-info answer).
    fn new(info: &'a Value) -> Self {
        Self {
            map: info.get("parameters").and_then(Value::as_object),
            line: info
                .get("info")
                .and_then(Value::as_str)
                .map(parameter_line)
                .unwrap_or_default(),
        }
    }

    /// The non-null value under `key` in `parameters`.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map?.get(key).filter(|v| !v.is_null())
    }

    /// `key` from `parameters` as text, else from the info text; blank counts as absent.
    fn text(&self, key: &str) -> Option<String> {
        let text = match self.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => self.line.iter().find(|(k, _)| k == key)?.1.clone(),
        };
        (!text.trim().is_empty()).then_some(text)
    }

    /// `key` from `parameters` as a float; `None` when absent or blank.
    fn f64(&self, key: &str) -> Result<Option<f64>, InfoError> {
        let bad = || InfoError::BadNumber(key.to_owned());
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(bad),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad()),
            Some(_) => Err(bad()),
        }
    }

    /// `key` from `parameters` as an integer (a whole float is accepted).
    fn i64(&self, key: &str) -> Result<Option<i64>, InfoError> {
        let bad = || InfoError::BadNumber(key.to_owned());
        let exact = match self.get(key) {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        match (exact, self.f64(key)?) {
            (Some(i), _) => Ok(Some(i)),
            (None, None) => Ok(None),
            (None, Some(f)) => whole(f).map(Some).ok_or_else(bad),
        }
    }

    /// `key` from `parameters` as a non-negative integer that fits `u32`.
    fn u32(&self, key: &str) -> Result<Option<u32>, InfoError> {
        self.i64(key)?
            .map(|i| u32::try_from(i).map_err(|_| InfoError::BadNumber(key.to_owned())))
            .transpose()
    }

    /// `Size: WxH` from the info text.
    fn text_size(&self) -> Result<Option<(u32, u32)>, InfoError> {
        let Some((_, size)) = self.line.iter().find(|(k, _)| k == "Size") else {
            return Ok(None);
        };
        let bad = || InfoError::BadNumber("Size".to_owned());
        let (w, h) = size.split_once('x').ok_or_else(bad)?;
        let parse = |n: &str| n.trim().parse::<u32>().map_err(|_| bad());
        Ok(Some((parse(w)?, parse(h)?)))
    }

    /// `Module N` entries (from `parameters`, else the info text) in N order, each ending in
    /// `.safetensors`; `None` when there are none.
    fn modules(&self) -> Option<Vec<String>> {
        let from_map = self.map.into_iter().flatten().filter_map(|(k, v)| {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            module_entry(k, text)
        });
        let mut modules: Vec<(u32, String)> = from_map.collect();
        if modules.is_empty() {
            modules = self
                .line
                .iter()
                .filter_map(|(k, v)| module_entry(k, v.clone()))
                .collect();
        }
        modules.sort_by_key(|(n, _)| *n);
        let names: Vec<String> = modules
            .into_iter()
            .map(|(_, name)| {
                if name.ends_with(MODULE_SUFFIX) {
                    name
                } else {
                    name + MODULE_SUFFIX
                }
            })
            .collect();
        (!names.is_empty()).then_some(names)
    }
}

/// `(N, value)` when `key` is `Module N` and the value is not empty.
fn module_entry(key: &str, value: String) -> Option<(u32, String)> {
    let n = key.strip_prefix("Module ")?.parse().ok()?;
    (!value.is_empty()).then_some((n, value))
}

/// A png-info flag: `"True"` (as Forge writes it) or JSON `true`.
fn is_true(value: &Value) -> bool {
    value.as_bool() == Some(true) || value.as_str() == Some("True")
}

/// `f` as an integer when it is whole and within ±2^53 (JavaScript's safe integers).
#[allow(
    clippy::cast_possible_truncation,
    reason = "whole and within ±2^53: exact"
)]
fn whole(f: f64) -> Option<i64> {
    const MAX_SAFE: f64 = 9_007_199_254_740_991.0;
    // The cast also turns -0 into 0, as JavaScript prints it.
    (f.fract() == 0.0 && f.abs() <= MAX_SAFE).then_some(f as i64)
}

/// The `key: value` pairs of the last line of A1111 parameters text
/// (`Steps: 30, Sampler: Euler, Model: "a, b", …`); quoted values are JSON strings.
fn parameter_line(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text.lines().last().unwrap_or_default();
    while let Some(colon) = rest.find(':') {
        let key = &rest[..colon];
        if let Some(comma) = key.find(',') {
            // Text without a key before the next comma: skip it.
            rest = &rest[comma + 1..];
            continue;
        }
        let value = rest[colon + 1..].trim_start();
        let (value, tail) = if let Some(end) = quoted_end(value) {
            let raw = &value[..=end];
            let text = serde_json::from_str(raw).unwrap_or_else(|_| raw.to_owned());
            let tail = value[end + 1..].split_once(',').map_or("", |(_, t)| t);
            (text, tail)
        } else {
            let (v, t) = value.split_once(',').unwrap_or((value, ""));
            (v.trim().to_owned(), t)
        };
        pairs.push((key.trim().to_owned(), value));
        rest = tail;
    }
    pairs
}

/// The index of the closing quote when `value` starts with a quoted string.
fn quoted_end(value: &str) -> Option<usize> {
    if !value.starts_with('"') {
        return None;
    }
    let mut escaped = false;
    for (i, c) in value.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queued txt2img after normalisation with every default.
    fn request() -> Txt2Img {
        Txt2Img {
            model_name: "sdxl_base".into(),
            prompt: "Puppies".into(),
            width: 512,
            height: 512,
            steps: 50,
            hrf_steps: Some(50),
            seed: -1,
            cfg_scale: 7.0,
            distilled_cfg: 3.5,
            sampler_name: "DPM++ 2M".into(),
            scheduler_name: "automatic".into(),
            ..Txt2Img::default()
        }
    }

    fn lists() -> Lists {
        Lists {
            samplers: vec![
                Sampler {
                    name: "DPM++ 2M".into(),
                    aliases: vec!["k_dpmpp_2m".into()],
                },
                Sampler {
                    name: "Euler a".into(),
                    aliases: vec!["k_euler_a".into(), "k_euler_ancestral".into()],
                },
            ],
            schedulers: vec![
                Scheduler {
                    name: "automatic".into(),
                    label: "Automatic".into(),
                },
                Scheduler {
                    name: "karras".into(),
                    label: "Karras".into(),
                },
            ],
            upscalers: vec![
                Upscaler {
                    name: "Latent".into(),
                },
                Upscaler {
                    name: "4x_NMKD-Siax_200k".into(),
                },
            ],
            models: vec!["sdxl_base".into(), "flux1-dev".into()],
        }
    }

    /// The body of `request()` with `hr_upscaler` = `RealESRGAN_x4`.
    fn default_body() -> Value {
        json!({
            "prompt": "Puppies",
            "seed": -1,
            "steps": 50,
            "width": 512,
            "height": 512,
            "cfg_scale": 7,
            "distilled_cfg_scale": 3.5,
            "sampler_name": "DPM++ 2M",
            "scheduler": "automatic",
            "enable_hr": false,
            "hr_upscaler": "RealESRGAN_x4",
            "hr_additional_modules": [],
            "save_images": false,
            "override_settings": {
                "sd_model_checkpoint": "sdxl_base",
                "forge_additional_modules": [],
            },
            "override_settings_restore_afterwards": false,
            "force_task_id": "navigator-59feab77",
        })
    }

    /// `default_body()` with `changes` merged in (new keys at the end).
    fn default_body_with(changes: Value) -> Value {
        let mut body = default_body();
        if let (Value::Object(body), Value::Object(changes)) = (&mut body, changes) {
            body.extend(changes);
        }
        body
    }

    fn txt2img(request: &Txt2Img) -> Value {
        txt2img_body("59feab77", request, "RealESRGAN_x4")
    }

    #[test]
    fn defaults_in_navigator_key_order() {
        let body = txt2img(&request());
        assert_eq!(body, default_body());
        let text = serde_json::to_string(&body).unwrap();
        assert_eq!(text, serde_json::to_string(&default_body()).unwrap());
        assert!(text.starts_with(r#"{"prompt":"Puppies","seed":-1,"steps":50,"#));
    }

    #[test]
    fn negative_prompt_is_sent_when_given() {
        let body = txt2img(&Txt2Img {
            negative_prompt: Some("blurry".into()),
            ..request()
        });
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys[..3], ["prompt", "negative_prompt", "seed"]);
        assert_eq!(body["negative_prompt"], "blurry");
    }

    #[test]
    fn forge_lists_deserialise_ignoring_unknown_fields() {
        let samplers: Vec<Sampler> = serde_json::from_value(json!([
            {"name": "Euler a", "aliases": ["k_euler_a"], "options": {"uses_ensd": "True"}},
            {"name": "LCM"},
        ]))
        .unwrap();
        assert_eq!(samplers[0].aliases, ["k_euler_a"]);
        assert!(samplers[1].aliases.is_empty());
        let schedulers: Vec<Scheduler> = serde_json::from_value(json!([
            {"name": "karras", "label": "Karras", "aliases": null, "default_rho": 7.0,
             "need_inner_model": false},
        ]))
        .unwrap();
        assert_eq!(schedulers[0].label, "Karras");
        let upscalers: Vec<Upscaler> = serde_json::from_value(json!([
            {"name": "R-ESRGAN 4x+", "model_name": null, "model_path": null, "scale": 4},
        ]))
        .unwrap();
        assert_eq!(upscalers[0].name, "R-ESRGAN 4x+");
    }

    #[test]
    fn sampler_alias_resolves_to_canonical_name() {
        assert_eq!(resolve_sampler("k_euler_a", &lists(), false), "Euler a");
        assert_eq!(resolve_sampler("Euler a", &lists(), false), "Euler a");
        assert_eq!(resolve_sampler("k_dpmpp_2m", &lists(), true), "DPM++ 2M");
    }

    #[test]
    fn unknown_txt2img_sampler_passes_through() {
        assert_eq!(resolve_sampler("Heun++", &lists(), false), "Heun++");
        let body = txt2img(&Txt2Img {
            sampler_name: resolve_sampler("Heun++", &lists(), false),
            ..request()
        });
        assert_eq!(body, default_body_with(json!({"sampler_name": "Heun++"})));
    }

    #[test]
    fn unknown_img2img_sampler_takes_the_first() {
        assert_eq!(resolve_sampler("Heun++", &lists(), true), "DPM++ 2M");
        assert_eq!(resolve_sampler("Heun++", &Lists::default(), true), "Heun++");
    }

    #[test]
    fn scheduler_exact_lower_case_retry_and_fallback() {
        assert_eq!(resolve_scheduler("karras", &lists(), true), "karras");
        assert_eq!(resolve_scheduler("Karras", &lists(), true), "karras");
        assert_eq!(
            resolve_scheduler("Exponential", &lists(), true),
            "automatic"
        );
        assert_eq!(resolve_scheduler("", &lists(), true), "automatic");
        assert_eq!(resolve_scheduler("", &Lists::default(), true), "automatic");
        assert_eq!(
            resolve_scheduler("Karras", &Lists::default(), true),
            "Karras"
        );
    }

    #[test]
    fn img2img_scheduler_has_no_lower_case_retry() {
        assert_eq!(resolve_scheduler("karras", &lists(), false), "karras");
        assert_eq!(resolve_scheduler("Karras", &lists(), false), "automatic");
    }

    #[test]
    fn upscaler_fallback_chain() {
        let mut lists = lists();
        assert_eq!(resolve_upscaler(Some("Latent"), &lists), "Latent");
        assert_eq!(
            resolve_upscaler(Some("SwinIR 4x"), &lists),
            "4x_NMKD-Siax_200k"
        );
        assert_eq!(resolve_upscaler(None, &lists), "4x_NMKD-Siax_200k");
        lists.upscalers.retain(|u| u.name != "4x_NMKD-Siax_200k");
        assert_eq!(resolve_upscaler(Some("SwinIR 4x"), &lists), "RealESRGAN_x4");
        assert_eq!(resolve_upscaler(None, &lists), "RealESRGAN_x4");
        let body = txt2img_body("59feab77", &request(), &resolve_upscaler(None, &lists));
        assert_eq!(body, default_body());
    }

    #[test]
    fn img2img_model_resolution() {
        let friendly = [("flux1-dev".to_owned(), "Flux Dev".to_owned())];
        assert_eq!(
            resolve_img2img_model("flux1-dev", &friendly, &lists()),
            "flux1-dev"
        );
        assert_eq!(
            resolve_img2img_model("Flux Dev", &friendly, &lists()),
            "flux1-dev"
        );
        assert_eq!(
            resolve_img2img_model("nope", &friendly, &lists()),
            "sdxl_base"
        );
        assert_eq!(
            resolve_img2img_model("nope", &[], &Lists::default()),
            "nope"
        );
    }

    #[test]
    fn hr_fix_with_default_denoise() {
        let body = txt2img(&Txt2Img {
            steps: 30,
            hrf_steps: Some(20),
            force_hr_fix: true,
            ..request()
        });
        let expected = default_body_with(json!({
            "steps": 30,
            "enable_hr": true,
            "hr_resize_x": 1024,
            "hr_resize_y": 1024,
            "hr_second_pass_steps": 20,
            "denoising_strength": 0.35,
        }));
        assert_eq!(body, expected);
    }

    #[test]
    fn hr_fix_with_own_denoise_and_capped_hires_steps() {
        let body = txt2img(&Txt2Img {
            steps: 30,
            hrf_steps: Some(40),
            force_hr_fix: true,
            denoising_strength: 0.5,
            ..request()
        });
        let expected = default_body_with(json!({
            "steps": 30,
            "enable_hr": true,
            "denoising_strength": 0.5,
            "hr_resize_x": 1024,
            "hr_resize_y": 1024,
            "hr_second_pass_steps": 30,
        }));
        assert_eq!(body, expected);
    }

    #[test]
    fn hr_fix_without_hrf_steps_uses_effective_steps() {
        let body = txt2img(&Txt2Img {
            hrf_steps: None,
            force_hr_fix: true,
            ..request()
        });
        assert_eq!(body["hr_second_pass_steps"], 50);
        assert_eq!(body["enable_hr"], true);
    }

    #[test]
    fn big_image_renders_half_size_with_hires_pass() {
        let body = txt2img(&Txt2Img {
            width: 1536,
            height: 1536,
            ..request()
        });
        let expected = default_body_with(json!({
            "width": 768,
            "height": 768,
            "enable_hr": true,
            "hr_resize_x": 1536,
            "hr_resize_y": 1536,
            "hr_second_pass_steps": 30,
            "denoising_strength": 0.35,
        }));
        assert_eq!(body, expected);
    }

    #[test]
    fn odd_big_image_halves_rounding_up() {
        let body = txt2img(&Txt2Img {
            width: 1100,
            height: 1001,
            steps: 20,
            hrf_steps: Some(20),
            denoising_strength: 0.6,
            ..request()
        });
        let expected = default_body_with(json!({
            "width": 550,
            "height": 501,
            "steps": 20,
            "enable_hr": true,
            "denoising_strength": 0.6,
            "hr_resize_x": 1100,
            "hr_resize_y": 1001,
            "hr_second_pass_steps": 20,
        }));
        assert_eq!(body, expected);
    }

    #[test]
    fn exactly_one_megapixel_is_not_big() {
        let body = txt2img(&Txt2Img {
            width: 1024,
            height: 1024,
            ..request()
        });
        assert_eq!(
            body,
            default_body_with(json!({"width": 1024, "height": 1024}))
        );
    }

    #[test]
    fn enhancements_add_freeu_and_sag() {
        let body = txt2img(&Txt2Img {
            image_enhancements: true,
            ..request()
        });
        let expected = default_body_with(json!({
            "alwayson_scripts": {
                "FreeU Integrated (SD 1.x, SD 2.x, SDXL)": {"args": [true, 1.1, 1.2, 0.6, 0.4, 0, 1]},
                "SelfAttentionGuidance Integrated (SD 1.x, SD 2.x, SDXL)": {"args": [true, 0.5, 2, 1]},
            },
        }));
        assert_eq!(body, expected);
    }

    #[test]
    fn subseed_needs_both_values() {
        let only_seed = Txt2Img {
            subseed: Some(42),
            ..request()
        };
        assert_eq!(txt2img(&only_seed), default_body());
        let zero_strength = Txt2Img {
            subseed_strength: Some(0.0),
            ..only_seed.clone()
        };
        assert_eq!(txt2img(&zero_strength), default_body());
        let both = Txt2Img {
            subseed_strength: Some(0.25),
            ..only_seed
        };
        assert_eq!(
            txt2img(&both),
            default_body_with(json!({"subseed": 42, "subseed_strength": 0.25}))
        );
    }

    #[test]
    fn own_denoise_is_sent() {
        let body = txt2img(&Txt2Img {
            denoising_strength: 0.4,
            ..request()
        });
        assert_eq!(body, default_body_with(json!({"denoising_strength": 0.4})));
    }

    #[test]
    fn modules_go_to_both_places() {
        let modules = vec!["ae.safetensors".to_owned(), "clip_l.safetensors".to_owned()];
        let body = txt2img(&Txt2Img {
            model_name: "flux1-dev".into(),
            modules: Some(modules.clone()),
            ..request()
        });
        let expected = default_body_with(json!({
            "hr_additional_modules": modules,
            "override_settings": {
                "sd_model_checkpoint": "flux1-dev",
                "forge_additional_modules": modules,
            },
        }));
        assert_eq!(body, expected);
    }

    #[test]
    fn num_prints_like_javascript() {
        assert_eq!(serde_json::to_string(&num(7.0)).unwrap(), "7");
        assert_eq!(serde_json::to_string(&num(-0.0)).unwrap(), "0");
        assert_eq!(serde_json::to_string(&num(0.35)).unwrap(), "0.35");
        assert_eq!(num(f64::NAN), Value::Null);
    }

    /// A png-info answer for a 768² first pass (a 1536² big-image job), Forge style: strings.
    fn png_info() -> Value {
        json!({
            "info": "Puppies, \"best\"\nNegative prompt: blurry\nSteps: 40, Sampler: DPM++ 2M, \
                     Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 768x768, \
                     Model hash: 31e35c80fc, Model: sdxl_base, Denoising strength: 0.35, \
                     Variation seed: 99, Variation seed strength: 0.2, Module 1: clip_l, \
                     Version: f2.0.1v1.10.1",
            "items": {},
            "parameters": {
                "Prompt": "Puppies, \"best\"",
                "Negative prompt": "blurry",
                "Steps": "40",
                "Sampler": "DPM++ 2M",
                "Schedule type": "Karras",
                "CFG scale": "7",
                "Seed": "1234567890",
                "Size-1": "768",
                "Size-2": "768",
                "Model hash": "31e35c80fc",
                "Model": "sdxl_base",
                "Denoising strength": "0.35",
                "Variation seed": "99",
                "Variation seed strength": "0.2",
                "Module 2": "ae.safetensors",
                "Module 1": "clip_l",
                "freeu_enabled": "True",
                "owner_id": "123456789012345678",
            },
        })
    }

    /// What `png_info()` becomes without overrides.
    fn upscaled() -> Txt2Img {
        Txt2Img {
            model_name: "sdxl_base".into(),
            prompt: "Puppies, \"best\"".into(),
            negative_prompt: Some("blurry".into()),
            width: 768,
            height: 768,
            steps: 40,
            hrf_steps: Some(40),
            seed: 1_234_567_890,
            cfg_scale: 7.0,
            distilled_cfg: 3.5,
            sampler_name: "DPM++ 2M".into(),
            scheduler_name: "Karras".into(),
            denoising_strength: 0.35,
            force_hr_fix: true,
            subseed: Some(99),
            subseed_strength: Some(0.2),
            image_enhancements: true,
            modules: Some(vec!["clip_l.safetensors".into(), "ae.safetensors".into()]),
            first_pass_image: Some("iVBORw0KGgo=".into()),
            ..Txt2Img::default()
        }
    }

    #[test]
    fn upscale_hrf_from_png_info_strings() {
        let request = upscale_request(
            &png_info(),
            "iVBORw0KGgo=".into(),
            &UpscaleOverrides::default(),
        )
        .unwrap();
        assert_eq!(request, upscaled());

        let body = txt2img(&request);
        let modules = json!(["clip_l.safetensors", "ae.safetensors"]);
        let expected = json!({
            "prompt": "Puppies, \"best\"",
            "negative_prompt": "blurry",
            "seed": 1_234_567_890,
            "steps": 40,
            "width": 768,
            "height": 768,
            "cfg_scale": 7,
            "distilled_cfg_scale": 3.5,
            "sampler_name": "DPM++ 2M",
            "scheduler": "Karras",
            "enable_hr": true,
            "hr_upscaler": "RealESRGAN_x4",
            "hr_additional_modules": modules,
            "save_images": false,
            "override_settings": {
                "sd_model_checkpoint": "sdxl_base",
                "forge_additional_modules": modules,
            },
            "override_settings_restore_afterwards": false,
            "force_task_id": "navigator-59feab77",
            "alwayson_scripts": enhancements(),
            "denoising_strength": 0.35,
            "subseed": 99,
            "subseed_strength": 0.2,
            "firstpass_image": "iVBORw0KGgo=",
            "hr_resize_x": 1536,
            "hr_resize_y": 1536,
            "hr_second_pass_steps": 40,
        });
        assert_eq!(body, expected);
    }

    #[test]
    fn upscale_hrf_from_png_info_numbers_with_overrides() {
        let info = json!({
            "info": "Kittens\nSteps: 20, Sampler: Euler, CFG scale: 1, Seed: 7, Size: 832x1216, \
                     Model: \"flux1-dev, fp8\", Module 1: ae, Distilled CFG Scale: 3",
            "parameters": {
                "Prompt": "Kittens",
                "Steps": 20,
                "Sampler": "Euler",
                "CFG scale": 1.0,
                "Seed": 7,
                "distilled_cfg": 3,
                "sag_enabled": "False",
            },
        });
        let overrides = UpscaleOverrides {
            upscaler_name: Some("Latent".into()),
            denoising_strength: Some(0.5),
            hrf_steps: Some(35),
        };
        let request = upscale_request(&info, "AAAA".into(), &overrides).unwrap();
        let expected = Txt2Img {
            model_name: "flux1-dev, fp8".into(),
            prompt: "Kittens".into(),
            width: 832,
            height: 1216,
            steps: 20,
            hrf_steps: Some(35),
            seed: 7,
            cfg_scale: 1.0,
            distilled_cfg: 3.0,
            sampler_name: "Euler".into(),
            scheduler_name: "automatic".into(),
            denoising_strength: 0.5,
            force_hr_fix: true,
            upscaler_name: Some("Latent".into()),
            modules: Some(vec!["ae.safetensors".into()]),
            first_pass_image: Some("AAAA".into()),
            ..Txt2Img::default()
        };
        assert_eq!(request, expected);

        let body = txt2img_body("59feab77", &request, "Latent");
        assert_eq!(body["hr_resize_x"], 1664);
        assert_eq!(body["hr_resize_y"], 2432);
        assert_eq!(body["hr_second_pass_steps"], 35);
        assert_eq!(body["cfg_scale"], json!(1));
        assert_eq!(body["distilled_cfg_scale"], json!(3));
        assert_eq!(body["denoising_strength"], json!(0.5));
        assert_eq!(body["hr_upscaler"], "Latent");
        assert!(body.get("alwayson_scripts").is_none());
        assert!(body.get("negative_prompt").is_none());
    }

    #[test]
    fn upscale_hrf_rejects_unusable_png_info() {
        let none = UpscaleOverrides::default();
        let no_params = json!({"info": "", "items": {}});
        assert_eq!(
            upscale_request(&no_params, String::new(), &none),
            Err(InfoError::MissingPrompt)
        );
        let no_size = json!({"info": "x\nSteps: 20", "parameters": {"Prompt": "x", "Model": "m"}});
        assert_eq!(
            upscale_request(&no_size, String::new(), &none),
            Err(InfoError::MissingSize)
        );
        let no_model = json!({"parameters": {"Prompt": "x", "Size-1": "8", "Size-2": "8"}});
        assert_eq!(
            upscale_request(&no_model, String::new(), &none),
            Err(InfoError::MissingModel)
        );
        let mut bad_steps = png_info();
        bad_steps["parameters"]["Steps"] = json!("many");
        let error = upscale_request(&bad_steps, String::new(), &none).unwrap_err();
        assert_eq!(error, InfoError::BadNumber("Steps".into()));
        assert_eq!(
            error.to_string(),
            "png info value `Steps` is not a valid number"
        );
        assert_eq!(
            InfoError::MissingPrompt.to_string(),
            "png info has no prompt"
        );
    }

    #[test]
    fn upscale_size_limit() {
        assert!(size_limit_ok(960, 960, 3_686_400));
        assert!(!size_limit_ok(961, 960, 3_686_400));
        assert!(!size_limit_ok(u32::MAX, u32::MAX, u64::MAX));
    }

    /// An img2img after queue-time resolution.
    fn img2img_request() -> Txt2Img {
        Txt2Img {
            task: Task::Img2Img,
            steps: 100,
            seed: 0,
            scheduler_name: "karras".into(),
            init_image: Some("INIT".into()),
            mask: Some("MASK".into()),
            image_enhancements: true,
            ..request()
        }
    }

    fn img2img_expected() -> Value {
        json!({
            "force_task_id": "navigator-59feab77",
            "prompt": "Puppies",
            "negative_prompt": "",
            "seed": -1,
            "subseed": -1,
            "subseed_strength": 0,
            "sampler_name": "DPM++ 2M",
            "scheduler": "karras",
            "steps": 75,
            "cfg_scale": 7,
            "width": 512,
            "height": 512,
            "denoising_strength": 0.75,
            "init_images": ["INIT"],
            "override_settings": {"sd_model_checkpoint": "sdxl_base"},
            "override_settings_restore_afterwards": false,
            "save_images": false,
            "alwayson_scripts": enhancements(),
            "mask": "MASK",
            "initial_noise_multiplier": 1,
            "inpaint_full_res": 1,
            "mask_blur": 4,
            "mask_blur_x": 4,
            "mask_blur_y": 4,
            "mask_round": true,
            "inpainting_fill": 1,
            "inpaint_full_res_padding": 32,
            "inpainting_mask_invert": 0,
            "image_cfg_scale": 1.5,
        })
    }

    #[test]
    fn img2img_with_mask_and_init_image() {
        let (endpoint, body) = body("59feab77", &img2img_request(), "ignored");
        assert_eq!(endpoint, "img2img");
        assert_eq!(body, img2img_expected());
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            serde_json::to_string(&img2img_expected()).unwrap()
        );
    }

    #[test]
    fn img2img_without_mask_or_init_image() {
        let request = Txt2Img {
            mask: Some(String::new()),
            init_image: None,
            image_enhancements: false,
            denoising_strength: 0.3,
            negative_prompt: Some("blurry".into()),
            seed: 5,
            steps: 30,
            ..img2img_request()
        };
        let mut expected = img2img_expected();
        let object = expected.as_object_mut().unwrap();
        object.remove("mask");
        object.remove("alwayson_scripts");
        object.insert("init_images".into(), json!([]));
        object.insert("denoising_strength".into(), json!(0.3));
        object.insert("negative_prompt".into(), json!("blurry"));
        object.insert("seed".into(), json!(5));
        object.insert("steps".into(), json!(30));
        assert_eq!(img2img_body("59feab77", &request), expected);
    }

    #[test]
    fn body_dispatches_txt2img() {
        let (endpoint, body) = body("59feab77", &request(), "RealESRGAN_x4");
        assert_eq!(endpoint, "txt2img");
        assert_eq!(body, default_body());
    }

    #[test]
    fn parameter_line_handles_quotes() {
        let pairs = parameter_line("p\nSteps: 20, Lora hashes: \"a: 1, b: 2\", Size: 8x9");
        assert_eq!(
            pairs,
            [
                ("Steps".to_owned(), "20".to_owned()),
                ("Lora hashes".to_owned(), "a: 1, b: 2".to_owned()),
                ("Size".to_owned(), "8x9".to_owned()),
            ]
        );
    }
}
