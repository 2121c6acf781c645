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
//!
//! Calls are admitted by a semaphore with one permit per instance of the pool
//! (`[plugins] instances`): a busy pool makes callers wait (at most their deadline), it is
//! never a plugin failure and never exhausts the pool under the built-in fallback. Admitted
//! calls run on the caller's task (the guest yields at every epoch tick).

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

/// The shortest deadline of a call of a built-in plugin.
pub const BUILTIN_DEADLINE: Duration = Duration::from_secs(1);

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
    /// Loads that failed (a bad file, a missing export, a deleted file) since the server
    /// started.
    pub failed_loads: u64,
    /// When the serving version was loaded (seconds since the Unix epoch).
    pub last_reload: Option<f64>,
    /// Calls that failed (trap, memory) since the server started.
    pub failed_calls: u64,
    /// Calls stopped at their deadline since the server started.
    pub deadline_overruns: u64,
}

#[derive(Clone)]
struct Entry {
    plugin: Option<Plugin>,
    status: PluginStatus,
    failed_calls: Arc<AtomicU64>,
    deadline_overruns: Arc<AtomicU64>,
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
    /// One permit per instance of the pool: a call holds one while it runs.
    admission: Arc<tokio::sync::Semaphore>,
    admission_stats: AdmissionStats,
    /// See [`Registry::changes`].
    changes: tokio::sync::watch::Sender<u64>,
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
        let instances = runtime.limits().instances as usize;
        let registry = Arc::new(Self {
            admission: Arc::new(tokio::sync::Semaphore::new(instances)),
            admission_stats: AdmissionStats::default(),
            runtime,
            dir: dir.to_owned(),
            settings: ArcSwap::from_pointee(settings),
            entries: ArcSwap::from_pointee(HashMap::new()),
            update: Mutex::new(()),
            builtins: Default::default(),
            changes: tokio::sync::watch::Sender::new(0),
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
        // Compile the built-in plugins now, off the callers' way (a fallback to one would
        // otherwise compile it on an async thread).
        let weak = Arc::downgrade(&registry);
        std::thread::Builder::new()
            .name("easel-builtins".into())
            .spawn(move || {
                for role in Role::ALL {
                    let Some(registry) = weak.upgrade() else {
                        return;
                    };
                    if let Err(err) = registry.builtin(role) {
                        tracing::error!(role = %role, error = %err, "the built-in plugin does not load");
                    }
                }
            })
            .expect("spawn a thread");
        registry
    }

    /// Bumped after every load, reload, failed load and settings change (the dashboard
    /// follows it).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
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
        self.changed();
    }

    /// The plugin called `name`, in its newest working version.
    pub fn plugin(&self, name: &str) -> Option<Plugin> {
        self.entries.load().get(name)?.plugin.clone()
    }

    /// The embedded default plugin of `role`. It is easel's own code, and its answer is what
    /// the `builtin` policy promises, so it runs under a deadline of at least
    /// [`BUILTIN_DEADLINE`] even when the plugins' deadline is shorter.
    pub fn builtin(&self, role: Role) -> Result<Plugin, String> {
        self.builtins[role_index(role)]
            .get_or_init(|| {
                let deadline = self.runtime.limits().deadline.max(BUILTIN_DEADLINE);
                self.runtime
                    .from_bytes(&format!("{role} (builtin)"), role.builtin())
                    .map(|plugin| plugin.with_deadline(deadline))
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
                status.deadline_overruns = e.deadline_overruns.load(Ordering::Relaxed);
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
                let (name, policy) = self.policy_for(&settings, role);
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
                        failed_loads: previous.as_ref().map_or(0, |p| p.status.failed_loads),
                        last_reload: Some(
                            SystemTime::now()
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .unwrap_or_default()
                                .as_secs_f64(),
                        ),
                        failed_calls: 0,
                        deadline_overruns: 0,
                    },
                    plugin: Some(plugin),
                    failed_calls: previous
                        .as_ref()
                        .map(|p| p.failed_calls.clone())
                        .unwrap_or_default(),
                    deadline_overruns: previous.map(|p| p.deadline_overruns).unwrap_or_default(),
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
                previous.status.failed_loads += 1;
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
                        failed_loads: 1,
                        last_reload: None,
                        failed_calls: 0,
                        deadline_overruns: 0,
                    },
                    failed_calls: Arc::default(),
                    deadline_overruns: Arc::default(),
                }
            }
        };
        entries.insert(name, entry);
        self.entries.store(Arc::new(entries));
        self.changed();
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

    /// The failure policy of the plugin serving `role` (`""`: the built-in, so `builtin`).
    fn policy_for(&self, settings: &PluginSettings, role: Role) -> (String, FailurePolicy) {
        let name = settings.plugin_for(role);
        let policy = if name.is_empty() {
            FailurePolicy::Builtin
        } else {
            settings.on_failure(name)
        };
        (name.to_owned(), policy)
    }

    /// Runs `call` with the plugin serving its role; on failure applies the plugin's policy:
    /// the closed or the open answer, or the built-in plugin's (then the closed answer if that
    /// fails too). The caller holds an instance of the pool for the whole of it.
    async fn serve(&self, call: &Call) -> Answer {
        let role = call.role();
        let settings = self.settings.load();
        let (name, policy) = self.policy_for(&settings, role);
        if !name.is_empty() {
            let entries = self.entries.load();
            let entry = entries.get(&name);
            match entry.and_then(|e| e.plugin.as_ref()) {
                Some(plugin) => match call.run(plugin, &settings.config_for(&name)).await {
                    Ok(answer) => return answer,
                    Err(err) => {
                        if let Some(e) = entry {
                            let counter = match err {
                                PluginError::Deadline { .. } => &e.deadline_overruns,
                                _ => &e.failed_calls,
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::warn!(plugin = %name, role = %role, error = %err, on_failure = policy.as_str(), "plugin call failed");
                    }
                },
                None => {
                    tracing::debug!(plugin = %name, role = %role, on_failure = policy.as_str(), "no plugin of that name is loaded");
                }
            }
        }
        self.fall_back(call, policy, &settings).await
    }

    /// The answer of `policy` for a call its plugin could not give.
    async fn fall_back(
        &self,
        call: &Call,
        policy: FailurePolicy,
        settings: &PluginSettings,
    ) -> Answer {
        let role = call.role();
        match policy {
            FailurePolicy::FailClosed => call.closed(),
            FailurePolicy::FailOpen => call.open(),
            FailurePolicy::Builtin => {
                let answer = match self.builtin(role) {
                    Ok(p) => call
                        .run(&p, &settings.config_for(role.as_str()))
                        .await
                        .map_err(|e| e.to_string()),
                    Err(err) => Err(err),
                };
                match answer {
                    Ok(answer) => answer,
                    Err(err) => {
                        tracing::error!(role = %role, error = %err, "the built-in plugin failed too; refusing");
                        call.closed()
                    }
                }
            }
        }
    }

    /// Asks the plugin of `call`'s role, off the async threads, once an instance of the pool
    /// is free. A caller that waits longer than the deadline gets the answer of a call that
    /// ran past it — the closed or open answer at once, or the built-in plugin's once an
    /// instance frees up — counted as an admission timeout, never as a plugin failure.
    async fn ask(&self, call: Call) -> Answer {
        let _permit = match self.admission.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let waited = Instant::now();
                let admitted =
                    tokio::time::timeout(self.runtime.limits().deadline, self.admission.acquire())
                        .await;
                self.admission_stats.waited(waited.elapsed());
                match admitted {
                    Ok(permit) => permit.expect("the admission semaphore is never closed"),
                    Err(_) => {
                        self.admission_stats
                            .timeouts
                            .fetch_add(1, Ordering::Relaxed);
                        let settings = self.settings.load_full();
                        let (name, policy) = self.policy_for(&settings, call.role());
                        tracing::warn!(plugin = %name, role = %call.role(), on_failure = policy.as_str(), "no plugin instance free within the deadline");
                        if policy != FailurePolicy::Builtin {
                            return self.fall_back(&call, policy, &settings).await;
                        }
                        let _permit = self
                            .admission
                            .acquire()
                            .await
                            .expect("the admission semaphore is never closed");
                        return self.fall_back(&call, policy, &settings).await;
                    }
                }
            }
        };
        self.serve(&call).await
    }

    /// [`Registry::serve`] from a thread that may block (tools, tests, benchmarks): waits for
    /// an instance as long as it takes.
    fn ask_blocking(&self, call: Call) -> Answer {
        super::block_on(async {
            let _permit = self.admission.acquire().await.expect("never closed");
            self.serve(&call).await
        })
    }

    /// The parser role: what to do with a chat message.
    pub async fn parse(&self, content: String, caller: Caller) -> Outcome {
        self.ask(Call::Parse { content, caller }).await.outcome()
    }

    /// The access role: may this caller use the bot here?
    pub async fn check(&self, caller: Caller) -> Decision {
        self.ask(Call::Check { caller }).await.decision()
    }

    /// The reactions role: what to show at `stage`. A failure shows nothing.
    pub async fn on_stage(
        &self,
        stage: Stage,
        caller: Caller,
        request: Option<JobRequest>,
        info: String,
    ) -> Vec<Action> {
        self.ask(Call::OnStage {
            stage,
            caller,
            request,
            info,
        })
        .await
        .actions()
    }

    /// The model-policy role: the request to run, or why not.
    pub async fn decide(
        &self,
        request: JobRequest,
        caller: Caller,
        catalog: Arc<[Model]>,
        limits: PolicyLimits,
    ) -> Verdict {
        self.ask(Call::Decide {
            request,
            caller,
            catalog,
            limits,
        })
        .await
        .verdict()
    }

    /// [`Registry::parse`] from a thread that may block.
    pub fn parse_blocking(&self, content: &str, caller: &Caller) -> Outcome {
        self.ask_blocking(Call::Parse {
            content: content.to_owned(),
            caller: caller.clone(),
        })
        .outcome()
    }

    /// [`Registry::check`] from a thread that may block.
    pub fn check_blocking(&self, caller: &Caller) -> Decision {
        self.ask_blocking(Call::Check {
            caller: caller.clone(),
        })
        .decision()
    }

    /// [`Registry::on_stage`] from a thread that may block.
    pub fn on_stage_blocking(
        &self,
        stage: Stage,
        caller: &Caller,
        request: Option<&JobRequest>,
        info: &str,
    ) -> Vec<Action> {
        self.ask_blocking(Call::OnStage {
            stage,
            caller: caller.clone(),
            request: request.cloned(),
            info: info.to_owned(),
        })
        .actions()
    }

    /// [`Registry::decide`] from a thread that may block.
    pub fn decide_blocking(
        &self,
        request: &JobRequest,
        caller: &Caller,
        catalog: &[Model],
        limits: PolicyLimits,
    ) -> Verdict {
        self.ask_blocking(Call::Decide {
            request: request.clone(),
            caller: caller.clone(),
            catalog: catalog.into(),
            limits,
        })
        .verdict()
    }

    /// How callers waited for plugin instances since the start.
    pub fn admission(&self) -> AdmissionStatus {
        let stats = &self.admission_stats;
        AdmissionStatus {
            instances: self.runtime.limits().instances,
            in_use: self.runtime.limits().instances as usize - self.admission.available_permits(),
            waits: stats.waits.load(Ordering::Relaxed),
            wait_ms_total: stats.wait_us.load(Ordering::Relaxed) as f64 / 1000.0,
            wait_ms_max: stats.wait_us_max.load(Ordering::Relaxed) as f64 / 1000.0,
            timeouts: stats.timeouts.load(Ordering::Relaxed),
        }
    }
}

/// One call of a role, with its arguments.
enum Call {
    Parse {
        content: String,
        caller: Caller,
    },
    Check {
        caller: Caller,
    },
    OnStage {
        stage: Stage,
        caller: Caller,
        request: Option<JobRequest>,
        info: String,
    },
    Decide {
        request: JobRequest,
        caller: Caller,
        catalog: Arc<[Model]>,
        limits: PolicyLimits,
    },
}

/// What a role answered.
enum Answer {
    Outcome(Outcome),
    Decision(Decision),
    Actions(Vec<Action>),
    Verdict(Verdict),
}

impl Call {
    fn role(&self) -> Role {
        match self {
            Call::Parse { .. } => Role::Parser,
            Call::Check { .. } => Role::Access,
            Call::OnStage { .. } => Role::Reactions,
            Call::Decide { .. } => Role::ModelPolicy,
        }
    }

    async fn run(&self, plugin: &Plugin, config: &PluginConfig) -> Result<Answer, PluginError> {
        Ok(match self {
            Call::Parse { content, caller } => {
                Answer::Outcome(plugin.parse_async(config, content, caller).await?)
            }
            Call::Check { caller } => Answer::Decision(plugin.check_async(config, caller).await?),
            Call::OnStage {
                stage,
                caller,
                request,
                info,
            } => Answer::Actions(
                plugin
                    .on_stage_async(config, *stage, caller, request.as_ref(), info)
                    .await?,
            ),
            Call::Decide {
                request,
                caller,
                catalog,
                limits,
            } => Answer::Verdict(
                plugin
                    .decide_async(config, request, caller, catalog, *limits)
                    .await?,
            ),
        })
    }

    /// Refuse: access denies, the parser apologises, the policy refuses, nothing is shown.
    fn closed(&self) -> Answer {
        match self {
            Call::Parse { .. } => Answer::Outcome(Outcome::Error(PARSER_UNAVAILABLE.to_owned())),
            Call::Check { .. } => Answer::Decision(Decision::Deny(
                "the access plugin failed (fail-closed)".to_owned(),
            )),
            Call::OnStage { .. } => Answer::Actions(Vec::new()),
            Call::Decide { .. } => Answer::Verdict(Verdict::Deny(POLICY_UNAVAILABLE.to_owned())),
        }
    }

    /// Let it through: access allows, the message is ignored, the request runs unchanged.
    fn open(&self) -> Answer {
        match self {
            Call::Parse { .. } => Answer::Outcome(Outcome::Ignore),
            Call::Check { .. } => Answer::Decision(Decision::Allow),
            Call::OnStage { .. } => Answer::Actions(Vec::new()),
            Call::Decide { request, .. } => Answer::Verdict(Verdict::Allow(request.clone())),
        }
    }
}

impl Answer {
    fn outcome(self) -> Outcome {
        match self {
            Answer::Outcome(outcome) => outcome,
            _ => unreachable!("a parse call answers with an outcome"),
        }
    }

    fn decision(self) -> Decision {
        match self {
            Answer::Decision(decision) => decision,
            _ => unreachable!("a check call answers with a decision"),
        }
    }

    fn actions(self) -> Vec<Action> {
        match self {
            Answer::Actions(actions) => actions,
            _ => unreachable!("an on-stage call answers with actions"),
        }
    }

    fn verdict(self) -> Verdict {
        match self {
            Answer::Verdict(verdict) => verdict,
            _ => unreachable!("a decide call answers with a verdict"),
        }
    }
}

/// How callers waited for a plugin instance.
#[derive(Debug, Default)]
struct AdmissionStats {
    waits: AtomicU64,
    wait_us: AtomicU64,
    wait_us_max: AtomicU64,
    timeouts: AtomicU64,
}

impl AdmissionStats {
    fn waited(&self, waited: Duration) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.wait_us.fetch_add(us, Ordering::Relaxed);
        self.wait_us_max.fetch_max(us, Ordering::Relaxed);
    }
}

/// What `GET /api/admin/plugins` shows of the admission of plugin calls.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AdmissionStatus {
    /// Calls that may run at once (`[plugins] instances`).
    pub instances: u32,
    /// Calls running now.
    pub in_use: usize,
    /// Calls that found every instance busy and waited.
    pub waits: u64,
    /// Their waiting, in all.
    pub wait_ms_total: f64,
    /// The longest wait.
    pub wait_ms_max: f64,
    /// Calls that waited past their deadline (answered by the failure policy).
    pub timeouts: u64,
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

/// Watches one file (not its directory: other files there, such as a busy SQLite database,
/// wake nothing) and calls `on_change` once it has settled after a change, on a thread of its
/// own, until the returned handle is dropped or `on_change` returns false. A file replaced by
/// a rename (as editors save) or deleted and created again is followed to its new version.
pub fn watch_file(
    path: &Path,
    mut on_change: impl FnMut() -> bool + Send + 'static,
) -> notify::Result<FileWatch> {
    use FileMessage as Message;
    let (tx, rx) = std::sync::mpsc::channel::<Message>();
    let events = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        use notify::EventKind;
        use notify::event::ModifyKind;
        let replaced = matches!(
            event.kind,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
        );
        if let Some(settle) = settle_time(&event.kind) {
            let _ = events.send(Message::Changed { settle, replaced });
        } else if replaced {
            let _ = events.send(Message::Changed {
                settle: SETTLED,
                replaced,
            });
        }
    })?;
    watcher.watch(path, notify::RecursiveMode::NonRecursive)?;
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("easel-watch-file".into())
        .spawn(move || {
            let mut due: Option<Instant> = None;
            let mut rearm = false;
            loop {
                let wait = due.map_or(Duration::from_secs(3600), |at| {
                    at.saturating_duration_since(Instant::now())
                });
                match rx.recv_timeout(wait) {
                    Ok(Message::Changed { settle, replaced }) => {
                        due = Some(Instant::now() + settle);
                        rearm |= replaced;
                        continue;
                    }
                    Ok(Message::Stop) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        return;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                }
                due = None;
                if std::mem::take(&mut rearm) {
                    // The watched inode is gone: watch whatever is at the path now (a rename
                    // into place is done; a delete-and-create may take a moment).
                    let _ = watcher.unwatch(&path);
                    let mut armed = false;
                    for _ in 0..50 {
                        if watcher
                            .watch(&path, notify::RecursiveMode::NonRecursive)
                            .is_ok()
                        {
                            armed = true;
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if !armed {
                        tracing::warn!(file = %path.display(), "the watched file is gone; no longer watching it");
                        return;
                    }
                }
                if !on_change() {
                    return;
                }
            }
        })
        .expect("spawn a file watcher thread");
    Ok(FileWatch { stop: tx })
}

/// What the watcher of one file hears.
enum FileMessage {
    Changed { settle: Duration, replaced: bool },
    Stop,
}

/// Stops the watch of [`watch_file`] when dropped.
pub struct FileWatch {
    stop: std::sync::mpsc::Sender<FileMessage>,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileWatch")
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        let _ = self.stop.send(FileMessage::Stop);
    }
}
