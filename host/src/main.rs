//! The `easel` command line: `easel serve`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use easel::config::Config;

#[derive(Parser)]
#[command(
    name = "easel",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("EASEL_COMMIT"), ")"),
    about = "Turns art requests into images."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// The configuration file; a missing default file means "all defaults".
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// DEBUG, INFO, WARNING or ERROR (also accepts TRACE and WARN).
        #[arg(
            long = "logging-level",
            alias = "logging_level",
            default_value = "INFO"
        )]
        logging_level: String,
        /// Port of the worker pool (overrides the port of `[workers] bind`).
        #[arg(long = "host-port", alias = "host_port", value_name = "PORT")]
        host_port: Option<u16>,
    },
    /// Run a worker that takes jobs from an easel (or Stably Discordant) host.
    Worker {
        /// The host's address.
        #[arg(long = "host-ip", alias = "host_ip")]
        host_ip: String,
        /// The host's worker-pool port.
        #[arg(long = "host-port", alias = "host_port", default_value_t = 5556)]
        host_port: u16,
        /// Where to draw: `sim` (simulated picture) or `forge` (a local Forge/A1111).
        #[arg(long, value_parser = ["sim", "forge"], default_value = "sim")]
        backend: String,
        /// Forge's base URL (backend forge).
        #[arg(long = "forge-url", default_value = "http://127.0.0.1:7860")]
        forge_url: String,
        /// Delay per step of the sim backend, in milliseconds.
        #[arg(long = "step-ms", default_value_t = 20)]
        step_ms: u64,
        /// Name announced to the host (default: this machine's host name).
        #[arg(long)]
        hostname: Option<String>,
        /// Models this worker has (comma-separated); the host sends only jobs for them (and
        /// jobs that name no model). Default: any.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Largest width * height this worker draws; the host sends nothing larger.
        #[arg(long = "max-pixels")]
        max_pixels: Option<u64>,
        /// DEBUG, INFO, WARNING or ERROR.
        #[arg(
            long = "logging-level",
            alias = "logging_level",
            default_value = "INFO"
        )]
        logging_level: String,
    },
    /// Send a Discord message through a running easel's gRPC API (as discordproxymessage).
    Send {
        /// `direct` (to a user) or `channel`.
        #[arg(value_parser = ["direct", "channel"])]
        kind: String,
        /// The user id (direct) or channel id (channel).
        recipient_id: u64,
        /// The message.
        content: String,
        /// The gRPC server's host.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// The gRPC server's port.
        #[arg(long, default_value_t = 50051)]
        port: u16,
    },
    /// One screen of what a running server is doing: queue, backends, plugins (its admin API,
    /// with the superuser token: env SUPERUSER_ADMIN_TOKEN, else the config's token or token
    /// file; or an administrator's JWT in env EASEL_TOKEN).
    Status {
        /// The server's HTTP base URL (default: the config's `[api] bind` and `http_port`).
        #[arg(long)]
        url: Option<String>,
        /// The configuration file (default config.toml when it exists).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Refresh every 2 seconds until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Inspect and try plugins without a running server.
    Plugin {
        #[command(subcommand)]
        what: PluginCommand,
    },
    /// Measure easel against a baseline taken in the same run.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Every plugin of the plugin directory: name, roles, status, WIT version, sha256, file,
    /// last load error; then which plugin serves each role.
    List {
        /// The configuration file (plugin directory, roles, settings); default config.toml
        /// when it exists.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// The plugin directory (overrides `[plugins] dir`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Validate a component against the contract.
    Check {
        /// The .wasm file.
        file: PathBuf,
    },
    /// Call a plugin function; each ARG is the JSON of one WIT parameter, left-out ones get
    /// defaults (a caller the default access rules allow). Prints the result as one JSON line.
    Call {
        /// A plugin name (a file `<dir>/<name>.wasm`) or a path to a .wasm file.
        plugin: String,
        /// parse (parser), check (access), on-stage (reactions) or decide (model-policy).
        function: String,
        /// JSON arguments in WIT order.
        args: Vec<String>,
        /// The configuration file (the plugin's settings); default config.toml when it exists.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// The plugin directory (overrides `[plugins] dir`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Job pipeline throughput and queue-to-start latency (simulated backend).
    Jobs {
        /// Jobs per phase.
        #[arg(long, default_value_t = 2000)]
        jobs: usize,
        /// Simulated workers in the pipeline phase.
        #[arg(long, default_value_t = 4)]
        workers: u32,
        /// Side of the square images drawn.
        #[arg(long, default_value_t = 64)]
        size: u32,
        /// Database URL (default: a temporary SQLite file).
        #[arg(long)]
        database: Option<String>,
        /// Instead: clusters of 1 to N `easel serve` processes on one PostgreSQL or MariaDB
        /// `--database` (jobs/s per cluster), and a killed host's job running again.
        #[arg(long)]
        hosts: Option<usize>,
        /// With --hosts: the lease of the recovery phase, in seconds.
        #[arg(long, default_value_t = 2.0)]
        lease_s: f64,
    },
    /// Plugin call cost against a trivial component, and reload latency.
    Plugins {
        /// Where the default plugins (and fixtures/) live.
        #[arg(long, default_value = "plugins")]
        dir: PathBuf,
        /// Calls per measurement.
        #[arg(long, default_value_t = 5000)]
        calls: usize,
    },
    /// Authenticated txt2img submits over HTTP against `GET /` on the same server.
    Api {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Concurrencies to measure at (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        concurrency: Vec<usize>,
        /// Database URL (default: a temporary SQLite file).
        #[arg(long)]
        database: Option<String>,
    },
    /// gRPC SendChannelMessage calls (to an in-process Discord REST) against the gRPC health
    /// check on the same server.
    Grpc {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Concurrencies to measure at (comma-separated; one connection each).
        #[arg(long, value_delimiter = ',', default_value = "1,16,50")]
        concurrency: Vec<usize>,
    },
    /// Worker-pool dispatch throughput and queue-to-worker latency (in-process ZeroMQ workers).
    Pool {
        /// Jobs in the throughput phase.
        #[arg(long, default_value_t = 5000)]
        jobs: usize,
        /// In-process workers.
        #[arg(long, default_value_t = 100)]
        workers: usize,
        /// Jobs in the idle-latency phase.
        #[arg(long, default_value_t = 200)]
        probes: usize,
        /// Database URL (default: a temporary SQLite file).
        #[arg(long)]
        database: Option<String>,
    },
}

fn level_filter(level: &str) -> Option<&'static str> {
    Some(match level.to_ascii_uppercase().as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARN" | "WARNING" => "warn",
        "ERROR" | "CRITICAL" => "error",
        _ => return None,
    })
}

/// stderr plus a daily-rotated `<log_dir>/easel.YYYY-MM-DD.log`, 7 kept.
fn init_logging(
    level: &'static str,
    log_dir: &str,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let filter = || EnvFilter::new(format!("{level},sqlx=warn,tower_http=info"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_filter(filter());
    let dir = if log_dir.trim().is_empty() {
        "logs"
    } else {
        log_dir
    };
    let appender = std::fs::create_dir_all(dir)
        .map_err(|err| err.to_string())
        .and_then(|()| {
            tracing_appender::rolling::Builder::new()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix("easel")
                .filename_suffix("log")
                .max_log_files(7)
                .build(dir)
                .map_err(|err| err.to_string())
        });
    match appender {
        Ok(appender) => {
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let file = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(writer)
                .with_filter(filter());
            tracing_subscriber::registry()
                .with(stderr)
                .with(file)
                .init();
            if log_dir.trim().is_empty() {
                tracing::warn!("[misc_settings] log_dir is empty; logging to logs/");
            }
            Some(guard)
        }
        Err(err) => {
            tracing_subscriber::registry().with(stderr).init();
            tracing::warn!(dir, error = %err, "cannot write log files; logging to stderr only");
            None
        }
    }
}

use tracing_subscriber::Layer;

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(term) => {
                    term.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

/// Runs `future` on a fresh runtime; an error is printed as `{what}: {error}`.
fn block_on<E: std::fmt::Display>(
    what: &str,
    future: impl Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if tracing::dispatcher::has_been_set() {
                tracing::error!("{what}: {err}");
            } else {
                eprintln!("{what}: {err}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The `--logging-level` value as a filter, or exit code 2 with a clear line.
fn parse_level(level: &str) -> Result<&'static str, ExitCode> {
    level_filter(level).ok_or_else(|| {
        eprintln!(
            "error: --logging-level: found {level:?}, expected one of DEBUG, INFO, WARNING, ERROR"
        );
        ExitCode::from(2)
    })
}

/// Reads the configuration for a plugin command (default file optional), or exits 2.
fn plugin_config(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    let must_exist = path.is_some();
    let path = path.unwrap_or_else(|| PathBuf::from("config.toml"));
    Config::load(&path, must_exist).map_err(|err| {
        eprintln!("{err}");
        ExitCode::from(2)
    })
}

fn plugin_runtime(
    config: &Config,
    dir: &std::path::Path,
) -> Result<std::sync::Arc<easel::plugins::Runtime>, ExitCode> {
    easel::plugins::runtime_for(&config.plugins, dir).map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::FAILURE
    })
}

fn plugin_command(command: PluginCommand) -> Result<(), ExitCode> {
    use easel::plugins::{CallError, PluginSettings, Registry};
    match command {
        PluginCommand::List { config, dir } => {
            let config = plugin_config(config)?;
            let dir = dir.unwrap_or_else(|| PathBuf::from(&config.plugins.dir));
            let runtime = plugin_runtime(&config, &dir)?;
            let registry = Registry::open(runtime, &dir, PluginSettings::from_config(&config));
            println!(
                "{:<18} {:<14} {:<7} {:<5} {:<16} {:<34} last error",
                "NAME", "ROLE", "STATUS", "WIT", "SHA256", "FILE"
            );
            for p in registry.list() {
                let roles = if p.roles.is_empty() {
                    "-".to_owned()
                } else {
                    p.roles.join(",")
                };
                println!(
                    "{:<18} {:<14} {:<7} {:<5} {:<16} {:<34} {}",
                    p.name,
                    roles,
                    p.status,
                    p.wit_version.unwrap_or("-"),
                    p.sha256.as_deref().map_or("-", |s| &s[..16]),
                    p.file.display(),
                    p.last_error.as_deref().unwrap_or("-")
                );
            }
            println!();
            for (role, name, serving, policy) in registry.roles() {
                let name = if name.is_empty() { "\"\"" } else { &name };
                println!(
                    "role {role:<13} plugin {name:<18} served by {serving:<8} on_failure {}",
                    policy.as_str()
                );
            }
            Ok(())
        }
        PluginCommand::Check { file } => {
            let runtime =
                easel::plugins::Runtime::new(easel::plugins::Limits::default()).map_err(|err| {
                    eprintln!("error: {err}");
                    ExitCode::FAILURE
                })?;
            match runtime.load(&file) {
                Ok(plugin) => {
                    let exports: Vec<String> = plugin
                        .roles()
                        .iter()
                        .map(|r| r.interface(plugin.wit_version()))
                        .collect();
                    println!(
                        "{}: ok, exports {} (sha256 {})",
                        file.display(),
                        exports.join(", "),
                        plugin.sha256()
                    );
                    Ok(())
                }
                Err(err) => {
                    eprintln!("{}: {err}", file.display());
                    Err(ExitCode::FAILURE)
                }
            }
        }
        PluginCommand::Call {
            plugin,
            function,
            args,
            config,
            dir,
        } => {
            let config = plugin_config(config)?;
            let dir = dir.unwrap_or_else(|| PathBuf::from(&config.plugins.dir));
            let runtime = plugin_runtime(&config, &dir)?;
            let path = if plugin.ends_with(".wasm") {
                PathBuf::from(&plugin)
            } else {
                dir.join(format!("{plugin}.wasm"))
            };
            let args: Vec<serde_json::Value> = args
                .iter()
                .map(|a| serde_json::from_str(a))
                .collect::<Result<_, _>>()
                .map_err(|err| {
                    eprintln!("error: an argument is not JSON: {err}");
                    ExitCode::from(2)
                })?;
            let loaded = runtime.load(&path).map_err(|err| {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            })?;
            let settings = PluginSettings::from_config(&config);
            let result = easel::plugins::call_json(
                &loaded,
                &settings.config_for(loaded.name()),
                &function,
                &args,
                config.api.image_pixel_limit,
            );
            match result {
                Ok(value) => {
                    println!("{value}");
                    Ok(())
                }
                Err(CallError::Usage(message)) => {
                    eprintln!("error: {message}");
                    Err(ExitCode::from(2))
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    Err(ExitCode::FAILURE)
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Send {
            kind,
            recipient_id,
            content,
            host,
            port,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let target = if kind == "direct" {
                easel::grpc::Recipient::User(recipient_id)
            } else {
                easel::grpc::Recipient::Channel(recipient_id)
            };
            // The token never goes on the command line (it would show in `ps`).
            let token = std::env::var("EASEL_GRPC_TOKEN")
                .ok()
                .filter(|t| !t.is_empty());
            match runtime.block_on(easel::grpc::send(
                &format!("http://{host}:{port}"),
                token.as_deref(),
                target,
                &content,
            )) {
                Ok(()) => {
                    println!("Message sent");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    println!("ERROR: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { url, config, watch } => status_command(url, config, watch),
        Command::Plugin { what } => match plugin_command(what) {
            Ok(()) => ExitCode::SUCCESS,
            Err(code) => code,
        },
        Command::Bench {
            what: Bench::Plugins { dir, calls },
        } => match easel::bench::plugins(&dir, calls) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("bench failed: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Bench {
            what:
                Bench::Pool {
                    jobs,
                    workers,
                    probes,
                    database,
                },
        } => block_on(
            "bench failed",
            easel::bench::pool(easel::bench::PoolBenchOptions {
                jobs,
                workers,
                probes,
                database,
            }),
        ),
        Command::Bench {
            what:
                Bench::Api {
                    seconds,
                    concurrency,
                    database,
                },
        } => block_on(
            "bench failed",
            easel::bench::api(easel::bench::ApiBenchOptions {
                seconds,
                concurrency,
                database,
            }),
        ),
        Command::Bench {
            what: Bench::Grpc {
                seconds,
                concurrency,
            },
        } => block_on(
            "bench failed",
            easel::bench::grpc(easel::bench::GrpcBenchOptions {
                seconds,
                concurrency,
            }),
        ),
        Command::Bench {
            what:
                Bench::Jobs {
                    jobs,
                    workers,
                    database: Some(database),
                    hosts: Some(hosts),
                    lease_s,
                    ..
                },
        } => block_on(
            "bench failed",
            easel::bench::hosts(easel::bench::HostsBenchOptions {
                hosts,
                jobs,
                workers,
                database,
                lease_s,
            }),
        ),
        Command::Bench {
            what: Bench::Jobs { hosts: Some(_), .. },
        } => {
            eprintln!("easel bench jobs --hosts needs --database (a PostgreSQL or MariaDB URL)");
            ExitCode::from(2)
        }
        Command::Bench {
            what:
                Bench::Jobs {
                    jobs,
                    workers,
                    size,
                    database,
                    ..
                },
        } => block_on(
            "bench failed",
            easel::bench::run(easel::bench::BenchOptions {
                jobs,
                workers,
                database,
                size,
            }),
        ),
        Command::Worker {
            host_ip,
            host_port,
            backend,
            forge_url,
            step_ms,
            hostname,
            models,
            max_pixels,
            logging_level,
        } => {
            let level = match parse_level(&logging_level) {
                Ok(level) => level,
                Err(code) => return code,
            };
            tracing_subscriber::fmt()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_env_filter(EnvFilter::new(level))
                .with_writer(std::io::stderr)
                .init();
            let backend = match backend.as_str() {
                "forge" => easel::workers::client::Backend::Forge { url: forge_url },
                _ => easel::workers::client::Backend::Sim {
                    step: std::time::Duration::from_millis(step_ms),
                },
            };
            let options = easel::workers::client::WorkerOptions {
                endpoint: format!("tcp://{host_ip}:{host_port}"),
                backend,
                // Never on the command line (it would show in `ps`).
                token: std::env::var("EASEL_WORKER_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
                hostname: hostname.unwrap_or_else(easel::server::host_name),
                models,
                max_pixels,
            };
            block_on("error", easel::workers::client::run(options))
        }
        Command::Serve {
            config,
            logging_level,
            host_port,
        } => {
            let level = match parse_level(&logging_level) {
                Ok(level) => level,
                Err(code) => return code,
            };
            let must_exist = config.is_some();
            let path = config.unwrap_or_else(|| PathBuf::from("config.toml"));
            let config = match Config::load(&path, must_exist) {
                Ok(mut config) => {
                    if let Some(port) = host_port {
                        config.workers.bind = easel::config::with_port(&config.workers.bind, port);
                    }
                    config
                }
                Err(err) => {
                    eprintln!("{err}");
                    return ExitCode::from(2);
                }
            };
            let _guard = init_logging(level, &config.misc_settings.log_dir);
            tracing::info!(config = %path.display(), version = env!("CARGO_PKG_VERSION"), commit = env!("EASEL_COMMIT"), "starting easel");
            block_on(
                "cannot serve",
                easel::server::run(config, Some(path), shutdown_signal()),
            )
        }
    }
}

/// `easel status`.
fn status_command(url: Option<String>, config: Option<PathBuf>, watch: bool) -> ExitCode {
    let must_exist = config.is_some();
    let path = config.unwrap_or_else(|| PathBuf::from("config.toml"));
    let config = match Config::load(&path, must_exist) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let base = url.unwrap_or_else(|| {
        let host = match config.api.bind.as_str() {
            "0.0.0.0" | "::" => "127.0.0.1",
            other => other,
        };
        format!("http://{host}:{}", config.api.http_port)
    });
    // Tokens come from the environment or files, never the command line (it shows in `ps`).
    let authorization = match std::env::var("EASEL_TOKEN").ok().filter(|t| !t.is_empty()) {
        Some(jwt) => format!("Bearer {jwt}"),
        None => match easel::server::existing_superuser_token(&config) {
            Some(token) => token,
            None => {
                eprintln!(
                    "easel status: no credentials: set SUPERUSER_ADMIN_TOKEN or EASEL_TOKEN (an \
                     administrator's JWT), or run it where {} is",
                    config.api.superuser_token_file
                );
                return ExitCode::from(2);
            }
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    loop {
        match runtime.block_on(easel::status::fetch(&base, &authorization)) {
            Ok(snapshot) => {
                if watch {
                    // Clear the screen and go home.
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", easel::status::render(&snapshot));
            }
            Err(err) => {
                eprintln!("easel status: {err}");
                if !watch {
                    return ExitCode::FAILURE;
                }
            }
        }
        if !watch {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}
