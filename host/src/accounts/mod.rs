//! Accounts: users' permission roles (Navigator's numbering) and their image categories.
//!
//! The one writer of the `users` and `categories` tables; front ends ask it rather than the
//! store. Roles are read on every request (Navigator re-reads them from the database each
//! time), so enrolled users' roles are cached: a change made here is seen at once, one made
//! behind easel's back (another host, an SQL console) within [`ROLE_TTL`]. Users without a
//! role (unknown or disabled) are read from the store every time, so enrolling one takes
//! effect at once wherever it is done. Consumes and emits no job events.
//!
//! Navigator's rules: the first user authorised becomes the superuser (role 4), disabling never
//! promotes anyone, the demo user is never written (its role is 2 while the demo is on), and an
//! id without a row that owns images is enrolled as an apprentice (legacy auto-enrolment).

pub mod discord;

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

/// The demo user's id (Navigator's `demo_user`).
pub const DEMO_USER: &str = "demo_user";

/// Longest `base64(name)` of a category (Navigator's `VARCHAR(255)`).
pub const CATEGORY_NAME64_MAX: usize = 255;

/// One image category.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Category {
    /// Its id.
    pub id: i64,
    /// Who owns it.
    pub owner_id: String,
    /// Its name (decoded from the stored base64).
    pub name: String,
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
    /// A category name whose base64 form is longer than 255 bytes.
    #[error("Category name is too long")]
    NameTooLong,
    /// A role outside 0–4, or a write for the demo user.
    #[error("role {0} cannot be stored for this user")]
    BadRole(i64),
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
    demo: bool,
}

impl Accounts {
    /// The accounts kept in `store` (the demo user off).
    pub fn new(store: Arc<Store>) -> Self {
        Self::with_demo(store, false)
    }

    /// The accounts kept in `store`, with the demo user on or off.
    pub fn with_demo(store: Arc<Store>, demo: bool) -> Self {
        Self {
            store,
            roles: RoleCache::default(),
            demo,
        }
    }

    /// Whether the demo user may log in.
    pub fn demo_enabled(&self) -> bool {
        self.demo
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
        if id == DEMO_USER {
            return Ok(if self.demo {
                role::ARTIFICER
            } else {
                role::NONE
            });
        }
        if let Some(role) = self.stored_role(id).await? {
            return Ok(role);
        }
        if self.store.owns_images(id).await? {
            self.set_role(id, role::APPRENTICE).await?;
            return Ok(role::APPRENTICE);
        }
        Ok(role::NONE)
    }

    /// Navigator's authorize-user: role 1, or 4 when nobody has a role yet (the first user
    /// becomes the superuser). Returns the role given.
    pub async fn authorize(&self, id: &str) -> Result<i64, AccountError> {
        if id == DEMO_USER {
            return Err(AccountError::BadRole(role::APPRENTICE));
        }
        let role = self
            .store
            .authorize_user(id, role::APPRENTICE, role::APEX)
            .await?;
        self.roles.put(id, Some(role));
        Ok(role)
    }

    /// Navigator's disable-user: role 0 (never a promotion). Existing tokens of the user get
    /// `403 USER_DISABLED` from the next request on.
    pub async fn disable(&self, id: &str) -> Result<(), AccountError> {
        self.set_role(id, role::NONE).await
    }

    /// Creates or updates a user's role (0–4; never for the demo user).
    pub async fn set_role(&self, id: &str, role: i64) -> Result<(), AccountError> {
        if id == DEMO_USER || !(role::NONE..=role::APEX).contains(&role) {
            return Err(AccountError::BadRole(role));
        }
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

    /// Creates a category named `name` owned by `owner`; returns its id.
    pub async fn create_category(&self, name: &str, owner: &str) -> Result<i64, AccountError> {
        Ok(self.store.create_category(&name64(name)?, owner).await?)
    }

    /// `owner`'s categories, oldest first.
    pub async fn categories(&self, owner: &str) -> Result<Vec<Category>, AccountError> {
        use base64::Engine as _;
        let rows = self.store.categories(owner).await?;
        Ok(rows
            .into_iter()
            .map(|(id, owner_id, name64)| Category {
                id,
                owner_id,
                name: base64::engine::general_purpose::STANDARD
                    .decode(&name64)
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .unwrap_or(name64),
            })
            .collect())
    }

    /// Renames `owner`'s category `id`; false when `owner` has no such category.
    pub async fn rename_category(
        &self,
        id: i64,
        owner: &str,
        name: &str,
    ) -> Result<bool, AccountError> {
        Ok(self
            .store
            .rename_category(id, owner, &name64(name)?)
            .await?)
    }

    /// Deletes `owner`'s category `id`; its images and jobs stay, without a category. False
    /// when `owner` has no such category.
    pub async fn delete_category(&self, id: i64, owner: &str) -> Result<bool, AccountError> {
        Ok(self.store.delete_category(id, owner).await?)
    }
}

/// A category name as stored: base64 of its UTF-8, at most 255 bytes.
fn name64(name: &str) -> Result<String, AccountError> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(name);
    if encoded.len() > CATEGORY_NAME64_MAX {
        return Err(AccountError::NameTooLong);
    }
    Ok(encoded)
}
