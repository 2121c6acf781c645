//! The plugin runtime: wasmtime engine, bindings generated from `wit/`, per-call limits, and
//! the registry that serves each policy role from the plugin directory.
//!
//! Policy runs in WebAssembly components that implement the `easel:plugin` interfaces. The
//! engine uses the component model, the pooling allocator (falling back to on-demand allocation
//! where the address space is too small) and epoch interruption: a ticker thread advances the
//! epoch every [`TICK`], so a call's deadline is a number of ticks. Each plugin is compiled once
//! (or read back from the precompiled cache) into an `InstancePre` with its imports resolved and
//! type-checked off the request path; every call gets a fresh `Store` and instance, so nothing
//! leaks between users, with a memory cap enforced by `StoreLimits`. Traps, deadline and memory
//! overruns are errors of that call only; the [`Registry`] applies the operator's failure
//! policy. Calls are async: the guest runs on the caller's task and yields to the executor at
//! every tick, so it never holds an async thread for long; the deadline is wall-clock time,
//! checked at every tick. WASI 0.2 is linked deny-by-default (no files, sockets or environment) so components
//! built by toolchains that import it (C with wasi-libc, Python, JavaScript) load too.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use wasmtime::component::{Component, HasSelf, Instance, InstancePre, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod cache;
mod json;
mod registry;
mod settings;

pub use crate::config::FailurePolicy;
pub use cache::Cache;
pub use json::{CallError, call_json, example_caller, example_request};
pub use registry::{
    AdmissionStatus, FileWatch, PARSER_UNAVAILABLE, POLICY_UNAVAILABLE, PluginStatus, Registry,
    watch_file, watch_files,
};
pub use settings::{PluginConfig, PluginSettings, Role};

/// Bindings of `easel:plugin@0.1.0`, the one WIT version this build serves. A later version
/// gets its own module beside this one, and [`WitVersion`] a case, so plugins built against
/// either keep loading.
mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "easel-host",
        additional_derives: [PartialEq],
        // Calls run on the caller's task and yield to the executor at every epoch tick, so a
        // slow plugin never holds an async thread for its whole deadline.
        exports: { default: async },
    });
}

pub use v0_1::easel::plugin::host::Level;
pub use v0_1::easel::plugin::types::{Caller, FrontEnd, JobRequest, Stage};
pub use v0_1::exports::easel::plugin::access::Decision;
pub use v0_1::exports::easel::plugin::model_policy::{Limits as PolicyLimits, Model, Verdict};
pub use v0_1::exports::easel::plugin::parser::{Outcome, Parsed};
pub use v0_1::exports::easel::plugin::reactions::Action;

use v0_1::exports::easel::plugin::{access, model_policy, parser, reactions};

impl JobRequest {
    /// The request the seed's parser makes of `prompt` alone: cfg 7.5, 50 steps, a random
    /// seed, the backend's default size, model and sampler.
    pub fn with_prompt(prompt: &str) -> Self {
        Self {
            prompt: prompt.to_owned(),
            negative_prompt: String::new(),
            cfg: 7.5,
            steps: 50,
            width: 0,
            height: 0,
            seed: -1,
            model: String::new(),
            sampler: String::new(),
            extra: Vec::new(),
        }
    }
}

/// WIT package versions this build serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WitVersion {
    /// `easel:plugin@0.1.0`.
    V0_1,
}

impl WitVersion {
    /// The version as WIT writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            WitVersion::V0_1 => "0.1.0",
        }
    }
}

/// How often the epoch advances.
pub const TICK: Duration = Duration::from_millis(2);

/// Per-call limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Wall-clock time a call may take.
    pub deadline: Duration,
    /// Linear memory a call may grow to, in bytes.
    pub memory: usize,
    /// Calls that may run at once: the instances of the pool a call waits for.
    pub instances: u32,
}

/// Pool slots beyond `instances`, for what instantiates outside the call admission: loading
/// and type-checking a plugin, tools.
const LOAD_HEADROOM: u32 = 4;

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(50),
            memory: 32 << 20,
            instances: 64,
        }
    }
}

impl Limits {
    /// The limits `[plugins]` sets.
    pub fn from_config(config: &crate::config::Plugins) -> Self {
        Self {
            deadline: Duration::from_millis(config.deadline_ms),
            memory: usize::try_from(config.memory_mib.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            instances: config.instances,
        }
    }
}

/// The runtime `[plugins]` describes for the plugins of `dir`: its limits and its precompiled
/// cache (`cache_dir`, relative to `dir`; "" for none).
pub fn runtime_for(
    config: &crate::config::Plugins,
    dir: &Path,
) -> Result<Arc<Runtime>, PluginError> {
    let cache = (!config.cache_dir.is_empty()).then(|| dir.join(&config.cache_dir));
    Runtime::with_cache(Limits::from_config(config), cache.as_deref())
}

/// A plugin that failed to load or to answer.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a component, or not one implementing the expected interface.
    #[error("{name} is not a valid plugin: {message}")]
    Invalid {
        /// Plugin name.
        name: String,
        /// wasmtime's explanation.
        message: String,
    },
    /// The call ran past its deadline and was stopped.
    #[error("plugin {name} failed: deadline of {deadline:?} exceeded")]
    Deadline {
        /// Plugin name.
        name: String,
        /// The deadline.
        deadline: Duration,
    },
    /// The call trapped or ran out of memory.
    #[error("plugin {name} failed: {message}")]
    Call {
        /// Plugin name.
        name: String,
        /// What happened.
        message: String,
    },
    /// The plugin does not export the interface of this role.
    #[error("plugin {name} does not export the {role} interface")]
    NoRole {
        /// Plugin name.
        name: String,
        /// The role asked for.
        role: Role,
    },
}

/// One line: wasmtime's error chain may span several.
fn one_line(err: &wasmtime::Error) -> String {
    format!("{err:#}")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The wasmtime engine, its epoch ticker and the precompiled-component cache; shared behind an
/// `Arc`.
pub struct Runtime {
    engine: Engine,
    limits: Limits,
    linker: Linker<CallState>,
    cache: Option<Cache>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.limits)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// Linear memory kept resident between calls in a pool slot.
const KEEP_RESIDENT: usize = 4 << 20;

fn engine_config(limits: &Limits, pooling: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // Small reservations: plugins are small, and many may be live at once.
    config.memory_reservation(limits.memory as u64 + (1 << 20));
    // Explicit bounds checks instead of guard pages: then a pool slot's memory stays
    // accessible between calls, and a fresh instance costs no mprotect (and TLB flush) to
    // shrink it and grow it again. Plugin code is small; the checks cost little.
    config.memory_guard_size(0);
    config.guard_before_linear_memory(false);
    config.signals_based_traps(false);
    if pooling {
        // Every call holds an admission permit ([`Registry`]), so no more than `instances`
        // calls instantiate at once; the headroom is for loads and tools.
        let slots = limits.instances + LOAD_HEADROOM;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 4)
            .total_memories(slots * 2)
            .total_tables(slots * 4)
            // One fiber stack per call in flight (calls are async).
            .total_stacks(slots)
            .max_memory_size(limits.memory)
            // A fresh instance per call: keep the pages a call touched resident and reset only
            // those (found with the PAGEMAP_SCAN ioctl where the kernel has it) instead of
            // unmapping them and taking page faults on every call.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

impl Runtime {
    /// A runtime with these limits, without a precompiled cache; its ticker thread stops when
    /// the runtime is dropped.
    pub fn new(limits: Limits) -> Result<Arc<Self>, PluginError> {
        Self::with_cache(limits, None)
    }

    /// A runtime that keeps compiled components in `cache_dir` (created on first use).
    pub fn with_cache(limits: Limits, cache_dir: Option<&Path>) -> Result<Arc<Self>, PluginError> {
        let engine = Engine::new(&engine_config(&limits, true))
            .or_else(|err| {
                tracing::warn!(error = %err, "pooling allocator unavailable; allocating on demand");
                Engine::new(&engine_config(&limits, false))
            })
            .map_err(|err| PluginError::Invalid {
                name: "engine".into(),
                message: err.to_string(),
            })?;
        let mut linker = Linker::<CallState>::new(&engine);
        let linked = v0_1::easel::plugin::host::add_to_linker::<_, HasSelf<CallState>>(
            &mut linker,
            |state| state,
        )
        .and_then(|()| wasmtime_wasi::p2::add_to_linker_async(&mut linker));
        linked.map_err(|err| PluginError::Invalid {
            name: "engine".into(),
            message: one_line(&err),
        })?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("easel-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .expect("spawn the epoch ticker");
        let cache = cache_dir.map(|dir| Cache::new(dir, &engine));
        Ok(Arc::new(Self {
            engine,
            limits,
            linker,
            cache,
        }))
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Loads the plugin in `path`; its name is the file stem.
    pub fn load(self: &Arc<Self>, path: &Path) -> Result<Plugin, PluginError> {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".to_owned());
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.from_bytes(&name, &bytes)
    }

    /// Compiles (or reads back from the cache), validates and links a plugin.
    pub fn from_bytes(self: &Arc<Self>, name: &str, bytes: &[u8]) -> Result<Plugin, PluginError> {
        let invalid = |message: String| PluginError::Invalid {
            name: name.to_owned(),
            message,
        };
        let sha256 = hex(&sha2::Sha256::digest(bytes));
        let component = match &self.cache {
            Some(cache) => cache.component(&self.engine, &sha256, bytes),
            None => Component::new(&self.engine, bytes),
        }
        .map_err(|err| invalid(one_line(&err)))?;
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let version = check_exports(&exports).map_err(invalid)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|err| invalid(one_line(&err)))?;
        let has = |role: Role| exports.iter().any(|e| *e == role.interface(version));
        /// The export lookups of one interface, if the component exports it.
        fn lookup<T>(
            exported: bool,
            new: impl FnOnce() -> wasmtime::Result<T>,
        ) -> wasmtime::Result<Option<T>> {
            exported.then(new).transpose()
        }
        let indices = (|| {
            Ok::<_, wasmtime::Error>(Indices {
                parser: lookup(has(Role::Parser), || parser::GuestIndices::new(&pre))?,
                access: lookup(has(Role::Access), || access::GuestIndices::new(&pre))?,
                reactions: lookup(has(Role::Reactions), || reactions::GuestIndices::new(&pre))?,
                model_policy: lookup(has(Role::ModelPolicy), || {
                    model_policy::GuestIndices::new(&pre)
                })?,
            })
        })()
        .map_err(|err| invalid(one_line(&err)))?;
        // Type-check every export once, here, rather than failing on a user's request.
        let plugin = Plugin {
            deadline: self.limits.deadline,
            runtime: self.clone(),
            name: Arc::from(name),
            sha256,
            version,
            pre,
            indices: Arc::new(indices),
        };
        plugin.type_check().map_err(|err| invalid(one_line(&err)))?;
        Ok(plugin)
    }

    fn store(
        &self,
        name: &Arc<str>,
        config: &Arc<Vec<(String, String)>>,
        deadline: Duration,
    ) -> Store<CallState> {
        let mut store = Store::new(
            &self.engine,
            CallState {
                plugin: name.clone(),
                config: config.clone(),
                limits: StoreLimitsBuilder::new()
                    .memory_size(self.limits.memory)
                    .instances(8)
                    .trap_on_grow_failure(true)
                    .build(),
                wasi: None,
            },
        );
        store.limiter(|state| &mut state.limits);
        // At every tick: past the deadline the call traps (`Trap::Interrupt`); before it, the
        // guest yields to the executor and goes on.
        let until = std::time::Instant::now() + deadline;
        store.epoch_deadline_callback(move |_| {
            Ok(if std::time::Instant::now() >= until {
                wasmtime::UpdateDeadline::Interrupt
            } else {
                wasmtime::UpdateDeadline::Yield(1)
            })
        });
        store.set_epoch_deadline(1);
        store
    }
}

/// Which supported WIT version a component's exports belong to, or why it is not a plugin.
fn check_exports(exports: &[String]) -> Result<WitVersion, String> {
    let ours: Vec<&String> = exports
        .iter()
        .filter(|e| e.starts_with("easel:plugin/"))
        .collect();
    let known = |version: WitVersion| {
        Role::ALL
            .iter()
            .any(|role| ours.iter().any(|e| **e == role.interface(version)))
    };
    if known(WitVersion::V0_1) {
        return Ok(WitVersion::V0_1);
    }
    let supported = Role::ALL
        .iter()
        .map(|role| role.interface(WitVersion::V0_1))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(other) = ours.first() {
        return Err(format!(
            "it exports {other}, a version this easel does not serve; supported: {supported}"
        ));
    }
    let found = if exports.is_empty() {
        "nothing".to_owned()
    } else {
        exports.join(", ")
    };
    Err(format!(
        "it exports {found}, none of easel's interfaces; a plugin exports at least one of {supported}"
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a call's store holds: the plugin's name and config, the limits, and (only for
/// components that use it) an empty WASI context.
pub struct CallState {
    plugin: Arc<str>,
    config: Arc<Vec<(String, String)>>,
    limits: StoreLimits,
    wasi: Option<Box<(WasiCtx, ResourceTable)>>,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        // Built on first use: plugins that import no WASI never pay for it. `WasiCtx::builder()`
        // grants nothing: no preopened directories, no environment, no arguments, no sockets,
        // no name lookups; stdin is empty and stdout/stderr are discarded.
        let (ctx, table) = &mut **self
            .wasi
            .get_or_insert_with(|| Box::new((WasiCtx::builder().build(), ResourceTable::new())));
        WasiCtxView { ctx, table }
    }
}

impl v0_1::easel::plugin::host::Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn config(&mut self) -> Vec<(String, String)> {
        self.config.as_ref().clone()
    }
}

impl v0_1::easel::plugin::types::Host for CallState {}

/// Export lookups of one component, per role it serves.
struct Indices {
    parser: Option<parser::GuestIndices>,
    access: Option<access::GuestIndices>,
    reactions: Option<reactions::GuestIndices>,
    model_policy: Option<model_policy::GuestIndices>,
}

/// A loaded plugin: one compiled component, instantiated afresh for every call.
#[derive(Clone)]
pub struct Plugin {
    /// How long one call may take (the runtime's deadline, unless told otherwise).
    deadline: Duration,
    runtime: Arc<Runtime>,
    name: Arc<str>,
    sha256: String,
    version: WitVersion,
    pre: InstancePre<CallState>,
    indices: Arc<Indices>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .field("roles", &self.roles())
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// The same plugin with another deadline per call.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The plugin's name (its file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the component file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The WIT package version it was built against.
    pub fn wit_version(&self) -> WitVersion {
        self.version
    }

    /// The roles it can serve (the interfaces it exports).
    pub fn roles(&self) -> Vec<Role> {
        let i = &self.indices;
        [
            (Role::Parser, i.parser.is_some()),
            (Role::Access, i.access.is_some()),
            (Role::Reactions, i.reactions.is_some()),
            (Role::ModelPolicy, i.model_policy.is_some()),
        ]
        .into_iter()
        .filter_map(|(role, has)| has.then_some(role))
        .collect()
    }

    /// Whether it exports the interface of `role`.
    pub fn serves(&self, role: Role) -> bool {
        self.roles().contains(&role)
    }

    /// Instantiates once and looks every export up with its type, so a component whose
    /// functions have the wrong signatures is refused at load time.
    fn type_check(&self) -> wasmtime::Result<()> {
        let config = Arc::new(Vec::new());
        let mut store = self.runtime.store(&self.name, &config, self.deadline);
        let instance = block_on(self.pre.instantiate_async(&mut store))?;
        let i = &self.indices;
        if let Some(x) = &i.parser {
            x.load(&mut store, &instance)?;
        }
        if let Some(x) = &i.access {
            x.load(&mut store, &instance)?;
        }
        if let Some(x) = &i.reactions {
            x.load(&mut store, &instance)?;
        }
        if let Some(x) = &i.model_policy {
            x.load(&mut store, &instance)?;
        }
        Ok(())
    }

    /// A fresh instance in a store with the per-call limits.
    async fn instantiate(
        &self,
        config: &PluginConfig,
    ) -> Result<(Store<CallState>, Instance), PluginError> {
        let mut store = self.runtime.store(&self.name, config, self.deadline);
        let instance = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|err| self.fail(err))?;
        Ok((store, instance))
    }

    /// A call's error as this plugin's.
    fn fail(&self, err: wasmtime::Error) -> PluginError {
        match err.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => PluginError::Deadline {
                name: self.name.to_string(),
                deadline: self.deadline,
            },
            _ => PluginError::Call {
                name: self.name.to_string(),
                message: one_line(&err),
            },
        }
    }

    fn no_role(&self, role: Role) -> PluginError {
        PluginError::NoRole {
            name: self.name.to_string(),
            role,
        }
    }
}

/// The calls of each role, async (on the caller's task: the guest yields to the executor at
/// every epoch tick) and blocking (the same call driven on this thread, for tools and tests).
macro_rules! role_calls {
    ($(
        $(#[$doc:meta])*
        $blocking:ident / $call_async:ident: $index:ident, $role:expr, $export:ident
            ($($arg:ident: $ty:ty),*) -> $out:ty;
    )*) => {
        impl Plugin {
            $(
                $(#[$doc])*
                pub async fn $call_async(
                    &self,
                    config: &PluginConfig,
                    $($arg: $ty),*
                ) -> Result<$out, PluginError> {
                    let guest = self.indices.$index.as_ref().ok_or_else(|| self.no_role($role))?;
                    let (mut store, instance) = self.instantiate(config).await?;
                    let answer = async {
                        guest.load(&mut store, &instance)?.$export(&mut store, $($arg),*).await
                    }
                    .await;
                    answer.map_err(|err| self.fail(err))
                }

                $(#[$doc])*
                ///
                /// Blocks this thread until the call is done (tools and tests).
                pub fn $blocking(
                    &self,
                    config: &PluginConfig,
                    $($arg: $ty),*
                ) -> Result<$out, PluginError> {
                    block_on(self.$call_async(config, $($arg),*))
                }
            )*
        }
    };
}

role_calls! {
    /// `parser.parse`.
    parse / parse_async: parser, Role::Parser, call_parse
        (content: &str, caller: &Caller) -> Outcome;
    /// `access.check`.
    check / check_async: access, Role::Access, call_check
        (caller: &Caller) -> Decision;
    /// `reactions.on-stage`.
    on_stage / on_stage_async: reactions, Role::Reactions, call_on_stage
        (stage: Stage, caller: &Caller, request: Option<&JobRequest>, info: &str) -> Vec<Action>;
    /// `model-policy.decide`.
    decide / decide_async: model_policy, Role::ModelPolicy, call_decide
        (request: &JobRequest, caller: &Caller, catalog: &[Model], limits: PolicyLimits)
            -> Verdict;
}

/// Runs a future to completion on this thread (the blocking API, outside any runtime or on
/// a thread that may block).
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exports(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn the_wit_version_comes_from_the_exports() {
        assert_eq!(
            check_exports(&exports(&[
                "wasi:cli/run@0.2.0",
                "easel:plugin/access@0.1.0"
            ])),
            Ok(WitVersion::V0_1)
        );
        let newer = check_exports(&exports(&["easel:plugin/parser@0.2.0"])).unwrap_err();
        assert!(
            newer.starts_with(
                "it exports easel:plugin/parser@0.2.0, a version this easel does not serve; \
                 supported: easel:plugin/access@0.1.0"
            ),
            "{newer}"
        );
        let foreign = check_exports(&exports(&["wasi:http/incoming-handler@0.2.0"])).unwrap_err();
        assert!(
            foreign.starts_with(
                "it exports wasi:http/incoming-handler@0.2.0, none of easel's interfaces"
            ),
            "{foreign}"
        );
    }
}
