//! The Forge backend: every `[[forge]]` machine behind the backend contract, one job at a
//! time each.
//!
//! One dispatcher task claims jobs for the machines that are idle and up (at most one per
//! idle machine, oldest first) and gives each job to an idle machine that already has its
//! model loaded, else to one with nothing loaded, else to any that can run it (a checkpoint
//! swap, announced as `ModelChanged`). When the oldest job's model is loaded on a busy
//! machine, a free machine takes the oldest job for its own model instead; a job is passed
//! over at most [`MAX_OVERTAKEN`] times (counted by this host). Each machine runs
//! Navigator's job: the body of [`super::body`], progress polling with live previews, the
//! actual seed and png-info stored with the picture, `POST /interrupt` when the job is
//! interrupted (the partial picture is kept). A machine that cannot be reached or times out
//! gives its job back (a fault: it runs elsewhere) and is marked down; it is probed with
//! back-off until it answers. A 4xx fails the job with Forge's message.
//!
//! Consumes leases from its [`BackendPort`]; emits, through them, `Started` (at the claim),
//! `ModelChanged`, `Progress` (with previews), `Finished`, `Failed`, `Requeued`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::body::{self, Lists};
use super::client::{ForgeClient, ForgeError, Generated};
use crate::config::Workers as WorkersConfig;
use crate::jobs::{Backend, BackendPort, Capabilities, JobId, Lease, Task};

/// Most times a queued job is passed over so that a free machine can take a job for the
/// model it has loaded (while a busy machine has the passed-over job's model loaded).
pub const MAX_OVERTAKEN: u32 = 3;

/// Longest wait between two probes of a machine that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often an interrupt request is looked for while a job runs.
const INTERRUPT_CHECK: Duration = Duration::from_millis(100);

/// What a machine is doing, as `/api/admin/backends` shows it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct MachineState {
    /// Its name.
    pub name: String,
    /// Its `/sdapi/v1` base.
    pub url: String,
    /// Answering.
    pub up: bool,
    /// The model loaded, as far as easel knows.
    pub loaded_model: Option<String>,
    /// The job it runs.
    pub current_job: Option<String>,
    /// Jobs it finished.
    pub jobs_done: u64,
    /// Checkpoint swaps easel asked of it.
    pub model_swaps: u64,
    /// Faults (unreachable, timed out, 5xx).
    pub faults: u64,
    /// The last error.
    pub last_error: Option<String>,
}

/// One Forge machine.
#[derive(Debug)]
pub struct Machine {
    /// Its name.
    pub name: String,
    /// Its client.
    pub client: ForgeClient,
    /// What it can run.
    pub can: Capabilities,
    /// Progress poll period.
    pub progress: Duration,
    /// Idle minutes before the checkpoint is unloaded (`None`: never).
    pub unload_after: Option<Duration>,
    /// Its published state.
    pub state: watch::Sender<MachineState>,
}

/// Every Forge machine, as one backend.
#[derive(Debug)]
pub struct ForgeBackend {
    machines: Vec<Arc<Machine>>,
    deadlines: WorkersConfig,
}

impl ForgeBackend {
    /// The backend over `machines`; generation limits follow `[workers]`' deadline rule.
    pub fn new(machines: Vec<Arc<Machine>>, deadlines: WorkersConfig) -> Self {
        Self {
            machines,
            deadlines,
        }
    }
}

/// What a machine tells the dispatcher when its job is over.
struct Done {
    machine: usize,
    /// It could not be reached: down until a probe answers.
    down: bool,
}

/// Whether Forge's loaded checkpoint (a title such as `x.safetensors [hash]`, or a name) is
/// the model `wanted`.
pub fn same_model(loaded: &str, wanted: &str) -> bool {
    fn stem(name: &str) -> &str {
        let name = name.split(" [").next().unwrap_or(name).trim();
        name.strip_suffix(".safetensors")
            .or_else(|| name.strip_suffix(".ckpt"))
            .or_else(|| name.strip_suffix(".gguf"))
            .unwrap_or(name)
    }
    stem(loaded) == stem(wanted)
}

impl Backend for ForgeBackend {
    fn name(&self) -> String {
        "forge".to_owned()
    }

    async fn run(self, mut port: BackendPort) {
        let n = self.machines.len();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut inboxes = Vec::with_capacity(n);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, machine) in self.machines.iter().enumerate() {
            let (tx, rx) = mpsc::channel::<Lease>(1);
            inboxes.push(tx);
            tasks.spawn(machine_loop(
                i,
                machine.clone(),
                rx,
                done_tx.clone(),
                self.deadlines.clone(),
            ));
        }
        // Idle and up, as the dispatcher knows it; a machine starts down until its first
        // probe answers.
        let mut idle = vec![false; n];
        let mut down: Vec<Option<(Instant, Duration)>> =
            vec![Some((Instant::now(), Duration::ZERO)); n];
        let mut overtaken: HashMap<JobId, u32> = HashMap::new();
        loop {
            if port.is_stopped() {
                break;
            }
            // Probe the machines that are down and due.
            for i in 0..n {
                if let Some((at, backoff)) = down[i]
                    && at.elapsed() >= backoff
                {
                    if probe(&self.machines[i]).await {
                        down[i] = None;
                        idle[i] = true;
                    } else {
                        let next = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                        down[i] = Some((Instant::now(), next));
                    }
                }
            }
            let free: Vec<usize> = (0..n).filter(|&i| idle[i] && down[i].is_none()).collect();
            if let Some((i, lease)) = self
                .affine_claim(&port, &free, &idle, &down, &mut overtaken)
                .await
            {
                idle[i] = false;
                hand_over(&inboxes[i], lease).await;
                continue;
            }
            if !free.is_empty() {
                let can = union(free.iter().map(|&i| &self.machines[i].can));
                match port.claim(&can, free.len()).await {
                    Ok(leases) if !leases.is_empty() => {
                        let mut free = free;
                        for lease in leases {
                            match pick(&self.machines, &free, &lease) {
                                Some(at) => {
                                    let i = free.remove(at);
                                    idle[i] = false;
                                    hand_over(&inboxes[i], lease).await;
                                }
                                None => {
                                    let _ =
                                        lease.requeue("no idle Forge machine can run it now").await;
                                }
                            }
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::error!(error = %err, "Forge backend cannot claim jobs; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let next_probe = down
                .iter()
                .flatten()
                .map(|(at, backoff)| backoff.saturating_sub(at.elapsed()))
                .min()
                .unwrap_or(Duration::from_secs(3600));
            let has_free = !free.is_empty();
            let stopper = port.clone();
            tokio::select! {
                done = done_rx.recv() => {
                    let Some(done) = done else { break };
                    if done.down {
                        down[done.machine] = Some((Instant::now(), Duration::from_secs(1)));
                    } else {
                        idle[done.machine] = true;
                    }
                }
                () = port.wait_for_work(), if has_free => {}
                () = tokio::time::sleep(next_probe) => {}
                () = stopper.stopped() => break,
            }
        }
        drop(inboxes);
        while tasks.join_next().await.is_some() {}
    }
}

impl ForgeBackend {
    /// Model affinity with bounded overtaking: when the oldest job's model is loaded on a
    /// busy machine, a free machine may take the oldest job for its own loaded model instead
    /// (each job is passed over at most [`MAX_OVERTAKEN`] times). `None`: claim in order.
    async fn affine_claim(
        &self,
        port: &BackendPort,
        free: &[usize],
        idle: &[bool],
        down: &[Option<(Instant, Duration)>],
        overtaken: &mut HashMap<JobId, u32>,
    ) -> Option<(usize, Lease)> {
        // One machine has nobody to defer to; with every machine free, order decides.
        if free.is_empty() || self.machines.len() < 2 || free.len() == self.machines.len() {
            return None;
        }
        let can = union(free.iter().map(|&i| &self.machines[i].can));
        let (oldest, model) = port.oldest_queued(&can).await.ok()??;
        let loaded = |i: usize| self.machines[i].state.borrow().loaded_model.clone();
        let fits = |i: usize, model: &str| loaded(i).is_some_and(|l| same_model(&l, model));
        if model.is_empty() || free.iter().any(|&i| fits(i, &model)) {
            return None;
        }
        let waits_elsewhere =
            (0..self.machines.len()).any(|i| !idle[i] && down[i].is_none() && fits(i, &model));
        if !waits_elsewhere || overtaken.get(&oldest).copied().unwrap_or(0) >= MAX_OVERTAKEN {
            return None;
        }
        for &i in free {
            let Some(own) = loaded(i) else { continue };
            let own = own.split(" [").next().unwrap_or(&own).to_owned();
            let mut models: Vec<String> = vec![own.clone()];
            if let Some(stem) = own.strip_suffix(".safetensors") {
                models.push(stem.to_owned());
            } else {
                models.push(format!("{own}.safetensors"));
            }
            let machine = &self.machines[i];
            if !machine.can.models.is_empty()
                && !machine.can.models.iter().any(|m| same_model(m, &own))
            {
                continue;
            }
            let mine = Capabilities {
                models,
                max_pixels: machine.can.max_pixels,
            };
            if let Ok(mut leases) = port.claim(&mine, 1).await
                && let Some(lease) = leases.pop()
            {
                if overtaken.len() > 10_000 {
                    overtaken.clear();
                }
                *overtaken.entry(oldest.clone()).or_default() += 1;
                tracing::debug!(job_id = %lease.id(), passed_over = %oldest, forge = %machine.name, "model affinity");
                return Some((i, lease));
            }
        }
        None
    }
}

/// Gives a machine its job (it is idle, so its inbox has room; if not, the job goes back).
async fn hand_over(inbox: &mpsc::Sender<Lease>, lease: Lease) {
    if let Err(mpsc::error::TrySendError::Full(lease) | mpsc::error::TrySendError::Closed(lease)) =
        inbox.try_send(lease)
    {
        let _ = lease.requeue("the Forge machine was busy").await;
    }
}

/// What several machines can run together.
fn union<'a>(all: impl Iterator<Item = &'a Capabilities>) -> Capabilities {
    let mut models = Vec::new();
    let mut max_pixels = Some(0);
    for can in all {
        if can.models.is_empty() {
            // One takes anything: so do they all.
            return Capabilities {
                models: Vec::new(),
                max_pixels: None,
            };
        }
        models.extend(can.models.iter().cloned());
        max_pixels = match (max_pixels, can.max_pixels) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    models.sort();
    models.dedup();
    Capabilities { models, max_pixels }
}

/// Which of the `free` machines takes `lease`: one with its model loaded, else one with
/// nothing loaded, else any that can run it. Returns its index in `free`.
fn pick(machines: &[Arc<Machine>], free: &[usize], lease: &Lease) -> Option<usize> {
    let request = lease.request();
    let (model, pixels) = (&request.model_name, request.pixels());
    let able: Vec<usize> = (0..free.len())
        .filter(|&at| machines[free[at]].can.can_run(model, pixels))
        .collect();
    let loaded = |at: usize| machines[free[at]].state.borrow().loaded_model.clone();
    able.iter()
        .copied()
        .find(|&at| loaded(at).is_some_and(|l| model.is_empty() || same_model(&l, model)))
        .or_else(|| able.iter().copied().find(|&at| loaded(at).is_none()))
        .or_else(|| able.first().copied())
}

/// Asks a machine what it has loaded; true when it answers.
async fn probe(machine: &Machine) -> bool {
    match machine.client.loaded_model().await {
        Ok(loaded) => {
            let was_up = machine.state.borrow().up;
            machine.state.send_modify(|s| {
                s.up = true;
                s.loaded_model = loaded.clone();
            });
            if !was_up {
                tracing::info!(forge = %machine.name, loaded = ?loaded, "Forge machine up");
            }
            true
        }
        Err(err) => {
            let was_up = machine.state.borrow().up;
            machine.state.send_modify(|s| {
                s.up = false;
                s.last_error = Some(err.to_string());
            });
            if was_up || machine.state.borrow().faults == 0 {
                tracing::warn!(forge = %machine.name, error = %err, "Forge machine down");
            }
            false
        }
    }
}

async fn machine_loop(
    i: usize,
    machine: Arc<Machine>,
    mut inbox: mpsc::Receiver<Lease>,
    done: mpsc::UnboundedSender<Done>,
    deadlines: WorkersConfig,
) {
    let mut last_job = Instant::now();
    let mut lists: Option<(Instant, Lists)> = None;
    loop {
        let unload_check = machine.unload_after.map_or(Duration::from_secs(3600), |d| {
            d.min(Duration::from_secs(300))
        });
        let lease = tokio::select! {
            lease = inbox.recv() => lease,
            () = tokio::time::sleep(unload_check) => {
                maybe_unload(&machine, last_job).await;
                continue;
            }
        };
        let Some(lease) = lease else { return };
        let fresh = lists
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < LISTS_FOR);
        if !fresh {
            lists = super::lists_of(&machine.client)
                .await
                .ok()
                .map(|l| (Instant::now(), l));
        }
        let empty = Lists::default();
        let lists_now = lists.as_ref().map_or(&empty, |(_, l)| l);
        let down = run_job(&machine, lease, lists_now, &deadlines).await;
        last_job = Instant::now();
        if done.send(Done { machine: i, down }).is_err() {
            return;
        }
    }
}

/// How long a machine's sampler/upscaler lists are reused.
const LISTS_FOR: Duration = Duration::from_secs(60);

/// Navigator's auto-unload: after `unload_after` without a job, free the GPU.
async fn maybe_unload(machine: &Machine, last_job: Instant) {
    let Some(after) = machine.unload_after else {
        return;
    };
    let loaded = machine.state.borrow().loaded_model.is_some();
    if !loaded || last_job.elapsed() < after {
        return;
    }
    match machine.client.post("unload-checkpoint", &json!({})).await {
        Ok(_) => {
            tracing::info!(forge = %machine.name, "checkpoint unloaded after idling");
            machine.state.send_modify(|s| s.loaded_model = None);
        }
        Err(err) => {
            tracing::warn!(forge = %machine.name, error = %err, "cannot unload the checkpoint")
        }
    }
}

/// Runs one job on `machine`; true when the machine turned out to be down.
async fn run_job(
    machine: &Machine,
    lease: Lease,
    lists: &Lists,
    deadlines: &WorkersConfig,
) -> bool {
    let job_id = lease.id().to_string();
    let mut request = lease.request().clone();
    let loaded = machine.state.borrow().loaded_model.clone();
    if request.model_name.is_empty() {
        // No model asked for: whatever is loaded (or the first the machine lists).
        request.model_name = loaded
            .as_deref()
            .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
            .or_else(|| lists.models.first().cloned())
            .unwrap_or_default();
    }
    if !loaded
        .as_deref()
        .is_some_and(|l| same_model(l, &request.model_name))
    {
        lease.model_changing(&request.model_name);
        machine.state.send_modify(|s| s.model_swaps += 1);
    }
    machine
        .state
        .send_modify(|s| s.current_job = Some(job_id.clone()));
    let upscaler = body::resolve_upscaler(request.upscaler_name.as_deref(), lists);
    let (kind, forge_body) = body::body(&job_id, &request, &upscaler);
    let task = format!("navigator-{job_id}");
    let limit = crate::workers::pool::deadline(deadlines, &request);
    tracing::info!(job_id, forge = %machine.name, kind, model = %request.model_name, "job sent to Forge");

    let generation = machine.client.generate(kind, &forge_body, limit);
    tokio::pin!(generation);
    let mut poll = tokio::time::interval(machine.progress);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    let mut check = tokio::time::interval(INTERRUPT_CHECK);
    let mut interrupted = false;
    let result = loop {
        tokio::select! {
            result = &mut generation => break result,
            _ = poll.tick() => {
                if interrupted {
                    continue;
                }
                match machine.client.progress(&task).await {
                    Ok(Some(now)) => {
                        let told = match now.preview.as_deref().and_then(decode) {
                            Some(png) => lease.progress_with_preview(now.step, now.total.max(1), &png).await,
                            None => lease.progress(now.step, now.total.max(1)),
                        };
                        if told.is_err() {
                            interrupted = true;
                            interrupt(machine).await;
                        }
                    }
                    Ok(None) => {}
                    Err(err) => tracing::debug!(job_id, error = %err, "progress poll failed"),
                }
            }
            _ = check.tick() => {
                if !interrupted && lease.interrupt_requested() {
                    interrupted = true;
                    interrupt(machine).await;
                }
            }
        }
    };
    machine.state.send_modify(|s| s.current_job = None);
    match result {
        Ok(generated) => {
            machine.state.send_modify(|s| {
                s.loaded_model = Some(request.model_name.clone());
                s.jobs_done += 1;
            });
            settle(machine, lease, &request, generated, interrupted).await;
            false
        }
        Err(err) if err.is_machine_fault() => {
            let reason = format!("Forge machine {}: {err}", machine.name);
            tracing::warn!(job_id, forge = %machine.name, error = %err, "Forge fault; the job goes back to the queue");
            let down = matches!(
                err,
                ForgeError::Unreachable { .. } | ForgeError::Timeout { .. }
            );
            machine.state.send_modify(|s| {
                s.faults += 1;
                s.last_error = Some(err.to_string());
                s.loaded_model = None;
                s.up = !down;
            });
            let (status, _late) = lease.fault(&reason).await;
            if let Err(err) = status {
                tracing::error!(job_id, error = %err, "cannot record a Forge fault");
            }
            down
        }
        Err(err) => {
            tracing::warn!(job_id, forge = %machine.name, error = %err, "Forge refused the job");
            machine
                .state
                .send_modify(|s| s.last_error = Some(err.to_string()));
            if let Err(err) = lease.fail(&err.to_string()).await {
                tracing::error!(job_id, error = %err, "cannot record a failed job");
            }
            false
        }
    }
}

async fn interrupt(machine: &Machine) {
    if let Err(err) = machine.client.post("interrupt", &json!({})).await {
        tracing::warn!(forge = %machine.name, error = %err, "cannot interrupt Forge");
    }
}

fn decode(b64: &str) -> Option<Vec<u8>> {
    let b64 = b64.split_once("base64,").map_or(b64, |(_, rest)| rest);
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Stores Forge's picture with its png-info (the owner and distilled CFG added, as
/// Navigator caches it), or fails the job when Forge drew nothing.
async fn settle(
    machine: &Machine,
    lease: Lease,
    request: &crate::jobs::Txt2Img,
    generated: Generated,
    interrupted: bool,
) {
    let job_id = lease.id().to_string();
    let Some(first) = generated.images.first() else {
        let _ = lease.fail("No images were generated.").await;
        return;
    };
    let Some(png) = decode(first) else {
        let _ = lease
            .fail("Forge answered with an image that is not base64")
            .await;
        return;
    };
    let seed = generated.seed().unwrap_or(request.seed);
    let mut info = match machine.client.png_info(first).await {
        Ok(info) if info.get("parameters").is_some_and(Value::is_object) => info,
        Ok(_) | Err(_) => json!({"info": "", "items": {}, "parameters": {}}),
    };
    if let Some(parameters) = info.get_mut("parameters").and_then(Value::as_object_mut) {
        parameters
            .entry("Seed")
            .or_insert_with(|| Value::String(seed.to_string()));
        parameters.insert("owner_id".into(), Value::String(lease.owner().to_owned()));
        if request.task == Task::Txt2Img {
            parameters.insert("distilled_cfg".into(), json!(request.distilled_cfg));
        }
    }
    if let Some(object) = info.as_object_mut() {
        object.insert("seed".into(), json!(seed));
    }
    let info = info.to_string();
    let stored = if interrupted || lease.interrupt_requested() {
        lease.finish_partial(&machine.name, png, info).await
    } else {
        lease
            .finish(&machine.name, png, info)
            .await
            .map_err(|e| e.error)
    };
    if let Err(err) = stored {
        tracing::error!(job_id, error = %err, "could not store a Forge result");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_titles_match_names() {
        assert!(same_model(
            "sd_xl_base_1.0.safetensors [a56178fa0e]",
            "sd_xl_base_1.0"
        ));
        assert!(same_model("sd_xl_base_1.0", "sd_xl_base_1.0.safetensors"));
        assert!(!same_model(
            "flux1-dev.safetensors [083bbde534]",
            "sd_xl_base_1.0"
        ));
    }

    #[test]
    fn union_of_capabilities() {
        let a = Capabilities {
            models: vec!["a".into()],
            max_pixels: Some(10),
        };
        let b = Capabilities {
            models: vec!["b".into(), "a".into()],
            max_pixels: Some(20),
        };
        let both = union([&a, &b].into_iter());
        assert_eq!(both.models, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(both.max_pixels, Some(20));
        assert_eq!(
            union([&a, &Capabilities::any()].into_iter()),
            Capabilities::any()
        );
    }
}
