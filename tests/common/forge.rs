//! A fake Stable Diffusion Forge (AUTOMATIC1111 API) on 127.0.0.1, for tests without a GPU.
//!
//! [`FakeForge::start`] serves what Navigator-style clients use: the `/sdapi/v1` lists, options,
//! txt2img, img2img, progress, png-info, interrupt, unload-checkpoint and
//! `POST /internal/progress`, on a fresh port. Every request is recorded ([`Recorded`]) before
//! anything else happens to it. Generation is simulated one at a time (`steps × steps_ms`) with
//! live progress and a preview PNG per step; the answer is a small PNG (each side ≤ 64, pixels
//! from seed and step, with a `parameters` text chunk), the echoed request and Forge's `info`
//! JSON string; png-info of an image it made returns that image's parameters.
//! Where it matters it behaves as Forge's `modules/api/api.py` and `modules/progress.py`: an
//! unknown checkpoint or scheduler → 500, an unknown sampler → the first sampler, an unknown
//! always-on script → 422, `/sdapi/v1/progress` and `/internal/*` need no auth.
//! Failures: [`FakeForge::fail_next`], [`FakeForge::die_during_next_generation`],
//! [`FakeForge::stop`]. Everything stops when the [`FakeForge`] is dropped.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// One request as received (recorded before the auth check).
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The JSON body; a body that is not JSON is kept as a JSON string; `None` when empty.
    pub body: Option<Value>,
    pub authorization: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ForgeOptions {
    /// `model_name`s; titles are [`FakeForge::model_title`] (`<name>.safetensors [<hash>]`).
    pub models: Vec<String>,
    /// Model loaded at start (a name, or anything Forge accepts for it).
    pub loaded: Option<String>,
    /// Time per sampling step; 0 = instant.
    pub steps_ms: u64,
    /// When set, `/sdapi/v1/*` except `/sdapi/v1/progress` needs this Basic auth (else 401).
    pub basic_auth: Option<(String, String)>,
    /// Replaces the upscaler names (the default list starts with "None").
    pub upscalers: Option<Vec<String>>,
    /// What `/sdapi/v1/loras` lists (`{name, alias, path, metadata}`).
    pub loras: Vec<Value>,
    /// The names `/sdapi/v1/embeddings` lists as loaded.
    pub embeddings: Vec<String>,
}

impl Default for ForgeOptions {
    fn default() -> Self {
        ForgeOptions {
            models: vec!["sd_xl_base_1.0".into(), "flux1-dev".into()],
            loaded: Some("sd_xl_base_1.0".into()),
            steps_ms: 0,
            basic_auth: None,
            upscalers: None,
            loras: Vec::new(),
            embeddings: Vec::new(),
        }
    }
}

const VERSION: &str = "f2.0.1v1.10.1-previous-664-gd557aef9";
/// (name, aliases, options) as Forge lists its samplers; options are strings as the API sends.
type Sampler = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);
const K: (&str, &str) = ("scheduler", "karras");
const E: (&str, &str) = ("scheduler", "exponential");
const T: &str = "True";
#[rustfmt::skip]
const SAMPLERS: &[Sampler] = &[
    ("DPM++ 2M", &["k_dpmpp_2m"], &[K]),
    ("DPM++ SDE", &["k_dpmpp_sde"], &[K, ("second_order", T), ("brownian_noise", T)]),
    ("DPM++ 2M SDE", &["k_dpmpp_2m_sde"], &[E, ("brownian_noise", T)]),
    ("DPM++ 2M SDE Heun", &["k_dpmpp_2m_sde_heun"], &[E, ("brownian_noise", T), ("solver_type", "heun")]),
    ("DPM++ 2S a", &["k_dpmpp_2s_a"], &[K, ("uses_ensd", T), ("second_order", T)]),
    ("DPM++ 3M SDE", &["k_dpmpp_3m_sde"], &[E, ("discard_next_to_last_sigma", T), ("brownian_noise", T)]),
    ("Euler a", &["k_euler_a", "k_euler_ancestral"], &[("uses_ensd", T)]),
    ("Euler", &["k_euler"], &[]), ("LMS", &["k_lms"], &[]), ("Heun", &["k_heun"], &[("second_order", T)]),
    ("DPM2", &["k_dpm_2"], &[K, ("discard_next_to_last_sigma", T), ("second_order", T)]),
    ("DPM2 a", &["k_dpm_2_a"], &[K, ("discard_next_to_last_sigma", T), ("uses_ensd", T)]),
    ("DPM fast", &["k_dpm_fast"], &[("uses_ensd", T)]), ("DPM adaptive", &["k_dpm_ad"], &[("uses_ensd", T)]),
    ("Restart", &["restart"], &[K, ("second_order", T)]), ("Euler CFG++", &["euler_cfg_pp"], &[]),
    ("Euler a CFG++", &["euler_ancestral_cfg_pp"], &[("uses_ensd", T)]),
    ("DPM++ 2M CFG++", &["dpmpp_2m_cfg_pp"], &[]), ("DPM++ 2s a CFG++", &["dpmpp_2s_a_cfg_pp"], &[]),
    ("Heun PP2", &["heunpp2"], &[("second_order", T)]), ("IPNDM", &["ipndm"], &[]), ("IPNDM_V", &["ipndm_v"], &[]),
    ("DEIS", &["deis"], &[]), ("DDIM", &["ddim"], &[]), ("DDIM CFG++", &["ddim_cfgpp"], &[]), ("PLMS", &["plms"], &[]),
    ("UniPC", &["unipc"], &[]), ("LCM", &["k_lcm"], &[]), ("DDPM", &["ddpm"], &[]), ("DDPM Karras", &["ddpm_karras"], &[]),
    ("DPM++ 2M Turbo", &["dpmpp_2m_turbo"], &[]), ("DPM++ 2M SDE Turbo", &["dpmpp_2m_sde_turbo"], &[]),
    ("LCM Karras", &["lcm_karras"], &[]),
];
/// (name, label, aliases, default_rho, need_inner_model), as Forge's `sd_schedulers.py`.
#[rustfmt::skip]
const SCHEDULERS: &[(&str, &str, &[&str], f64, bool)] = &[
    ("automatic", "Automatic", &[], -1.0, false), ("uniform", "Uniform", &[], -1.0, true),
    ("karras", "Karras", &[], 7.0, false), ("exponential", "Exponential", &[], -1.0, false),
    ("polyexponential", "Polyexponential", &[], 1.0, false),
    ("sgm_uniform", "SGM Uniform", &["SGMUniform"], -1.0, true), ("kl_optimal", "KL Optimal", &[], -1.0, false),
    ("align_your_steps", "Align Your Steps", &[], -1.0, false), ("simple", "Simple", &[], -1.0, true),
    ("normal", "Normal", &[], -1.0, true), ("ddim", "DDIM", &[], -1.0, true), ("beta", "Beta", &[], -1.0, true),
    ("turbo", "Turbo", &[], -1.0, true),
];
#[rustfmt::skip]
const UPSCALERS: &[&str] = &["None", "Lanczos", "Nearest", "DAT x2", "DAT x4", "ESRGAN_4x", "LDSR", "R-ESRGAN 4x+",
    "R-ESRGAN 4x+ Anime6B", "ScuNET GAN", "SwinIR 4x", "4x_NMKD-Siax_200k"];
#[rustfmt::skip]
const MODULES: &[&str] = &["VAE/ae.safetensors", "VAE/sdxl_vae.safetensors", "text_encoder/clip_l.safetensors",
    "text_encoder/t5xxl_fp16.safetensors"];
/// Always-on script titles accepted in `alwayson_scripts` (matched case-insensitively).
#[rustfmt::skip]
const SCRIPTS: &[&str] = &["FreeU Integrated (SD 1.x, SD 2.x, SDXL)",
    "SelfAttentionGuidance Integrated (SD 1.x, SD 2.x, SDXL)", "ControlNet", "Dynamic Thresholding (CFG-Fix) Integrated",
    "Kohya HRFix Integrated", "LatentModifier Integrated", "MultiDiffusion Integrated",
    "PerturbedAttentionGuidance Integrated", "Refiner", "Sampler", "Seed"];

/// The running fake; see the module docs.
pub struct FakeForge {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

struct Shared {
    opts: ForgeOptions,
    st: Mutex<St>,
    gpu: tokio::sync::Mutex<()>,
    wake: Notify,
    kill: watch::Sender<bool>,
    server: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct St {
    recorded: Vec<Recorded>,
    loaded: Option<String>,
    swaps: usize,
    interrupted: usize,
    interrupt: bool,
    job: Option<Job>,
    pending: Vec<String>,
    finished: Vec<String>,
    fail_next: Option<(u16, Value)>,
    die_next: bool,
    infos: HashMap<String, Value>,
    rng: u64,
}

struct Job {
    task: String,
    kind: &'static str,
    step: u64,
    steps: u64,
    preview: Option<String>,
    started: Instant,
    timestamp: String,
}

impl FakeForge {
    /// Binds 127.0.0.1:0 and serves on the current tokio runtime; listening on return.
    pub async fn start(options: ForgeOptions) -> FakeForge {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("fake forge address");
        let loaded = options.loaded.as_ref();
        let loaded = loaded.map(|l| resolve(&options.models, l).unwrap_or_else(|| l.clone()));
        let rng = now().as_nanos() as u64 | 1;
        let (kill, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            opts: options,
            st: Mutex::new(St {
                loaded,
                rng,
                ..St::default()
            }),
            gpu: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            kill,
            server: Mutex::new(None),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let app = app.layer(DefaultBodyLimit::max(256 << 20));
        let listener = Killable {
            tcp,
            kill: shared.kill.subscribe(),
        };
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *lock(&shared.server) = Some(server);
        FakeForge { shared, addr }
    }

    /// `http://127.0.0.1:<port>` (no trailing slash, no `/sdapi/v1`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// `<name>.safetensors [<hash>]`, as `/sd-models` and `/options` show it.
    pub fn model_title(name: &str) -> String {
        format!("{name}.safetensors [{}]", FakeForge::model_hash(name))
    }
    /// The short hash (10 hex, the start of the fake sha256), written as `Model hash`.
    pub fn model_hash(name: &str) -> String {
        sha256(name)[..10].to_string()
    }
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.st().recorded.clone()
    }
    /// Bodies of the POSTs to exactly `path` (e.g. "/sdapi/v1/txt2img"), oldest first.
    pub fn bodies(&self, path: &str) -> Vec<Value> {
        let st = self.shared.st();
        let posts = st
            .recorded
            .iter()
            .filter(|r| r.method == "POST" && r.path == path);
        posts.filter_map(|r| r.body.clone()).collect()
    }
    pub fn count(&self, method: &str, path: &str) -> usize {
        let st = self.shared.st();
        let same = |r: &&Recorded| r.method.eq_ignore_ascii_case(method) && r.path == path;
        st.recorded.iter().filter(same).count()
    }
    /// Checkpoint loads by generations and `POST /options` (a load after an unload counts).
    pub fn swaps(&self) -> usize {
        self.shared.st().swaps
    }
    /// Generations that an interrupt ended before their last step.
    pub fn interrupted(&self) -> usize {
        self.shared.st().interrupted
    }
    /// The loaded model's `model_name`.
    pub fn loaded(&self) -> Option<String> {
        self.shared.st().loaded.clone()
    }
    /// The running generation: (task id, finished steps, total steps).
    pub fn current_job(&self) -> Option<(String, u64, u64)> {
        let st = self.shared.st();
        st.job.as_ref().map(|j| (j.task.clone(), j.step, j.steps))
    }
    /// The next txt2img/img2img answers `status` with `body` (before any validation).
    pub fn fail_next(&self, status: u16, body: Value) {
        self.shared.st().fail_next = Some((status, body));
    }
    /// The next generation runs one step, then the server dies: no answer, port closed.
    pub fn die_during_next_generation(&self) {
        self.shared.st().die_next = true;
    }
    /// Dies now: open connections are dropped; the port refuses connections on return.
    pub async fn stop(&self) {
        self.shared.die().await;
    }
}

impl Drop for FakeForge {
    fn drop(&mut self) {
        self.shared.kill.send_replace(true);
        if let Some(server) = lock(&self.shared.server).take() {
            server.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl Shared {
    fn st(&self) -> MutexGuard<'_, St> {
        lock(&self.st)
    }

    async fn die(&self) {
        self.kill.send_replace(true);
        let server = lock(&self.server).take();
        if let Some(server) = server {
            server.abort();
            let _ = server.await;
        }
    }
}

impl St {
    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Makes `name` the loaded model, counting a swap when it changes.
    fn load(&mut self, name: String) {
        if self.loaded.as_ref() != Some(&name) {
            self.swaps += 1;
            self.loaded = Some(name);
        }
    }
}

/// The model for anything Forge's checkpoint aliases accept (name, file, title, hashes).
fn resolve(models: &[String], value: &str) -> Option<String> {
    let matches = |m: &&String| {
        let sha = sha256(m);
        let file = format!("{m}.safetensors");
        let title = FakeForge::model_title(m);
        let aliases: [&str; 5] = [m, &file, &title, &sha[..10], &sha];
        aliases.contains(&value)
    };
    models.iter().find(matches).cloned()
}

/// A stable fake sha256 (64 hex) of a model name.
fn sha256(name: &str) -> String {
    let fnv = |salt: u64| {
        let mix = |h: u64, b: u8| (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        name.bytes().fold(0xcbf2_9ce4_8422_2325 ^ salt, mix)
    };
    (0..4).map(|salt| format!("{:016x}", fnv(salt))).collect()
}

fn ok(body: Value) -> Response {
    Json(body).into_response()
}

fn reply(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

/// FastAPI's validation error.
fn invalid(field: &str, msg: &str, kind: &str) -> Response {
    let loc: Vec<&str> = ["body", field]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    reply(
        422,
        json!({"detail": [{"loc": loc, "msg": msg, "type": kind}]}),
    )
}

/// A1111's `api_middleware` error shape for an exception.
fn server_error(kind: &str, msg: String) -> Response {
    reply(
        500,
        json!({"error": kind, "detail": "", "body": "", "errors": msg}),
    )
}

async fn handle(
    State(sh): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let body = match serde_json::from_slice::<Value>(&bytes) {
        _ if bytes.is_empty() => None,
        Ok(v) => Some(v),
        Err(_) => Some(Value::String(String::from_utf8_lossy(&bytes).into_owned())),
    };
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    sh.st().recorded.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().map(String::from),
        body: body.clone(),
        authorization: auth.map(String::from),
    });
    if let Some(denied) = check_auth(&sh.opts, &path, auth) {
        return denied;
    }
    let body = body.unwrap_or(Value::Null);
    let models = &sh.opts.models;
    let answer = match (method.as_str(), path.as_str()) {
        ("GET", "/sdapi/v1/options") => {
            let loaded = sh.st().loaded.clone();
            json!({
                "sd_model_checkpoint": loaded.as_deref().map(FakeForge::model_title),
                "sd_checkpoint_hash": loaded.as_deref().map(sha256), "sd_vae": "Automatic",
                "CLIP_stop_at_last_layers": 1, "samples_format": "png", "forge_preset": "all",
                "forge_additional_modules": [], "live_previews_enable": true,
                "show_progress_every_n_steps": 1,
            })
        }
        ("POST", "/sdapi/v1/options") => {
            if let Some(ckpt) = body.get("sd_model_checkpoint").and_then(Value::as_str) {
                let Some(name) = resolve(models, ckpt) else {
                    return server_error("RuntimeError", format!("model '{ckpt}' not found"));
                };
                sh.st().load(name);
            }
            Value::Null
        }
        ("GET", "/sdapi/v1/sd-models") => Value::from_iter(models.iter().map(|m| {
            let filename = format!("/forge/models/Stable-diffusion/{m}.safetensors");
            json!({"title": FakeForge::model_title(m), "model_name": m,
                "hash": FakeForge::model_hash(m), "sha256": sha256(m), "filename": filename,
                "config": null})
        })),
        ("GET", "/sdapi/v1/samplers") => Value::from_iter(SAMPLERS.iter().map(|(name, a, o)| {
            let options: Map<String, Value> =
                o.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            json!({"name": name, "aliases": a, "options": options})
        })),
        ("GET", "/sdapi/v1/schedulers") => Value::from_iter(SCHEDULERS.iter().map(|s| {
            let aliases = if s.2.is_empty() {
                Value::Null
            } else {
                json!(s.2)
            };
            json!({"name": s.0, "label": s.1, "aliases": aliases, "default_rho": s.3,
                "need_inner_model": s.4})
        })),
        ("GET", "/sdapi/v1/upscalers") => {
            let default = || UPSCALERS.iter().map(|s| s.to_string()).collect();
            let names: Vec<String> = sh.opts.upscalers.clone().unwrap_or_else(default);
            Value::from_iter(names.iter().map(|n| {
                let builtin = ["None", "Lanczos", "Nearest"].contains(&n.as_str());
                let file = (!builtin).then(|| format!("/forge/models/ESRGAN/{n}.pth"));
                json!({"name": n, "model_name": file.as_ref().map(|_| n), "model_path": file,
                    "model_url": null, "scale": 4.0})
            }))
        }
        ("GET", "/sdapi/v1/sd-modules") => Value::from_iter(MODULES.iter().map(|m| {
            let name = m.rsplit('/').next().unwrap_or(m);
            json!({"model_name": name, "filename": format!("/forge/models/{m}")})
        })),
        ("GET", "/sdapi/v1/loras") => Value::from(sh.opts.loras.clone()),
        ("GET", "/sdapi/v1/embeddings") => {
            let loaded: Map<String, Value> = sh
                .opts
                .embeddings
                .iter()
                .map(|name| {
                    let about = json!({"step": null, "sd_checkpoint": null,
                    "sd_checkpoint_name": null, "shape": 768, "vectors": 1});
                    (name.clone(), about)
                })
                .collect();
            json!({"loaded": loaded, "skipped": {}})
        }
        ("POST", "/sdapi/v1/refresh-checkpoints" | "/sdapi/v1/refresh-loras") => Value::Null,
        ("POST", "/sdapi/v1/refresh-embeddings") => Value::Null,
        ("POST", "/sdapi/v1/txt2img") => return generate(&sh, "txt2img", body).await,
        ("POST", "/sdapi/v1/img2img") => return generate(&sh, "img2img", body).await,
        ("POST", "/internal/progress") => internal_progress(&sh.st(), &body),
        ("GET", "/sdapi/v1/progress") => {
            let skip = uri
                .query()
                .unwrap_or("")
                .split('&')
                .any(|kv| kv == "skip_current_image=true");
            progress(&sh.st(), skip)
        }
        ("POST", "/sdapi/v1/png-info") => return png_info(&sh, &body),
        ("POST", "/sdapi/v1/interrupt") => {
            sh.st().interrupt = true;
            sh.wake.notify_waiters();
            json!({})
        }
        ("POST", "/sdapi/v1/unload-checkpoint") => {
            sh.st().loaded = None;
            json!({})
        }
        (_, p) if p.starts_with("/sdapi/v1/") || p == "/internal/progress" => {
            return reply(405, json!({"detail": "Method Not Allowed"}));
        }
        _ => return reply(404, json!({"detail": "Not Found"})),
    };
    ok(answer)
}

fn check_auth(opts: &ForgeOptions, path: &str, header: Option<&str>) -> Option<Response> {
    let (user, pass) = opts.basic_auth.as_ref()?;
    if !path.starts_with("/sdapi/") || path == "/sdapi/v1/progress" {
        return None;
    }
    let detail = match header.and_then(|h| h.strip_prefix("Basic ")) {
        None => "Not authenticated",
        Some(b64) => {
            let given = B64
                .decode(b64.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            if given == Some(format!("{user}:{pass}")) {
                return None;
            }
            "Incorrect username or password"
        }
    };
    let mut response = reply(401, json!({ "detail": detail }));
    let basic = HeaderValue::from_static("Basic");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, basic);
    Some(response)
}

/// A number or numeric string (pydantic coerces both).
fn num(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A number as it appears in infotext: `7`, `7.5`, `0.35`.
fn fmt(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        (x as i64).to_string()
    } else {
        x.to_string()
    }
}

/// Quotes like A1111's `infotext_utils.quote`.
fn quote(v: &str) -> String {
    if v.contains([',', '\n', ':']) {
        Value::from(v).to_string()
    } else {
        v.to_string()
    }
}

async fn generate(sh: &Arc<Shared>, kind: &'static str, body: Value) -> Response {
    if let Some((status, body)) = sh.st().fail_next.take() {
        return reply(status, body);
    }
    let Value::Object(req) = body else {
        return invalid("", "value is not a valid dict", "type_error.dict");
    };
    let prompt = match req.get("prompt") {
        None => return invalid("prompt", "field required", "value_error.missing"),
        Some(Value::String(p)) => p.clone(),
        Some(_) => return invalid("prompt", "str type expected", "type_error.str"),
    };
    let s = |k: &str| req.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    let n = |k: &str, default: f64| num(req.get(k)).unwrap_or(default);
    let overrides = req.get("override_settings");
    let setting = |k: &str| overrides.and_then(|o| o.get(k));
    let wanted = setting("sd_model_checkpoint").and_then(Value::as_str);
    let wanted = match wanted.map(|c| resolve(&sh.opts.models, c).ok_or(c)) {
        Some(Err(c)) => return server_error("RuntimeError", format!("model '{c}' not found")),
        found => found.and_then(Result::ok),
    };
    let scripts = req.get("alwayson_scripts").and_then(Value::as_object);
    let known = |k: &&String| SCRIPTS.iter().any(|s| s.eq_ignore_ascii_case(k));
    if let Some(bad) = scripts.and_then(|s| s.keys().find(|k| !known(k))) {
        return reply(
            422,
            json!({"detail": format!("always on script {bad} not found")}),
        );
    }
    // As Forge's get_sampler_and_scheduler: a scheduler suffix is split off the sampler name
    // ("DPM++ 2M Karras"); an unknown sampler becomes the first one.
    let mut sampler_name = s("sampler_name").unwrap_or(SAMPLERS[0].0).to_string();
    let mut scheduler = s("scheduler").map(String::from);
    for (name, label, aliases, ..) in SCHEDULERS {
        let mut options = [*label, *name].into_iter().chain(aliases.iter().copied());
        if let Some(opt) = options.find(|o| sampler_name.ends_with(&format!(" {o}"))) {
            sampler_name.truncate(sampler_name.len() - opt.len() - 1);
            scheduler.get_or_insert_with(|| label.to_string());
            break;
        }
    }
    let sampler = SAMPLERS
        .iter()
        .find(|x| x.0 == sampler_name)
        .unwrap_or(&SAMPLERS[0]);
    let scheduler = scheduler.unwrap_or_else(|| "Automatic".into());
    let Some(mut sched) = SCHEDULERS
        .iter()
        .find(|x| x.0 == scheduler || x.1 == scheduler)
    else {
        return server_error("ValueError", "Wrong scheduler!".into());
    };
    // "Automatic" means the sampler's own default scheduler, which infotext then names.
    if let Some((_, default)) = sampler.2.iter().find(|(k, _)| *k == "scheduler")
        && sched.0 == "automatic"
    {
        sched = SCHEDULERS.iter().find(|x| x.0 == *default).unwrap_or(sched);
    }
    let steps = n("steps", 50.0).max(1.0) as u64;
    let (width, height) = (
        n("width", 512.0).max(1.0) as u64,
        n("height", 512.0).max(1.0) as u64,
    );
    let task = match s("force_task_id") {
        Some(t) => t.to_string(),
        None => {
            let mut st = sh.st();
            let chars = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
            let id: String = (0..7)
                .map(|_| chars[(st.rand() % 36) as usize] as char)
                .collect();
            format!("task({kind}-{id})")
        }
    };

    sh.st().pending.push(task.clone());
    let task2 = task.clone();
    let turn = Turn { sh, task: task2 };
    let _gpu = sh.gpu.lock().await;
    let (model, seed, subseed, die, timestamp) = {
        let mut st = sh.st();
        let first = sh.opts.models.first().cloned();
        let Some(model) = wanted.or_else(|| st.loaded.clone()).or(first) else {
            return server_error("FileNotFoundError", "No checkpoints found".into());
        };
        st.load(model.clone());
        let mut seed_of = |k: &str| match num(req.get(k)).map(|v| v as i64) {
            None | Some(-1) => (st.rand() % 4_294_967_293) as i64 + 1,
            Some(v) => v,
        };
        let (seed, subseed) = (seed_of("seed"), seed_of("subseed"));
        st.pending.retain(|t| *t != task);
        st.interrupt = false;
        let timestamp = now().as_secs().to_string();
        let (started, ts) = (Instant::now(), timestamp.clone());
        let job = Job {
            task: task.clone(),
            kind,
            step: 0,
            steps,
            preview: None,
            started,
            timestamp: ts,
        };
        st.job = Some(job);
        let die = std::mem::take(&mut st.die_next);
        (model, seed, subseed, die, timestamp)
    };
    let (w, h) = (width.min(64) as u32, height.min(64) as u32);
    let mut done = 0;
    while done < steps {
        let woken = sh.wake.notified();
        if sh.st().interrupt {
            break;
        }
        if sh.opts.steps_ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(sh.opts.steps_ms)) => {}
                _ = woken => {}
            }
        }
        let preview = make_png(w, h, seed, done + 1, None)
            .ok()
            .map(|p| B64.encode(p));
        {
            let mut st = sh.st();
            if st.interrupt {
                break;
            }
            done += 1;
            if let Some(job) = st.job.as_mut() {
                (job.step, job.preview) = (done, preview);
            }
        }
        if die {
            let sh = sh.clone();
            let _ = tokio::spawn(async move { sh.die().await }).await;
            return StatusCode::INTERNAL_SERVER_ERROR.into_response(); // never delivered
        }
    }

    // The infotext, in Forge's order.
    let negative = s("negative_prompt").unwrap_or("").to_string();
    let (cfg, subseed_strength) = (n("cfg_scale", 7.0), n("subseed_strength", 0.0));
    let hr = kind == "txt2img" && req.get("enable_hr").and_then(Value::as_bool) == Some(true);
    let denoise = (kind == "img2img" || hr).then(|| n("denoising_strength", 0.75));
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, v: String| pairs.push((k.to_string(), v));
    add("Steps", steps.to_string());
    add("Sampler", sampler.0.into());
    if sched.0 != "automatic" {
        add("Schedule type", sched.1.into());
    }
    add("CFG scale", fmt(cfg));
    if let Some(d) = num(req.get("distilled_cfg_scale")) {
        add("Distilled CFG Scale", fmt(d));
    }
    add("Seed", seed.to_string());
    add("Size", format!("{width}x{height}"));
    add("Model hash", FakeForge::model_hash(&model));
    add("Model", model.clone());
    if subseed_strength > 0.0 {
        add("Variation seed", subseed.to_string());
        add("Variation seed strength", fmt(subseed_strength));
    }
    if let Some(d) = denoise {
        add("Denoising strength", fmt(d));
    }
    if kind == "img2img" && s("mask").is_some() {
        add("Mask blur", fmt(n("mask_blur", 4.0)));
    }
    let (mut out_w, mut out_h) = (width, height);
    if hr {
        let (rx, ry) = (n("hr_resize_x", 0.0) as u64, n("hr_resize_y", 0.0) as u64);
        let scale = n("hr_scale", 2.0);
        if rx > 0 || ry > 0 {
            out_w = if rx > 0 { rx } else { width };
            out_h = if ry > 0 { ry } else { height };
            add("Hires resize", format!("{out_w}x{out_h}"));
        } else {
            (out_w, out_h) = (
                (width as f64 * scale) as u64,
                (height as f64 * scale) as u64,
            );
            add("Hires upscale", fmt(scale));
        }
        if let Some(hs) = num(req.get("hr_second_pass_steps")).filter(|v| *v > 0.0) {
            add("Hires steps", fmt(hs));
        }
        add(
            "Hires upscaler",
            s("hr_upscaler").unwrap_or("Latent").into(),
        );
    }
    let modules = setting("forge_additional_modules").and_then(Value::as_array);
    for (i, m) in modules
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .enumerate()
    {
        let file = m.rsplit(['/', '\\']).next().unwrap_or(m);
        let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
        add(&format!("Module {}", i + 1), stem.into());
    }
    for (title, script) in scripts.into_iter().flatten() {
        let (prefix, names): (&str, &[&str]) = match title.to_lowercase() {
            t if t.starts_with("freeu") => ("freeu", &["b1", "b2", "s1", "s2", "start", "end"]),
            t if t.starts_with("selfattention") => ("sag", &["scale", "blur_sigma", "threshold"]),
            _ => continue,
        };
        let args = script
            .get("args")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if args.first().and_then(Value::as_bool) == Some(true) {
            add(&format!("{prefix}_enabled"), "True".into());
            for (name, v) in names.iter().zip(&args[1..]) {
                add(
                    &format!("{prefix}_{name}"),
                    num(Some(v)).map_or(v.to_string(), fmt),
                );
            }
        }
    }
    add("Version", VERSION.into());
    let mut text = prompt.clone();
    if !negative.is_empty() {
        text += &format!("\nNegative prompt: {negative}");
    }
    let line: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}: {}", quote(v)))
        .collect();
    text += &format!("\n{}", line.join(", "));

    let (out_w, out_h) = (out_w.min(64) as u32, out_h.min(64) as u32);
    let image = match make_png(out_w, out_h, seed, done, Some(&text)) {
        Ok(bytes) => B64.encode(bytes),
        Err(e) => return server_error("EncodingError", e.to_string()),
    };
    // png-info's parameters: strings, sizes split, Forge's defaults for what is missing.
    let mut parameters = Map::new();
    parameters.insert("Prompt".into(), json!(prompt));
    parameters.insert("Negative prompt".into(), json!(negative));
    for (k, v) in &pairs {
        if let ("Size" | "Hires resize", Some((a, b))) = (k.as_str(), v.split_once('x')) {
            parameters.insert(format!("{k}-1"), json!(a));
            parameters.insert(format!("{k}-2"), json!(b));
        } else {
            parameters.insert(k.clone(), json!(v));
        }
    }
    #[rustfmt::skip]
    let defaults = [("Clip skip", json!("1")), ("Hires resize-1", json!(0)), ("Hires resize-2", json!(0)),
        ("Hires sampler", json!("Use same sampler")), ("Hires prompt", json!("")),
        ("Hires negative prompt", json!("")), ("RNG", json!("GPU")), ("Schedule type", json!("Automatic"))];
    for (k, v) in defaults {
        parameters.entry(k).or_insert(v);
    }
    let extra = pairs.iter().filter(|(k, _)| {
        !matches!(
            k.as_str(),
            "Steps" | "Sampler" | "CFG scale" | "Seed" | "Size" | "Model hash"
        ) && !matches!(k.as_str(), "Model" | "Version")
    });
    let extra: Map<String, Value> = extra.map(|(k, v)| (k.clone(), json!(v))).collect();
    let info = json!({
        "prompt": prompt, "all_prompts": [prompt], "negative_prompt": negative,
        "all_negative_prompts": [negative], "seed": seed, "all_seeds": [seed], "subseed": subseed,
        "all_subseeds": [subseed], "subseed_strength": subseed_strength, "width": width,
        "height": height, "sampler_name": sampler.0, "cfg_scale": cfg, "steps": steps,
        "batch_size": 1, "restore_faces": false, "face_restoration_model": null,
        "sd_model_name": model, "sd_model_hash": FakeForge::model_hash(&model),
        "sd_vae_name": null, "sd_vae_hash": null, "seed_resize_from_w": -1,
        "seed_resize_from_h": -1, "denoising_strength": denoise, "extra_generation_params": extra,
        "index_of_first_image": 0, "infotexts": [text], "styles": [], "job_timestamp": timestamp,
        "clip_skip": 1, "is_using_inpainting_conditioning": false, "version": VERSION,
    });
    let mut echoed = req.clone();
    if kind == "img2img" && req.get("include_init_images").and_then(Value::as_bool) != Some(true) {
        echoed.insert("init_images".into(), Value::Null);
        echoed.insert("mask".into(), Value::Null);
    }
    {
        let mut st = sh.st();
        st.interrupted += usize::from(done < steps);
        let png_info =
            json!({"info": text, "items": {"parameters": text}, "parameters": parameters});
        st.infos.insert(image.clone(), png_info);
        st.finished.push(task);
        if st.finished.len() > 16 {
            st.finished.remove(0);
        }
    }
    drop(turn);
    ok(json!({"images": [image], "parameters": echoed, "info": info.to_string()}))
}

/// Clears the queue entry and the running job when a generation ends or is dropped.
struct Turn<'a> {
    sh: &'a Shared,
    task: String,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut st = self.sh.st();
        st.pending.retain(|t| *t != self.task);
        if st.job.as_ref().is_some_and(|j| j.task == self.task) {
            st.job = None;
        }
    }
}

/// Forge's `modules/progress.py` answer for `{"id_task", "live_preview", "id_live_preview"}`.
fn internal_progress(st: &St, body: &Value) -> Value {
    let id = body.get("id_task").and_then(Value::as_str);
    let queued = id.and_then(|id| st.pending.iter().position(|t| t == id));
    let completed = id.is_some_and(|id| st.finished.iter().any(|t| t == id));
    let Some(job) = st.job.as_ref().filter(|j| Some(j.task.as_str()) == id) else {
        let n = st.pending.len();
        let text = queued.map_or("Waiting...".into(), |i| format!("In queue: {}/{n}", i + 1));
        return json!({"active": false, "queued": queued.is_some(), "completed": completed,
            "progress": null, "eta": null, "live_preview": null, "id_live_preview": -1,
            "textinfo": text});
    };
    let progress = (job.step as f64 / job.steps as f64).min(1.0);
    let elapsed = job.started.elapsed().as_secs_f64();
    let eta = (progress > 0.0).then(|| elapsed / progress - elapsed);
    let seen = body
        .get("id_live_preview")
        .and_then(Value::as_i64)
        .unwrap_or(-1);
    let want = body.get("live_preview").and_then(Value::as_bool) != Some(false);
    let (live, id_live) = match &job.preview {
        Some(p) if want && seen != job.step as i64 => {
            (Some(format!("data:image/png;base64,{p}")), job.step as i64)
        }
        _ => (None, seen),
    };
    json!({"active": true, "queued": false, "completed": completed, "progress": progress,
        "eta": eta, "live_preview": live, "id_live_preview": id_live, "textinfo": null})
}

/// `GET /sdapi/v1/progress`: shared.state of the running job, or the idle answer.
fn progress(st: &St, skip_image: bool) -> Value {
    let job = st.job.as_ref();
    let name = job.map_or("", |j| {
        if j.kind == "txt2img" {
            "scripts_txt2img"
        } else {
            "scripts_img2img"
        }
    });
    let state = json!({"skipped": false, "interrupted": st.interrupt, "stopping_generation": false,
        "job": name, "job_count": u8::from(job.is_some()),
        "job_timestamp": job.map_or("0", |j| j.timestamp.as_str()), "job_no": 0,
        "sampling_step": job.map_or(0, |j| j.step), "sampling_steps": job.map_or(0, |j| j.steps)});
    let Some(job) = job else {
        return json!({"progress": 0.0, "eta_relative": 0.0, "state": state,
            "current_image": null, "textinfo": null, "current_task": null});
    };
    let progress = 0.01 + job.step as f64 / job.steps as f64;
    let elapsed = job.started.elapsed().as_secs_f64();
    json!({"progress": progress.min(1.0), "eta_relative": elapsed / progress - elapsed,
        "state": state, "current_image": job.preview.as_ref().filter(|_| !skip_image),
        "textinfo": null, "current_task": job.task})
}

fn png_info(sh: &Shared, body: &Value) -> Response {
    let Some(image) = body.get("image").and_then(Value::as_str) else {
        return invalid("image", "field required", "value_error.missing");
    };
    let mut image = image.trim();
    if image.starts_with("data:image/") {
        image = image.split_once(',').map_or("", |(_, data)| data);
    }
    let bytes = B64.decode(image).unwrap_or_default();
    let signatures: [&[u8]; 4] = [b"\x89PNG", b"\xff\xd8", b"RIFF", b"GIF8"];
    if !signatures.iter().any(|sig| bytes.starts_with(sig)) {
        return reply(500, json!({"detail": "Invalid encoded image"}));
    }
    let info = sh.st().infos.get(image).cloned();
    ok(info.unwrap_or_else(|| json!({"info": "", "items": {}, "parameters": {}})))
}

/// An RGB PNG whose pixels depend on `seed` and `step`, with an optional `parameters` chunk.
fn make_png(
    w: u32,
    h: u32,
    seed: i64,
    step: u64,
    text: Option<&str>,
) -> Result<Vec<u8>, png::EncodingError> {
    let (w, h, s) = (w.max(1), h.max(1), seed as u64);
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h as u64 {
        for x in 0..w as u64 {
            let r = (x * 255 / w as u64).wrapping_add(s);
            let g = (y * 255 / h as u64).wrapping_add(s >> 8);
            let b = step.wrapping_mul(37).wrapping_add(s >> 16);
            data.extend([r as u8, g as u8, b as u8]);
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    match text {
        Some(t) if t.chars().all(|c| (c as u32) < 256) => {
            encoder.add_text_chunk("parameters".into(), t.into())?
        }
        Some(t) => encoder.add_itxt_chunk("parameters".into(), t.into())?,
        None => {}
    }
    encoder.write_header()?.write_image_data(&data)?;
    Ok(out)
}

/// The TCP listener; every connection it hands out fails its I/O once `kill` turns true.
struct Killable {
    tcp: TcpListener,
    kill: watch::Receiver<bool>,
}

impl axum::serve::Listener for Killable {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            if let Ok((tcp, addr)) = self.tcp.accept().await {
                let mut kill = self.kill.clone();
                let kill = Box::pin(async move {
                    let _ = kill.wait_for(|k| *k).await;
                });
                return (
                    Conn {
                        tcp,
                        kill,
                        dead: false,
                    },
                    addr,
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

struct Conn {
    tcp: TcpStream,
    kill: Pin<Box<dyn Future<Output = ()> + Send>>,
    dead: bool,
}

impl Conn {
    /// Errors once the server died (and registers for the wake-up until then).
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<&mut TcpStream> {
        self.dead = self.dead || self.kill.as_mut().poll(cx).is_ready();
        if self.dead {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "fake forge died",
            ));
        }
        Ok(&mut self.tcp)
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().check(cx)?).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().check(cx)?).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().check(cx)?).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().check(cx)?).poll_shutdown(cx)
    }
}
