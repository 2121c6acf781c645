//! Accounts: users' permission roles (Navigator's numbering) and their image categories.
//!
//! The one writer of the `users` and `categories` tables; front ends ask it rather than the
//! store. Roles are read on every request (Navigator re-reads them from the database each
//! time), so enrolled users' roles are cached: a change made here is seen at once, one made
//! behind easel's back (another host, an SQL console) within [`ROLE_TTL`]. Users without a
//! role (unknown or disabled) are read from the store every time, so enrolling one takes
//! effect at once wherever it is done. Consumes and emits no job events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::{Store, StoreError};

/// Permission roles, as Navigator numbers them.
pub mod role {
    /// Disabled or unknown.
    pub const NONE: i64 = 0;
    /// May generate (the default for enrolled users).
    pub const APPRENTICE: i64 = 1;
    /// May download models and refresh LoRA metadata.
    pub const ARTIFICER: i64 = 2;
    /// Administrator.
    pub const ARCHITECT: i64 = 3;
    /// The static superuser.
    pub const APEX: i64 = 4;
}

/// How long a role read from the store is trusted.
pub const ROLE_TTL: Duration = Duration::from_secs(2);
/// Most roles kept in the cache (it is emptied when full).
const ROLE_CACHE_SIZE: usize = 100_000;

/// A failed accounts operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Roles read recently: user id → (stored role, when it was read).
#[derive(Debug, Default)]
struct RoleCache {
    entries: Mutex<HashMap<String, (Option<i64>, Instant)>>,
}

impl RoleCache {
    fn get(&self, id: &str) -> Option<Option<i64>> {
        let entries = self.entries.lock().expect("role cache poisoned");
        let (role, at) = entries.get(id)?;
        (at.elapsed() < ROLE_TTL).then_some(*role)
    }

    fn forget(&self, id: &str) {
        self.entries.lock().expect("role cache poisoned").remove(id);
    }

    fn put(&self, id: &str, role: Option<i64>) {
        let mut entries = self.entries.lock().expect("role cache poisoned");
        if entries.len() >= ROLE_CACHE_SIZE {
            entries.clear();
        }
        entries.insert(id.to_owned(), (role, Instant::now()));
    }
}

/// Users, roles and categories; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Accounts {
    store: Arc<Store>,
    roles: RoleCache,
}

impl Accounts {
    /// The accounts kept in `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            roles: RoleCache::default(),
        }
    }

    /// The stored role of a user, if the user has a row.
    pub async fn stored_role(&self, id: &str) -> Result<Option<i64>, AccountError> {
        if let Some(role) = self.roles.get(id) {
            return Ok(role);
        }
        let role = self.store.user_role(id).await?;
        if role.is_some_and(|r| r > role::NONE) {
            self.roles.put(id, role);
        }
        Ok(role)
    }

    /// Navigator's `getPermissionRole`: the stored role; a user without a row who owns images
    /// is enrolled as an apprentice (legacy auto-enrolment); anyone else has no role.
    pub async fn permission_role(&self, id: &str) -> Result<i64, AccountError> {
        if let Some(role) = self.stored_role(id).await? {
            return Ok(role);
        }
        if self.store.owns_images(id).await? {
            self.set_role(id, role::APPRENTICE).await?;
            return Ok(role::APPRENTICE);
        }
        Ok(role::NONE)
    }

    /// Creates or updates a user's role.
    pub async fn set_role(&self, id: &str, role: i64) -> Result<(), AccountError> {
        self.store.set_user_role(id, role).await?;
        if role > role::NONE {
            self.roles.put(id, Some(role));
        } else {
            self.roles.forget(id);
        }
        Ok(())
    }

    /// Whether category `id` exists and belongs to `owner`.
    pub async fn category_owned_by(&self, id: i64, owner: &str) -> Result<bool, AccountError> {
        Ok(self.store.category_owned_by(id, owner).await?)
    }

    /// Creates a category owned by `owner`; returns its id.
    pub async fn create_category(&self, name64: &str, owner: &str) -> Result<i64, AccountError> {
        Ok(self.store.create_category(name64, owner).await?)
    }
}
