//! The OpenAPI 3.1 document of the HTTP API, served at `GET /api/openapi.json`.
//!
//! The document and the router are built by the same calls: [`super::app`] registers every
//! route with utoipa-axum's `routes!`, which takes the method and path from the handler's
//! `#[utoipa::path]` both to route the request and to describe it. So a route registered that
//! way cannot be missing from the document, and a described path cannot be missing from the
//! router. A route registered with a plain axum `.route(…)` is routed but not described;
//! `tests/openapi.rs` fails on one, naming it.
//!
//! The types below are schema-only: handlers build their JSON with `serde_json::json!`, and
//! these describe what they build (Navigator's bodies, in its key order). Nothing constructs
//! or reads them.

#![allow(dead_code)]

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// What utoipa-axum does not collect from the handlers: `info`, the tags, the security schemes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "easel",
        description = "easel's HTTP API, compatible with BitForged Navigator's routes and JSON \
            shapes (Compass and Navigator's other clients work unchanged).\n\n\
            Job events are not on this port: socket.io (Engine.IO v4, socket.io v5, path \
            `/socket.io/`) runs on the separate realtime port (`[api] rt_port`). Its events, each \
            with one JSON argument: `connected`, `model-changed`, `task-started`, \
            `task-progress`, `task-finished`, `task-failed`, `task-interrupted`, \
            `models-refreshed`.\n\n\
            Credentials: the `Authorization` header, either `Bearer <JWT>` (HS256, issued by \
            `POST /api/auth/login`) or the superuser token sent raw. Every answer is JSON (or a \
            PNG, or the embed page); an unknown route is `404 {\"error\":\"Cannot <METHOD> \
            <path>\"}`. Request bodies are limited to 50 MB."
    ),
    tags(
        (name = "config", description = "Server status, limits, version and this document"),
        (name = "lists", description = "What the backends offer: models, samplers, upscalers, schedulers, modules"),
        (name = "models", description = "LoRAs with their CivitAI or local metadata, and embeddings"),
        (name = "civitai", description = "CivitAI: the key check, model downloads into the Forge's model folder, the API proxy"),
        (name = "queue", description = "Queueing txt2img / img2img jobs and interrupting them"),
        (name = "images", description = "Pictures, previews and png-info by job id (no authentication)"),
        (name = "auth", description = "Logging in (Discord's authorization-code flow, or the demo user)"),
        (name = "user", description = "The caller's gallery, images and categories"),
        (name = "admin", description = "Users' roles and the running server (role 3 or the superuser)"),
        (name = "dashboard", description = "The operator dashboard: its page, its live stream and its actions (role 3 or the superuser)"),
    ),
    modifiers(&SecuritySchemes)
)]
pub(super) struct ApiDoc;

/// The two credentials: `bearer` (a JWT) and `superuser` (the raw token).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "`Authorization: Bearer <JWT>`: HS256 with the server's `secret_key`, \
                         payload `{discord_id, role, iat, exp?}`; the role is re-read from the \
                         store on every request",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "superuser",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "The superuser token (`SUPERUSER_ADMIN_TOKEN`) sent raw, without `Bearer`: role 4",
            ))),
        );
    }
}

/// The finished document (the router's descriptions plus [`ApiDoc`]), serialised once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    super::openapi()
        .to_json()
        .expect("the OpenAPI document serialises")
});

/// `GET /api/openapi.json`.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "config",
    summary = "This document",
    description = "The OpenAPI 3.1 description of every route this server serves.",
    responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"))
)]
pub(super) async fn document() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// Axum's catch-all segment `{*rest}` written as OpenAPI's `{rest}` (the closest OpenAPI has:
/// it names the parameter, though a client must encode the slashes in it).
pub(super) fn catch_alls_as_parameters(doc: &mut utoipa::openapi::OpenApi) {
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
}

// ---- errors -------------------------------------------------------------------------------

/// `401`: no credentials, or refused ones (`error` then says why, in npm jsonwebtoken's
/// words: `jwt expired`, `invalid signature`, `jwt malformed`, `Demo user was disabled`,
/// `Malformed token!`…).
#[derive(ToSchema)]
#[schema(example = json!({"message": "Unauthorized", "error": "jwt expired"}))]
#[serde(deny_unknown_fields)]
pub(super) struct Unauthorized {
    /// Always `Unauthorized`.
    message: String,
    /// Why the credentials were refused (absent without an `Authorization` header).
    #[schema(nullable = false)]
    error: Option<String>,
}

/// `403` for a user whose role is 0.
#[derive(ToSchema)]
#[schema(example = json!({"message": "Forbidden", "error": "User is disabled", "error_code": "USER_DISABLED"}))]
#[serde(deny_unknown_fields)]
pub(super) struct UserDisabled {
    /// `Forbidden`.
    message: String,
    /// `User is disabled`.
    error: String,
    /// `USER_DISABLED`.
    error_code: String,
}

/// `{"error": …}`: most routes' refusals.
#[derive(ToSchema)]
#[schema(example = json!({"error": "Internal Server Error"}))]
#[serde(deny_unknown_fields)]
pub(super) struct ErrorBody {
    /// What went wrong.
    error: String,
}

/// `{"message": …}`: the refusals of the `/api/user` routes and of the embed page.
#[derive(ToSchema)]
#[schema(example = json!({"message": "Category ID must be a number"}))]
#[serde(deny_unknown_fields)]
pub(super) struct MessageBody {
    /// What went wrong.
    message: String,
}

/// `{"error", "error_code"}`.
#[derive(ToSchema)]
#[schema(example = json!({"error": "Demo user is not enabled", "error_code": "DEMO_USER_DISABLED"}))]
#[serde(deny_unknown_fields)]
pub(super) struct CodedError {
    /// What went wrong.
    error: String,
    /// A stable code to match on.
    error_code: String,
}

/// A `403`: the caller is disabled, or the route refuses (`{"error"}`).
#[derive(ToSchema)]
#[serde(untagged)]
pub(super) enum Forbidden {
    /// The caller's role is 0.
    Disabled(UserDisabled),
    /// The route's own refusal.
    Refused(ErrorBody),
}

/// A `403` of the `/api/user` routes: the caller is disabled, or the route refuses
/// (`{"message"}`).
#[derive(ToSchema)]
#[serde(untagged)]
pub(super) enum ForbiddenMessage {
    /// The caller's role is 0.
    Disabled(UserDisabled),
    /// The route's own refusal.
    Refused(MessageBody),
}

/// A `403` of the login: the demo user is off (`{"error", "error_code"}`), or the user has no
/// access yet (`{"error"}`).
#[derive(ToSchema)]
#[serde(untagged)]
pub(super) enum LoginRefused {
    /// `DEMO_USER_DISABLED`.
    Coded(CodedError),
    /// No access yet.
    Refused(ErrorBody),
}

// ---- config --------------------------------------------------------------------------------

/// `GET /`.
#[derive(ToSchema)]
#[schema(example = json!({"message": "Hello World!", "status": "online"}))]
pub(super) struct Root {
    /// `Hello World!`.
    message: String,
    /// `online`.
    status: String,
}

/// `GET /api/config/limits`.
#[derive(ToSchema)]
#[schema(example = json!({"max_pixels": 3686400}))]
pub(super) struct Limits {
    /// Most `width * height` a job may ask for.
    max_pixels: u64,
}

/// `GET /api/config/version`.
#[derive(ToSchema)]
#[schema(example = json!({"branch": "easel", "commit": "0.1.0"}))]
pub(super) struct Version {
    /// Navigator's `BRANCH` when set, else `easel`.
    branch: String,
    /// Navigator's `COMMIT_SHA` when set, else easel's version.
    commit: String,
}

// ---- lists ---------------------------------------------------------------------------------

/// A checkpoint: Forge's `/sd-models` entry, merged with easel's catalog row when one matches.
#[derive(ToSchema)]
pub(super) struct Model {
    /// Forge's title (`name.safetensors [hash]`).
    title: String,
    /// The name to queue with.
    model_name: String,
    /// Short hash.
    hash: Option<String>,
    /// SHA-256.
    sha256: Option<String>,
    /// The file on the Forge machine.
    filename: String,
    /// Forge's config path.
    config: Option<String>,
    /// Whether the catalog knows the model (the fields below are there only then).
    known: bool,
    /// Catalog id.
    #[schema(nullable = false)]
    id: Option<i64>,
    /// Friendly name.
    friendly_name: Option<String>,
    /// Advisory restriction flag.
    #[schema(nullable = false)]
    is_restricted: Option<bool>,
}

/// `GET /api/models`.
#[derive(ToSchema)]
pub(super) struct Models {
    /// Every checkpoint offered.
    models: Vec<Model>,
}

/// `GET /api/models`: the list, or (with status 200, as Navigator) an error.
#[derive(ToSchema)]
#[serde(untagged)]
pub(super) enum ModelsAnswer {
    /// The list.
    Models(Models),
    /// A backend failed.
    Error(ErrorBody),
}

/// A sampler (Forge's `/samplers`).
#[derive(ToSchema)]
pub(super) struct Sampler {
    /// The name to queue with.
    name: String,
    /// Other names that resolve to it.
    aliases: Vec<String>,
    /// Forge's options.
    #[schema(value_type = Object)]
    options: serde_json::Value,
}

/// `GET /api/samplers`: the list, or (with status 200, as Navigator) an error.
#[derive(ToSchema)]
#[serde(untagged)]
pub(super) enum SamplersAnswer {
    /// The list.
    Samplers(Vec<Sampler>),
    /// A backend failed.
    Error(ErrorBody),
}

/// An upscaler (Forge's `/upscalers`).
#[derive(ToSchema)]
pub(super) struct Upscaler {
    /// The name to queue with (`upscaler_name`).
    name: String,
    /// Forge's model name.
    model_name: Option<String>,
    /// Forge's model path.
    model_path: Option<String>,
    /// Forge's model URL.
    model_url: Option<String>,
    /// Scale factor.
    scale: Option<f64>,
}

/// A scheduler (Forge's `/schedulers`).
#[derive(ToSchema)]
pub(super) struct Scheduler {
    /// The name to queue with (`scheduler_name`).
    name: String,
    /// Display label.
    label: String,
    /// Other names.
    aliases: Option<Vec<String>>,
    /// Forge's default rho.
    default_rho: f64,
    /// Forge's flag.
    need_inner_model: bool,
}

/// A module: VAE or text encoder (Forge's `/sd-modules`).
#[derive(ToSchema)]
pub(super) struct Module {
    /// The name to queue with (`modules`).
    model_name: String,
    /// The file on the Forge machine.
    filename: String,
}

// ---- queue ---------------------------------------------------------------------------------

/// A txt2img request, as Compass sends it. Navigator's JavaScript `||` defaults apply: a
/// missing, `null`, `0`, `""` or `false` value takes the default. Numbers may also be sent as
/// numeric strings.
#[derive(ToSchema)]
#[schema(example = json!({"model_name": "sdxl_base", "prompt": "Puppies", "negative_prompt": "blurry",
    "width": 1024, "height": 1024, "steps": 30, "cfg_scale": 7, "sampler_name": "DPM++ 2M"}))]
pub(super) struct Txt2ImgRequest {
    /// The checkpoint (Forge `model_name`). Required.
    model_name: String,
    /// Required.
    prompt: String,
    /// Passed through.
    #[schema(nullable = false)]
    negative_prompt: Option<String>,
    /// Default 512; `width * height` at most `max_pixels` (`GET /api/config/limits`).
    #[schema(default = 512, minimum = 1, maximum = 65535, nullable = false)]
    width: Option<u32>,
    /// Default 512.
    #[schema(default = 512, minimum = 1, maximum = 65535, nullable = false)]
    height: Option<u32>,
    /// Default 50.
    #[schema(default = 50, minimum = 1, maximum = 10000, nullable = false)]
    steps: Option<u32>,
    /// Steps of the high-res pass; default `steps` as sent.
    #[schema(minimum = 1, maximum = 10000, nullable = false)]
    hrf_steps: Option<u32>,
    /// Default -1 (random; 0 also means random).
    #[schema(default = -1, minimum = -1, nullable = false)]
    seed: Option<i64>,
    /// Default 7.
    #[schema(default = 7, nullable = false)]
    cfg_scale: Option<f64>,
    /// Flux's distilled CFG; default 3.5.
    #[schema(default = 3.5, nullable = false)]
    distilled_cfg: Option<f64>,
    /// Default `DPM++ 2M`; resolved to the canonical name of a sampler with that alias.
    #[schema(default = "DPM++ 2M", nullable = false)]
    sampler_name: Option<String>,
    /// Default `automatic`; an unknown name also becomes `automatic`.
    #[schema(default = "automatic", nullable = false)]
    scheduler_name: Option<String>,
    /// 0 to 1; default 0 (unset).
    #[schema(default = 0, minimum = 0, maximum = 1, nullable = false)]
    denoising_strength: Option<f64>,
    /// Any truthy value asks for the high-res fix.
    #[schema(nullable = false)]
    force_hr_fix: Option<bool>,
    /// Variation seed; kept only with `subseed_strength`.
    #[schema(minimum = -1, nullable = false)]
    subseed: Option<i64>,
    /// Variation strength; kept only with `subseed`.
    #[schema(nullable = false)]
    subseed_strength: Option<f64>,
    /// High-res upscaler; an unknown name falls back to `4x_NMKD-Siax_200k`, else
    /// `RealESRGAN_x4`.
    #[schema(nullable = false)]
    upscaler_name: Option<String>,
    /// Any truthy value enables FreeU and SAG.
    #[schema(nullable = false)]
    image_enhancements: Option<bool>,
    /// Forge module names (VAE, text encoders); kept only if non-empty.
    #[schema(nullable = false)]
    modules: Option<Vec<String>>,
    /// One of the caller's categories (else `403`).
    #[schema(rename = "categoryId", minimum = 0, nullable = false)]
    category_id: Option<i64>,
}

/// An img2img request, as Compass sends it (the same `||` defaults as txt2img).
#[derive(ToSchema)]
pub(super) struct Img2ImgRequest {
    /// The checkpoint: a Forge `model_name` or a catalog friendly name, else the first one
    /// offered. Required.
    model_name: String,
    /// Required.
    prompt: String,
    /// Passed through.
    #[schema(nullable = false)]
    negative_prompt: Option<String>,
    /// Default 500.
    #[schema(default = 500, minimum = 1, maximum = 65535, nullable = false)]
    width: Option<u32>,
    /// Default 500.
    #[schema(default = 500, minimum = 1, maximum = 65535, nullable = false)]
    height: Option<u32>,
    /// Default 50.
    #[schema(default = 50, minimum = 1, maximum = 10000, nullable = false)]
    steps: Option<u32>,
    /// Default -1 (random).
    #[schema(default = -1, minimum = -1, nullable = false)]
    seed: Option<i64>,
    /// Default 5.
    #[schema(default = 5, nullable = false)]
    cfg_scale: Option<f64>,
    /// Default `DPM++ 2M`; an unknown name becomes the first sampler offered.
    #[schema(default = "DPM++ 2M", nullable = false)]
    sampler_name: Option<String>,
    /// Default `automatic`.
    #[schema(default = "automatic", nullable = false)]
    scheduler_name: Option<String>,
    /// 0 to 1; default 0.75.
    #[schema(default = 0.75, minimum = 0, maximum = 1, nullable = false)]
    denoising_strength: Option<f64>,
    /// The picture to start from: base64 PNG (a `data:…;base64,` prefix is dropped), or
    /// `NAVIGATOR_<job_id>` for a stored picture.
    #[schema(nullable = false)]
    init_image: Option<String>,
    /// Inpainting mask, base64 PNG (painted pixels opaque).
    #[schema(nullable = false)]
    mask: Option<String>,
    /// Present at all (any value): FreeU and SAG.
    #[schema(nullable = false)]
    image_enhancements: Option<bool>,
    /// One of the caller's categories (else `403`).
    #[schema(rename = "categoryId", minimum = 0, nullable = false)]
    category_id: Option<i64>,
}

/// The legacy bot route's body: a txt2img request plus whose job it is.
#[derive(ToSchema)]
pub(super) struct LegacyTxt2ImgRequest {
    /// The owner's Discord id (string or number). Required.
    #[schema(value_type = String)]
    owner_id: String,
    #[serde(flatten)]
    request: Txt2ImgRequest,
}

/// The legacy bot route's body: an img2img request plus whose job it is.
#[derive(ToSchema)]
pub(super) struct LegacyImg2ImgRequest {
    /// The owner's Discord id (string or number). Required.
    #[schema(value_type = String)]
    owner_id: String,
    #[serde(flatten)]
    request: Img2ImgRequest,
}

/// `POST /api/queue/user/txt2img/upscale-hrf/{job_id}`: optional overrides of the stored
/// picture's parameters.
#[derive(ToSchema)]
pub(super) struct UpscaleRequest {
    /// High-res upscaler.
    #[schema(nullable = false)]
    upscaler_name: Option<String>,
    /// Denoising of the high-res pass.
    #[schema(nullable = false)]
    denoising_strength: Option<f64>,
    /// Steps of the high-res pass.
    #[schema(minimum = 1, maximum = 10000, nullable = false)]
    hrf_steps: Option<u32>,
}

/// The img2img job object (its events carry the same keys).
#[derive(ToSchema)]
#[schema(example = json!({"type": "img2img", "job_id": "59feab77", "owner_id": "123456789012345678",
    "queue_size": 1, "task_type": "img2img", "status": "queued", "origin": "203.0.113.9",
    "image_enhancements": false}))]
pub(super) struct Img2ImgJob {
    /// `img2img`.
    #[schema(rename = "type")]
    kind: String,
    /// 8 lowercase hex digits.
    job_id: String,
    /// The owner's id.
    owner_id: String,
    /// Queued (not running) jobs, this one included.
    queue_size: i64,
    /// `img2img`.
    task_type: String,
    /// `queued`.
    status: String,
    /// The client's address; socket.io events go to sockets from there.
    origin: String,
    /// Whether `image_enhancements` was in the request.
    image_enhancements: bool,
    /// The category asked for.
    #[schema(rename = "categoryId", nullable = false)]
    category_id: Option<i64>,
}

/// `POST /api/queue/interrupt/{job_id}`.
#[derive(ToSchema)]
#[schema(example = json!({"message": "Task interrupted!", "status": "interrupted"}))]
pub(super) struct Interrupted {
    /// `Task interrupted!` (it was running) or `Task removed!` (it was queued).
    message: String,
    /// `interrupted` or `removed`.
    status: String,
}

// ---- images --------------------------------------------------------------------------------

/// A PNG.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub(super) struct Png(Vec<u8>);

/// Forge's png-info of a finished picture.
#[derive(ToSchema)]
pub(super) struct PngInfo {
    /// The A1111 parameters text.
    info: String,
    /// Forge's items.
    #[schema(value_type = Object)]
    items: serde_json::Value,
    /// The parsed parameters (`Prompt`, `Steps`, `Sampler`, `Seed`, `Size-1`, `Model`…)
    /// plus `owner_id`, the owner's id.
    #[schema(value_type = Object)]
    parameters: serde_json::Value,
}

// ---- auth and user -------------------------------------------------------------------------

/// `POST /api/auth/login`.
#[derive(ToSchema)]
#[schema(example = json!({"code": "DEMO_USER"}))]
pub(super) struct LoginRequest {
    /// Discord's OAuth2 authorization code, or `DEMO_USER`.
    code: String,
}

/// A login's answer.
#[derive(ToSchema)]
pub(super) struct LoginAnswer {
    /// The JWT to send as `Authorization: Bearer <token>`.
    token: String,
    /// Discord's `/users/@me` object (the demo user's: `{"id": "demo_user", …}`).
    #[schema(value_type = Object)]
    user: serde_json::Value,
    /// The user's role (1 apprentice, 2 artificer, 3 architect, 4 superuser).
    role: i64,
}

/// The token's payload.
#[derive(ToSchema)]
pub(super) struct TokenPayload {
    /// Discord id (`superuser` for the superuser token).
    discord_id: String,
    /// The role read from the store now.
    role: i64,
    /// Issued at (s).
    #[schema(nullable = false)]
    iat: Option<i64>,
    /// Expires at (s); absent when tokens do not expire.
    #[schema(nullable = false)]
    exp: Option<i64>,
}

/// `GET /api/user/me`.
#[derive(ToSchema)]
pub(super) struct Me {
    /// The caller.
    user: TokenPayload,
}

/// One job of the gallery.
#[derive(ToSchema)]
pub(super) struct GalleryImage {
    /// Job id.
    id: String,
    /// Its category.
    category_id: Option<i64>,
}

/// `GET /api/user/jobs`: one page of the caller's jobs, newest first (unfinished and failed
/// ones included).
#[derive(ToSchema)]
pub(super) struct JobsPage {
    /// All the caller's jobs (in the category, when filtered).
    count: i64,
    /// `ceil(count / limit)`.
    #[schema(rename = "totalPages")]
    total_pages: i64,
    /// The page asked for.
    #[schema(rename = "currentPage")]
    current_page: i64,
    /// `page - 1`, or `null` on the first page.
    #[schema(rename = "previousPage")]
    previous_page: Option<i64>,
    /// `page + 1`, or `null` on the last page.
    #[schema(rename = "nextPage")]
    next_page: Option<i64>,
    /// The page's jobs.
    images: Vec<GalleryImage>,
}

/// `GET /api/user/image/{image_id}/meta`.
#[derive(ToSchema)]
pub(super) struct ImageMeta {
    /// Its category.
    category_id: Option<i64>,
    /// When it was queued (ISO 8601, UTC).
    #[schema(format = DateTime)]
    created_at: String,
    /// The Discord message it answered, if any.
    message_id: Option<String>,
    /// The owner (the caller).
    owner_id: String,
}

/// `PUT /api/user/image/{image_id}/category`.
#[derive(ToSchema)]
#[schema(example = json!({"categoryId": 3}))]
pub(super) struct ImageCategoryRequest {
    /// One of the caller's categories, or 0 to clear (a numeric string also works).
    #[schema(rename = "categoryId")]
    category_id: i64,
}

/// A category of the caller's.
#[derive(ToSchema)]
pub(super) struct Category {
    /// Its id.
    id: i64,
    /// The owner.
    owner_id: String,
    /// Its name.
    name: String,
}

/// A category's name.
#[derive(ToSchema)]
#[schema(example = json!({"name": "Foxes"}))]
pub(super) struct CategoryName {
    /// Non-empty; its base64 at most 255 characters.
    name: String,
}

/// A new category's id.
#[derive(ToSchema)]
pub(super) struct Created {
    /// The id.
    id: i64,
}

// ---- admin ---------------------------------------------------------------------------------

/// `GET /api/admin/authorize-user/{discord_id}`.
#[derive(ToSchema)]
pub(super) struct Authorized {
    /// `User authorized!`.
    message: String,
    /// The id.
    discord_id: String,
    /// Discord's user object, when ids are checked with a bot token.
    #[schema(value_type = Option<Object>, nullable = false)]
    user: Option<serde_json::Value>,
}

/// `GET /api/admin/disable-user/{discord_id}`.
#[derive(ToSchema)]
#[schema(example = json!({"message": "User disabled!", "discord_id": "123456789012345678"}))]
pub(super) struct Disabled {
    /// `User disabled!`.
    message: String,
    /// The id.
    discord_id: String,
}

/// `PUT /api/admin/users/{discord_id}/role`.
#[derive(ToSchema)]
#[schema(example = json!({"role": 2}))]
pub(super) struct RoleRequest {
    /// 1 (apprentice), 2 (artificer) or 3 (architect; the superuser only).
    #[schema(minimum = 1, maximum = 3)]
    role: i64,
}

/// The role set.
#[derive(ToSchema)]
#[schema(example = json!({"message": "Role set!", "discord_id": "123456789012345678", "role": 2}))]
pub(super) struct RoleSet {
    /// `Role set!`.
    message: String,
    /// The id.
    discord_id: String,
    /// The role.
    role: i64,
}

/// Which plugin serves a role.
#[derive(ToSchema)]
pub(super) struct PluginRole {
    /// `parser`, `access`, `reactions` or `model-policy`.
    role: String,
    /// The plugin configured.
    plugin: Option<String>,
    /// What answers now (the plugin, or the built-in default).
    served_by: String,
    /// `fail-closed`, `fail-open` or `builtin`.
    on_failure: String,
}

/// `GET /api/admin/plugins`: what `easel plugin list` shows.
#[derive(ToSchema)]
pub(super) struct Plugins {
    /// The plugins directory.
    dir: String,
    /// Every plugin loaded or refused, with its reload counts.
    #[schema(value_type = Vec<Object>)]
    plugins: serde_json::Value,
    /// Each role's plugin.
    roles: Vec<PluginRole>,
    /// Admission of plugin calls: `instances`, `in_use`, `waits`, `wait_ms_total`,
    /// `wait_ms_max`, `timeouts`.
    #[schema(value_type = Object)]
    admission: serde_json::Value,
}

/// `GET /api/admin/backends`.
#[derive(ToSchema)]
pub(super) struct Backends {
    /// The backends running.
    backends: Vec<String>,
    /// Each Forge machine: `name`, `url`, `up`, `loaded_model`, `current_job`, `jobs_done`,
    /// `model_swaps`, `faults`, `last_error`.
    #[schema(value_type = Vec<Object>)]
    forge: serde_json::Value,
    /// The ZeroMQ worker pool's counters (`connected`, `busy`, `dispatched`, `finished`,
    /// `requeued`, `failed`, `dropped`); `null` when the pool is off.
    #[schema(value_type = Object, nullable = true)]
    workers: serde_json::Value,
    /// The backends drained by an operator.
    drained: Vec<String>,
    /// Each worker connected (`identity`, `hostname`, `kind`, `up`, `job`, `job_since_ms`,
    /// `done`, `faults`, `models`, `joined_ms`), then the last 16 that left (`up` false,
    /// `left`: `[reason, Unix ms]`).
    #[schema(value_type = Vec<Object>)]
    worker_list: serde_json::Value,
}

/// A dashboard action on a job.
#[derive(ToSchema)]
pub(super) struct Action {
    /// What happened.
    message: String,
    /// The job.
    id: String,
    /// Its state before.
    was: String,
}

/// A drain or resume.
#[derive(ToSchema)]
pub(super) struct DrainAnswer {
    /// What happened.
    message: String,
    /// The backend.
    backend: String,
    /// Whether it is drained now.
    drained: bool,
    /// Whether this call changed it.
    changed: bool,
}

/// One job of `GET /api/admin/queue`.
#[derive(ToSchema)]
pub(super) struct QueuedJob {
    /// 0 while running; 1, 2, … in line.
    position: i64,
    /// The job id.
    id: String,
    /// `queued` or `running`.
    state: String,
    /// Who asked.
    owner_id: String,
    /// `http`, `discord`, `grpc` or `internal`.
    front_end: String,
    /// The model asked for (`""`: the backend's default).
    model: String,
    /// Pixels.
    width: u32,
    /// Pixels.
    height: u32,
    /// Seconds since it was queued.
    age_s: f64,
    /// When it was queued (Unix ms).
    created_at: i64,
    /// When its backend claimed it (Unix ms); `null` while queued.
    started_at: Option<i64>,
    /// The backend running it.
    #[schema(nullable = true)]
    backend: Option<String>,
    /// Claims so far.
    attempts: i64,
}

/// `GET /api/admin/queue`.
#[derive(ToSchema)]
pub(super) struct Queue {
    /// Jobs waiting (this host's count).
    queued: u64,
    /// Running jobs, then queued ones in claim order.
    jobs: Vec<QueuedJob>,
}

#[cfg(test)]
mod tests {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathsBuilder};
    use utoipa::openapi::{OpenApiBuilder, PathItem};

    #[test]
    fn catch_alls_become_parameters() {
        let item = PathItem::new(HttpMethod::Get, OperationBuilder::new().build());
        let mut doc = OpenApiBuilder::new()
            .paths(
                PathsBuilder::new()
                    .path("/3papi/civitai/api-proxy/{*rest}", item.clone())
                    .path("/api/images/{job_id}", item),
            )
            .build();
        super::catch_alls_as_parameters(&mut doc);
        let paths: Vec<&String> = doc.paths.paths.keys().collect();
        assert_eq!(
            paths,
            ["/3papi/civitai/api-proxy/{rest}", "/api/images/{job_id}"]
        );
    }

    #[test]
    fn the_document_serialises() {
        let doc: serde_json::Value = serde_json::from_str(&super::DOCUMENT).unwrap();
        assert_eq!(doc["info"]["title"], "easel");
        assert!(doc["paths"]["/api/openapi.json"]["get"].is_object());
    }
}

// ---- health ----------------------------------------------------------------------------------

/// `GET /healthz`.
#[derive(ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub(super) struct Health {
    /// `ok`.
    status: String,
}

/// `GET /readyz`.
#[derive(ToSchema)]
pub(super) struct Readiness {
    /// `ready` or `not ready`.
    status: String,
    /// `ok` or `unreachable`.
    store: String,
    /// What serves each plugin role: `plugin`, `builtin` or `none`.
    #[schema(value_type = Object)]
    plugins: serde_json::Value,
    /// Why it is not ready.
    #[schema(nullable = false)]
    reasons: Option<Vec<String>>,
}

// ---- models and CivitAI ----------------------------------------------------------------------

/// One LoRA with its metadata (Navigator's `NavigatorLora`).
#[derive(ToSchema)]
pub(super) struct NavigatorLora {
    /// Forge's entry (`name`, `alias`, `path`, `metadata` without the training statistics).
    #[schema(value_type = Object)]
    forge: serde_json::Value,
    /// CivitAI's model version (its first image only), when CivitAI knows the LoRA.
    #[schema(value_type = Object, nullable = false)]
    civitai: Option<serde_json::Value>,
    /// The local override, when one is set.
    #[schema(rename = "localOverride", nullable = false)]
    local_override: Option<LocalOverride>,
    /// Forge's alias.
    alias: String,
    /// CivitAI's name, or the override's.
    name: String,
    /// Not safe for work.
    nsfw: bool,
    /// `1`: CivitAI, `0`: local.
    provider: i64,
}

/// A LoRA's local metadata (`POST /api/models/loras/override/:hash`).
#[derive(ToSchema)]
#[schema(example = json!({"name": "Fox style", "description": "Foxes, mostly", "nsfw": false, "baseModel": "SDXL 1.0"}))]
#[serde(deny_unknown_fields)]
pub(super) struct LocalOverride {
    /// Its name.
    name: String,
    /// What it does.
    description: String,
    /// Not safe for work.
    nsfw: bool,
    /// The checkpoint family it was trained for.
    #[schema(rename = "baseModel")]
    base_model: String,
    /// Words that trigger it.
    #[schema(rename = "trainedWords", nullable = false)]
    trained_words: Option<Vec<String>>,
    /// Preview image URLs.
    #[schema(nullable = false)]
    images: Option<Vec<String>>,
}

/// `GET /3papi/test_civitai`.
#[derive(ToSchema)]
#[schema(example = json!({"isAuthenticated": false}))]
pub(super) struct CivitAiKey {
    /// The configured key works.
    #[schema(rename = "isAuthenticated")]
    is_authenticated: bool,
}

/// `GET /3papi/civitai/downloads_enabled`.
#[derive(ToSchema)]
#[schema(example = json!({"downloadsEnabled": false, "message": "Model directory not set"}))]
pub(super) struct DownloadsEnabled {
    /// Downloads can run.
    #[schema(rename = "downloadsEnabled")]
    downloads_enabled: bool,
    /// Why not.
    #[schema(nullable = false)]
    message: Option<String>,
}

/// A started download.
#[derive(ToSchema)]
pub(super) struct Download {
    /// Its id, in every socket.io event about it.
    id: String,
    /// The CivitAI model version.
    model_version_id: u64,
    /// The file name.
    file: String,
    /// Its folder, relative to the model folder.
    folder: String,
}

/// `202` of `GET /3papi/civitai/download/:id`: the download runs in the background; socket.io
/// tells every client `model-download-progress`, then `model-download-finished` or
/// `model-download-failed`, then `models-refreshed`.
#[derive(ToSchema)]
pub(super) struct DownloadStarted {
    /// `Model download started`.
    message: String,
    /// The download.
    download: Download,
}

/// A refused download: `{"message"}`, or `{"message":"Low storage space","error":"LOW_STORAGE_SPACE"}`.
#[derive(ToSchema)]
#[serde(untagged)]
pub(super) enum DownloadRefused {
    /// Too little free disk.
    LowStorage(LowStorage),
    /// Any other refusal.
    Refused(MessageBody),
}

/// Too little free disk.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LowStorage {
    /// `Low storage space`.
    message: String,
    /// `LOW_STORAGE_SPACE`.
    error: String,
}
