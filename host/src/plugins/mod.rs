//! The plugin runtime: wasmtime engine, bindings generated from `wit/`, per-call limits.
//!
//! Policy runs in WebAssembly components that implement the `easel:plugin` interfaces. The
//! engine uses the component model, the pooling allocator (falling back to on-demand allocation
//! where the address space is too small) and epoch interruption: a ticker thread advances the
//! epoch every [`TICK`], so a call's deadline is a number of ticks. Each plugin is compiled once
//! into an `InstancePre` (imports resolved and type-checked off the request path); every call
//! gets a fresh `Store` and instance, so nothing leaks between users, with a memory cap enforced
//! by `StoreLimits`. Traps, deadline and memory overruns are errors of that call only.
//!
//! Built so far: the runtime, the parser role and the registry with hot reload ([`Registry`]).
//! The other roles, failure policies and role assignment come with the rest of the plugin work.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};

mod registry;

pub use registry::{PluginConfigs, PluginStatus, Registry};

/// Bindings of the parser world.
mod parser_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "parser-plugin",
    });
}

pub use parser_world::easel::plugin::types::{Caller, FrontEnd, JobRequest};
pub use parser_world::exports::easel::plugin::parser::{Outcome, Parsed};

use parser_world::easel::plugin::host::{self as host_iface, Level};

/// How often the epoch advances.
pub const TICK: Duration = Duration::from_millis(2);

/// Per-call limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Wall-clock time a call may take.
    pub deadline: Duration,
    /// Linear memory a call may grow to, in bytes.
    pub memory: usize,
    /// Calls that may run at once (pool slots).
    pub instances: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(50),
            memory: 32 << 20,
            instances: 64,
        }
    }
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
    /// The call trapped, ran out of time or memory.
    #[error("plugin {name} failed: {message}")]
    Call {
        /// Plugin name.
        name: String,
        /// What happened.
        message: String,
    },
}

/// The wasmtime engine and its epoch ticker; cheap to share behind an `Arc`.
pub struct Runtime {
    engine: Engine,
    limits: Limits,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.limits)
            .finish()
    }
}

fn engine_config(limits: &Limits, pooling: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // Small reservations: plugins are small, and many may be live at once.
    config.memory_reservation(limits.memory as u64 + (1 << 20));
    config.memory_guard_size(64 << 10);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(limits.instances)
            .total_core_instances(limits.instances * 4)
            .total_memories(limits.instances * 2)
            .total_tables(limits.instances * 4)
            .max_memory_size(limits.memory);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

impl Runtime {
    /// A runtime with these limits; its ticker thread stops when the runtime is dropped.
    pub fn new(limits: Limits) -> Result<Arc<Self>, PluginError> {
        let engine = Engine::new(&engine_config(&limits, true))
            .or_else(|err| {
                tracing::warn!(error = %err, "pooling allocator unavailable; allocating on demand");
                Engine::new(&engine_config(&limits, false))
            })
            .map_err(|err| PluginError::Invalid {
                name: "engine".into(),
                message: err.to_string(),
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
        Ok(Arc::new(Self { engine, limits }))
    }

    /// Ticks until `deadline` (plus one for the tick in progress).
    fn deadline_ticks(&self) -> u64 {
        (self.limits.deadline.as_micros() / TICK.as_micros()).max(1) as u64 + 1
    }

    /// Loads a parser plugin from `path`.
    pub fn load_parser(
        self: &Arc<Self>,
        name: &str,
        path: &Path,
        config: Vec<(String, String)>,
    ) -> Result<ParserPlugin, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.parser_from_bytes(name, &bytes, config)
    }

    /// Compiles and links a parser plugin.
    pub fn parser_from_bytes(
        self: &Arc<Self>,
        name: &str,
        bytes: &[u8],
        config: Vec<(String, String)>,
    ) -> Result<ParserPlugin, PluginError> {
        let invalid = |err: wasmtime::Error| PluginError::Invalid {
            name: name.to_owned(),
            // One line: wasmtime's chain may span several.
            message: format!("{err:#}")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        };
        let component = Component::new(&self.engine, bytes).map_err(invalid)?;
        let mut linker = Linker::<CallState>::new(&self.engine);
        host_iface::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |state| state)
            .map_err(invalid)?;
        let pre = linker.instantiate_pre(&component).map_err(invalid)?;
        let pre = parser_world::ParserPluginPre::new(pre).map_err(invalid)?;
        Ok(ParserPlugin {
            runtime: self.clone(),
            name: Arc::from(name),
            sha256: hex(&sha2::Sha256::digest(bytes)),
            config: Arc::new(config),
            pre,
        })
    }

    fn store(&self, name: &Arc<str>, config: &Arc<Vec<(String, String)>>) -> Store<CallState> {
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
            },
        );
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        store
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a call's store holds: the plugin's name and config, and the limits.
pub struct CallState {
    plugin: Arc<str>,
    config: Arc<Vec<(String, String)>>,
    limits: StoreLimits,
}

impl host_iface::Host for CallState {
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

impl parser_world::easel::plugin::types::Host for CallState {}

/// A loaded parser plugin.
#[derive(Clone)]
pub struct ParserPlugin {
    runtime: Arc<Runtime>,
    name: Arc<str>,
    sha256: String,
    config: Arc<Vec<(String, String)>>,
    pre: parser_world::ParserPluginPre<CallState>,
}

impl std::fmt::Debug for ParserPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParserPlugin")
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl ParserPlugin {
    /// The plugin's name (its file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the component file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// `parser.parse` in a fresh instance, within the runtime's limits.
    pub fn parse(&self, content: &str, caller: &Caller) -> Result<Outcome, PluginError> {
        let fail = |err: wasmtime::Error| {
            let message = match err.downcast_ref::<wasmtime::Trap>() {
                Some(wasmtime::Trap::Interrupt) => {
                    format!("deadline of {:?} exceeded", self.runtime.limits.deadline)
                }
                _ => format!("{err:#}"),
            };
            PluginError::Call {
                name: self.name.to_string(),
                message,
            }
        };
        let mut store = self.runtime.store(&self.name, &self.config);
        let instance = self.pre.instantiate(&mut store).map_err(fail)?;
        instance
            .easel_plugin_parser()
            .call_parse(&mut store, content, caller)
            .map_err(fail)
    }
}

/// A caller that the default access rules allow: a Discord user in a guild channel.
pub fn example_caller() -> Caller {
    Caller {
        front_end: FrontEnd::Discord,
        user_id: "100000000000000001".into(),
        user_tag: "artist#0".into(),
        role: 1,
        guild: "Guild".into(),
        channel: "art".into(),
        channel_id: "200000000000000002".into(),
        is_dm: false,
        is_self: false,
    }
}

/// The JSON form of an outcome, as `easel plugin call` prints it: records → objects, variants
/// → `{"case": payload}` (`null` payload for a case without one).
pub fn outcome_json(outcome: &Outcome) -> serde_json::Value {
    use serde_json::json;
    match outcome {
        Outcome::Ignore => json!({"ignore": null}),
        Outcome::Help(text) => json!({"help": text}),
        Outcome::Error(text) => json!({"error": text}),
        Outcome::Request(parsed) => {
            let r = &parsed.request;
            json!({"request": {
                "request": {
                    "prompt": r.prompt,
                    "negative-prompt": r.negative_prompt,
                    "cfg": r.cfg,
                    "steps": r.steps,
                    "width": r.width,
                    "height": r.height,
                    "seed": r.seed,
                    "model": r.model,
                    "sampler": r.sampler,
                    "extra": r.extra,
                },
                "warnings": parsed.warnings,
            }})
        }
    }
}

/// A caller from JSON (`{"user-tag": "x#0", "is-dm": true, …}`, kebab- or snake-case keys);
/// keys left out keep the values of [`example_caller`].
pub fn caller_from_json(value: &serde_json::Value) -> Result<Caller, String> {
    let mut caller = example_caller();
    let Some(object) = value.as_object() else {
        return Err(format!("a caller is a JSON object, found {value}"));
    };
    for (key, v) in object {
        let text = || {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("caller.{key}: expected a string, found {v}"))
        };
        let flag = || {
            v.as_bool()
                .ok_or_else(|| format!("caller.{key}: expected true or false, found {v}"))
        };
        match key.replace('_', "-").as_str() {
            "front-end" => {
                caller.front_end = match v.as_str() {
                    Some("discord") => FrontEnd::Discord,
                    Some("http") => FrontEnd::Http,
                    _ => {
                        return Err(format!(
                            "caller.{key}: expected \"discord\" or \"http\", found {v}"
                        ));
                    }
                }
            }
            "user-id" => caller.user_id = text()?,
            "user-tag" => caller.user_tag = text()?,
            "role" => {
                caller.role = v
                    .as_u64()
                    .and_then(|r| u8::try_from(r).ok())
                    .ok_or_else(|| format!("caller.{key}: expected a role 0-4, found {v}"))?
            }
            "guild" => caller.guild = text()?,
            "channel" => caller.channel = text()?,
            "channel-id" => caller.channel_id = text()?,
            "is-dm" => caller.is_dm = flag()?,
            "is-self" => caller.is_self = flag()?,
            other => return Err(format!("caller has no field `{other}`")),
        }
    }
    Ok(caller)
}
