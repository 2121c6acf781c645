//! The simulated backend's catalog: what `/api/models`, `/api/samplers`, `/api/schedulers`,
//! `/api/upscalers` and `/api/modules` answer when no Forge machine is configured. The names
//! are Forge's own, so a client written for Navigator finds what it expects.

use serde_json::{Value, json};

use crate::forge::ListKind;

/// The checkpoints the simulated backend "has".
pub const MODELS: [&str; 3] = ["sd_xl_base_1.0", "flux1-dev", "v1-5-pruned-emaonly"];

/// Forge's samplers with their aliases (the first 24 are what `/api/samplers` shows).
const SAMPLERS: [(&str, &[&str]); 30] = [
    ("DPM++ 2M", &["k_dpmpp_2m"]),
    ("DPM++ SDE", &["k_dpmpp_sde"]),
    ("DPM++ 2M SDE", &["k_dpmpp_2m_sde"]),
    ("DPM++ 2M SDE Heun", &["k_dpmpp_2m_sde_heun"]),
    ("DPM++ 2S a", &["k_dpmpp_2s_a"]),
    ("DPM++ 3M SDE", &["k_dpmpp_3m_sde"]),
    ("Euler a", &["k_euler_a", "k_euler_ancestral"]),
    ("Euler", &["k_euler"]),
    ("LMS", &["k_lms"]),
    ("Heun", &["k_heun"]),
    ("DPM2", &["k_dpm_2"]),
    ("DPM2 a", &["k_dpm_2_a"]),
    ("DPM fast", &["k_dpm_fast"]),
    ("DPM adaptive", &["k_dpm_ad"]),
    ("Restart", &["restart"]),
    ("HeunPP2", &["heunpp2"]),
    ("IPNDM", &["ipndm"]),
    ("IPNDM_V", &["ipndm_v"]),
    ("DEIS", &["deis"]),
    ("Euler CFG++", &["euler_cfg_pp"]),
    ("Euler a CFG++", &["euler_ancestral_cfg_pp"]),
    ("DPM++ 2M CFG++", &["dpmpp_2m_cfg_pp"]),
    ("DPM++ 2S a CFG++", &["dpmpp_2s_ancestral_cfg_pp"]),
    ("DDIM", &["ddim"]),
    ("DDIM CFG++", &["ddim_cfg_pp"]),
    ("PLMS", &["plms"]),
    ("UniPC", &["unipc"]),
    ("LCM", &["k_lcm"]),
    ("DDPM", &["ddpm"]),
    ("[Forge] Flux Realistic", &["flux_realistic"]),
];

const SCHEDULERS: [(&str, &str); 9] = [
    ("automatic", "Automatic"),
    ("uniform", "Uniform"),
    ("karras", "Karras"),
    ("exponential", "Exponential"),
    ("polyexponential", "Polyexponential"),
    ("sgm_uniform", "SGM Uniform"),
    ("kl_optimal", "KL Optimal"),
    ("simple", "Simple"),
    ("beta", "Beta"),
];

const UPSCALERS: [&str; 7] = [
    "None",
    "Lanczos",
    "Nearest",
    "ESRGAN_4x",
    "R-ESRGAN 4x+",
    "4x_NMKD-Siax_200k",
    "SwinIR 4x",
];

const MODULES: [&str; 4] = ["ae", "clip_l", "t5xxl_fp16", "sdxl_vae"];

/// The label Forge writes in png-info for a scheduler name (`karras` → `Karras`).
pub fn scheduler_label(name: &str) -> &str {
    SCHEDULERS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(name, |(_, label)| label)
}

/// A short stable hash of a name, as Forge shows model hashes.
fn hash(name: &str) -> String {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// One list, in Forge's shape.
pub fn catalog(kind: ListKind) -> Vec<Value> {
    match kind {
        ListKind::Models => MODELS
            .iter()
            .map(|name| {
                let sha = hash(name).repeat(4);
                json!({
                    "title": format!("{name}.safetensors [{}]", &sha[..10]),
                    "model_name": name,
                    "hash": &sha[..8],
                    "sha256": sha,
                    "filename": format!("/models/Stable-diffusion/{name}.safetensors"),
                    "config": null,
                })
            })
            .collect(),
        ListKind::Samplers => SAMPLERS
            .iter()
            .map(|(name, aliases)| json!({"name": name, "aliases": aliases, "options": {}}))
            .collect(),
        ListKind::Schedulers => SCHEDULERS
            .iter()
            .map(|(name, label)| {
                json!({"name": name, "label": label, "aliases": null, "default_rho": -1,
                       "need_inner_model": false})
            })
            .collect(),
        ListKind::Upscalers => UPSCALERS
            .iter()
            .map(|name| {
                json!({"name": name, "model_name": null, "model_path": null, "model_url": null,
                       "scale": 4})
            })
            .collect(),
        ListKind::Modules => MODULES
            .iter()
            .map(|name| {
                json!({"model_name": name, "filename": format!("/models/VAE/{name}.safetensors")})
            })
            .collect(),
    }
}
