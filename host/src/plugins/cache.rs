//! The precompiled-component cache: compiled plugins kept on disk, keyed by the component's
//! SHA-256 and the engine's compatibility hash (wasmtime version, target, settings), so a
//! restart or a reload of a file seen before skips compilation.
//!
//! Entries are written to a temporary file and renamed into place, so a reader never sees half
//! an entry. An entry that does not deserialize (damaged, or written by another engine) is
//! compiled again and replaced. Only files this cache wrote are read back: the directory must
//! be writable by the operator alone, as any directory holding code is.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of compiled components.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
    engine_key: String,
}

impl Cache {
    /// A cache in `dir` for components compiled by `engine`.
    pub fn new(dir: &Path, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self {
            dir: dir.to_owned(),
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    /// Where the entry of the component with this SHA-256 lives.
    pub fn entry(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The component with `sha256`: read back if cached, else compiled from `bytes` and stored.
    /// A cache that cannot be written only costs the next start a compilation.
    pub fn component(
        &self,
        engine: &Engine,
        sha256: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<Component> {
        let entry = self.entry(sha256);
        // Read into memory rather than mapped: a file changed under a mapping would crash the
        // process (SIGBUS), and an entry is small.
        if let Ok(cached) = std::fs::read(&entry) {
            // SAFETY: the entry was written by `store` below from `Component::serialize` of an
            // engine with the same compatibility hash (it is in the name), into a directory
            // only the operator writes; wasmtime also checks the header before using it.
            match unsafe { Component::deserialize(engine, &cached) } {
                Ok(component) => return Ok(component),
                Err(err) => {
                    tracing::warn!(entry = %entry.display(), error = %err, "cached plugin unusable; compiling again");
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(err) = self.store(&entry, &component) {
            tracing::warn!(dir = %self.dir.display(), error = %err, "cannot write the plugin cache");
        }
        Ok(component)
    }

    fn store(&self, entry: &Path, component: &Component) -> std::io::Result<()> {
        let bytes = component.serialize().map_err(std::io::Error::other)?;
        std::fs::create_dir_all(&self.dir)?;
        let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, entry)
    }
}
