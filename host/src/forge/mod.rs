//! Forge/AUTOMATIC1111 machines: the HTTP client ([`client`]), Navigator's request bodies
//! ([`body`]), the backend that runs jobs on them ([`backend`]), and [`Offer`]: what the
//! backends offer (models, samplers, schedulers, upscalers, modules) for the API's list
//! routes and for queue-time name resolution.
//!
//! With several machines the lists are their union (the first machine listing a name wins).
//! With none, the simulated backend's built-in catalog answers, so the embedded default is a
//! complete system; LoRAs and embeddings, which it does not have, are empty then. Consumes no job events; the backend emits through its leases.

pub mod backend;
pub mod body;
pub mod client;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{RwLock, watch};

pub use backend::{ForgeBackend, Machine, MachineState, same_model};
pub use client::{ForgeClient, ForgeError, http_client};

use crate::config::Config;
use crate::jobs::Capabilities;
use body::{Lists, Sampler, Scheduler, Upscaler};

/// A list the backends offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// Checkpoints (`/sd-models`).
    Models,
    /// Samplers (`/samplers`).
    Samplers,
    /// Schedulers (`/schedulers`).
    Schedulers,
    /// Upscalers (`/upscalers`).
    Upscalers,
    /// VAE / text encoders (`/sd-modules`).
    Modules,
}

impl ListKind {
    const ALL: [ListKind; 5] = [
        ListKind::Models,
        ListKind::Samplers,
        ListKind::Schedulers,
        ListKind::Upscalers,
        ListKind::Modules,
    ];

    fn path(self) -> &'static str {
        match self {
            ListKind::Models => "sd-models",
            ListKind::Samplers => "samplers",
            ListKind::Schedulers => "schedulers",
            ListKind::Upscalers => "upscalers",
            ListKind::Modules => "sd-modules",
        }
    }

    /// The key that names an entry (for the union).
    fn key(self) -> &'static str {
        match self {
            ListKind::Models | ListKind::Modules => "model_name",
            _ => "name",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How long a list read from Forge is reused (Navigator keeps some for ever).
const LIST_CACHE: Duration = Duration::from_secs(30);

type Cached = RwLock<Option<(Instant, Arc<Vec<Value>>)>>;

/// What the backends offer; cheap to clone.
#[derive(Clone, Debug)]
pub struct Offer {
    inner: Arc<OfferInner>,
}

#[derive(Debug)]
struct OfferInner {
    machines: Vec<Arc<Machine>>,
    cache: [Cached; 5],
    /// The names queue-time resolution needs, read from the lists above.
    names: RwLock<Option<(Instant, Arc<Lists>)>>,
    /// `/loras`, the union by `name`.
    loras: Cached,
    /// The names in `/embeddings`' `loaded`.
    embeddings: RwLock<Option<(Instant, Arc<Vec<String>>)>>,
}

impl Offer {
    /// Over `machines` (none: the built-in catalog).
    pub fn new(machines: Vec<Arc<Machine>>) -> Self {
        Self {
            inner: Arc::new(OfferInner {
                machines,
                cache: Default::default(),
                names: RwLock::new(None),
                loras: RwLock::new(None),
                embeddings: RwLock::new(None),
            }),
        }
    }

    /// Whether Forge machines answer (else the built-in catalog does).
    pub fn has_forge(&self) -> bool {
        !self.inner.machines.is_empty()
    }

    /// The machines' states, for `/api/admin/backends`.
    pub fn states(&self) -> Vec<MachineState> {
        self.inner
            .machines
            .iter()
            .map(|m| m.state.borrow().clone())
            .collect()
    }

    /// One list: the union over the machines that answer (an error only if none does).
    pub async fn list(&self, kind: ListKind) -> Result<Arc<Vec<Value>>, ForgeError> {
        if !self.has_forge() {
            return Ok(builtin(kind));
        }
        let slot = &self.inner.cache[kind.index()];
        if let Some((at, list)) = slot.read().await.as_ref()
            && at.elapsed() < LIST_CACHE
        {
            return Ok(list.clone());
        }
        let union = self.union(kind.path(), kind.key()).await?;
        let list = Arc::new(union);
        *slot.write().await = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// `GET <path>` on every machine: the union of their lists by `key` (an error only if
    /// none answers with a list).
    async fn union(&self, path: &str, key: &str) -> Result<Vec<Value>, ForgeError> {
        let mut union: Vec<Value> = Vec::new();
        let mut last_error = None;
        let mut answered = false;
        for machine in &self.inner.machines {
            match machine.client.get(path).await {
                Ok(Value::Array(items)) => {
                    answered = true;
                    for item in items {
                        let name = item.get(key).cloned();
                        if !union.iter().any(|u| u.get(key) == name.as_ref()) {
                            union.push(item);
                        }
                    }
                }
                Ok(other) => {
                    last_error = Some(ForgeError::BadAnswer {
                        url: format!("{}/{path}", machine.client.api_url()),
                        reason: format!("expected a list, got {}", short(&other)),
                    });
                }
                Err(err) => {
                    tracing::warn!(forge = %machine.name, error = %err, list = path, "cannot read a Forge list");
                    last_error = Some(err);
                }
            }
        }
        if !answered {
            return Err(last_error.unwrap_or_else(|| ForgeError::BadAnswer {
                url: String::new(),
                reason: "no Forge machine".into(),
            }));
        }
        Ok(union)
    }

    /// The LoRAs (`/loras`, `{name, alias, path, metadata}`): the union over the machines by
    /// `name`; empty without a Forge machine.
    pub async fn loras(&self) -> Result<Arc<Vec<Value>>, ForgeError> {
        if !self.has_forge() {
            return Ok(Arc::default());
        }
        if let Some((at, list)) = self.inner.loras.read().await.as_ref()
            && at.elapsed() < LIST_CACHE
        {
            return Ok(list.clone());
        }
        let list = Arc::new(self.union("loras", "name").await?);
        *self.inner.loras.write().await = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// The names of the loaded embeddings (the keys of `/embeddings`' `loaded`), over every
    /// machine, first seen first; empty without a Forge machine.
    pub async fn embeddings(&self) -> Result<Arc<Vec<String>>, ForgeError> {
        if !self.has_forge() {
            return Ok(Arc::default());
        }
        if let Some((at, names)) = self.inner.embeddings.read().await.as_ref()
            && at.elapsed() < LIST_CACHE
        {
            return Ok(names.clone());
        }
        let mut names: Vec<String> = Vec::new();
        let mut last_error = None;
        let mut answered = false;
        for machine in &self.inner.machines {
            match machine.client.get("embeddings").await {
                Ok(answer) => match answer.get("loaded").and_then(Value::as_object) {
                    Some(loaded) => {
                        answered = true;
                        for name in loaded.keys() {
                            if !names.contains(name) {
                                names.push(name.clone());
                            }
                        }
                    }
                    None => {
                        last_error = Some(ForgeError::BadAnswer {
                            url: format!("{}/embeddings", machine.client.api_url()),
                            reason: format!(
                                "expected {{\"loaded\": {{…}}}}, got {}",
                                short(&answer)
                            ),
                        });
                    }
                },
                Err(err) => {
                    tracing::warn!(forge = %machine.name, error = %err, "cannot read a Forge's embeddings");
                    last_error = Some(err);
                }
            }
        }
        if !answered {
            return Err(last_error.unwrap_or_else(|| ForgeError::BadAnswer {
                url: String::new(),
                reason: "no Forge machine".into(),
            }));
        }
        let names = Arc::new(names);
        *self.inner.embeddings.write().await = Some((Instant::now(), names.clone()));
        Ok(names)
    }

    /// After new model files arrived: `POST /refresh-embeddings`, `/refresh-checkpoints` and
    /// `/refresh-loras` on every machine (all are asked even if some fail; the last error is
    /// returned); every list is read afresh next.
    pub async fn refresh_all(&self) -> Result<(), ForgeError> {
        let mut result = Ok(());
        for machine in &self.inner.machines {
            for path in ["refresh-embeddings", "refresh-checkpoints", "refresh-loras"] {
                if let Err(err) = machine.client.post(path, &Value::Null).await {
                    tracing::warn!(forge = %machine.name, error = %err, path, "Forge refresh failed");
                    result = Err(err);
                }
            }
        }
        for slot in &self.inner.cache {
            *slot.write().await = None;
        }
        *self.inner.names.write().await = None;
        *self.inner.loras.write().await = None;
        *self.inner.embeddings.write().await = None;
        result
    }

    /// `POST /refresh-checkpoints` on every machine; the model list is read afresh next.
    pub async fn refresh_models(&self) -> Result<(), ForgeError> {
        let mut result = Ok(());
        for machine in &self.inner.machines {
            if let Err(err) = machine
                .client
                .post("refresh-checkpoints", &Value::Null)
                .await
            {
                result = Err(err);
            }
        }
        *self.inner.cache[ListKind::Models.index()].write().await = None;
        *self.inner.names.write().await = None;
        result
    }

    /// The names queue-time resolution needs (samplers, schedulers, upscalers, models),
    /// reused as long as the lists are.
    pub async fn lists(&self) -> Result<Arc<Lists>, ForgeError> {
        if let Some((at, names)) = self.inner.names.read().await.as_ref()
            && (!self.has_forge() || at.elapsed() < LIST_CACHE)
        {
            return Ok(names.clone());
        }
        let samplers = self.list(ListKind::Samplers).await?;
        let schedulers = self.list(ListKind::Schedulers).await?;
        let upscalers = self.list(ListKind::Upscalers).await?;
        let models = self.list(ListKind::Models).await?;
        let names = Arc::new(lists_from(&samplers, &schedulers, &upscalers, &models));
        *self.inner.names.write().await = Some((Instant::now(), names.clone()));
        Ok(names)
    }

    /// Forge's png-info of a picture, from the first machine that answers.
    pub async fn png_info(&self, image_b64: &str) -> Result<Option<Value>, ForgeError> {
        let mut last = None;
        for machine in &self.inner.machines {
            match machine.client.png_info(image_b64).await {
                Ok(info) => return Ok(Some(info)),
                Err(err) => last = Some(err),
            }
        }
        last.map_or(Ok(None), Err)
    }
}

/// The simulated backend's catalog, built once.
fn builtin(kind: ListKind) -> Arc<Vec<Value>> {
    static BUILT: std::sync::OnceLock<[Arc<Vec<Value>>; 5]> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| ListKind::ALL.map(|k| Arc::new(crate::sim::catalog(k))))[kind.index()]
        .clone()
}

fn short(value: &Value) -> String {
    value.to_string().chars().take(80).collect()
}

fn lists_from(
    samplers: &[Value],
    schedulers: &[Value],
    upscalers: &[Value],
    models: &[Value],
) -> Lists {
    fn parse<T: serde::de::DeserializeOwned>(items: &[Value]) -> Vec<T> {
        items
            .iter()
            .filter_map(|v| serde_json::from_value(v.clone()).ok())
            .collect()
    }
    Lists {
        samplers: parse::<Sampler>(samplers),
        schedulers: parse::<Scheduler>(schedulers),
        upscalers: parse::<Upscaler>(upscalers),
        models: models
            .iter()
            .filter_map(|m| m.get("model_name").and_then(Value::as_str))
            .map(str::to_owned)
            .collect(),
    }
}

/// One machine's own lists (for the upscaler fallback and the default model of a job).
pub(crate) async fn lists_of(client: &ForgeClient) -> Result<Lists, ForgeError> {
    let array = |v: Value| match v {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    let samplers = array(client.get("samplers").await?);
    let schedulers = array(client.get("schedulers").await?);
    let upscalers = array(client.get("upscalers").await?);
    let models = array(client.get("sd-models").await?);
    Ok(lists_from(&samplers, &schedulers, &upscalers, &models))
}

/// The `[[forge]]` machines of `config` (none when there are none).
pub fn machines(config: &Config) -> Vec<Arc<Machine>> {
    let http = http_client();
    config
        .forge
        .iter()
        .enumerate()
        .map(|(n, forge)| {
            let name = config.forge_name(n);
            let client = ForgeClient::new(http.clone(), forge);
            let state = watch::Sender::new(MachineState {
                name: name.clone(),
                url: crate::config::redact_url(client.api_url()),
                ..MachineState::default()
            });
            Arc::new(Machine {
                name,
                client,
                can: Capabilities {
                    models: forge.models.clone(),
                    max_pixels: None,
                },
                progress: Duration::from_millis(forge.progress_ms.max(1)),
                unload_after: u64::try_from(forge.unload_after_min)
                    .ok()
                    .filter(|m| *m > 0)
                    .map(|m| Duration::from_secs(m * 60)),
                state,
            })
        })
        .collect()
}
