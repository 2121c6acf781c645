//! The `users` and `categories` tables: roles and image categories (written by the accounts
//! service).

use super::{Result, Store, now_ms};

impl Store {
    /// The stored role of a user, if the user has a row.
    pub async fn user_role(&self, id: &str) -> Result<Option<i64>> {
        let sql = self.sql("SELECT role FROM users WHERE id = ?");
        let role = on_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(id).fetch_optional(pool).await?
        });
        Ok(role)
    }

    /// Creates or updates a user's role.
    pub async fn set_user_role(&self, id: &str, role: i64) -> Result<()> {
        let _turn = self.write_turn().await;
        let now = now_ms();
        let update = self.sql("UPDATE users SET role = ?, updated_at = ? WHERE id = ?");
        let insert =
            self.sql("INSERT INTO users (id, role, created_at, updated_at) VALUES (?, ?, ?, ?)");
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let changed = sqlx::query(update)
                .bind(role)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if changed == 0 {
                sqlx::query(insert)
                    .bind(id)
                    .bind(role)
                    .bind(now)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
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
}
