//! The plugin registry: every `.wasm` of the plugin directory, loaded, checked, listed, and
//! replaced while the server runs; and the role calls that front ends make, with the
//! operator's failure policy applied.
//!
//! A `notify` watcher reports writes, renames into place and deletions; once the file has
//! settled (its writer closed it, or it was renamed or deleted; otherwise after a short quiet
//! period, so a file being written is read once, whole) the file is compiled on a blocking
//! thread, off every request path, and swapped in atomically (`arc-swap`). Calls in flight keep
//! the version they started with. A file that fails to load never replaces a working plugin:
//! the error is logged and kept for `list`. A deleted file keeps its last good version serving,
//! marked as such. Role assignments and plugin settings are swapped the same way when the
//! configuration changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use notify::Watcher;

use super::{
    Action, Caller, Decision, FailurePolicy, JobRequest, Model, Outcome, Plugin, PluginConfig,
    PluginError, PluginSettings, PolicyLimits, Role, Runtime, Stage, Verdict,
};

/// How long a file that may still be being written must be quiet before it is (re)loaded.
const QUIET: Duration = Duration::from_millis(20);
/// How long a file waits once its writer closed it, it was renamed or deleted: a moment, so
/// the events of one rename or one `cp` are handled together.
const SETTLED: Duration = Duration::from_millis(2);

/// What the parser answers when it failed and the policy is to fail closed.
pub const PARSER_UNAVAILABLE: &str =
    "Sorry, I cannot read requests right now. Please try again later.";
/// What the model policy answers when it failed and the policy is to fail closed.
pub const POLICY_UNAVAILABLE: &str =
    "Sorry, requests cannot be checked right now. Please try again later.";

/// One plugin as `easel plugin list` and `GET /api/admin/plugins` show it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PluginStatus {
    /// File stem.
    pub name: String,
    /// The roles `config.toml` names it for.
    pub roles: Vec<String>,
    /// The file.
    pub file: PathBuf,
    /// SHA-256 of the version serving, if any.
    pub sha256: Option<String>,
    /// The WIT package version of the version serving.
    pub wit_version: Option<&'static str>,
    /// Interfaces it exports.
    pub exports: Vec<String>,
    /// `ok`, `failed` (no version serving), `stale` (serving an older version: the newest file
    /// failed to load or was deleted).
    pub status: &'static str,
    /// The last load error.
    pub last_error: Option<String>,
    /// Successful loads after the first.
    pub reloads: u64,
    /// When the serving version was loaded (seconds since the Unix epoch).
    pub last_reload: Option<f64>,
    /// Calls that failed (trap, deadline, memory) since the server started.
    pub failed_calls: u64,
}

#[derive(Clone)]
struct Entry {
    plugin: Option<Plugin>,
    status: PluginStatus,
    failed_calls: Arc<AtomicU64>,
}

/// The plugins of one directory, and the roles they serve.
pub struct Registry {
    runtime: Arc<Runtime>,
    dir: PathBuf,
    settings: ArcSwap<PluginSettings>,
    entries: ArcSwap<HashMap<String, Entry>>,
    /// Serialises updates of `entries` (readers never wait).
    update: Mutex<()>,
    /// The embedded default plugin of each role, compiled when first needed.
    builtins: [OnceLock<Result<Plugin, String>>; 4],
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn name_of(path: &Path) -> Option<String> {
    (path.extension()? == "wasm")
        .then(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))?
}

fn role_index(role: Role) -> usize {
    Role::ALL
        .iter()
        .position(|r| *r == role)
        .expect("a known role")
}

impl Registry {
    /// Loads every `.wasm` in `dir` (failures are recorded, not fatal). A missing directory
    /// leaves the built-in plugins serving every role.
    pub fn open(runtime: Arc<Runtime>, dir: &Path, settings: PluginSettings) -> Arc<Self> {
        let registry = Arc::new(Self {
            runtime,
            dir: dir.to_owned(),
            settings: ArcSwap::from_pointee(settings),
            entries: ArcSwap::from_pointee(HashMap::new()),
            update: Mutex::new(()),
            builtins: Default::default(),
        });
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(listing) => listing
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| name_of(p).is_some())
                .collect(),
            Err(err) => {
                tracing::warn!(dir = %dir.display(), error = %err, "cannot read the plugin directory; the built-in plugins serve every role");
                Vec::new()
            }
        };
        files.sort();
        for file in files {
            registry.reload(&file);
        }
        registry
    }

    /// The directory it serves.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The runtime its plugins run in.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The role assignments and plugin settings in force.
    pub fn settings(&self) -> Arc<PluginSettings> {
        self.settings.load_full()
    }

    /// Replaces role assignments and plugin settings; calls that started keep the old ones.
    pub fn set_settings(&self, settings: PluginSettings) {
        self.settings.store(Arc::new(settings));
    }

    /// The plugin called `name`, in its newest working version.
    pub fn plugin(&self, name: &str) -> Option<Plugin> {
        self.entries.load().get(name)?.plugin.clone()
    }

    /// The embedded default plugin of `role`.
    pub fn builtin(&self, role: Role) -> Result<Plugin, String> {
        self.builtins[role_index(role)]
            .get_or_init(|| {
                self.runtime
                    .from_bytes(&format!("{role} (builtin)"), role.builtin())
                    .map_err(|err| err.to_string())
            })
            .clone()
    }

    /// What `easel plugin list` prints, sorted by name.
    pub fn list(&self) -> Vec<PluginStatus> {
        let settings = self.settings.load();
        let mut list: Vec<_> = self
            .entries
            .load()
            .values()
            .map(|e| {
                let mut status = e.status.clone();
                status.roles = settings
                    .roles_of(&status.name)
                    .iter()
                    .map(|r| r.to_string())
                    .collect();
                status.failed_calls = e.failed_calls.load(Ordering::Relaxed);
                status
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Each role, the plugin named for it, and what serves it now: `plugin` (that plugin),
    /// `builtin` (the plugin is not loaded or "" was named, and the policy falls back to the
    /// built-in), or `none` (requests of this role get the failure policy's answer).
    pub fn roles(&self) -> Vec<(Role, String, &'static str, FailurePolicy)> {
        let settings = self.settings.load();
        Role::ALL
            .into_iter()
            .map(|role| {
                let name = settings.plugin_for(role).to_owned();
                let policy = if name.is_empty() {
                    FailurePolicy::Builtin
                } else {
                    settings.on_failure(&name)
                };
                let serving = match self.plugin(&name) {
                    Some(p) if p.serves(role) => "plugin",
                    _ if policy == FailurePolicy::Builtin => "builtin",
                    _ => "none",
                };
                (role, name, serving, policy)
            })
            .collect()
    }

    /// (Re)loads `file` now; a failure keeps the serving version.
    pub fn reload(&self, file: &Path) {
        let Some(name) = name_of(file) else { return };
        let loaded = if file.exists() {
            self.runtime.load(file)
        } else {
            Err(PluginError::Read {
                path: file.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "file deleted"),
            })
        };
        let _guard = self.update.lock().expect("registry update lock");
        let mut entries = HashMap::clone(&self.entries.load());
        let previous = entries.get(&name).cloned();
        let entry = match (loaded, previous) {
            (Ok(plugin), previous) => {
                let reloads = previous
                    .as_ref()
                    .map_or(0, |p| p.status.reloads + u64::from(p.plugin.is_some()));
                tracing::info!(plugin = %name, sha256 = plugin.sha256(), reloads, "plugin loaded");
                let version = plugin.wit_version();
                Entry {
                    status: PluginStatus {
                        name: name.clone(),
                        roles: Vec::new(),
                        file: file.to_owned(),
                        sha256: Some(plugin.sha256().to_owned()),
                        wit_version: Some(version.as_str()),
                        exports: plugin
                            .roles()
                            .iter()
                            .map(|r| r.interface(version))
                            .collect(),
                        status: "ok",
                        last_error: None,
                        reloads,
                        last_reload: Some(
                            SystemTime::now()
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .unwrap_or_default()
                                .as_secs_f64(),
                        ),
                        failed_calls: 0,
                    },
                    plugin: Some(plugin),
                    failed_calls: previous.map(|p| p.failed_calls).unwrap_or_default(),
                }
            }
            (Err(err), Some(mut previous)) => {
                tracing::warn!(plugin = %name, error = %err, "plugin not reloaded; the previous version keeps serving");
                previous.status.status = if previous.plugin.is_some() {
                    "stale"
                } else {
                    "failed"
                };
                previous.status.last_error = Some(err.to_string());
                previous
            }
            (Err(err), None) => {
                tracing::warn!(plugin = %name, error = %err, "plugin failed to load");
                Entry {
                    plugin: None,
                    status: PluginStatus {
                        name: name.clone(),
                        roles: Vec::new(),
                        file: file.to_owned(),
                        sha256: None,
                        wit_version: None,
                        exports: Vec::new(),
                        status: "failed",
                        last_error: Some(err.to_string()),
                        reloads: 0,
                        last_reload: None,
                        failed_calls: 0,
                    },
                    failed_calls: Arc::default(),
                }
            }
        };
        entries.insert(name, entry);
        self.entries.store(Arc::new(entries));
    }

    /// Watches the directory and reloads changed files until the returned watcher is dropped.
    pub fn watch(self: &Arc<Self>) -> notify::Result<notify::RecommendedWatcher> {
        let registry = Arc::downgrade(self);
        watch_files(
            &self.dir,
            |p| name_of(p).is_some(),
            move |path| {
                let Some(registry) = registry.upgrade() else {
                    return false;
                };
                registry.reload(path);
                true
            },
        )
    }

    /// Calls the plugin serving `role`; on failure applies its policy: `closed(reason)`,
    /// `open()`, or the built-in plugin (then `closed` if that fails too).
    fn serve<R>(
        &self,
        role: Role,
        call: impl Fn(&Plugin, &PluginConfig) -> Result<R, PluginError>,
        closed: impl FnOnce() -> R,
        open: impl FnOnce() -> R,
    ) -> R {
        let settings = self.settings.load();
        let name = settings.plugin_for(role);
        let policy = if name.is_empty() {
            FailurePolicy::Builtin
        } else {
            let entries = self.entries.load();
            let entry = entries.get(name);
            match entry.and_then(|e| e.plugin.as_ref()) {
                Some(plugin) => match call(plugin, &settings.config_for(name)) {
                    Ok(answer) => return answer,
                    Err(err) => {
                        if let Some(e) = entry {
                            e.failed_calls.fetch_add(1, Ordering::Relaxed);
                        }
                        let policy = settings.on_failure(name);
                        tracing::warn!(plugin = name, role = %role, error = %err, on_failure = policy.as_str(), "plugin call failed");
                        policy
                    }
                },
                None => {
                    let policy = settings.on_failure(name);
                    tracing::debug!(plugin = name, role = %role, on_failure = policy.as_str(), "no plugin of that name is loaded");
                    policy
                }
            }
        };
        match policy {
            FailurePolicy::FailClosed => closed(),
            FailurePolicy::FailOpen => open(),
            FailurePolicy::Builtin => {
                let answer = self.builtin(role).and_then(|p| {
                    call(&p, &settings.config_for(role.as_str())).map_err(|e| e.to_string())
                });
                match answer {
                    Ok(answer) => answer,
                    Err(err) => {
                        tracing::error!(role = %role, error = %err, "the built-in plugin failed too; refusing");
                        closed()
                    }
                }
            }
        }
    }

    /// The parser role: what to do with a chat message.
    pub fn parse(&self, content: &str, caller: &Caller) -> Outcome {
        self.serve(
            Role::Parser,
            |p, config| p.parse(config, content, caller),
            || Outcome::Error(PARSER_UNAVAILABLE.to_owned()),
            || Outcome::Ignore,
        )
    }

    /// The access role: may this caller use the bot here?
    pub fn check(&self, caller: &Caller) -> Decision {
        self.serve(
            Role::Access,
            |p, config| p.check(config, caller),
            || Decision::Deny("the access plugin failed (fail-closed)".to_owned()),
            || Decision::Allow,
        )
    }

    /// The reactions role: what to show at `stage`. A failure shows nothing.
    pub fn on_stage(
        &self,
        stage: Stage,
        caller: &Caller,
        request: Option<&JobRequest>,
        info: &str,
    ) -> Vec<Action> {
        self.serve(
            Role::Reactions,
            |p, config| p.on_stage(config, stage, caller, request, info),
            Vec::new,
            Vec::new,
        )
    }

    /// The model-policy role: the request to run, or why not.
    pub fn decide(
        &self,
        request: &JobRequest,
        caller: &Caller,
        catalog: &[Model],
        limits: PolicyLimits,
    ) -> Verdict {
        self.serve(
            Role::ModelPolicy,
            |p, config| p.decide(config, request, caller, catalog, limits),
            || Verdict::Deny(POLICY_UNAVAILABLE.to_owned()),
            || Verdict::Allow(request.clone()),
        )
    }
}

/// How long a changed file waits before it is handed over, judged by what happened to it:
/// `None` for events that change nothing (the file was opened or read — as loading it does),
/// [`SETTLED`] once a writer closed it, it was renamed or deleted, and [`QUIET`] while it may
/// still be being written.
fn settle_time(kind: &notify::EventKind) -> Option<Duration> {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(_))
        | EventKind::Remove(_) => Some(SETTLED),
        EventKind::Create(_)
        | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Other)
        | EventKind::Any
        | EventKind::Other => Some(QUIET),
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => None,
    }
}

/// Watches `dir` (not recursively) and calls `on_change` with each file that `wanted` accepts
/// once it has settled (see [`settle_time`]), on a thread of its own, until the watcher is
/// dropped or `on_change` returns false. Reading a file does not count as a change, so
/// `on_change` may read it.
pub fn watch_files(
    dir: &Path,
    wanted: impl Fn(&Path) -> bool + Send + 'static,
    mut on_change: impl FnMut(&Path) -> bool + Send + 'static,
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, rx) = std::sync::mpsc::channel::<(PathBuf, Duration)>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let Some(settle) = settle_time(&event.kind) else {
            return;
        };
        for path in event.paths {
            if wanted(&path) {
                let _ = tx.send((path, settle));
            }
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    std::thread::Builder::new()
        .name("easel-watch".into())
        .spawn(move || {
            // Changed files and when each is due; the latest event of a file sets its time.
            let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
            loop {
                let now = Instant::now();
                let wait = pending
                    .values()
                    .min()
                    .map_or(Duration::from_secs(3600), |due| {
                        due.saturating_duration_since(now)
                    });
                match rx.recv_timeout(wait) {
                    Ok((path, settle)) => {
                        pending.insert(path, Instant::now() + settle);
                        continue;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                let now = Instant::now();
                let ready: Vec<PathBuf> = pending
                    .iter()
                    .filter(|(_, due)| **due <= now)
                    .map(|(p, _)| p.clone())
                    .collect();
                for path in ready {
                    pending.remove(&path);
                    if !on_change(&path) {
                        return;
                    }
                }
            }
        })
        .expect("spawn a file watcher thread");
    Ok(watcher)
}
