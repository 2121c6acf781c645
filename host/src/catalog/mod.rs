//! The model catalog: which models have friendly names and which are restricted.
//!
//! The one writer of the `models` table. The model policy reads the catalog for every
//! request, so it is cached: a change made here is seen at once, one made behind easel's back
//! within [`CATALOG_TTL`]. Consumes and emits no job events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::store::{ModelEntry, Store, StoreError};

/// How long the catalog read from the store is trusted.
pub const CATALOG_TTL: Duration = Duration::from_secs(2);

/// A failed catalog operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The models; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Catalog {
    store: Arc<Store>,
    cached: ArcSwapOption<(Instant, Arc<[ModelEntry]>)>,
    /// One refresh at a time; the others wait for it.
    refresh: tokio::sync::Mutex<()>,
}

impl Catalog {
    /// The catalog kept in `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            cached: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self) -> Option<Arc<[ModelEntry]>> {
        let cached = self.cached.load();
        let (at, models) = cached.as_deref()?;
        (at.elapsed() < CATALOG_TTL).then(|| models.clone())
    }

    /// Every model, in the order they were added.
    pub async fn models(&self) -> Result<Arc<[ModelEntry]>, CatalogError> {
        if let Some(models) = self.fresh() {
            return Ok(models);
        }
        let _refresh = self.refresh.lock().await;
        if let Some(models) = self.fresh() {
            return Ok(models);
        }
        let models: Arc<[ModelEntry]> = self.store.models().await?.into();
        self.cached
            .store(Some(Arc::new((Instant::now(), models.clone()))));
        Ok(models)
    }

    /// Adds a model; returns its id.
    pub async fn add_model(
        &self,
        name: &str,
        friendly_name: Option<&str>,
        restricted: bool,
    ) -> Result<i64, CatalogError> {
        let id = self
            .store
            .add_model(name, friendly_name, restricted)
            .await?;
        self.cached.store(None);
        Ok(id)
    }
}
