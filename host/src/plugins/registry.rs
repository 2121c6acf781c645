//! The plugin registry: every `.wasm` of the plugin directory, loaded, checked, listed, and
//! replaced while the server runs.
//!
//! A `notify` watcher reports writes, renames into place and deletions; after a short quiet
//! period (so a file being written is read once, whole) the file is compiled on a blocking
//! thread, off every request path, and swapped in atomically (`arc-swap`). Calls in flight keep
//! the version they started with. A file that fails to load never replaces a working plugin:
//! the error is logged and kept for `list`. A deleted file keeps its last good version serving,
//! marked as such.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::Watcher;

use super::{ParserPlugin, PluginError, Runtime};

/// How long a file must be quiet before it is (re)loaded.
const QUIET: Duration = Duration::from_millis(30);

/// One plugin as `easel plugin list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginStatus {
    /// File stem.
    pub name: String,
    /// The file.
    pub file: PathBuf,
    /// SHA-256 of the version serving, if any.
    pub sha256: Option<String>,
    /// Interfaces it exports (today: `parser`).
    pub exports: Vec<&'static str>,
    /// `ok`, `failed` (no version serving), `stale` (serving an older version: the newest file
    /// failed to load or was deleted).
    pub state: &'static str,
    /// The last load error.
    pub last_error: Option<String>,
    /// Successful loads after the first.
    pub reloads: u64,
    /// When the serving version was loaded.
    pub loaded_at: Option<SystemTime>,
}

#[derive(Clone)]
struct Entry {
    parser: Option<ParserPlugin>,
    status: PluginStatus,
}

/// Configuration handed to each plugin (`[plugins.<name>]` and the seed keys it reads).
pub type PluginConfigs = HashMap<String, Vec<(String, String)>>;

/// The plugins of one directory.
pub struct Registry {
    runtime: Arc<Runtime>,
    dir: PathBuf,
    configs: PluginConfigs,
    entries: ArcSwap<HashMap<String, Entry>>,
    /// Serialises updates of `entries` (readers never wait).
    update: Mutex<()>,
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

impl Registry {
    /// Loads every `.wasm` in `dir` (failures are recorded, not fatal).
    pub fn open(
        runtime: Arc<Runtime>,
        dir: &Path,
        configs: PluginConfigs,
    ) -> std::io::Result<Arc<Self>> {
        let registry = Arc::new(Self {
            runtime,
            dir: dir.to_owned(),
            configs,
            entries: ArcSwap::from_pointee(HashMap::new()),
            update: Mutex::new(()),
        });
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| name_of(p).is_some())
            .collect();
        files.sort();
        for file in files {
            registry.reload(&file);
        }
        Ok(registry)
    }

    /// The parser plugin called `name`, in its newest working version.
    pub fn parser(&self, name: &str) -> Option<ParserPlugin> {
        self.entries.load().get(name)?.parser.clone()
    }

    /// What `easel plugin list` prints, sorted by name.
    pub fn list(&self) -> Vec<PluginStatus> {
        let mut list: Vec<_> = self
            .entries
            .load()
            .values()
            .map(|e| e.status.clone())
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// (Re)loads `file` now; a failure keeps the serving version.
    pub fn reload(&self, file: &Path) {
        let Some(name) = name_of(file) else { return };
        let config = self.configs.get(&name).cloned().unwrap_or_default();
        let loaded = if file.exists() {
            self.runtime.load_parser(&name, file, config)
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
            (Ok(parser), previous) => {
                let reloads = previous
                    .as_ref()
                    .map_or(0, |p| p.status.reloads + u64::from(p.parser.is_some()));
                tracing::info!(plugin = %name, sha256 = parser.sha256(), reloads, "plugin loaded");
                Entry {
                    status: PluginStatus {
                        name: name.clone(),
                        file: file.to_owned(),
                        sha256: Some(parser.sha256().to_owned()),
                        exports: vec!["parser"],
                        state: "ok",
                        last_error: None,
                        reloads,
                        loaded_at: Some(SystemTime::now()),
                    },
                    parser: Some(parser),
                }
            }
            (Err(err), Some(mut previous)) => {
                tracing::warn!(plugin = %name, error = %err, "plugin not reloaded; the previous version keeps serving");
                previous.status.state = if previous.parser.is_some() {
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
                    parser: None,
                    status: PluginStatus {
                        name: name.clone(),
                        file: file.to_owned(),
                        sha256: None,
                        exports: Vec::new(),
                        state: "failed",
                        last_error: Some(err.to_string()),
                        reloads: 0,
                        loaded_at: None,
                    },
                }
            }
        };
        entries.insert(name, entry);
        self.entries.store(Arc::new(entries));
    }

    /// Watches the directory and reloads changed files until the returned watcher is dropped.
    pub fn watch(self: &Arc<Self>) -> notify::Result<notify::RecommendedWatcher> {
        let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    for path in event.paths {
                        if name_of(&path).is_some() {
                            let _ = tx.send(path);
                        }
                    }
                }
            })?;
        watcher.watch(&self.dir, notify::RecursiveMode::NonRecursive)?;
        let registry = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("easel-plugin-reload".into())
            .spawn(move || {
                // Collect changed files; load each once it has been quiet for QUIET.
                let mut pending: HashMap<PathBuf, std::time::Instant> = HashMap::new();
                loop {
                    let wait = if pending.is_empty() {
                        Duration::from_secs(3600)
                    } else {
                        QUIET
                    };
                    match rx.recv_timeout(wait) {
                        Ok(path) => {
                            pending.insert(path, std::time::Instant::now());
                            continue;
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    let Some(registry) = registry.upgrade() else {
                        return;
                    };
                    let ready: Vec<PathBuf> = pending
                        .iter()
                        .filter(|(_, at)| at.elapsed() >= QUIET)
                        .map(|(p, _)| p.clone())
                        .collect();
                    for path in ready {
                        pending.remove(&path);
                        registry.reload(&path);
                    }
                }
            })
            .expect("spawn the plugin reload thread");
        Ok(watcher)
    }
}
