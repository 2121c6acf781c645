//! The LoRAs of `/api/models/loras`: the Forge machines' list (`GET /sdapi/v1/loras`, their
//! union) with each LoRA's metadata from CivitAI or a local override, cached in
//! `model_metadata`. Emits no events.
//!
//! Resolution, per LoRA and request, as Navigator does it:
//! 1. the key hash: the first 12 characters of `metadata.sshs_model_hash` (CivitAI's AutoV3);
//!    else, with a model folder, the SHA256 of `<model_dir>/Lora/<name>.safetensors` (computed
//!    once, off the async threads, and kept in `file_sha256_cache`); else the alias;
//! 2. a CIVITAI row younger than 7 days (unless forced) is used as it is, so is one whose
//!    `updates_disabled` is set; an older (or forced) one is fetched again, by its
//!    `metadata_id` if it has one, else by hash, and stored; if that fails the cached copy is
//!    used (easel asks without Navigator's extra authentication check, and keeps the copy where
//!    Navigator dropped the LoRA when unauthenticated);
//! 3. a LOCAL row is the override;
//! 4. no row: `by-hash`, stored as a CIVITAI row. A LoRA CivitAI does not know (404) is left
//!    out of the list, as Navigator does, and not asked about again for
//!    [`MISS_TTL`] (unless forced); any other failure leaves it out of this answer only.
//!
//! A failing Forge list is an empty list (Navigator's behaviour); a failing store leaves the
//! LoRA out and is logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::CivitAi;
use crate::forge::Offer;
use crate::store::{MetadataRow, NewMetadata, Store, now_ms};

/// Navigator's `ModelMetadataProvider::LOCAL`.
pub const PROVIDER_LOCAL: i64 = 0;
/// Navigator's `ModelMetadataProvider::CIVITAI`.
pub const PROVIDER_CIVITAI: i64 = 1;
/// Navigator's `ModelType::LORA`.
pub const MODEL_TYPE_LORA: i64 = 0;

/// How long CivitAI metadata is used before it is fetched again (Navigator's 7 days).
pub const METADATA_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a hash CivitAI does not know is not asked about again.
pub const MISS_TTL: Duration = Duration::from_secs(10 * 60);
/// LoRAs resolved at the same time (each may be a CivitAI call).
const CONCURRENCY: usize = 4;
/// Keys of Forge's LoRA metadata that Navigator drops (large and unused).
const DROPPED_METADATA: [&str; 4] = [
    "ss_tag_frequency",
    "ss_bucket_info",
    "ss_datasets",
    "ss_dataset_dirs",
];

/// Navigator's `LocalOverrideLora`: what an administrator says about a LoRA CivitAI does not
/// know. Read strictly: every required field with its type, nothing else.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalOverride {
    /// Shown name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Not safe for work.
    pub nsfw: bool,
    /// Base model, e.g. `SDXL 1.0`.
    pub base_model: String,
    /// Trigger words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_words: Option<Vec<String>>,
    /// Image URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
}

/// The LoRA service; cheap to clone.
#[derive(Clone, Debug)]
pub struct Loras {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<Store>,
    client: Arc<CivitAi>,
    offer: Offer,
    model_dir: Option<PathBuf>,
    enabled: bool,
    /// Hashes CivitAI answered 404 for (and `file:<name>` for LoRA files that could not be
    /// hashed), and when.
    misses: Mutex<HashMap<String, Instant>>,
}

impl Loras {
    /// Over the Forge machines of `offer` (only when `enabled`: `[civitai] lora_requests`),
    /// metadata from `client` cached in `store`, files under `model_dir`.
    pub fn new(
        store: Arc<Store>,
        client: Arc<CivitAi>,
        offer: Offer,
        model_dir: Option<PathBuf>,
        enabled: bool,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                client,
                offer,
                model_dir,
                enabled,
                misses: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The Forge machines' LoRAs without the metadata keys Navigator drops; empty when LoRA
    /// requests are off, without a Forge machine, or when none answers.
    pub async fn forge_list(&self) -> Vec<Value> {
        if !self.inner.enabled {
            return Vec::new();
        }
        match self.inner.offer.loras().await {
            Ok(list) => list.iter().cloned().map(stripped).collect(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the Forge machines' LoRAs");
                Vec::new()
            }
        }
    }

    /// Navigator's `[NavigatorLora]`: every LoRA with metadata (`force`: fetched again from
    /// CivitAI), in the Forge list's order; those without are left out.
    pub async fn list(&self, force: bool) -> Vec<Value> {
        let loras = self.forge_list().await;
        let resolved: Vec<Option<Value>> = futures_util::stream::iter(loras)
            .map(|lora| self.resolve(lora, force))
            .buffered(CONCURRENCY)
            .collect()
            .await;
        resolved.into_iter().flatten().collect()
    }

    /// Stores `value` as the local override of `hash`.
    pub async fn set_override(
        &self,
        hash: &str,
        value: &LocalOverride,
    ) -> Result<(), crate::store::StoreError> {
        let text = serde_json::to_string(value).unwrap_or_default();
        self.inner
            .store
            .put_model_metadata(NewMetadata {
                hash,
                model_type: MODEL_TYPE_LORA,
                metadata: &text,
                provider: PROVIDER_LOCAL,
                metadata_id: Some(0),
            })
            .await?;
        tracing::info!(hash, name = %value.name, "LoRA local override set");
        Ok(())
    }

    /// One LoRA with its metadata, or `None`.
    async fn resolve(&self, lora: Value, force: bool) -> Option<Value> {
        let name = lora.get("name").and_then(Value::as_str).unwrap_or_default();
        let hash = self.hash(&lora).await;
        let row = match self.inner.store.model_metadata(&hash).await {
            Ok(row) => row,
            Err(err) => {
                tracing::error!(lora = name, error = %err, "cannot read LoRA metadata");
                return None;
            }
        };
        let Some(row) = row else {
            let version = self.fetch_new(name, &hash, force).await?;
            return Some(from_civitai(lora, version));
        };
        match row.provider {
            PROVIDER_CIVITAI => {
                let cached = row
                    .metadata
                    .as_deref()
                    .and_then(|m| serde_json::from_str::<Value>(m).ok())
                    .filter(|v| v.get("id").is_some());
                let age = Duration::from_millis(now_ms().saturating_sub(row.updated_at) as u64);
                let fresh = age < METADATA_TTL && !force;
                let disabled = row.updates_disabled != 0;
                match cached {
                    Some(cached) if fresh || disabled => Some(from_civitai(lora, cached)),
                    None if disabled => {
                        tracing::error!(
                            lora = name,
                            hash,
                            "cached LoRA metadata is not valid and its updates are disabled"
                        );
                        None
                    }
                    cached => match self.refetch(name, &row).await {
                        Some(version) => Some(from_civitai(lora, version)),
                        None => cached.map(|cached| from_civitai(lora, cached)),
                    },
                }
            }
            PROVIDER_LOCAL => {
                let local = row
                    .metadata
                    .as_deref()
                    .and_then(|m| serde_json::from_str::<LocalOverride>(m).ok());
                match local {
                    Some(local) => Some(from_local(lora, local)),
                    None => {
                        tracing::error!(lora = name, hash, "LoRA local override is not valid");
                        None
                    }
                }
            }
            other => {
                tracing::warn!(
                    lora = name,
                    hash,
                    provider = other,
                    "LoRA metadata from an unknown provider"
                );
                None
            }
        }
    }

    /// `by-hash` for a LoRA without a row; stored on success.
    async fn fetch_new(&self, name: &str, hash: &str, force: bool) -> Option<Value> {
        if !force && self.missed_recently(hash) {
            return None;
        }
        match self.inner.client.by_hash(hash).await {
            Ok(version) => {
                self.store_civitai(name, hash, &version).await;
                tracing::info!(lora = name, hash, "LoRA metadata fetched from CivitAI");
                Some(version)
            }
            Err(err) if err.is_not_found() => {
                tracing::info!(
                    lora = name,
                    hash,
                    "CivitAI does not know this LoRA; it is left out (a local override can describe it)"
                );
                self.lock_misses().insert(hash.to_owned(), Instant::now());
                None
            }
            Err(err) => {
                tracing::warn!(lora = name, hash, error = %crate::error_chain(&err), "cannot fetch LoRA metadata from CivitAI");
                None
            }
        }
    }

    /// A stale (or forced) CIVITAI row fetched again; stored on success.
    async fn refetch(&self, name: &str, row: &MetadataRow) -> Option<Value> {
        let by_id = row
            .metadata_id
            .filter(|id| *id > 0)
            .and_then(|id| u64::try_from(id).ok());
        let fetched = match by_id {
            Some(id) => self.inner.client.model_version(id).await,
            None => self.inner.client.by_hash(&row.hash).await,
        };
        match fetched {
            Ok(version) => {
                self.store_civitai(name, &row.hash, &version).await;
                tracing::info!(lora = name, hash = %row.hash, "LoRA metadata refreshed from CivitAI");
                Some(version)
            }
            Err(err) => {
                tracing::warn!(lora = name, hash = %row.hash, error = %crate::error_chain(&err), "cannot refresh LoRA metadata from CivitAI; using the cached copy");
                None
            }
        }
    }

    async fn store_civitai(&self, name: &str, hash: &str, version: &Value) {
        let text = version.to_string();
        let stored = self
            .inner
            .store
            .put_model_metadata(NewMetadata {
                hash,
                model_type: MODEL_TYPE_LORA,
                metadata: &text,
                provider: PROVIDER_CIVITAI,
                metadata_id: version.get("id").and_then(Value::as_i64),
            })
            .await;
        if let Err(err) = stored {
            tracing::error!(lora = name, hash, error = %err, "cannot store LoRA metadata");
        }
    }

    fn lock_misses(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.inner.misses.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn missed_recently(&self, hash: &str) -> bool {
        let mut misses = self.lock_misses();
        misses.retain(|_, at| at.elapsed() < MISS_TTL);
        misses.contains_key(hash)
    }

    /// The key hash of `lora` (step 1 of the module docs).
    async fn hash(&self, lora: &Value) -> String {
        let name = lora.get("name").and_then(Value::as_str).unwrap_or_default();
        let alias = lora
            .get("alias")
            .and_then(Value::as_str)
            .unwrap_or(name)
            .to_owned();
        let autov3 = lora
            .get("metadata")
            .and_then(|m| m.get("sshs_model_hash"))
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty());
        if let Some(autov3) = autov3 {
            return autov3.chars().take(12).collect();
        }
        let Some(dir) = &self.inner.model_dir else {
            tracing::debug!(
                lora = name,
                "LoRA without a hash and no model folder: keyed by its alias"
            );
            return alias;
        };
        match self.file_sha256(dir, name).await {
            Ok(sha) => sha,
            Err(err) => {
                // Said once (per MISS_TTL), not at every request.
                let key = format!("file:{name}");
                if self.missed_recently(&key) {
                    tracing::debug!(lora = name, error = %err, "cannot hash the LoRA file; keyed by its alias");
                } else {
                    tracing::warn!(lora = name, error = %err, "cannot hash the LoRA file; keyed by its alias");
                    self.lock_misses().insert(key, Instant::now());
                }
                alias
            }
        }
    }

    /// The SHA256 of `<dir>/Lora/<name>.safetensors`, from `file_sha256_cache` or computed
    /// (and cached).
    async fn file_sha256(&self, dir: &Path, name: &str) -> Result<String, String> {
        if name.is_empty()
            || Path::new(name)
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!("{name:?} is not a file name under the Lora folder"));
        }
        if let Some(sha) = self
            .inner
            .store
            .file_sha256(name)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(sha);
        }
        let path = dir.join("Lora").join(format!("{name}.safetensors"));
        let shown = path.display().to_string();
        let started = Instant::now();
        let sha = tokio::task::spawn_blocking(move || sha256_file(&path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{shown}: {e}"))?;
        tracing::info!(lora = name, file = %shown, ms = started.elapsed().as_millis() as u64, "LoRA file hashed");
        self.inner
            .store
            .put_file_sha256(name, &sha)
            .await
            .map_err(|e| e.to_string())?;
        Ok(sha)
    }
}

/// The SHA256 of a file, lowercase hex, read 1 MiB at a time.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A Forge LoRA without the metadata keys Navigator drops.
fn stripped(mut lora: Value) -> Value {
    if let Some(metadata) = lora.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in DROPPED_METADATA {
            metadata.remove(key);
        }
    }
    lora
}

fn alias_of(lora: &Value) -> Value {
    lora.get("alias").cloned().unwrap_or(Value::Null)
}

/// Navigator's `convertCivitaiAndForgeToNavigatorLora`.
fn from_civitai(lora: Value, version: Value) -> Value {
    let alias = alias_of(&lora);
    let name = version.get("name").cloned().unwrap_or(Value::Null);
    let nsfw = version
        .get("model")
        .and_then(|m| m.get("nsfw"))
        .cloned()
        .unwrap_or(Value::Bool(false));
    json!({"forge": lora, "civitai": version, "alias": alias, "name": name, "nsfw": nsfw,
        "provider": PROVIDER_CIVITAI})
}

/// Navigator's LoRA with a local override: the Forge name, the override's `nsfw`.
fn from_local(lora: Value, local: LocalOverride) -> Value {
    let alias = alias_of(&lora);
    let name = lora.get("name").cloned().unwrap_or(Value::Null);
    let nsfw = local.nsfw;
    json!({"forge": lora, "localOverride": local, "alias": alias, "name": name, "nsfw": nsfw,
        "provider": PROVIDER_LOCAL})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_read_strictly() {
        let ok: LocalOverride = serde_json::from_value(json!({"name": "n", "description": "d",
            "nsfw": false, "baseModel": "SDXL", "trainedWords": ["a"]}))
        .unwrap();
        assert_eq!(ok.trained_words.as_deref(), Some(&["a".to_owned()][..]));
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"name": "n", "description": "d", "nsfw": false, "baseModel": "SDXL",
                "trainedWords": ["a"]})
        );
        for bad in [
            json!({"name": "n", "description": "d", "nsfw": false}),
            json!({"name": "n", "description": "d", "nsfw": "no", "baseModel": "b"}),
            json!({"name": "n", "description": "d", "nsfw": false, "baseModel": "b", "images": [1]}),
            json!({"name": "n", "description": "d", "nsfw": false, "baseModel": "b", "x": 1}),
            json!([]),
        ] {
            assert!(
                serde_json::from_value::<LocalOverride>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn navigator_loras_have_navigators_keys() {
        let lora = stripped(json!({"name": "a", "alias": "al", "path": "/p",
            "metadata": {"sshs_model_hash": "h", "ss_tag_frequency": {}, "ss_datasets": [],
            "ss_bucket_info": {}, "ss_dataset_dirs": {}, "ss_other": 1}}));
        assert_eq!(
            lora["metadata"],
            json!({"sshs_model_hash": "h", "ss_other": 1})
        );
        let civitai = from_civitai(
            lora.clone(),
            json!({"id": 1, "name": "v1", "model": {"nsfw": true}}),
        );
        let keys: Vec<&str> = civitai
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["forge", "civitai", "alias", "name", "nsfw", "provider"]
        );
        assert_eq!(
            (civitai["name"].as_str(), civitai["nsfw"].as_bool()),
            (Some("v1"), Some(true))
        );
        let local = from_local(
            lora,
            LocalOverride {
                name: "o".into(),
                description: "d".into(),
                nsfw: false,
                base_model: "b".into(),
                trained_words: None,
                images: None,
            },
        );
        let keys: Vec<&str> = local
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "forge",
                "localOverride",
                "alias",
                "name",
                "nsfw",
                "provider"
            ]
        );
        assert_eq!(local["name"], "a");
        assert_eq!(local["provider"], 0);
    }

    #[test]
    fn files_hash_as_sha256sum_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
