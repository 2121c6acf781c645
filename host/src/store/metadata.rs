//! The `model_metadata` and `file_sha256_cache` tables: the LoRA metadata cache (CivitAI
//! answers and local overrides, written by [`crate::civitai`]'s LoRA service) and the hashes
//! of LoRA files that carry none of their own.
//!
//! `model_metadata.metadata` is JSON text (Navigator stored base64 of it); `updated_at` is Unix
//! milliseconds. Writes are upserts without a transaction (one row each, a cache): an insert
//! that meets a row written meanwhile by another request or host updates that row instead.

use super::{Result, Store, StoreError, now_ms};

/// One row of `model_metadata`.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct MetadataRow {
    /// The key: a LoRA's AutoV3 hash (12 hex), its file's SHA256, or its alias.
    pub hash: String,
    /// Navigator's `ModelType` (LORA = 0, CHECKPOINT = 1).
    pub model_type: i64,
    /// The cached metadata, JSON text.
    pub metadata: Option<String>,
    /// Navigator's `ModelMetadataProvider` (LOCAL = 0, CIVITAI = 1).
    pub provider: i64,
    /// The CivitAI model version id, when known (refreshes fetch it by id).
    pub metadata_id: Option<i64>,
    /// When the metadata was last written, Unix ms.
    pub updated_at: i64,
    /// Never refresh this row from upstream (set by hand).
    pub updates_disabled: i64,
}

/// What [`Store::put_model_metadata`] writes.
#[derive(Clone, Copy, Debug)]
pub struct NewMetadata<'a> {
    /// The key.
    pub hash: &'a str,
    /// Navigator's `ModelType`.
    pub model_type: i64,
    /// JSON text.
    pub metadata: &'a str,
    /// Navigator's `ModelMetadataProvider`.
    pub provider: i64,
    /// The CivitAI model version id.
    pub metadata_id: Option<i64>,
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Store {
    /// The metadata row keyed `hash`, if any.
    pub async fn model_metadata(&self, hash: &str) -> Result<Option<MetadataRow>> {
        let sql = self.sql(
            "SELECT hash, model_type, metadata, provider, metadata_id, updated_at, updates_disabled \
             FROM model_metadata WHERE hash = ?",
        );
        let row = on_pool!(self, pool => {
            sqlx::query_as::<_, MetadataRow>(sql).bind(hash).fetch_optional(pool).await?
        });
        Ok(row)
    }

    /// Creates or replaces the metadata keyed `new.hash`, stamped now; `updates_disabled` of an
    /// existing row is kept.
    pub async fn put_model_metadata(&self, new: NewMetadata<'_>) -> Result<()> {
        let _turn = self.write_turn().await;
        let now = now_ms();
        const UPDATE: &str = "UPDATE model_metadata SET model_type = ?, metadata = ?, \
             provider = ?, metadata_id = ?, updated_at = ? WHERE hash = ?";
        let update = self.sql(UPDATE);
        let update_again = self.sql(UPDATE);
        let insert = self.sql(
            "INSERT INTO model_metadata \
             (hash, model_type, metadata, provider, metadata_id, updated_at, updates_disabled) \
             VALUES (?, ?, ?, ?, ?, ?, 0)",
        );
        let exists = self.sql("SELECT COUNT(*) FROM model_metadata WHERE hash = ?");
        on_pool!(self, pool => {
            let changed = sqlx::query(update)
                .bind(new.model_type)
                .bind(new.metadata)
                .bind(new.provider)
                .bind(new.metadata_id)
                .bind(now)
                .bind(new.hash)
                .execute(pool)
                .await?
                .rows_affected();
            // MariaDB counts changed rows only: an identical row is 0 too.
            let present: i64 = if changed == 0 {
                sqlx::query_scalar(exists).bind(new.hash).fetch_one(pool).await?
            } else {
                1
            };
            if present == 0 {
                let inserted = sqlx::query(insert)
                    .bind(new.hash)
                    .bind(new.model_type)
                    .bind(new.metadata)
                    .bind(new.provider)
                    .bind(new.metadata_id)
                    .bind(now)
                    .execute(pool)
                    .await;
                match inserted {
                    Ok(_) => {}
                    // Written meanwhile (another request, another host): overwrite it.
                    Err(err) if is_unique_violation(&err) => {
                        sqlx::query(update_again)
                            .bind(new.model_type)
                            .bind(new.metadata)
                            .bind(new.provider)
                            .bind(new.metadata_id)
                            .bind(now)
                            .bind(new.hash)
                            .execute(pool)
                            .await?;
                    }
                    Err(err) => return Err(StoreError::from(err)),
                }
            }
        });
        Ok(())
    }

    /// Sets whether the row keyed `hash` may be refreshed from upstream; false when there is
    /// no such row.
    pub async fn set_model_metadata_updates_disabled(
        &self,
        hash: &str,
        disabled: bool,
    ) -> Result<bool> {
        let _turn = self.write_turn().await;
        let sql = self.sql("UPDATE model_metadata SET updates_disabled = ? WHERE hash = ?");
        let exists = self.sql("SELECT COUNT(*) FROM model_metadata WHERE hash = ?");
        let present: i64 = on_pool!(self, pool => {
            sqlx::query(sql).bind(i64::from(disabled)).bind(hash).execute(pool).await?;
            sqlx::query_scalar(exists).bind(hash).fetch_one(pool).await?
        });
        Ok(present > 0)
    }

    /// The cached SHA256 (64 hex) of the LoRA file `file_name`, if computed before.
    pub async fn file_sha256(&self, file_name: &str) -> Result<Option<String>> {
        let sql = self.sql("SELECT sha256 FROM file_sha256_cache WHERE file_name = ?");
        let sha = on_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(file_name).fetch_optional(pool).await?
        });
        Ok(sha)
    }

    /// Remembers the SHA256 of `file_name` (a second write for the same name keeps the first).
    pub async fn put_file_sha256(&self, file_name: &str, sha256: &str) -> Result<()> {
        let _turn = self.write_turn().await;
        let sql = self
            .sql("INSERT INTO file_sha256_cache (file_name, sha256, created_at) VALUES (?, ?, ?)");
        on_pool!(self, pool => {
            match sqlx::query(sql).bind(file_name).bind(sha256).bind(now_ms()).execute(pool).await {
                Ok(_) => {}
                Err(err) if is_unique_violation(&err) => {}
                Err(err) => return Err(StoreError::from(err)),
            }
        });
        Ok(())
    }
}
