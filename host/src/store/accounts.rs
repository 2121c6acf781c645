//! The `users` and `categories` tables: roles and image categories (written by the accounts
//! service).

use super::{DatabaseKind, Result, Store, now_ms};

impl Store {
    /// The stored role of a user, if the user has a row.
    pub async fn user_role(&self, id: &str) -> Result<Option<i64>> {
        let sql = self.sql("SELECT role FROM users WHERE id = ?");
        let role = on_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(id).fetch_optional(pool).await?
        });
        Ok(role)
    }

    /// One statement that creates a user's row or sets its role: binds `id, role, now, now`.
    fn upsert_role_sql(&self) -> sqlx::AssertSqlSafe<String> {
        const INSERT: &str =
            "INSERT INTO users (id, role, created_at, updated_at) VALUES (?, ?, ?, ?)";
        let conflict = match self.kind {
            DatabaseKind::MySql => {
                " ON DUPLICATE KEY UPDATE role = VALUES(role), updated_at = VALUES(updated_at)"
            }
            DatabaseKind::Sqlite | DatabaseKind::Postgres => {
                " ON CONFLICT (id) DO UPDATE SET role = excluded.role, updated_at = excluded.updated_at"
            }
        };
        self.sql(&format!("{INSERT}{conflict}"))
    }

    /// Creates or updates a user's role.
    pub async fn set_user_role(&self, id: &str, role: i64) -> Result<()> {
        let _turn = self.write_turn().await;
        let now = now_ms();
        let upsert = self.upsert_role_sql();
        on_pool!(self, pool => {
            sqlx::query(upsert).bind(id).bind(role).bind(now).bind(now).execute(pool).await?;
        });
        Ok(())
    }

    /// Creates a category owned by `owner_id`; returns its id.
    pub async fn create_category(&self, name64: &str, owner_id: &str) -> Result<i64> {
        let _turn = self.write_turn().await;
        let insert = self.sql("INSERT INTO categories (name64, owner_id) VALUES (?, ?)");
        let select = self.sql("SELECT MAX(id) FROM categories WHERE name64 = ? AND owner_id = ?");
        let id: Option<i64> = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(insert).bind(name64).bind(owner_id).execute(&mut *tx).await?;
            let id = sqlx::query_scalar(select)
                .bind(name64)
                .bind(owner_id)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            id
        });
        Ok(id.unwrap_or_default())
    }

    /// Whether category `id` exists and belongs to `owner_id`.
    pub async fn category_owned_by(&self, id: i64, owner_id: &str) -> Result<bool> {
        let sql = self.sql("SELECT COUNT(*) FROM categories WHERE id = ? AND owner_id = ?");
        let n: i64 = on_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(id).bind(owner_id).fetch_one(pool).await?
        });
        Ok(n > 0)
    }

    /// Navigator's `setPermissionRole` for an authorisation: `role`, or `first` when no user
    /// has a role above 0 yet. Returns the role stored.
    pub async fn authorize_user(&self, id: &str, role: i64, first: i64) -> Result<i64> {
        let _turn = self.write_turn().await;
        let now = now_ms();
        let active = self.sql("SELECT COUNT(*) FROM users WHERE role > 0");
        let upsert = self.upsert_role_sql();
        let role = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let active: i64 = sqlx::query_scalar(active).fetch_one(&mut *tx).await?;
            let role = if active == 0 { first } else { role };
            sqlx::query(upsert).bind(id).bind(role).bind(now).bind(now).execute(&mut *tx).await?;
            tx.commit().await?;
            role
        });
        Ok(role)
    }

    /// `owner_id`'s categories, oldest first: `(id, owner_id, name64)`.
    pub async fn categories(&self, owner_id: &str) -> Result<Vec<(i64, String, String)>> {
        let sql =
            self.sql("SELECT id, owner_id, name64 FROM categories WHERE owner_id = ? ORDER BY id");
        let rows = on_pool!(self, pool => {
            sqlx::query_as(sql).bind(owner_id).fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// Renames category `id` of `owner_id`; false when there is none.
    pub async fn rename_category(&self, id: i64, owner_id: &str, name64: &str) -> Result<bool> {
        let _turn = self.write_turn().await;
        let sql = self.sql("UPDATE categories SET name64 = ? WHERE id = ? AND owner_id = ?");
        let changed = on_pool!(self, pool => {
            sqlx::query(sql).bind(name64).bind(id).bind(owner_id).execute(pool).await?.rows_affected()
        });
        // MariaDB counts only rows it changed: the same name again is still a match.
        Ok(changed > 0 || self.category_owned_by(id, owner_id).await?)
    }

    /// Deletes category `id` of `owner_id` in one transaction: the images lose it through
    /// their foreign key, queued and unfinished jobs here (their `category_id` has no key, so
    /// that a burst of submissions never fails on a category deleted meanwhile). False when
    /// there is none.
    pub async fn delete_category(&self, id: i64, owner_id: &str) -> Result<bool> {
        let _turn = self.write_turn().await;
        let delete = self.sql("DELETE FROM categories WHERE id = ? AND owner_id = ?");
        let jobs = self.sql("UPDATE jobs SET category_id = NULL WHERE category_id = ?");
        let images = self.sql("UPDATE images SET category_id = NULL WHERE category_id = ?");
        let deleted = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let deleted = sqlx::query(delete).bind(id).bind(owner_id).execute(&mut *tx).await?.rows_affected();
            if deleted > 0 {
                sqlx::query(jobs).bind(id).execute(&mut *tx).await?;
                sqlx::query(images).bind(id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            deleted
        });
        Ok(deleted > 0)
    }
}
