//! Configuration: `config.toml`, environment overrides, and validation.
//!
//! The file keeps Stably Discordant's keys (`[auth]`, `[discord.settings]`, `[discord.style]`,
//! `[misc_settings]`) and adds easel's own sections. Every key has a default, so an empty file
//! (or none at all) is a valid configuration. Anything the server cannot use is refused at start
//! with one line naming the key, what was found and what was expected: an unknown key or
//! section (with the closest known name as a suggestion), a value of the wrong type, a database
//! URL of an unknown kind. Navigator's environment variables override the file where they mean
//! the same thing.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The placeholder token shipped in `config.toml`: the Discord front end stays off while it is set.
pub const PLACEHOLDER_DISCORD_TOKEN: &str = "XXX";

/// The whole configuration, as read from `config.toml` and the environment.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Unused title line kept from the seed's file.
    pub title: String,
    /// `[auth]`: the Discord bot token.
    pub auth: Auth,
    /// `[discord.*]`: the seed's Discord settings.
    pub discord: Discord,
    /// `[misc_settings]`: where logs go.
    pub misc_settings: MiscSettings,
    /// `[database]`: where jobs and images are stored.
    pub database: Database,
    /// `[api]`: the HTTP API.
    pub api: Api,
    /// `[simulated]`: the built-in simulated backend.
    pub simulated: Simulated,
    /// `[workers]`: the ZeroMQ pool of volunteer GPU workers.
    pub workers: Workers,
    /// `[plugins]`: the policy plugins, their roles and settings.
    pub plugins: Plugins,
    /// `[grpc]`: the discordproxy-compatible gRPC API.
    pub grpc: Grpc,
    /// `[[forge]]`: Forge/AUTOMATIC1111 machines (none: Navigator's `SD_API_HOST` /
    /// `SD_API_BASE` make one when set).
    pub forge: Vec<Forge>,
    /// `[oauth]`: Discord login for the HTTP API.
    pub oauth: OAuth,
    /// `[civitai]`: LoRA metadata and model downloads.
    pub civitai: CivitAi,
    /// `[metrics]`: who may read `GET /metrics`.
    pub metrics: MetricsConfig,
    /// What reading the environment noticed (variables easel takes but does not need): logged
    /// at start.
    #[serde(skip)]
    pub env_notes: Vec<String>,
}

/// `[oauth]`: the server side of Discord's authorization-code login (`POST /api/auth/login`).
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct OAuth {
    /// Discord's API, including the version (tests point it at a fake).
    pub discord_api: String,
    /// The application's id (env `DISCORD_CLIENT_ID`).
    pub client_id: String,
    /// The application's secret (env `DISCORD_CLIENT_SECRET`); never logged.
    pub client_secret: String,
    /// Must equal the client's redirect URI (env `DISCORD_REDIRECT_URI`).
    pub redirect_uri: String,
}

impl Default for OAuth {
    fn default() -> Self {
        Self {
            discord_api: "https://discord.com/api/v10".to_owned(),
            client_id: String::new(),
            client_secret: String::new(),
            redirect_uri: String::new(),
        }
    }
}

impl fmt::Debug for OAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth")
            .field("discord_api", &self.discord_api)
            .field("client_id", &self.client_id)
            .field("client_secret", &Redacted(&self.client_secret))
            .field("redirect_uri", &self.redirect_uri)
            .finish()
    }
}

/// `[metrics]`: `GET /metrics` (Prometheus) on the HTTP port. Callers on loopback read it
/// freely; any other caller (or one behind a proxy that sets `X-Forwarded-For`) needs
/// `Authorization: Bearer <token>`, and without a token gets `403`.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct MetricsConfig {
    /// Bearer token for callers off loopback (env `EASEL_METRICS_TOKEN`); never logged.
    pub token: String,
}

impl fmt::Debug for MetricsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsConfig")
            .field("token", &Redacted(&self.token))
            .finish()
    }
}

/// `[civitai]`: CivitAI for LoRA metadata and model downloads into the Forge's model folder.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct CivitAi {
    /// CivitAI's API (tests point it at a fake).
    pub api: String,
    /// Bearer key (env `CIVITAI_API_KEY`); never logged.
    pub api_key: String,
    /// The Forge's `models` folder (env `MODEL_DIR`); empty: downloads are off.
    pub model_dir: String,
    /// List the Forge's LoRAs at `/api/models/loras` (env `ENABLE_LORA_REQUESTS` or
    /// `ENABLE_LORA_SUPPORT`); off: the list is empty, as in Navigator.
    pub lora_requests: bool,
}

impl Default for CivitAi {
    fn default() -> Self {
        Self {
            api: "https://civitai.com/api/v1".to_owned(),
            api_key: String::new(),
            model_dir: String::new(),
            lora_requests: false,
        }
    }
}

impl fmt::Debug for CivitAi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CivitAi")
            .field("api", &self.api)
            .field("api_key", &Redacted(&self.api_key))
            .field("model_dir", &self.model_dir)
            .field("lora_requests", &self.lora_requests)
            .finish()
    }
}

/// One `[[forge]]` machine, driven as Navigator drives its Forge.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Forge {
    /// Its name in logs, job rows and `/api/admin/backends` (default `forge-<n>`).
    pub name: String,
    /// Its base URL, e.g. `http://gpu-1:7860` (Navigator's `SD_API_BASE`).
    pub url: String,
    /// The `/sdapi/v1` base ("" = `<url>/sdapi/v1`; Navigator's `SD_API_HOST`).
    pub api: String,
    /// Models it serves ([] = whatever it has).
    pub models: Vec<String>,
    /// Progress poll period (Navigator's `JOB_PROGRESS_CHECK_INTERVAL`).
    pub progress_ms: u64,
    /// Basic auth (Forge's `--api-auth`); "" = none.
    pub username: String,
    /// Basic auth password.
    pub password: String,
    /// Limit for list and progress calls, in seconds (a generation may take longer: its
    /// limit is the job deadline of `[workers]`).
    pub timeout_s: u64,
    /// Minutes idle before `POST /unload-checkpoint` (Navigator's
    /// `CHECKPOINT_UNLOAD_INTERVAL`); -1 = never.
    pub unload_after_min: i64,
}

impl Default for Forge {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            api: String::new(),
            models: Vec::new(),
            progress_ms: 2500,
            username: String::new(),
            password: String::new(),
            timeout_s: 30,
            unload_after_min: -1,
        }
    }
}

impl fmt::Debug for Forge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forge")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("api", &redact_url(&self.api))
            .field("models", &self.models)
            .field("progress_ms", &self.progress_ms)
            .field("username", &self.username)
            .field("password", &Redacted(&self.password))
            .field("timeout_s", &self.timeout_s)
            .field("unload_after_min", &self.unload_after_min)
            .finish()
    }
}

/// `[auth]`.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Auth {
    /// The bot token; the placeholder `"XXX"` (or an empty string) keeps Discord off.
    pub discord_token: String,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            discord_token: PLACEHOLDER_DISCORD_TOKEN.to_owned(),
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("discord_token", &Redacted(&self.discord_token))
            .finish()
    }
}

/// `[discord]`: the front end's own keys, and the seed's two sub-tables.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Discord {
    /// Gateway base URL ("" for Discord's own); e.g. a proxy, or a fake Discord in tests.
    pub gateway_url: String,
    /// REST base URL ("" for Discord's own), `http://host:port` or `https://host`.
    pub api_base: String,
    /// Send `I'm here!` to every allowed channel when the bot is ready.
    pub announce: bool,
    /// Answer direct messages (the access plugin decides; handed to it as `allow_dms`).
    pub allow_dms: bool,
    /// Threads: `"parent"` (a thread is allowed where its parent channel is) or `"own"` (by the
    /// thread's own name).
    pub threads: Threads,
    /// Where the `/art` slash command is registered: `"global"`, `"guild"` (each guild the bot
    /// is in; appears at once) or `"off"`.
    pub commands: Commands,
    /// REST requests per second the bot may make in all (Discord's global rate limit: 50,
    /// more for bots Discord raised it for).
    pub global_rate_limit: u16,
    /// Connect the gateway (read messages, `/art`). Off: the bot only sends (the gRPC API),
    /// as discordproxy is often run.
    pub gateway: bool,
    /// Attempts of a REST call (gRPC sends) through rate limits and server errors.
    pub rest_tries: u32,
    /// Back-off unit after a Discord server error, in milliseconds: the wait after try `n`
    /// (from 0) is `unit * (1 + 2n)`, i.e. 1, 3, 5, 7, 9 s by default.
    pub server_error_backoff_ms: u64,
    /// Say a queued job's place in line ("Queued: position N") when jobs are ahead of it. Off
    /// by default: the seed says nothing more when a job is queued.
    pub queue_position: bool,
    /// One progress message per job, edited as the steps advance ("⏱️ step 12/30", with the
    /// live preview when there is one; at most one edit every 2 s) and replaced by the result.
    /// Off by default: the seed shows progress by reactions alone.
    pub progress: bool,
    /// The gateway shards this host runs, as `FIRST..END/TOTAL` (shard ids FIRST to END-1 of
    /// TOTAL, e.g. `0..4/16`) or `ID/TOTAL`; `""`: the one shard of one. Hosts sharing one bot
    /// split `0..TOTAL` between them.
    pub shards: String,
    /// `[discord.settings]`.
    pub settings: DiscordSettings,
    /// `[discord.style]`.
    pub style: DiscordStyle,
}

impl Default for Discord {
    fn default() -> Self {
        Self {
            gateway_url: String::new(),
            api_base: String::new(),
            announce: true,
            allow_dms: false,
            threads: Threads::Parent,
            commands: Commands::Global,
            global_rate_limit: 50,
            gateway: true,
            rest_tries: 5,
            server_error_backoff_ms: 1000,
            queue_position: false,
            progress: false,
            shards: String::new(),
            settings: DiscordSettings::default(),
            style: DiscordStyle::default(),
        }
    }
}

/// `[discord] threads`: by which name a thread is allowed.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Threads {
    /// Where its parent channel is allowed.
    #[default]
    Parent,
    /// By the thread's own name.
    Own,
}

/// `[discord] commands`: where the `/art` slash command is registered.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Commands {
    /// For every guild, at once (Discord may take a while to show it).
    #[default]
    Global,
    /// In each guild the bot is in (shows up at once).
    Guild,
    /// Not registered.
    Off,
}

/// `[discord.settings]`: who and where the bot listens to.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct DiscordSettings {
    /// `"Guild:channel"` names to listen in (empty: all channels).
    pub listen_channels: Vec<String>,
    /// `"Guild:channel"` names to ignore (used when `listen_channels` is empty).
    pub ignore_channels: Vec<String>,
    /// `"name#discriminator"` users to listen to (empty: everyone).
    pub listen_users: Vec<String>,
    /// `"name#discriminator"` users to ignore (used when `listen_users` is empty).
    pub ignore_users: Vec<String>,
    /// The prefix that addresses the bot.
    pub wake_word: String,
}

impl Default for DiscordSettings {
    fn default() -> Self {
        Self {
            listen_channels: Vec::new(),
            ignore_channels: Vec::new(),
            listen_users: Vec::new(),
            ignore_users: Vec::new(),
            wake_word: "/art".to_owned(),
        }
    }
}

/// `[discord.style]`: the emoji the bot reacts with.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct DiscordStyle {
    /// Added when a request is accepted.
    pub ack_emoji: String,
    /// Shown while the job runs.
    pub in_prog_emoji: String,
    /// Added when the job is done (and after `--help`).
    pub done_emoji: String,
}

impl Default for DiscordStyle {
    fn default() -> Self {
        Self {
            ack_emoji: "👍".to_owned(),
            in_prog_emoji: "⏱️".to_owned(),
            done_emoji: "💯".to_owned(),
        }
    }
}

/// `[misc_settings]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct MiscSettings {
    /// Directory of the daily-rotated `easel.log` files (7 kept).
    pub log_dir: String,
}

impl Default for MiscSettings {
    fn default() -> Self {
        Self {
            log_dir: "logs".to_owned(),
        }
    }
}

/// `[database]`.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Database {
    /// `sqlite://FILE`, `mysql://…` / `mariadb://…`, or `postgres://…`.
    pub url: String,
    /// This host's id in job claims, events, metrics and `easel status` (env `EASEL_HOST_ID`).
    /// Empty: the one in `host_id_file`, generated (`<host name>-<8 hex digits>`) and written
    /// there at the first start. Hosts sharing one database need different ids.
    pub host_id: String,
    /// Where a generated host id is kept.
    pub host_id_file: String,
    /// Seconds a job claim holds without renewal: a host renews its claims every third of it,
    /// and any host requeues (as a fault) a running job whose lease ran out.
    pub lease_s: f64,
}

impl Default for Database {
    fn default() -> Self {
        Self {
            url: "sqlite://easel.db".to_owned(),
            host_id: String::new(),
            host_id_file: "easel-host-id".to_owned(),
            lease_s: 30.0,
        }
    }
}

impl Database {
    /// `lease_s` as a duration.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.lease_s)
    }
}

/// `[discord] shards`: the shard ids this host runs and the total; `None` if malformed.
pub fn parse_shards(text: &str) -> Option<(std::ops::Range<u32>, u32)> {
    let text = text.trim();
    if text.is_empty() {
        return Some((0..1, 1));
    }
    let (ids, total) = text.split_once('/')?;
    let total: u32 = total.trim().parse().ok()?;
    let ids = match ids.split_once("..") {
        Some((first, end)) => first.trim().parse().ok()?..end.trim().parse().ok()?,
        None => {
            let id: u32 = ids.trim().parse().ok()?;
            id..id.checked_add(1)?
        }
    };
    (ids.start < ids.end && ids.end <= total).then_some((ids, total))
}

/// Whether `id` may name a host: 1 to 64 of `A-Z a-z 0-9 . _ : -`.
pub fn valid_host_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("url", &redact_url(&self.url))
            .field("host_id", &self.host_id)
            .field("host_id_file", &self.host_id_file)
            .field("lease_s", &self.lease_s)
            .finish()
    }
}

/// `[api]`: the Navigator-compatible HTTP API.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Api {
    /// Address the listeners bind to.
    pub bind: String,
    /// HTTP API port (env `HTTP_API_PORT`).
    pub http_port: u16,
    /// Realtime (socket.io) port (env `RT_API_PORT`).
    pub rt_port: u16,
    /// Static superuser credential sent raw in `Authorization` (env `SUPERUSER_ADMIN_TOKEN`).
    /// Empty: a random one is generated at start and written to `superuser_token_file`.
    pub superuser_token: String,
    /// Where a generated superuser token is written (mode 0600).
    pub superuser_token_file: String,
    /// HS256 secret for JWTs (env `SECRET_KEY`); empty: only the superuser token is accepted.
    pub secret_key: String,
    /// Largest `width * height` accepted (env `IMAGE_PIXEL_LIMIT`).
    pub image_pixel_limit: u64,
    /// Serve Navigator's unauthenticated `/api/queue/txt2img` and `/api/queue/img2img`
    /// (env `ALLOW_LEGACY_BOT_ENDPOINTS=true`).
    pub allow_legacy_bot_endpoints: bool,
    /// Lifetime of the JWTs `POST /api/auth/login` issues, a vercel/ms string such as `"72h"`,
    /// `"14d"` or `"90m"`; `"-1"`: tokens without `exp` (env `TOKEN_EXPIRATION_TIME`).
    pub token_expiration: String,
    /// Accept `{"code":"DEMO_USER"}` at login (env `ENABLE_DEMO_USER`, a boolean).
    pub enable_demo_user: bool,
    /// Greet each socket.io connection with `connected` (env `I_DO_NOT_LIKE_FUN=true` turns
    /// it off).
    pub greet: bool,
}

impl Default for Api {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1".to_owned(),
            http_port: 3333,
            rt_port: 3334,
            superuser_token: String::new(),
            superuser_token_file: "easel-superuser.token".to_owned(),
            secret_key: String::new(),
            image_pixel_limit: 3_686_400,
            allow_legacy_bot_endpoints: false,
            token_expiration: "72h".to_owned(),
            enable_demo_user: false,
            greet: true,
        }
    }
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("bind", &self.bind)
            .field("http_port", &self.http_port)
            .field("rt_port", &self.rt_port)
            .field("superuser_token", &Redacted(&self.superuser_token))
            .field("superuser_token_file", &self.superuser_token_file)
            .field("secret_key", &Redacted(&self.secret_key))
            .field("image_pixel_limit", &self.image_pixel_limit)
            .field(
                "allow_legacy_bot_endpoints",
                &self.allow_legacy_bot_endpoints,
            )
            .field("token_expiration", &self.token_expiration)
            .field("enable_demo_user", &self.enable_demo_user)
            .field("greet", &self.greet)
            .finish()
    }
}

/// `[grpc]`: discordproxy's gRPC API (`discordproxyserver --host/--port`), served while a bot
/// token is configured.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Grpc {
    /// Serve it (when a bot token is configured).
    pub enabled: bool,
    /// Listen address; anything but loopback needs `token`.
    pub host: String,
    /// Listen port.
    pub port: u16,
    /// Shared secret clients send as `authorization: Bearer <token>` metadata ("" = none,
    /// allowed on loopback only).
    pub token: String,
}

impl Default for Grpc {
    fn default() -> Self {
        Self {
            enabled: true,
            host: "127.0.0.1".to_owned(),
            port: 50051,
            token: String::new(),
        }
    }
}

impl fmt::Debug for Grpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grpc")
            .field("enabled", &self.enabled)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("token", &Redacted(&self.token))
            .finish()
    }
}

/// `[simulated]`: the built-in backend that draws a PNG without a GPU.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Simulated {
    /// How many jobs it runs at once (0 turns it off).
    pub workers: u32,
    /// Delay per sampling step, in milliseconds.
    pub step_ms: u64,
}

impl Default for Simulated {
    fn default() -> Self {
        Self {
            workers: 1,
            step_ms: 20,
        }
    }
}

/// `[plugins]`: where plugins live, their limits, which plugin serves each role, and each
/// plugin's own table (`[plugins.<name>]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Plugins {
    /// The directory of `.wasm` plugins, watched while the server runs.
    pub dir: String,
    /// Where compiled plugins are kept between starts, relative to `dir` ("" turns the cache
    /// off).
    pub cache_dir: String,
    /// Wall-clock time one plugin call may take, in milliseconds.
    pub deadline_ms: u64,
    /// Memory one plugin call may grow to, in MiB.
    pub memory_mib: u64,
    /// Plugin calls that may run at once (instances in the pool); more callers wait for a free
    /// instance, up to their deadline.
    pub instances: u32,
    /// `[plugins.roles]`: the plugin (file stem) serving each role.
    pub roles: PluginRoles,
    /// `[plugins.<name>]`: each plugin's own settings (`on_failure` is read by easel).
    #[serde(flatten)]
    pub settings: std::collections::BTreeMap<String, PluginTable>,
}

/// What happens when a plugin traps, runs out of time or memory, or is not loaded.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Refuse: access denies, the parser answers with an apology, the model policy refuses,
    /// reactions do nothing.
    FailClosed,
    /// Let it through: access allows, the parser ignores the message, the model policy keeps
    /// the request as it is, reactions do nothing.
    FailOpen,
    /// Ask the default plugin embedded in the binary (and fail closed if that fails too).
    #[default]
    Builtin,
}

impl FailurePolicy {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailClosed => "fail-closed",
            Self::FailOpen => "fail-open",
            Self::Builtin => "builtin",
        }
    }
}

/// `[plugins.<name>]`: `on_failure`, read by easel, and the keys handed to the plugin.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct PluginTable {
    /// What happens when this plugin fails (default `builtin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<FailurePolicy>,
    /// Everything else: the plugin's own settings.
    #[serde(flatten)]
    pub values: toml::Table,
}

impl Default for Plugins {
    fn default() -> Self {
        Self {
            dir: "plugins".to_owned(),
            cache_dir: ".cache".to_owned(),
            deadline_ms: 50,
            memory_mib: 32,
            instances: 64,
            roles: PluginRoles::default(),
            settings: Default::default(),
        }
    }
}

/// `[plugins.roles]`; "" means the default plugin embedded in the binary.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct PluginRoles {
    /// Reads chat messages.
    pub parser: String,
    /// Decides who may use the bot.
    pub access: String,
    /// Decides how the bot shows progress.
    pub reactions: String,
    /// Decides models and limits.
    #[serde(rename = "model-policy")]
    pub model_policy: String,
}

impl Default for PluginRoles {
    fn default() -> Self {
        Self {
            parser: "parser".to_owned(),
            access: "access".to_owned(),
            reactions: "reactions".to_owned(),
            model_policy: "model-policy".to_owned(),
        }
    }
}

/// `[workers]`: the ZeroMQ ROUTER that volunteer workers connect to.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Workers {
    /// ZeroMQ endpoint to bind (`tcp://*:5556` like the seed); empty turns the pool off.
    pub bind: String,
    /// Shortest deadline of a dispatched job, in seconds.
    pub deadline_min_s: f64,
    /// Multiplies the size-dependent part of the deadline.
    pub deadline_scale: f64,
    /// Worker faults (deadline, lost worker) after which a job fails.
    pub max_faults: u32,
    /// When set, easel workers must send it in READY; seed workers cannot and are refused.
    pub token: String,
    /// Largest message accepted from a worker, in bytes.
    pub max_message_bytes: usize,
}

impl Default for Workers {
    fn default() -> Self {
        Self {
            bind: "tcp://*:5556".to_owned(),
            deadline_min_s: 150.0,
            deadline_scale: 1.0,
            max_faults: 2,
            token: String::new(),
            max_message_bytes: 64 * 1024 * 1024,
        }
    }
}

impl fmt::Debug for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers")
            .field("bind", &self.bind)
            .field("deadline_min_s", &self.deadline_min_s)
            .field("deadline_scale", &self.deadline_scale)
            .field("max_faults", &self.max_faults)
            .field("token", &Redacted(&self.token))
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

/// Prints `<set>`/`<empty>` instead of a secret.
struct Redacted<'a>(&'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        })
    }
}

/// `endpoint` (`tcp://HOST:PORT`) with another port; an empty endpoint binds all interfaces.
pub fn with_port(endpoint: &str, port: u16) -> String {
    let host = endpoint
        .strip_prefix("tcp://")
        .and_then(|rest| rest.rsplit_once(':'))
        .map_or("*", |(host, _)| host);
    format!("tcp://{host}:{port}")
}

/// A database URL with its password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("<redacted>"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// A configuration that cannot be used; `Display` is the one line shown to the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config error: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config error: {path}: invalid TOML at line {line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A key (or section) that easel does not know.
    #[error("config error: unknown {what} `{key}`{suggestion}")]
    UnknownKey {
        /// `key` or `section`.
        what: &'static str,
        /// Dotted path of the key.
        key: String,
        /// `" (did you mean `x`?)"` or a list of the known keys.
        suggestion: String,
    },
    /// A key whose value has the wrong type or is out of range.
    #[error("config error: `{key}`: found {found}, expected {expected}")]
    Invalid {
        /// Dotted path of the key (or the environment variable).
        key: String,
        /// What was there.
        found: String,
        /// What would have been accepted.
        expected: String,
    },
}

impl Config {
    /// Reads `path`; a missing file at the default location means "all defaults".
    pub fn load(path: &Path, must_exist: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !must_exist => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut config = Self::parse(&text, path)?;
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses the text of a config file (no environment, no validation).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|err| {
            let line = err
                .span()
                .map(|span| text[..span.start.min(text.len())].lines().count().max(1))
                .unwrap_or(0);
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                message: err.message().trim().to_owned(),
            }
        })?;
        Self::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        let known = toml::Table::try_from(Config::default()).expect("defaults serialize");
        check_unknown_keys(&table, &known, "")?;
        // Each `[plugins.<name>]` table on its own first: inside the flattened map below, serde
        // would report a bad value as being at `plugins`.
        let known_plugins = known.get("plugins").and_then(toml::Value::as_table);
        if let Some(plugins) = table.get("plugins").and_then(toml::Value::as_table) {
            for (name, value) in plugins {
                if known_plugins.is_some_and(|k| k.contains_key(name)) || !value.is_table() {
                    continue;
                }
                serde_path_to_error::deserialize::<_, PluginTable>(value.clone()).map_err(
                    |err| {
                        let key = format!("plugins.{name}.{}", err.path());
                        invalid_from_serde(&key, &err.into_inner().to_string())
                    },
                )?;
            }
        }
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|err| {
            let key = err.path().to_string();
            invalid_from_serde(&key, &err.into_inner().to_string())
        })
    }

    /// Applies Navigator's and easel's environment variables on top of the file.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("SUPERUSER_ADMIN_TOKEN").filter(|v| !v.is_empty()) {
            self.api.superuser_token = v;
        }
        if let Some(v) = get("SECRET_KEY").filter(|v| !v.is_empty()) {
            self.api.secret_key = v;
        }
        if let Some(v) = get("DISCORD_BOT_TOKEN").filter(|v| !v.is_empty()) {
            self.auth.discord_token = v;
        }
        if let Some(v) = get("EASEL_METRICS_TOKEN").filter(|v| !v.is_empty()) {
            self.metrics.token = v;
        }
        if let Some(v) = get("EASEL_WORKER_TOKEN").filter(|v| !v.is_empty()) {
            self.workers.token = v;
        }
        if let Some(v) = get("EASEL_HOST_ID").filter(|v| !v.is_empty()) {
            self.database.host_id = v;
        }
        if let Some(v) = get("DATABASE_URL").filter(|v| !v.is_empty()) {
            self.database.url = v;
        } else if let Some(url) = navigator_database_url(&get) {
            self.database.url = url;
        }
        self.apply_navigator_env(&get)?;
        if let Some(v) = get("HTTP_API_PORT") {
            self.api.http_port = env_number(&v, "HTTP_API_PORT", "a port number (0-65535)")?;
        }
        if let Some(v) = get("RT_API_PORT") {
            self.api.rt_port = env_number(&v, "RT_API_PORT", "a port number (0-65535)")?;
        }
        if let Some(v) = get("ALLOW_LEGACY_BOT_ENDPOINTS") {
            self.api.allow_legacy_bot_endpoints = v == "true";
        }
        let sd_host = get("SD_API_HOST").filter(|v| !v.is_empty());
        let sd_base = get("SD_API_BASE").filter(|v| !v.is_empty());
        if self.forge.is_empty() && (sd_host.is_some() || sd_base.is_some()) {
            let api = sd_host.clone().unwrap_or_default();
            let url = sd_base.unwrap_or_else(|| {
                api.trim_end_matches('/')
                    .trim_end_matches("/sdapi/v1")
                    .to_owned()
            });
            self.forge.push(Forge {
                name: "forge".to_owned(),
                url,
                api,
                ..Forge::default()
            });
        }
        if let Some(v) = get("JOB_PROGRESS_CHECK_INTERVAL") {
            let ms = env_number(&v, "JOB_PROGRESS_CHECK_INTERVAL", "milliseconds")?;
            self.forge.iter_mut().for_each(|f| f.progress_ms = ms);
        }
        if let Some(v) = get("CHECKPOINT_UNLOAD_INTERVAL") {
            let min = v.trim().parse::<i64>().map_err(|_| ConfigError::Invalid {
                key: "CHECKPOINT_UNLOAD_INTERVAL".to_owned(),
                found: format!("{v:?}"),
                expected: "minutes (-1 = never)".to_owned(),
            })?;
            self.forge.iter_mut().for_each(|f| f.unload_after_min = min);
        }
        if let Some(v) = get("IMAGE_PIXEL_LIMIT") {
            self.api.image_pixel_limit =
                env_number(&v, "IMAGE_PIXEL_LIMIT", "a positive whole number of pixels")?;
        }
        Ok(())
    }

    /// The rest of Navigator's variables (compat §2.2): each is honoured, or noted as not
    /// needed, or refused.
    fn apply_navigator_env(
        &mut self,
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(v) = get("TOKEN_EXPIRATION_TIME").filter(|v| !v.trim().is_empty()) {
            crate::api::parse_expiration(&v).map_err(|expected| ConfigError::Invalid {
                key: "environment variable TOKEN_EXPIRATION_TIME".to_owned(),
                found: format!("{v:?}"),
                expected: expected.to_owned(),
            })?;
            self.api.token_expiration = v.trim().to_owned();
        }
        if let Some(v) = get("ENABLE_DEMO_USER") {
            self.api.enable_demo_user = env_bool(&v, "ENABLE_DEMO_USER")?;
        }
        if let Some(v) = get("I_DO_NOT_LIKE_FUN") {
            self.api.greet = !env_bool(&v, "I_DO_NOT_LIKE_FUN")?;
        }
        for name in ["ENABLE_LORA_REQUESTS", "ENABLE_LORA_SUPPORT"] {
            if let Some(v) = get(name) {
                self.civitai.lora_requests |= env_bool(&v, name)?;
            }
        }
        if let Some(v) = get("DISCORD_CLIENT_ID").filter(|v| !v.is_empty()) {
            self.oauth.client_id = v;
        }
        if let Some(v) = get("DISCORD_CLIENT_SECRET").filter(|v| !v.is_empty()) {
            self.oauth.client_secret = v;
        }
        if let Some(v) = get("DISCORD_REDIRECT_URI").filter(|v| !v.is_empty()) {
            self.oauth.redirect_uri = v;
        }
        if let Some(v) = get("CIVITAI_API_KEY").filter(|v| !v.is_empty()) {
            self.civitai.api_key = v;
        }
        if let Some(v) = get("MODEL_DIR").filter(|v| !v.is_empty()) {
            self.civitai.model_dir = v;
        }
        // Navigator switched Discord id checks on with `BOT_TOKEN` and sent
        // `DISCORD_BOT_TOKEN`; easel has one bot token (`[auth] discord_token`, env
        // `DISCORD_BOT_TOKEN`), which also checks ids when set.
        if let Some(v) = get("BOT_TOKEN").filter(|v| !v.is_empty()) {
            match get("DISCORD_BOT_TOKEN").filter(|v| !v.is_empty()) {
                Some(token) if token != v => {
                    return Err(ConfigError::Invalid {
                        key: "environment variable BOT_TOKEN".to_owned(),
                        found: "a token different from DISCORD_BOT_TOKEN".to_owned(),
                        expected: "unset, or the same token: easel has one bot token                              (DISCORD_BOT_TOKEN / [auth] discord_token)"
                            .to_owned(),
                    });
                }
                Some(_) => {}
                None => {
                    self.auth.discord_token = v;
                    self.env_notes.push(
                        "BOT_TOKEN is read as the bot token; easel's name for it is                          DISCORD_BOT_TOKEN ([auth] discord_token)"
                            .to_owned(),
                    );
                }
            }
        }
        for (name, why) in [
            (
                "SUPPORTS_FLUX",
                "Flux models need no switch in easel (Navigator never read it either)",
            ),
            (
                "NAVIGATOR_IGNORE_MIGRATION_MISMATCH",
                "easel keeps its own schema and adopts a Navigator database at its first start",
            ),
        ] {
            if get(name).is_some() {
                self.env_notes.push(format!("{name} is not needed: {why}"));
            }
        }
        Ok(())
    }

    /// Checks values whose type is right but whose content is not usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (n, forge) in self.forge.iter().enumerate() {
            let parsed = url::Url::parse(&forge.url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if parsed.is_none() {
                return Err(ConfigError::Invalid {
                    key: format!("forge[{n}].url"),
                    found: format!("{:?}", redact_url(&forge.url)),
                    expected: "an http(s) URL such as \"http://127.0.0.1:7860\"".to_owned(),
                });
            }
            if !forge.api.is_empty() && url::Url::parse(&forge.api).is_err() {
                return Err(ConfigError::Invalid {
                    key: format!("forge[{n}].api"),
                    found: format!("{:?}", redact_url(&forge.api)),
                    expected: "an http(s) URL ending in /sdapi/v1, or \"\"".to_owned(),
                });
            }
            if forge.progress_ms == 0 {
                return Err(ConfigError::Invalid {
                    key: format!("forge[{n}].progress_ms"),
                    found: "0".to_owned(),
                    expected: "a poll period in milliseconds (e.g. 2500)".to_owned(),
                });
            }
            if !names.insert(self.forge_name(n)) {
                return Err(ConfigError::Invalid {
                    key: format!("forge[{n}].name"),
                    found: format!("{:?}", self.forge_name(n)),
                    expected: "a name no other [[forge]] entry has".to_owned(),
                });
            }
        }
        if !self.database.host_id.is_empty() && !valid_host_id(&self.database.host_id) {
            return Err(ConfigError::Invalid {
                key: "database.host_id".to_owned(),
                found: format!("{:?}", self.database.host_id),
                expected: "1 to 64 letters, digits, '.', '_', ':' or '-'".to_owned(),
            });
        }
        if !(self.database.lease_s.is_finite() && (0.3..=86_400.0).contains(&self.database.lease_s))
        {
            return Err(ConfigError::Invalid {
                key: "database.lease_s".to_owned(),
                found: self.database.lease_s.to_string(),
                expected: "seconds from 0.3 to 86400".to_owned(),
            });
        }
        crate::store::DatabaseKind::from_url(&self.database.url).map_err(|expected| {
            ConfigError::Invalid {
                key: "database.url".to_owned(),
                found: format!("{:?}", redact_url(&self.database.url)),
                expected: expected.to_owned(),
            }
        })?;
        if let Err(expected) = crate::api::parse_expiration(&self.api.token_expiration) {
            return Err(ConfigError::Invalid {
                key: "api.token_expiration".to_owned(),
                found: format!("{:?}", self.api.token_expiration),
                expected: expected.to_owned(),
            });
        }
        if self.api.image_pixel_limit == 0 {
            return Err(ConfigError::Invalid {
                key: "api.image_pixel_limit".to_owned(),
                found: "0".to_owned(),
                expected: "a positive number of pixels".to_owned(),
            });
        }
        if !self.workers.bind.is_empty() && !self.workers.bind.starts_with("tcp://") {
            return Err(ConfigError::Invalid {
                key: "workers.bind".to_owned(),
                found: format!("{:?}", self.workers.bind),
                expected:
                    "a ZeroMQ TCP endpoint such as \"tcp://*:5556\" (or \"\" to turn the pool off)"
                        .to_owned(),
            });
        }
        if self.workers.max_faults == 0 {
            return Err(ConfigError::Invalid {
                key: "workers.max_faults".to_owned(),
                found: "0".to_owned(),
                expected: "at least 1".to_owned(),
            });
        }
        if !(self.workers.deadline_min_s > 0.0 && self.workers.deadline_scale > 0.0) {
            return Err(ConfigError::Invalid {
                key: "workers.deadline_min_s / workers.deadline_scale".to_owned(),
                found: format!(
                    "{} / {}",
                    self.workers.deadline_min_s, self.workers.deadline_scale
                ),
                expected: "positive numbers".to_owned(),
            });
        }
        for (key, value, schemes) in [
            (
                "discord.gateway_url",
                &self.discord.gateway_url,
                &["ws", "wss"][..],
            ),
            (
                "discord.api_base",
                &self.discord.api_base,
                &["http", "https"][..],
            ),
            (
                "oauth.discord_api",
                &self.oauth.discord_api,
                &["http", "https"][..],
            ),
            ("civitai.api", &self.civitai.api, &["http", "https"][..]),
        ] {
            let ok = value.is_empty()
                || url::Url::parse(value)
                    .is_ok_and(|u| schemes.contains(&u.scheme()) && u.host_str().is_some());
            if !ok {
                return Err(ConfigError::Invalid {
                    key: key.to_owned(),
                    found: format!("{value:?}"),
                    expected: format!("\"\" or a {}:// URL", schemes.join("/")),
                });
            }
        }
        if !(1..=60_000).contains(&self.plugins.deadline_ms) || self.plugins.memory_mib == 0 {
            return Err(ConfigError::Invalid {
                key: "plugins.deadline_ms / plugins.memory_mib".to_owned(),
                found: format!("{} / {}", self.plugins.deadline_ms, self.plugins.memory_mib),
                expected: "1-60000 ms and at least 1 MiB".to_owned(),
            });
        }
        if parse_shards(&self.discord.shards).is_none() {
            return Err(ConfigError::Invalid {
                key: "discord.shards".to_owned(),
                found: format!("{:?}", self.discord.shards),
                expected: "\"FIRST..END/TOTAL\" with FIRST < END <= TOTAL (e.g. \"0..4/16\"), \
                    \"ID/TOTAL\", or \"\" for one shard"
                    .to_owned(),
            });
        }
        if self.discord.global_rate_limit == 0 {
            return Err(ConfigError::Invalid {
                key: "discord.global_rate_limit".to_owned(),
                found: "0".to_owned(),
                expected: "at least 1 request per second".to_owned(),
            });
        }
        if !(1..=10_000).contains(&self.plugins.instances) {
            return Err(ConfigError::Invalid {
                key: "plugins.instances".to_owned(),
                found: self.plugins.instances.to_string(),
                expected: "1-10000 instances".to_owned(),
            });
        }
        self.check_plugin_tables()?;
        if self.api.bind.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "api.bind".to_owned(),
                found: format!("{:?}", self.api.bind),
                expected: "an IP address such as \"127.0.0.1\" or \"0.0.0.0\"".to_owned(),
            });
        }
        Ok(())
    }

    /// Every `[plugins.<name>]` table must be the settings of a plugin: one named in
    /// `[plugins.roles]`, a default plugin, or a `.wasm` file of the plugin directory. Anything
    /// else is a typo (`[plugins.rolse]`), refused like an unknown key.
    fn check_plugin_tables(&self) -> Result<(), ConfigError> {
        let on_disk: Vec<String> = std::fs::read_dir(&self.plugins.dir)
            .map(|listing| {
                listing
                    .filter_map(|entry| {
                        let path = entry.ok()?.path();
                        (path.extension()? == "wasm")
                            .then(|| Some(path.file_stem()?.to_string_lossy().into_owned()))?
                    })
                    .collect()
            })
            .unwrap_or_default();
        let roles = &self.plugins.roles;
        let mut plugins: Vec<&str> = vec!["parser", "access", "reactions", "model-policy"];
        plugins.extend([
            roles.parser.as_str(),
            roles.access.as_str(),
            roles.reactions.as_str(),
            roles.model_policy.as_str(),
        ]);
        plugins.extend(on_disk.iter().map(String::as_str));
        for name in self.plugins.settings.keys() {
            if plugins.contains(&name.as_str()) {
                continue;
            }
            let mut known = toml::Table::try_from(Plugins::default()).expect("defaults serialize");
            for plugin in &plugins {
                known.insert((*plugin).to_owned(), toml::Value::Table(toml::Table::new()));
            }
            let suggestion = match suggest(name, &known) {
                hint if hint.starts_with(" (did you mean") => hint,
                _ => format!(
                    " (no plugin of that name: not in [plugins.roles] and no {}/{name}.wasm)",
                    self.plugins.dir
                ),
            };
            return Err(ConfigError::UnknownKey {
                what: "section",
                key: format!("plugins.{name}"),
                suggestion,
            });
        }
        Ok(())
    }

    /// The name of the `n`th `[[forge]]` machine.
    pub fn forge_name(&self, n: usize) -> String {
        match self.forge.get(n) {
            Some(forge) if !forge.name.is_empty() => forge.name.clone(),
            _ => format!("forge-{n}"),
        }
    }

    /// Whether a real Discord token is configured.
    pub fn discord_enabled(&self) -> bool {
        let token = self.auth.discord_token.trim();
        !token.is_empty() && token != PLACEHOLDER_DISCORD_TOKEN && token != "XXXX"
    }
}

/// Navigator's `DB_HOST` / `DB_USER` / `DB_PASSWORD` / `DB_NAME` as a MariaDB URL, when any
/// is set (the others take Navigator's defaults: `localhost`, `bitjourney`, `password`,
/// `bitjourney`). `DB_HOST` may carry a port (`db:3307`).
fn navigator_database_url(get: &impl Fn(&str) -> Option<String>) -> Option<String> {
    let vars = ["DB_HOST", "DB_USER", "DB_PASSWORD", "DB_NAME"].map(get);
    if vars.iter().all(Option::is_none) {
        return None;
    }
    let [host, user, password, name] = vars;
    let encode = |v: String| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    Some(format!(
        "mysql://{}:{}@{}/{}",
        encode(user.unwrap_or_else(|| "bitjourney".to_owned())),
        encode(password.unwrap_or_else(|| "password".to_owned())),
        host.unwrap_or_else(|| "localhost".to_owned()),
        encode(name.unwrap_or_else(|| "bitjourney".to_owned())),
    ))
}

/// A boolean environment variable: `true`/`1`/`yes`/`on` or `false`/`0`/`no`/`off`/empty
/// (any case); anything else is refused rather than guessed (Navigator took any non-empty
/// string, `"false"` included, as on).
fn env_bool(value: &str, name: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::Invalid {
            key: format!("environment variable {name}"),
            found: format!("{value:?}"),
            expected: "true or false".to_owned(),
        }),
    }
}

fn env_number<T: std::str::FromStr>(
    value: &str,
    name: &str,
    expected: &str,
) -> Result<T, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::Invalid {
        key: format!("environment variable {name}"),
        found: format!("{value:?}"),
        expected: expected.to_owned(),
    })
}

/// Walks the user's table against the default one (which lists every known key).
fn check_unknown_keys(
    table: &toml::Table,
    known: &toml::Table,
    prefix: &str,
) -> Result<(), ConfigError> {
    for (key, value) in table {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match known.get(key) {
            // `[plugins.<name>]`: each plugin's own table, whatever its keys (which names are
            // plugins is checked in `validate`).
            None if prefix == "plugins" && value.is_table() => {}
            None => {
                let what = if value.is_table() { "section" } else { "key" };
                return Err(ConfigError::UnknownKey {
                    what,
                    key: dotted,
                    suggestion: suggest(key, known),
                });
            }
            Some(toml::Value::Table(inner)) => {
                if let toml::Value::Table(user_inner) = value {
                    check_unknown_keys(user_inner, inner, &dotted)?;
                }
                // A non-table where a table belongs is a type error, reported by serde below.
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn suggest(key: &str, known: &toml::Table) -> String {
    let best = known
        .keys()
        .map(|k| (strsim::jaro_winkler(key, k), k))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((score, name)) if score >= 0.8 => format!(" (did you mean `{name}`?)"),
        _ => {
            let names: Vec<&str> = known.keys().map(String::as_str).collect();
            format!(" (known here: {})", names.join(", "))
        }
    }
}

/// Turns serde's `invalid type: string "x", expected u16` into the one-line error for `key`.
fn invalid_from_serde(key: &str, message: &str) -> ConfigError {
    let message = message.lines().next().unwrap_or_default().trim();
    let (found, expected) = match message.split_once(", expected ") {
        // `unknown variant `x`, expected `a` or `b``: a string that is not one of the choices.
        Some((found, expected)) if found.starts_with("unknown variant `") => (
            format!(
                "{:?}",
                found
                    .trim_start_matches("unknown variant `")
                    .trim_end_matches('`')
            ),
            expected.replace("one of ", "").replace('`', "\""),
        ),
        Some((found, expected)) => (
            found
                .trim_start_matches("invalid type: ")
                .trim_start_matches("invalid value: ")
                .to_owned(),
            humanize_expected(expected),
        ),
        None => (message.to_owned(), "a valid value".to_owned()),
    };
    ConfigError::Invalid {
        key: key.to_owned(),
        found,
        expected,
    }
}

fn humanize_expected(expected: &str) -> String {
    match expected {
        "u16" => "a port number (0-65535)".to_owned(),
        "u32" | "u64" => "a non-negative whole number".to_owned(),
        "a string" => "a string".to_owned(),
        "a sequence" => "a list of strings".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("config.toml"))
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn discord_progress_and_queue_position_are_off_unless_asked() {
        let default = parse("").unwrap().discord;
        assert!(!default.progress && !default.queue_position);
        let on = parse("[discord]\nprogress = true\nqueue_position = true\n").unwrap();
        assert!(on.discord.progress && on.discord.queue_position);
        let err = parse("[discord]\nprogres = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key `discord.progres`"), "{err}");
    }

    #[test]
    fn typo_suggests_closest_key() {
        let err = parse("[api]\nhtp_port = 1\n").unwrap_err().to_string();
        assert_eq!(
            err,
            "config error: unknown key `api.htp_port` (did you mean `http_port`?)"
        );
    }

    #[test]
    fn wrong_type_names_key() {
        let err = parse("[api]\nhttp_port = \"abc\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`api.http_port`"), "{err}");
        assert!(err.contains("string \"abc\""), "{err}");
        assert!(err.contains("port number"), "{err}");
    }

    #[test]
    fn env_overrides_and_rejects_garbage() {
        let mut config = Config::default();
        config
            .apply_env(|k| (k == "HTTP_API_PORT").then(|| "4000".to_owned()))
            .unwrap();
        assert_eq!(config.api.http_port, 4000);
        let err = config
            .apply_env(|k| (k == "IMAGE_PIXEL_LIMIT").then(|| "lots".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("IMAGE_PIXEL_LIMIT"), "{err}");
    }

    /// The environment as a list of pairs.
    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn navigator_environment_is_honoured_or_refused() {
        let mut config = Config::default();
        config
            .apply_env(env(&[
                ("DB_HOST", "db:3307"),
                ("DB_PASSWORD", "p@ss:word"),
                ("ENABLE_DEMO_USER", "FALSE"),
                ("TOKEN_EXPIRATION_TIME", "14d"),
                ("ENABLE_LORA_SUPPORT", "true"),
                ("DISCORD_CLIENT_ID", "42"),
                ("CIVITAI_API_KEY", "k"),
                ("MODEL_DIR", "/models"),
                ("I_DO_NOT_LIKE_FUN", "true"),
                ("SUPPORTS_FLUX", "false"),
            ]))
            .unwrap();
        assert_eq!(
            config.database.url,
            "mysql://bitjourney:p%40ss%3Aword@db:3307/bitjourney"
        );
        assert!(
            !config.api.enable_demo_user,
            "\"FALSE\" is off (Navigator took it as on)"
        );
        assert_eq!(config.api.token_expiration, "14d");
        assert!(config.civitai.lora_requests);
        assert_eq!(config.oauth.client_id, "42");
        assert_eq!(config.civitai.api_key, "k");
        assert_eq!(config.civitai.model_dir, "/models");
        assert!(!config.api.greet);
        assert_eq!(config.env_notes.len(), 1, "{:?}", config.env_notes);
        assert!(config.env_notes[0].starts_with("SUPPORTS_FLUX"));
        // DATABASE_URL wins over DB_*.
        let mut config = Config::default();
        config
            .apply_env(env(&[("DATABASE_URL", "sqlite://x.db"), ("DB_HOST", "db")]))
            .unwrap();
        assert_eq!(config.database.url, "sqlite://x.db");
        // Refusals say which variable and what would do.
        for (pairs, needle) in [
            (
                &[("ENABLE_DEMO_USER", "yes please")][..],
                "ENABLE_DEMO_USER",
            ),
            (
                &[("TOKEN_EXPIRATION_TIME", "forever")][..],
                "TOKEN_EXPIRATION_TIME",
            ),
            (
                &[("BOT_TOKEN", "a"), ("DISCORD_BOT_TOKEN", "b")][..],
                "BOT_TOKEN",
            ),
        ] {
            let err = Config::default()
                .apply_env(env(pairs))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        // Navigator's BOT_TOKEN alone is the bot token.
        let mut config = Config::default();
        config.apply_env(env(&[("BOT_TOKEN", "tok")])).unwrap();
        assert_eq!(config.auth.discord_token, "tok");
        assert!(config.env_notes[0].contains("DISCORD_BOT_TOKEN"));
    }

    #[test]
    fn choices_are_typed() {
        let err = parse("[discord]\nthreads = \"sometimes\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config error: `discord.threads`: found \"sometimes\", expected \"parent\" or \"own\""
        );
        let err = parse("[plugins.access]\non_failure = \"explode\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config error: `plugins.access.on_failure`: found \"explode\", expected \"fail-closed\", \"fail-open\""), "{err}");
        let config = parse("[plugins.access]\non_failure = \"fail-open\"\nmin_role = 2\n").unwrap();
        let table = &config.plugins.settings["access"];
        assert_eq!(table.on_failure, Some(FailurePolicy::FailOpen));
        assert_eq!(table.values.get("min_role"), Some(&toml::Value::Integer(2)));
    }

    #[test]
    fn shard_ranges_parse() {
        assert_eq!(parse_shards(""), Some((0..1, 1)));
        assert_eq!(parse_shards("0..4/16"), Some((0..4, 16)));
        assert_eq!(parse_shards(" 3/4 "), Some((3..4, 4)));
        for bad in ["4..4/16", "0..17/16", "5/4", "0..2", "a..b/2", "1..0/2"] {
            assert_eq!(parse_shards(bad), None, "{bad}");
        }
        let mut config = Config::default();
        config.discord.shards = "0..3/2".to_owned();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("`discord.shards`: found \"0..3/2\""), "{err}");
    }

    #[test]
    fn host_ids_and_leases_are_checked() {
        let mut config = Config::default();
        config
            .apply_env(|k| (k == "EASEL_HOST_ID").then(|| "gpu-box.2".to_owned()))
            .unwrap();
        assert_eq!(config.database.host_id, "gpu-box.2");
        config.validate().unwrap();
        config.database.host_id = "two words".to_owned();
        let err = config.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "config error: `database.host_id`: found \"two words\", expected 1 to 64 letters, digits, '.', '_', ':' or '-'"
        );
        let mut config = parse("[database]\nlease_s = 0.0\n").unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("`database.lease_s`: found 0"), "{err}");
        config.database.lease_s = 2.5;
        config.validate().unwrap();
        assert_eq!(
            config.database.lease(),
            std::time::Duration::from_millis(2500)
        );
    }

    #[test]
    fn a_plugin_table_must_name_a_plugin() {
        let mut config = parse("[plugins.rolse]\nparser = \"parser-extended\"\n").unwrap();
        config.plugins.dir = "/nonexistent-easel-plugins".to_owned();
        let err = config.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "config error: unknown section `plugins.rolse` (did you mean `roles`?)"
        );
        let mut config = parse("[plugins.sparkle]\nx = 1\n").unwrap();
        config.plugins.dir = "/nonexistent-easel-plugins".to_owned();
        let err = config.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "config error: unknown section `plugins.sparkle` (no plugin of that name: not in [plugins.roles] and no /nonexistent-easel-plugins/sparkle.wasm)"
        );
        let mut config =
            parse("[plugins.roles]\nparser = \"sparkle\"\n[plugins.sparkle]\nx = 1\n").unwrap();
        config.plugins.dir = "/nonexistent-easel-plugins".to_owned();
        config.validate().unwrap();
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let mut config = Config::default();
        config.api.secret_key = "hunter2".into();
        config.auth.discord_token = "tok".into();
        config.database.url = "postgres://u:pw@h/db".into();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("tok\"") && !debug.contains(":pw@"));
    }
}
