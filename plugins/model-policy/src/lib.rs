//! easel's default model policy: which model and limits a request gets.
//!
//! In order:
//! - no steps (0) → `default_steps` (50); no cfg (0, or not a finite number) → `default_cfg`
//!   (7.5; a negative cfg is the user's choice, as the seed passed it on); more steps than
//!   `max_steps` (150) → `max_steps` (capped, not refused);
//! - no model ("") → `default_model` ("": the backend's own);
//! - width × height above the operator's `max-pixels` (both given) → refused with BitForged
//!   Navigator's message;
//! - a model found in the catalog by its name, or by its friendly name (then rewritten to the
//!   name), that is restricted → refused below role `restricted_min_role` (3, architect);
//! - else the (adjusted) request runs.

wit_bindgen::generate!({
    path: "../../wit",
    world: "model-policy-plugin",
});

use easel::plugin::host;
use easel::plugin::types::{Caller, JobRequest};
use exports::easel::plugin::model_policy::{Guest, Limits, Model, Verdict};
use guest_kit::Settings;

struct ModelPolicy;

fn settings() -> Settings {
    Settings::new(host::config()).on_error(|err| {
        host::log(host::Level::Warn, &format!("{err}; using the default"));
    })
}

/// A step count setting, saturated to what a request holds.
fn steps(settings: &Settings, key: &str, default: u64) -> u32 {
    u32::try_from(settings.u64(key, default)).unwrap_or(u32::MAX)
}

impl Guest for ModelPolicy {
    fn decide(
        mut request: JobRequest,
        caller: Caller,
        catalog: Vec<Model>,
        limits: Limits,
    ) -> Verdict {
        let settings = settings();
        if request.steps == 0 {
            request.steps = steps(&settings, "default_steps", 50);
        }
        if !request.cfg.is_finite() || request.cfg == 0.0 {
            request.cfg = settings.f64("default_cfg", 7.5);
        }
        request.steps = request.steps.min(steps(&settings, "max_steps", 150));
        if request.model.is_empty() {
            request.model = settings.string("default_model", "");
        }
        if request.width != 0 && request.height != 0 {
            let pixels = u64::from(request.width) * u64::from(request.height);
            if pixels > limits.max_pixels {
                return Verdict::Deny(format!(
                    "The total value of (Width * Height) must not exceed {}",
                    limits.max_pixels
                ));
            }
        }
        if !request.model.is_empty() {
            let found = catalog
                .iter()
                .find(|m| m.name == request.model)
                .or_else(|| {
                    catalog
                        .iter()
                        .find(|m| m.friendly_name.as_deref() == Some(request.model.as_str()))
                });
            if let Some(model) = found {
                request.model = model.name.clone();
                let min_role = settings.u64("restricted_min_role", 3);
                if model.restricted && u64::from(caller.role) < min_role {
                    return Verdict::Deny(format!("The model {} is restricted.", model.name));
                }
            }
        }
        Verdict::Allow(request)
    }
}

export!(ModelPolicy);
