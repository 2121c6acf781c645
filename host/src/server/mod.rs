//! Starting and stopping the server: store, services (job service, accounts, catalog,
//! plugins, intake), front ends and backends, wired together here and nowhere else, and a
//! clean stop on Ctrl-C / SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::accounts::Accounts;
use crate::api::{self, AppState, Authenticator};
use crate::catalog::Catalog;
use crate::config::{Config, redact_url};
use crate::intake::{Intake, Limits};
use crate::jobs::{Backends, JobService, JobSettings};
use crate::plugins::{FileWatch, PluginSettings, Registry};
use crate::sim::Simulated;
use crate::store::Store;
use crate::workers::WorkerPool;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database could not be opened or migrated.
    #[error("cannot open the database {url}: {source}")]
    Store {
        /// The URL, password redacted.
        url: String,
        /// Why.
        source: crate::store::StoreError,
    },
    /// Recovering jobs of a previous run failed.
    #[error("cannot recover jobs of the previous run: {0}")]
    Recover(#[from] crate::jobs::JobError),
    /// A listener could not be bound or failed.
    #[error("HTTP listener on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The worker pool could not bind.
    #[error(transparent)]
    Workers(#[from] crate::workers::pool::BindError),
    /// The Discord front end could not start.
    #[error(transparent)]
    Discord(#[from] crate::discord::DiscordError),
    /// The gRPC API could not start.
    #[error(transparent)]
    Grpc(#[from] crate::grpc::GrpcError),
    /// The metrics recorder could not be installed.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The plugin runtime could not start.
    #[error("cannot start the plugin runtime: {0}")]
    Plugins(#[from] crate::plugins::PluginError),
    /// The superuser token file could not be written.
    #[error("cannot write the superuser token to {path}: {source}")]
    TokenFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The host id file could not be read or written.
    #[error("cannot keep this host's id in {path}: {source}")]
    HostIdFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The host id file holds something that is not a host id.
    #[error(
        "{path} holds {found:?}, not a host id (1 to 64 letters, digits, '.', '_', ':' or '-'): \
         fix or delete the file, or set [database] host_id"
    )]
    BadHostId {
        /// The file.
        path: String,
        /// What it holds.
        found: String,
    },
    /// Another easel host already serves from this SQLite file.
    #[error(
        "another easel host is using the SQLite database {path}: SQLite serves one host; \
         several hosts share a PostgreSQL or MariaDB database"
    )]
    SqliteInUse {
        /// The database file.
        path: String,
    },
}

/// This host's id (`[database] host_id`, else the one kept in `host_id_file`, else a new
/// `<host name>-<8 hex digits>` written there): the name it claims jobs under, so jobs it left
/// running are requeued at its next start, and other hosts tell its claims from theirs.
pub fn host_id(config: &Config) -> Result<String, ServeError> {
    if !config.database.host_id.is_empty() {
        return Ok(config.database.host_id.clone());
    }
    let path = Path::new(&config.database.host_id_file);
    let file_error = |source| ServeError::HostIdFile {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(kept) => {
            let kept = kept.trim();
            if crate::config::valid_host_id(kept) {
                return Ok(kept.to_owned());
            }
            return Err(ServeError::BadHostId {
                path: path.display().to_string(),
                found: kept.chars().take(80).collect(),
            });
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(file_error(err)),
    }
    let name: String = host_name()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(48)
        .collect();
    let id = format!("{name}-{:08x}", rand::random::<u32>());
    std::fs::write(path, format!("{id}\n")).map_err(file_error)?;
    tracing::info!(host_id = id, file = %path.display(), "generated this host's id");
    Ok(id)
}

/// Holds an exclusive lock beside a SQLite database file while the server runs, so a second
/// host on the same file stops at start instead of sharing a queue SQLite cannot lease.
#[derive(Debug)]
struct SqliteLock {
    _file: Option<std::fs::File>,
}

impl SqliteLock {
    fn take(url: &str) -> Result<Self, ServeError> {
        let Some(db) = sqlite_file(url) else {
            return Ok(Self { _file: None });
        };
        let path = PathBuf::from(format!("{}.host-lock", db.display()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| ServeError::HostIdFile {
                path: path.display().to_string(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => Err(ServeError::SqliteInUse {
                path: db.display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(source)) => Err(ServeError::HostIdFile {
                path: path.display().to_string(),
                source,
            }),
        }
    }
}

/// The file of a `sqlite://FILE` (or `sqlite:FILE`) URL; `None` for other engines and for
/// an in-memory database.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let file = rest.split('?').next().unwrap_or_default();
    (!file.is_empty() && !file.contains(":memory:")).then(|| PathBuf::from(file))
}

/// The machine's host name (the first part of a generated host id).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "easel".to_owned())
}

/// The superuser token a server with `config` uses, if there is one yet: the configured one,
/// else the one in `[api] superuser_token_file` (for tools such as `easel status`).
pub fn existing_superuser_token(config: &Config) -> Option<String> {
    if !config.api.superuser_token.is_empty() {
        return Some(config.api.superuser_token.clone());
    }
    let path = Path::new(&config.api.superuser_token_file);
    let existing = std::fs::read_to_string(path).ok()?;
    let existing = existing.trim();
    if existing.is_empty() {
        return None;
    }
    tracing::info!(file = %path.display(), "superuser token read from file");
    Some(existing.to_owned())
}

/// The superuser token: the configured one, else the one in `token_file`, else a new random
/// one written there (mode 0600). The token itself is never logged.
fn superuser_token(config: &Config) -> Result<String, ServeError> {
    if let Some(token) = existing_superuser_token(config) {
        return Ok(token);
    }
    let path = Path::new(&config.api.superuser_token_file);
    let token = format!("{:032x}", rand::random::<u128>());
    write_private(path, &token).map_err(|source| ServeError::TokenFile {
        path: path.display().to_string(),
        source,
    })?;
    tracing::info!(
        file = %path.display(),
        "no superuser token configured: generated one and wrote it to this file \
         (send it raw in the Authorization header)"
    );
    Ok(token)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}

/// Loads the plugins (off the async threads) and starts watching the plugin directory and the
/// configuration file: a changed plugin is swapped in, a changed `[plugins]` section (roles,
/// settings, failure policies) is applied without a restart.
async fn start_plugins(
    config: &Config,
    config_path: Option<PathBuf>,
) -> Result<(Arc<Registry>, Watches), ServeError> {
    let dir = PathBuf::from(&config.plugins.dir);
    let runtime = crate::plugins::runtime_for(&config.plugins, &dir)?;
    let settings = PluginSettings::from_config(config);
    let registry = tokio::task::spawn_blocking(move || Registry::open(runtime, &dir, settings))
        .await
        .expect("plugin loading does not panic");
    for (role, name, serving, policy) in registry.roles() {
        tracing::info!(role = %role, plugin = %name, served_by = serving, on_failure = policy.as_str(), "plugin role");
    }
    let mut watches = Watches::default();
    match registry.watch() {
        Ok(watcher) => watches.plugins = Some(watcher),
        Err(err) => {
            tracing::warn!(dir = %registry.dir().display(), error = %err, "not watching the plugin directory; plugin changes need a restart")
        }
    }
    if let Some(path) = config_path.filter(|p| p.exists()) {
        let target = Arc::downgrade(&registry);
        let before = config.clone();
        let watched = crate::plugins::watch_file(&path.clone(), move || {
            let Some(registry) = target.upgrade() else {
                return false;
            };
            match Config::load(&path, true) {
                Ok(new) => {
                    registry.set_settings(PluginSettings::from_config(&new));
                    let mut rest = new.clone();
                    rest.plugins = before.plugins.clone();
                    rest.discord = before.discord.clone();
                    if rest != before {
                        tracing::warn!(config = %path.display(), "config changed: plugin roles and settings applied; other changes take effect at the next start");
                    } else {
                        tracing::info!(config = %path.display(), "config changed: plugin roles and settings applied");
                    }
                    for (role, name, serving, _) in registry.roles() {
                        tracing::info!(role = %role, plugin = %name, served_by = serving, "plugin role");
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "config changed but cannot be read; keeping the previous plugin settings")
                }
            }
            true
        });
        match watched {
            Ok(watch) => watches.config = Some(watch),
            Err(err) => tracing::warn!(error = %err, "not watching the configuration file"),
        }
    }
    Ok((registry, watches))
}

/// The file watches of a running server; dropping them stops watching.
#[derive(Default)]
struct Watches {
    plugins: Option<notify::RecommendedWatcher>,
    config: Option<FileWatch>,
}

/// The capacity of the job-event broadcast (`EASEL_EVENT_BUFFER`, a test knob: a tiny one
/// shows that nobody depends on the broadcast keeping up).
fn event_buffer() -> usize {
    match std::env::var("EASEL_EVENT_BUFFER") {
        Ok(value) => value.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(value, "EASEL_EVENT_BUFFER is not a number; using 1024");
            1024
        }),
        Err(_) => 1024,
    }
}

/// Runs the server until `shutdown` resolves; `config_path` is watched for plugin settings.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let url = redact_url(&config.database.url);
    let _sqlite_lock = SqliteLock::take(&config.database.url)?;
    let host = host_id(&config)?;
    let store = Store::connect(&config.database.url)
        .await
        .map_err(|source| ServeError::Store {
            url: url.clone(),
            source,
        })?;
    tracing::info!(database = %url, "store ready");
    let store = Arc::new(store);
    tracing::info!(
        host_id = host,
        lease_s = config.database.lease_s,
        "this host's id in job claims"
    );
    // Before anything that counts (the Discord shards, the job service's lease keeper).
    let metrics = crate::metrics::Metrics::install()?;
    metrics.set_host(&host);
    let jobs = JobService::new(
        store.clone(),
        JobSettings {
            host: host.clone(),
            max_faults: config.workers.max_faults,
            event_buffer: event_buffer(),
            lease: config.database.lease(),
        },
    );
    jobs.recover().await?;
    jobs.relay_events();
    let accounts = Arc::new(Accounts::with_demo(
        store.clone(),
        config.api.enable_demo_user,
    ));
    let catalog = Arc::new(Catalog::new(store.clone()));

    if config.api.secret_key.is_empty() {
        tracing::info!(
            "JWT authentication off: set [api] secret_key (or SECRET_KEY) to accept Bearer tokens"
        );
    }
    let superuser = superuser_token(&config)?;
    let (plugins, _watches) = start_plugins(&config, config_path).await?;
    let intake = Intake::new(
        plugins.clone(),
        jobs.clone(),
        catalog.clone(),
        Limits::from_config(&config),
    );
    let messenger = if config.discord_enabled() {
        Some(crate::discord::messenger(&config)?)
    } else {
        tracing::info!(
            "Discord front end and gRPC API off: set [auth] discord_token in config.toml (or DISCORD_BOT_TOKEN) to turn them on"
        );
        None
    };
    let discord = match &messenger {
        Some(messenger) if config.discord.gateway => Some(crate::discord::start(
            &config,
            crate::discord::Services {
                intake: intake.clone(),
                jobs: jobs.reader(),
                accounts: accounts.clone(),
                catalog: catalog.clone(),
                plugins: plugins.clone(),
            },
            messenger.clone(),
        )?),
        Some(_) => {
            tracing::info!("Discord gateway off ([discord] gateway = false): the bot only sends");
            None
        }
        None => None,
    };
    let grpc = match &messenger {
        Some(messenger) if config.grpc.enabled => {
            Some(crate::grpc::start(&config.grpc, messenger.clone()).await?)
        }
        Some(_) => {
            tracing::info!("gRPC API off ([grpc] enabled = false)");
            None
        }
        None => None,
    };

    let mut backends = Backends::new(jobs.clone());
    let machines = crate::forge::machines(&config);
    let offer = crate::forge::Offer::new(machines.clone());
    if !machines.is_empty() {
        for machine in &machines {
            tracing::info!(forge = %machine.name, url = %machine.state.borrow().url, models = ?machine.can.models, "Forge machine configured");
        }
        backends.start(crate::forge::ForgeBackend::new(
            machines,
            config.workers.clone(),
        ));
        if config.simulated.workers > 0 {
            tracing::info!("simulated backend off: Forge machines are configured");
        }
    } else if config.simulated.workers > 0 {
        backends.start(Simulated {
            workers: config.simulated.workers,
            step: Duration::from_millis(config.simulated.step_ms),
        });
        tracing::info!(
            workers = config.simulated.workers,
            step_ms = config.simulated.step_ms,
            "simulated backend running"
        );
    }
    let mut pool_stats = None;
    if config.workers.bind.is_empty() {
        tracing::info!("worker pool off ([workers] bind is empty)");
    } else {
        let pool = WorkerPool::bind(config.workers.clone()).await?;
        pool_stats = Some(pool.stats());
        backends.start(pool);
    }
    if backends.names().is_empty() {
        tracing::warn!(
            "no backend: the simulated backend and the worker pool are both off; jobs will wait"
        );
    }

    // One stop signal for both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let metrics_follower = metrics.follow_jobs(jobs.subscribe());
    for note in &config.env_notes {
        tracing::warn!("{note}");
    }
    // `Config::validate` refused a value that does not parse.
    let expiration = api::parse_expiration(&config.api.token_expiration)
        .unwrap_or(Some(Duration::from_secs(72 * 3600)));
    if expiration.is_none() {
        tracing::warn!("tokens issued at login never expire (token_expiration = \"-1\")");
    }
    let auth = Authenticator::new(&superuser, &config.api.secret_key, expiration);
    let (realtime, socket_layer) = api::Realtime::start(
        jobs.reader(),
        auth.clone(),
        accounts.clone(),
        config.api.greet,
    );
    if store.is_shared() {
        realtime.follow_other_hosts(jobs.reader());
    }
    let rt_addr = format!("{}:{}", config.api.bind, config.api.rt_port);
    let rt_listener = tokio::net::TcpListener::bind(&rt_addr)
        .await
        .map_err(|source| ServeError::Listen {
            addr: rt_addr.clone(),
            source,
        })?;
    if let Ok(local) = rt_listener.local_addr() {
        tracing::info!(address = %local, "socket.io listening");
    }
    let rt_server = tokio::spawn(
        axum::serve(
            rt_listener,
            api::Realtime::router(socket_layer)
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future(),
    );

    let addr = format!("{}:{}", config.api.bind, config.api.http_port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Listen {
            addr: addr.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: addr.clone(),
        source,
    })?;
    tracing::info!(address = %local, host = %host, "HTTP API listening");
    let civitai = crate::civitai::Services::start(
        &config.civitai,
        store.clone(),
        offer.clone(),
        realtime.clone(),
    );
    let dashboard = api::dashboard::Dashboard::start(
        api::dashboard::Views::new(
            jobs.reader(),
            plugins.clone(),
            offer.clone(),
            pool_stats.clone(),
            backends.drains(),
        ),
        jobs.subscribe(),
    );
    let state = AppState {
        intake,
        jobs: jobs.reader(),
        accounts,
        auth,
        plugins,
        offer,
        catalog,
        realtime: realtime.clone(),
        identity: crate::accounts::discord::DiscordIdentity::from_config(&config),
        metrics: metrics.clone(),
        metrics_token: config.metrics.token.clone(),
        dashboard,
        pool: pool_stats,
        allow_legacy: config.api.allow_legacy_bot_endpoints,
        civitai: civitai.clone(),
    };
    let served = api::serve(listener, state, stopped(stop_rx)).await;
    metrics_follower.abort();
    civitai.shutdown().await;
    realtime.close().await;
    if tokio::time::timeout(Duration::from_secs(2), rt_server)
        .await
        .is_err()
    {
        tracing::warn!("socket.io connections still open at shutdown; closing them");
    }
    if let Some(grpc) = grpc {
        grpc.shutdown().await;
    }
    if let Some(discord) = discord {
        discord.shutdown().await;
    }
    tracing::info!(
        jobs = jobs.watched_jobs(),
        "jobs still followed at shutdown"
    );

    // Stop the backends; whatever they were running goes back to the queue now rather than at
    // the next start.
    backends.shutdown().await;
    store.close().await;
    tracing::info!("stopped");
    served.map_err(|source| ServeError::Listen { addr, source })
}
