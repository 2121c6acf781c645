//! The `models` table: the model catalog (friendly names, restriction flags), written by the
//! catalog service.

use super::{Result, Store};

/// One model of the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelEntry {
    /// The row's id.
    pub id: i64,
    /// The backend's model name.
    pub name: String,
    /// What people call it.
    pub friendly_name: Option<String>,
    /// Only for higher roles (the model policy decides which).
    pub restricted: bool,
}

impl Store {
    /// Adds a model to the catalog; returns its id.
    pub async fn add_model(
        &self,
        model_name: &str,
        friendly_name: Option<&str>,
        restricted: bool,
    ) -> Result<i64> {
        let _turn = self.write_turn().await;
        let insert = self
            .sql("INSERT INTO models (model_name, friendly_name, is_restricted) VALUES (?, ?, ?)");
        let select = self.sql("SELECT MAX(id) FROM models WHERE model_name = ?");
        let id: Option<i64> = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(insert)
                .bind(model_name)
                .bind(friendly_name)
                .bind(i64::from(restricted))
                .execute(&mut *tx)
                .await?;
            let id = sqlx::query_scalar(select).bind(model_name).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            id
        });
        Ok(id.unwrap_or_default())
    }

    /// The model catalog, in the order the models were added.
    pub async fn models(&self) -> Result<Vec<ModelEntry>> {
        let sql = "SELECT id, model_name, friendly_name, is_restricted FROM models ORDER BY id";
        let rows: Vec<(i64, String, Option<String>, i64)> = on_pool!(self, pool => {
            sqlx::query_as(sql).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, name, friendly_name, restricted)| ModelEntry {
                id,
                name,
                friendly_name,
                restricted: restricted != 0,
            })
            .collect())
    }
}
