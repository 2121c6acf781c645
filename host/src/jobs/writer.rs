//! Group commit: submissions and results that arrive while the store is busy with the previous
//! batch go into the next statement or transaction together, so a burst of them costs a few
//! round trips instead of one each.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::{Completion, Fence, NewImage, NewJob, Store, StoreError};

/// Most rows in one batch.
const BATCH: usize = 128;

/// A job to insert, owned.
pub(super) struct Insert {
    pub id: String,
    pub kind: &'static str,
    pub request: String,
    pub owner: String,
    pub origin: String,
    pub model: String,
    pub pixels: i64,
    pub category_id: Option<i64>,
}

/// A result to store, owned.
pub(super) struct Finish {
    pub id: String,
    pub fence: Fence,
    pub backend: String,
    pub png: Vec<u8>,
    pub info: String,
    pub width: u32,
    pub height: u32,
    pub category_id: Option<i64>,
}

type Reply<T> = oneshot::Sender<Result<T, Arc<StoreError>>>;

/// The handle of the two writer tasks; they stop when it is dropped.
#[derive(Debug)]
pub(super) struct Writers {
    inserts: mpsc::Sender<(Insert, Reply<bool>)>,
    finishes: mpsc::Sender<(Finish, Reply<Option<i64>>)>,
}

impl Writers {
    pub(super) fn start(store: Arc<Store>) -> Self {
        let (inserts, insert_rx) = mpsc::channel(4 * BATCH);
        let (finishes, finish_rx) = mpsc::channel(4 * BATCH);
        tokio::spawn(write_inserts(store.clone(), insert_rx));
        tokio::spawn(write_finishes(store, finish_rx));
        Self { inserts, finishes }
    }

    /// Inserts a job; false when its id is taken.
    pub(super) async fn insert(&self, job: Insert) -> Result<bool, Arc<StoreError>> {
        let (reply, answer) = oneshot::channel();
        self.inserts
            .send((job, reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Stores a result; the job's new event sequence number, or `None` when the claim was
    /// stale.
    pub(super) async fn finish(&self, result: Finish) -> Result<Option<i64>, Arc<StoreError>> {
        let (reply, answer) = oneshot::channel();
        self.finishes
            .send((result, reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Arc<StoreError> {
    Arc::new(StoreError::Database(sqlx::Error::PoolClosed))
}

async fn write_inserts(store: Arc<Store>, mut pending: mpsc::Receiver<(Insert, Reply<bool>)>) {
    let mut batch = Vec::with_capacity(BATCH);
    while pending.recv_many(&mut batch, BATCH).await > 0 {
        let rows: Vec<NewJob<'_>> = batch
            .iter()
            .map(|(job, _)| NewJob {
                id: &job.id,
                kind: job.kind,
                request: &job.request,
                owner_id: &job.owner,
                origin: Some(&job.origin),
                model: &job.model,
                pixels: job.pixels,
                category_id: job.category_id,
            })
            .collect();
        let result = store.insert_jobs(&rows).await.map_err(Arc::new);
        drop(rows);
        reply_all(&mut batch, result);
    }
}

async fn write_finishes(
    store: Arc<Store>,
    mut pending: mpsc::Receiver<(Finish, Reply<Option<i64>>)>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while pending.recv_many(&mut batch, BATCH).await > 0 {
        let items: Vec<Completion<'_>> = batch
            .iter()
            .map(|(r, _)| Completion {
                id: &r.id,
                fence: r.fence,
                backend: &r.backend,
                image: NewImage {
                    png: &r.png,
                    info: &r.info,
                    width: r.width,
                    height: r.height,
                    category_id: r.category_id,
                },
            })
            .collect();
        let result = store.finish_jobs(&items).await.map_err(Arc::new);
        drop(items);
        reply_all(&mut batch, result);
    }
}

/// Answers each waiting caller with its own result (or the shared error).
fn reply_all<I, T>(batch: &mut Vec<(I, Reply<T>)>, result: Result<Vec<T>, Arc<StoreError>>) {
    match result {
        Ok(answers) => {
            for ((_, reply), answer) in batch.drain(..).zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Err(err) => {
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}
