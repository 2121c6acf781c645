//! Model downloads from CivitAI into the Forge's model folder (`[civitai] model_dir`), run in
//! the background: the request is checked and answered at once, one owned task per download
//! streams the file.
//!
//! [`Downloads::request`] checks in Navigator's order: a model folder, the API key, the model
//! version (`GET /model-versions/<id>`), its type's folder (LORA → `Lora`, Controlnet →
//! `ControlNet`, Checkpoint → `Stable-diffusion`, TextualInversion → `../embeddings`,
//! Hypernetwork → `hypernetworks`, Poses and AestheticGradient refused, anything else the
//! folder itself), the name of its `primary` file (one plain file name), that file not being
//! there yet, and free space: at least [`MIN_FREE_PERCENT`] % of the file system's blocks
//! (`EASEL_MIN_FREE_PERCENT` overrides it; above 100 every disk is full). Then one download
//! per target file at a time.
//!
//! A download streams `<downloadUrl>?token=<key>` chunk by chunk into `<target>.part` and
//! renames it once complete, so the target never exists half-written; a failed or stopped
//! download removes its partial file. It logs its progress every 10 % or 5 s and emits, to
//! every socket: `model-download-progress` `{id, model_version_id, file, folder, received,
//! total}` (`total` null when unknown), then `model-download-finished` (same keys) or
//! `model-download-failed` (plus `error`). After a finished download every Forge machine is
//! asked to refresh its embeddings, checkpoints and LoRAs, and `models-refreshed` goes to every
//! socket with Navigator's JSON *string* `{"message":"Models refreshed by CivitAI download"}`.
//!
//! One actor task owns the running downloads (a `JoinSet`) and the set of targets being
//! written; [`Downloads`] handles talk to it. [`Downloads::shutdown`] stops every download.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::{CivitAi, CivitAiError, shown};
use crate::api::Realtime;
use crate::error_chain;
use crate::forge::Offer;

/// Least free space, in percent of the file system's blocks, for a download to start
/// (Navigator's 10 %).
pub const MIN_FREE_PERCENT: u64 = 10;
/// A download that sends nothing for this long fails.
const STALL: Duration = Duration::from_secs(60);
/// Progress is logged and emitted at least this often (and at every 10 %).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Why a download was not started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// `[civitai] model_dir` is empty.
    #[error("no model folder configured")]
    NoModelDir,
    /// CivitAI does not accept the key (or there is none).
    #[error("CivitAI does not accept the API key")]
    NotAuthenticated,
    /// No such model version.
    #[error("model version not found")]
    NotFound,
    /// Its type cannot be downloaded (Poses, AestheticGradient).
    #[error("model type {0:?} cannot be downloaded")]
    UnsupportedType(String),
    /// The version has no primary file, or no download URL.
    #[error("the model version has no primary file to download")]
    NoPrimaryFile,
    /// The primary file's name is not one plain file name.
    #[error("file name {0:?} is not a plain file name")]
    BadFileName(String),
    /// The file is there already.
    #[error("the model is already downloaded")]
    AlreadyDownloaded,
    /// The same file is being downloaded.
    #[error("the model is being downloaded")]
    Busy,
    /// Too little free space.
    #[error("only {free_percent} % of the disk is free")]
    LowStorage {
        /// Free blocks, percent (rounded down).
        free_percent: u64,
    },
    /// The free space could not be read.
    #[error("cannot read the free space of {path}")]
    Statvfs {
        /// The folder.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server is stopping.
    #[error("downloads are stopped")]
    Stopped,
}

/// A download that was started (the `download` of the 202 answer and of every event).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Started {
    /// Its id (8 hex), in every event about it.
    pub id: String,
    /// The CivitAI model version.
    pub model_version_id: u64,
    /// The file name.
    pub file: String,
    /// Its folder, relative to the model folder (`Lora`, `../embeddings`, `.` for the folder
    /// itself).
    pub folder: String,
}

/// The downloads; cheap to clone. The actor stops when the last handle is dropped or at
/// [`Downloads::shutdown`].
#[derive(Clone, Debug)]
pub struct Downloads {
    inbox: mpsc::UnboundedSender<Command>,
    client: Arc<CivitAi>,
    model_dir: Option<PathBuf>,
    min_free_percent: u64,
}

enum Command {
    Start {
        job: Job,
        reply: oneshot::Sender<Result<Started, Refusal>>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

struct Job {
    started: Started,
    target: PathBuf,
    url: url::Url,
}

/// What a running download needs.
struct Ctx {
    client: Arc<CivitAi>,
    offer: Offer,
    realtime: Realtime,
}

/// `EASEL_MIN_FREE_PERCENT`, else [`MIN_FREE_PERCENT`].
fn min_free_percent() -> u64 {
    match std::env::var("EASEL_MIN_FREE_PERCENT") {
        Ok(value) => value.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(
                value,
                "EASEL_MIN_FREE_PERCENT is not a number; using {MIN_FREE_PERCENT}"
            );
            MIN_FREE_PERCENT
        }),
        Err(_) => MIN_FREE_PERCENT,
    }
}

/// The folder (relative to the model folder) for a CivitAI model type.
pub fn folder_for(kind: &str) -> Result<&'static str, Refusal> {
    match kind {
        "LORA" => Ok("Lora"),
        "Controlnet" => Ok("ControlNet"),
        "Checkpoint" => Ok("Stable-diffusion"),
        "TextualInversion" => Ok("../embeddings"),
        "Hypernetwork" => Ok("hypernetworks"),
        "Poses" | "AestheticGradient" => Err(Refusal::UnsupportedType(kind.to_owned())),
        _ => Ok("."),
    }
}

/// A file name CivitAI gave that is safe to join to a folder: no separators, no `..`.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && !name.contains("..") && !name.contains(['/', '\\', '\0'])
}

/// `<target>.part`.
fn part_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    target.with_file_name(name)
}

/// Free blocks of the file system holding `path` (or its nearest existing ancestor), percent.
fn free_percent(path: &Path) -> std::io::Result<u64> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    let stats = rustix::fs::statvfs(existing)?;
    if stats.f_blocks == 0 {
        return Ok(100);
    }
    Ok((u128::from(stats.f_bfree) * 100 / u128::from(stats.f_blocks)) as u64)
}

impl Downloads {
    /// Starts the actor; downloads go under `model_dir` (none: every request is refused).
    pub fn start(
        client: Arc<CivitAi>,
        offer: Offer,
        realtime: Realtime,
        model_dir: Option<PathBuf>,
    ) -> Self {
        let (inbox, rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(Ctx {
            client: client.clone(),
            offer,
            realtime,
        });
        tokio::spawn(actor(rx, ctx));
        Self {
            inbox,
            client,
            model_dir,
            min_free_percent: min_free_percent(),
        }
    }

    /// Whether a model folder is configured.
    pub fn has_model_dir(&self) -> bool {
        self.model_dir.is_some()
    }

    /// Checks a download of model version `model_version_id` (module docs) and starts it.
    pub async fn request(&self, model_version_id: &str) -> Result<Started, Refusal> {
        let Some(dir) = &self.model_dir else {
            return Err(Refusal::NoModelDir);
        };
        if !self.client.authenticated().await {
            return Err(Refusal::NotAuthenticated);
        }
        let id = model_version_id
            .parse::<u64>()
            .ok()
            .filter(|_| model_version_id.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(Refusal::NotFound)?;
        let version = self.client.model_version(id).await.map_err(|err| {
            tracing::info!(model_version_id = id, error = %error_chain(&err), "model version not found on CivitAI");
            Refusal::NotFound
        })?;
        let kind = version
            .get("model")
            .and_then(|m| m.get("type"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let folder = folder_for(kind)?;
        let primary = version
            .get("files")
            .and_then(Value::as_array)
            .and_then(|files| {
                files
                    .iter()
                    .find(|f| f.get("primary").and_then(Value::as_bool) == Some(true))
            })
            .ok_or(Refusal::NoPrimaryFile)?;
        let file = primary
            .get("name")
            .and_then(Value::as_str)
            .ok_or(Refusal::NoPrimaryFile)?;
        if !plain_file_name(file) {
            return Err(Refusal::BadFileName(file.to_owned()));
        }
        let folder_path = dir.join(folder);
        let target = folder_path.join(file);
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Err(Refusal::AlreadyDownloaded);
        }
        let free = {
            let folder_path = folder_path.clone();
            tokio::task::spawn_blocking(move || free_percent(&folder_path))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        }
        .map_err(|source| Refusal::Statvfs {
            path: folder_path.display().to_string(),
            source,
        })?;
        if free < self.min_free_percent {
            tracing::warn!(free_percent = free, min = self.min_free_percent, folder = %folder_path.display(), "model download refused: low storage space");
            return Err(Refusal::LowStorage { free_percent: free });
        }
        // Navigator downloads the version's `downloadUrl` (its primary file's).
        let url = [version.get("downloadUrl"), primary.get("downloadUrl")]
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(|u| url::Url::parse(u).ok())
            .ok_or(Refusal::NoPrimaryFile)?;
        let started = Started {
            id: format!("{:08x}", rand::random::<u32>()),
            model_version_id: id,
            file: file.to_owned(),
            folder: folder.to_owned(),
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            started,
            target,
            url,
        };
        self.inbox
            .send(Command::Start { job, reply })
            .map_err(|_| Refusal::Stopped)?;
        answer.await.unwrap_or(Err(Refusal::Stopped))
    }

    /// Stops every running download (their partial files are removed) and the actor.
    pub async fn shutdown(&self) {
        let (done, stopped) = oneshot::channel();
        if self.inbox.send(Command::Shutdown { done }).is_ok() {
            let _ = stopped.await;
        }
    }
}

async fn actor(mut inbox: mpsc::UnboundedReceiver<Command>, ctx: Arc<Ctx>) {
    let mut running: JoinSet<()> = JoinSet::new();
    let mut targets: HashMap<tokio::task::Id, PathBuf> = HashMap::new();
    loop {
        tokio::select! {
            command = inbox.recv() => match command {
                Some(Command::Start { job, reply }) => {
                    if targets.values().any(|t| *t == job.target) {
                        let _ = reply.send(Err(Refusal::Busy));
                        continue;
                    }
                    let started = job.started.clone();
                    let target = job.target.clone();
                    let task = running.spawn(run(ctx.clone(), job));
                    targets.insert(task.id(), target);
                    let _ = reply.send(Ok(started));
                }
                Some(Command::Shutdown { done }) => {
                    stop(&mut running).await;
                    let _ = done.send(());
                    return;
                }
                None => {
                    stop(&mut running).await;
                    return;
                }
            },
            Some(ended) = running.join_next_with_id() => {
                let id = match ended {
                    Ok((id, ())) => id,
                    Err(err) => {
                        if err.is_panic() {
                            tracing::error!("a model download panicked");
                        }
                        err.id()
                    }
                };
                targets.remove(&id);
            }
        }
    }
}

async fn stop(running: &mut JoinSet<()>) {
    if !running.is_empty() {
        tracing::info!(
            downloads = running.len(),
            "stopping model downloads (their partial files are removed)"
        );
    }
    running.abort_all();
    while running.join_next().await.is_some() {}
}

/// The payload of a download's events.
fn payload(started: &Started, received: u64, total: Option<u64>) -> Value {
    json!({"id": started.id, "model_version_id": started.model_version_id, "file": started.file,
        "folder": started.folder, "received": received, "total": total})
}

async fn run(ctx: Arc<Ctx>, job: Job) {
    let Job {
        started,
        target,
        url,
    } = job;
    tracing::info!(id = %started.id, model_version_id = started.model_version_id, file = %target.display(), url = %shown(&url), "model download started");
    let mut received = 0;
    let result = fetch(&ctx, &started, &target, &url, &mut received).await;
    match result {
        Ok(total) => {
            tracing::info!(id = %started.id, file = %target.display(), bytes = received, "model download finished");
            ctx.realtime
                .to_all(
                    "model-download-finished",
                    &payload(&started, received, total),
                )
                .await;
            if let Err(err) = ctx.offer.refresh_all().await {
                tracing::warn!(error = %err, "cannot ask every Forge machine to refresh its models");
            }
            // Navigator sends this one as a JSON string.
            let message = json!({"message": "Models refreshed by CivitAI download"}).to_string();
            ctx.realtime
                .to_all("models-refreshed", &Value::String(message))
                .await;
        }
        Err(err) => {
            let error = error_chain(&err);
            tracing::warn!(id = %started.id, file = %target.display(), bytes = received, error = %error, "model download failed");
            let mut data = payload(&started, received, None);
            data["error"] = json!(error);
            ctx.realtime.to_all("model-download-failed", &data).await;
        }
    }
}

/// `<target>.part` while it is written; removed on drop unless [`PartFile::commit`]ted.
struct PartFile {
    path: PathBuf,
    committed: bool,
}

impl PartFile {
    /// Renames the partial file to `target`.
    async fn commit(mut self, target: &Path) -> Result<(), CivitAiError> {
        tokio::fs::rename(&self.path, target)
            .await
            .map_err(|source| CivitAiError::Io {
                path: target.display().to_string(),
                source,
            })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// When to log and emit progress next.
struct Pace {
    total: Option<u64>,
    next_tenth: u64,
    last: Instant,
}

impl Pace {
    fn due(&mut self, received: u64) -> bool {
        let tenth = self
            .total
            .filter(|t| *t > 0)
            .map_or(0, |t| received.saturating_mul(10) / t);
        let tenth_reached = self.total.is_some() && tenth >= self.next_tenth;
        if tenth_reached || self.last.elapsed() >= PROGRESS_EVERY {
            self.next_tenth = tenth + 1;
            self.last = Instant::now();
            return true;
        }
        false
    }
}

/// Streams `url` into `<target>.part`, then renames it; the announced length, if any.
async fn fetch(
    ctx: &Ctx,
    started: &Started,
    target: &Path,
    url: &url::Url,
    received: &mut u64,
) -> Result<Option<u64>, CivitAiError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| CivitAiError::Io { path, source }
    };
    let folder = target.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(folder)
        .await
        .map_err(io(folder))?;
    let part_path = part_path(target);
    let mut file = tokio::fs::File::create(&part_path)
        .await
        .map_err(io(&part_path))?;
    let part = PartFile {
        path: part_path.clone(),
        committed: false,
    };
    let what = shown(url);
    let unreachable = |err: reqwest::Error| CivitAiError::Unreachable {
        what: what.clone(),
        source: err.without_url(),
    };
    let mut response = ctx
        .client
        .download_request(url)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status().as_u16();
    if !response.status().is_success() {
        let body = tokio::time::timeout(STALL, response.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        return Err(CivitAiError::Status { what, status, body });
    }
    let total = response.content_length();
    let mut pace = Pace {
        total,
        next_tenth: 1,
        last: Instant::now(),
    };
    ctx.realtime
        .to_all("model-download-progress", &payload(started, 0, total))
        .await;
    loop {
        let chunk = match tokio::time::timeout(STALL, response.chunk()).await {
            Err(_) => {
                return Err(CivitAiError::Stalled {
                    seconds: STALL.as_secs(),
                });
            }
            Ok(Err(err)) => {
                return Err(CivitAiError::Interrupted {
                    what: what.clone(),
                    source: err.without_url(),
                });
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        file.write_all(&chunk).await.map_err(io(&part_path))?;
        *received += chunk.len() as u64;
        if pace.due(*received) {
            let percent = total.filter(|t| *t > 0).map(|t| *received * 100 / t);
            tracing::info!(id = %started.id, file = %started.file, received = *received, total, percent, "model download progress");
            ctx.realtime
                .to_all(
                    "model-download-progress",
                    &payload(started, *received, total),
                )
                .await;
        }
    }
    if let Some(total) = total
        && *received != total
    {
        return Err(CivitAiError::Incomplete {
            received: *received,
            total,
        });
    }
    file.flush().await.map_err(io(&part_path))?;
    file.sync_all().await.map_err(io(&part_path))?;
    drop(file);
    part.commit(target).await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_by_type() {
        assert_eq!(folder_for("LORA").unwrap(), "Lora");
        assert_eq!(folder_for("Controlnet").unwrap(), "ControlNet");
        assert_eq!(folder_for("Checkpoint").unwrap(), "Stable-diffusion");
        assert_eq!(folder_for("TextualInversion").unwrap(), "../embeddings");
        assert_eq!(folder_for("Hypernetwork").unwrap(), "hypernetworks");
        assert_eq!(folder_for("VAE").unwrap(), ".");
        assert!(matches!(
            folder_for("Poses"),
            Err(Refusal::UnsupportedType(_))
        ));
        assert!(matches!(
            folder_for("AestheticGradient"),
            Err(Refusal::UnsupportedType(_))
        ));
    }

    #[test]
    fn only_plain_file_names() {
        assert!(plain_file_name("model_v2.safetensors"));
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "x..y", "a\0b"] {
            assert!(!plain_file_name(bad), "{bad:?}");
        }
        assert_eq!(
            part_path(Path::new("/m/Lora/x.safetensors")),
            Path::new("/m/Lora/x.safetensors.part")
        );
    }

    #[test]
    fn progress_every_tenth() {
        let mut pace = Pace {
            total: Some(1000),
            next_tenth: 1,
            last: Instant::now(),
        };
        let due: Vec<u64> = (1..=100).map(|i| i * 10).filter(|r| pace.due(*r)).collect();
        assert_eq!(due, [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]);
    }

    #[test]
    fn free_space_of_a_missing_folder_is_its_parents() {
        let dir = tempfile::tempdir().unwrap();
        let percent = free_percent(&dir.path().join("not/yet")).unwrap();
        assert!(percent <= 100);
    }
}
