//! The `images` table: finished pictures (written with the job's completion, see
//! [`Store::finish_jobs`]).

use super::{Result, Store};

/// A finished image to store with the job's completion.
#[derive(Clone, Debug)]
pub struct NewImage<'a> {
    /// PNG bytes.
    pub png: &'a [u8],
    /// Generation info (JSON).
    pub info: &'a str,
    /// Pixel width.
    pub width: u32,
    /// Pixel height.
    pub height: u32,
    /// Category it belongs to.
    pub category_id: Option<i64>,
}

impl Store {
    /// The generation info stored with a finished picture (JSON text).
    pub async fn image_info(&self, id: &str) -> Result<Option<String>> {
        let sql = self.sql("SELECT info FROM images WHERE id = ?");
        let info: Option<Option<String>> = on_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(id).fetch_optional(pool).await?
        });
        Ok(info.flatten())
    }

    /// The finished PNG of a job.
    pub async fn image_png(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let sql = self.sql("SELECT png FROM images WHERE id = ?");
        let png: Option<Option<Vec<u8>>> = on_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(id).fetch_optional(pool).await?
        });
        Ok(png.flatten())
    }

    /// Whether `owner_id` owns at least one image (Navigator's legacy auto-enrolment).
    pub async fn owns_images(&self, owner_id: &str) -> Result<bool> {
        let sql = self.sql("SELECT COUNT(*) FROM images WHERE owner_id = ?");
        let n: i64 = on_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(owner_id).fetch_one(pool).await?
        });
        Ok(n > 0)
    }

    /// One page of `owner_id`'s jobs, newest first, with their categories: the total count and
    /// `(id, category_id)` of `limit` jobs from `offset`. Unfinished and failed jobs are in it;
    /// jobs removed from the queue before they ran are not (Navigator deletes those rows).
    pub async fn owner_jobs(
        &self,
        owner_id: &str,
        category_id: Option<i64>,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<(String, Option<i64>)>)> {
        const WHERE: &str =
            "WHERE owner_id = ? AND NOT (status = 'interrupted' AND started_at IS NULL)";
        let category = if category_id.is_some() {
            " AND category_id = ?"
        } else {
            ""
        };
        let count = self.sql(&format!("SELECT COUNT(*) FROM jobs {WHERE}{category}"));
        let page = self.sql(&format!(
            "SELECT id, category_id FROM jobs {WHERE}{category} \
             ORDER BY created_at DESC, seq DESC LIMIT ? OFFSET ?"
        ));
        let result = on_pool!(self, pool => {
            let mut count = sqlx::query_scalar::<_, i64>(count).bind(owner_id);
            let mut page = sqlx::query_as::<_, (String, Option<i64>)>(page).bind(owner_id);
            if let Some(category) = category_id {
                count = count.bind(category);
                page = page.bind(category);
            }
            let count = count.fetch_one(pool).await?;
            let rows = page.bind(limit).bind(offset).fetch_all(pool).await?;
            (count, rows)
        });
        Ok(result)
    }

    /// Who owns job `id`, its category, when it was queued and its Discord message.
    pub async fn job_meta(&self, id: &str) -> Result<Option<JobMeta>> {
        let sql = self.sql(
            "SELECT j.owner_id, j.category_id, j.created_at, i.message_id FROM jobs j \
             LEFT JOIN images i ON i.id = j.id WHERE j.id = ?",
        );
        let row: Option<(String, Option<i64>, i64, Option<String>)> = on_pool!(self, pool => {
            sqlx::query_as(sql).bind(id).fetch_optional(pool).await?
        });
        Ok(
            row.map(|(owner_id, category_id, created_at, message_id)| JobMeta {
                owner_id,
                category_id,
                created_at,
                message_id,
            }),
        )
    }

    /// Sets (or with `None` clears) the category of `owner_id`'s job `id` and of its picture;
    /// false when `owner_id` has no such job.
    pub async fn set_job_category(
        &self,
        id: &str,
        owner_id: &str,
        category_id: Option<i64>,
    ) -> Result<bool> {
        let _turn = self.write_turn().await;
        let owned = self.sql("SELECT COUNT(*) FROM jobs WHERE id = ? AND owner_id = ?");
        let jobs = self.sql("UPDATE jobs SET category_id = ? WHERE id = ? AND owner_id = ?");
        let images = self.sql("UPDATE images SET category_id = ? WHERE id = ? AND owner_id = ?");
        let owned = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let owned: i64 = sqlx::query_scalar(owned).bind(id).bind(owner_id).fetch_one(&mut *tx).await?;
            if owned > 0 {
                sqlx::query(jobs).bind(category_id).bind(id).bind(owner_id).execute(&mut *tx).await?;
                sqlx::query(images).bind(category_id).bind(id).bind(owner_id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            owned > 0
        });
        Ok(owned)
    }

    /// Deletes `owner_id`'s job `id` and its picture; false when `owner_id` has no such job.
    pub async fn delete_job(&self, id: &str, owner_id: &str) -> Result<bool> {
        let _turn = self.write_turn().await;
        let images = self.sql("DELETE FROM images WHERE id = ? AND owner_id = ?");
        let jobs = self.sql("DELETE FROM jobs WHERE id = ? AND owner_id = ?");
        let deleted = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(images).bind(id).bind(owner_id).execute(&mut *tx).await?;
            let deleted = sqlx::query(jobs).bind(id).bind(owner_id).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            deleted
        });
        Ok(deleted > 0)
    }
}

/// What `GET /api/user/image/:id/meta` tells about a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobMeta {
    /// Who asked for it.
    pub owner_id: String,
    /// Its category.
    pub category_id: Option<i64>,
    /// Unix ms when it was queued.
    pub created_at: i64,
    /// The Discord message it answered, if any.
    pub message_id: Option<String>,
}
