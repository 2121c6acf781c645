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
}
