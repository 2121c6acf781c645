//! The intake: the one way a request becomes a job, for every front end.
//!
//! A front end turns its credentials into a [`Caller`] and its input into a [`Txt2Img`]
//! (parsing text stays with the front ends that read text), then:
//!
//! 1. [`Intake::admit`] asks the access plugin; only an [`Admitted`] caller can submit;
//! 2. [`Intake::submit`] checks the pixel limit on the request as asked, asks the model-policy
//!    plugin, fills what is still unset ([`Txt2Img::with_defaults`]), applies the operator's
//!    hard limits ([`Limits`]) — which no plugin and no failure policy can lift — and stores
//!    the job durably, returning its id, the queue depth and, if asked, a [`JobWatch`]
//!    registered before the job could start.
//!
//! Refusals are typed ([`Refusal`]: access, policy, limit, store), so each front end words
//! them its own way (Discord: the seed's strings and the reactions plugin; HTTP: Navigator's
//! bodies). This module is also the one place where the job model meets the plugins' view of
//! it ([`plugin_request`], [`request_from_plugin`]): the plugin runtime knows neither the store
//! nor the job model. Emits `Queued` (through the job service); consumes no events.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::jobs::{JobError, JobId, JobService, JobWatch, Origin, Txt2Img};
use crate::plugins::{self, Decision, JobRequest, Model, PolicyLimits, Registry, Verdict};
use crate::store::ModelEntry;

/// The front ends, as plugins know them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrontEnd {
    /// Discord messages and slash commands.
    Discord,
    /// The HTTP API.
    Http,
}

/// Who is asking, and where: what the access and model-policy plugins decide on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The front end.
    pub front_end: FrontEnd,
    /// Discord user id (or `superuser`).
    pub user_id: String,
    /// `name#discriminator` on Discord, "" elsewhere.
    pub user_tag: String,
    /// Permission role (see [`crate::accounts::role`]).
    pub role: i64,
    /// Discord guild name ("" elsewhere or in a DM).
    pub guild: String,
    /// Discord channel name (a thread's parent unless threads go by their own name).
    pub channel: String,
    /// Discord channel id.
    pub channel_id: String,
    /// A direct message.
    pub is_dm: bool,
    /// The bot itself.
    pub is_self: bool,
}

impl Caller {
    /// An HTTP API caller.
    pub fn http(user_id: &str, role: i64) -> Self {
        Self {
            front_end: FrontEnd::Http,
            user_id: user_id.to_owned(),
            user_tag: String::new(),
            role,
            guild: String::new(),
            channel: String::new(),
            channel_id: String::new(),
            is_dm: false,
            is_self: false,
        }
    }

    /// The plugins' view of the caller.
    pub fn plugin(&self) -> plugins::Caller {
        plugins::Caller {
            front_end: match self.front_end {
                FrontEnd::Discord => plugins::FrontEnd::Discord,
                FrontEnd::Http => plugins::FrontEnd::Http,
            },
            user_id: self.user_id.clone(),
            user_tag: self.user_tag.clone(),
            role: u8::try_from(self.role.clamp(0, 255)).unwrap_or(u8::MAX),
            guild: self.guild.clone(),
            channel: self.channel.clone(),
            channel_id: self.channel_id.clone(),
            is_dm: self.is_dm,
            is_self: self.is_self,
        }
    }
}

/// A caller the access plugin let in.
#[derive(Clone, Debug)]
pub struct Admitted {
    caller: Caller,
    plugin: plugins::Caller,
}

impl Admitted {
    /// Who.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The plugins' view of the caller (for the front end's parser and reactions calls).
    pub fn plugin_caller(&self) -> &plugins::Caller {
        &self.plugin
    }
}

/// A stored job.
#[derive(Debug)]
pub struct Submitted {
    /// Its id.
    pub job: JobId,
    /// What was queued (after the policy and the defaults).
    pub request: Txt2Img,
    /// The request as the model policy let it through, in the plugins' view (`0`/`""` for
    /// what is still left to the defaults): what the reactions plugin is shown.
    pub asked: JobRequest,
    /// Jobs waiting, this one included.
    pub queue_depth: u64,
    /// Follows the job, if asked for.
    pub watch: Option<JobWatch>,
}

/// Why a request did not become a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The access plugin refused the caller (its reason is for the log, not the user).
    #[error("refused by the access plugin: {reason}")]
    Access {
        /// The plugin's reason.
        reason: String,
    },
    /// The model-policy plugin refused the request; its text is for the user.
    #[error("refused by the model policy: {message}")]
    Policy {
        /// The policy's text.
        message: String,
    },
    /// The request is beyond the operator's hard limits.
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    /// The job could not be stored.
    #[error("the job could not be stored")]
    Store(#[source] JobError),
}

/// Which hard limit a request broke; `Display` is the text a user may be shown.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitExceeded {
    /// `width * height` over the pixel limit (Navigator's message).
    #[error("The total value of (Width * Height) must not exceed {limit}")]
    Pixels {
        /// The limit.
        limit: u64,
        /// What was asked.
        asked: u64,
    },
    /// A side of 0 or over the largest side.
    #[error("Width and height must be between 1 and {max}")]
    Side {
        /// The largest side.
        max: u32,
    },
    /// No steps, or too many.
    #[error("Steps must be between 1 and {max}")]
    Steps {
        /// The most steps.
        max: u32,
    },
    /// A guidance scale that is not a finite number.
    #[error("The CFG scale must be a finite number")]
    Cfg,
    /// Nothing to draw.
    #[error("The prompt is empty")]
    EmptyPrompt,
}

/// The operator's hard limits: applied to every request after the model policy, under every
/// failure policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest `width * height` (`[api] image_pixel_limit`, env `IMAGE_PIXEL_LIMIT`).
    pub max_pixels: u64,
    /// Largest side.
    pub max_side: u32,
    /// Most steps (the high-res pass included).
    pub max_steps: u32,
}

impl Limits {
    /// The largest side accepted, whatever the pixel limit (keeps `width * height`
    /// meaningful).
    pub const MAX_SIDE: u32 = 65_535;
    /// The most sampling steps accepted.
    pub const MAX_STEPS: u32 = 10_000;

    /// The limits `config` sets.
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_pixels: config.api.image_pixel_limit,
            max_side: Self::MAX_SIDE,
            max_steps: Self::MAX_STEPS,
        }
    }

    /// The pixel limit on a request as asked (before the model policy; unset sides count at
    /// their default), so that an oversized request gets the pixel-limit answer whatever the
    /// policy is and whether it is available.
    pub fn check_asked(&self, request: &Txt2Img) -> Result<(), LimitExceeded> {
        let side = |v: u32| if v == 0 { 512 } else { u64::from(v) };
        let asked = side(request.width) * side(request.height);
        if asked > self.max_pixels {
            return Err(LimitExceeded::Pixels {
                limit: self.max_pixels,
                asked,
            });
        }
        Ok(())
    }

    /// Whether `job` is within the limits.
    pub fn check(&self, job: &Txt2Img) -> Result<(), LimitExceeded> {
        if job.prompt.trim().is_empty() {
            return Err(LimitExceeded::EmptyPrompt);
        }
        let side = 1..=self.max_side;
        if !side.contains(&job.width) || !side.contains(&job.height) {
            return Err(LimitExceeded::Side { max: self.max_side });
        }
        if job.pixels() > self.max_pixels {
            return Err(LimitExceeded::Pixels {
                limit: self.max_pixels,
                asked: job.pixels(),
            });
        }
        let steps = 1..=self.max_steps;
        if !steps.contains(&job.steps) || job.hrf_steps.is_some_and(|h| !steps.contains(&h)) {
            return Err(LimitExceeded::Steps {
                max: self.max_steps,
            });
        }
        if !job.cfg_scale.is_finite() {
            return Err(LimitExceeded::Cfg);
        }
        Ok(())
    }
}

/// The plugins' view of a request: `0` and `""` stay "not given".
pub fn plugin_request(job: &Txt2Img) -> JobRequest {
    JobRequest {
        prompt: job.prompt.clone(),
        negative_prompt: job.negative_prompt.clone().unwrap_or_default(),
        cfg: job.cfg_scale,
        steps: job.steps,
        width: job.width,
        height: job.height,
        seed: job.seed,
        model: job.model_name.clone(),
        sampler: job.sampler_name.clone(),
        extra: Vec::new(),
    }
}

/// The request a plugin's view describes (a parsed chat message, a slash command); what it
/// leaves out stays unset for the defaults.
pub fn request_from_plugin(request: &JobRequest) -> Txt2Img {
    let mut job = Txt2Img::default();
    apply(request, &mut job);
    job
}

/// Writes what a plugin may change back into `job`.
fn apply(request: &JobRequest, job: &mut Txt2Img) {
    job.prompt.clone_from(&request.prompt);
    if job.negative_prompt.is_some() || !request.negative_prompt.is_empty() {
        job.negative_prompt = Some(request.negative_prompt.clone());
    }
    job.cfg_scale = request.cfg;
    job.steps = request.steps;
    // A policy's step cap holds for the hires pass too.
    job.hrf_steps = job.hrf_steps.map(|h| h.min(request.steps));
    job.width = request.width;
    job.height = request.height;
    job.seed = request.seed;
    job.model_name.clone_from(&request.model);
    job.sampler_name.clone_from(&request.sampler);
}

/// A catalog snapshot and its plugin view.
type Converted = (Arc<[ModelEntry]>, Arc<[Model]>);

/// The catalog as the model policy receives it, converted once per catalog snapshot.
#[derive(Debug, Default)]
struct PluginCatalog {
    converted: ArcSwapOption<Converted>,
}

impl PluginCatalog {
    fn of(&self, models: Arc<[ModelEntry]>) -> Arc<[Model]> {
        if let Some(cached) = self.converted.load().as_deref()
            && Arc::ptr_eq(&cached.0, &models)
        {
            return cached.1.clone();
        }
        let converted: Arc<[Model]> = models
            .iter()
            .map(|m| Model {
                name: m.name.clone(),
                friendly_name: m.friendly_name.clone(),
                restricted: m.restricted,
            })
            .collect();
        self.converted
            .store(Some(Arc::new((models, converted.clone()))));
        converted
    }
}

/// The intake; cheap to clone.
#[derive(Clone, Debug)]
pub struct Intake {
    plugins: Arc<Registry>,
    jobs: Arc<JobService>,
    catalog: Arc<Catalog>,
    plugin_catalog: Arc<PluginCatalog>,
    limits: Limits,
}

impl Intake {
    /// An intake that asks `plugins`, reads `catalog` and queues into `jobs`.
    pub fn new(
        plugins: Arc<Registry>,
        jobs: Arc<JobService>,
        catalog: Arc<Catalog>,
        limits: Limits,
    ) -> Self {
        Self {
            plugins,
            jobs,
            catalog,
            plugin_catalog: Arc::default(),
            limits,
        }
    }

    /// The hard limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Stops a running job (its backend is told; it may keep the partial picture) or removes
    /// a queued one; `None` if it is neither. Ownership is the front end's to check.
    pub async fn interrupt(
        &self,
        id: &str,
    ) -> Result<Option<crate::store::JobStatus>, crate::jobs::JobError> {
        self.jobs.interrupt(id).await
    }

    /// Puts a failed job back in the queue (an operator's retry); false when it is not
    /// failed. Permission is the front end's to check.
    pub async fn requeue_failed(&self, id: &str) -> Result<bool, crate::jobs::JobError> {
        self.jobs.requeue_failed(id).await
    }

    /// Deletes `owner`'s job `id` and its picture (stopping it first if it runs); false when
    /// `owner` has no such job.
    pub async fn delete(&self, id: &str, owner: &str) -> Result<bool, crate::jobs::JobError> {
        self.jobs.delete(id, owner).await
    }

    /// Files `owner`'s job `id` under `category` (`None`: under none); false when `owner` has
    /// no such job. Ownership of the category is the front end's to check.
    pub async fn set_category(
        &self,
        id: &str,
        owner: &str,
        category: Option<i64>,
    ) -> Result<bool, crate::jobs::JobError> {
        self.jobs.set_category(id, owner, category).await
    }

    /// The access plugin: may `caller` use easel here?
    pub async fn admit(&self, caller: Caller) -> Result<Admitted, Refusal> {
        let plugin = caller.plugin();
        match self.plugins.check(plugin.clone()).await {
            Decision::Allow => Ok(Admitted { caller, plugin }),
            Decision::Deny(reason) => Err(Refusal::Access { reason }),
        }
    }

    /// The model policy, the defaults, the hard limits, then the queue.
    pub async fn submit(
        &self,
        admitted: &Admitted,
        request: Txt2Img,
        origin: Origin,
    ) -> Result<Submitted, Refusal> {
        self.submit_with(admitted, request, origin, false).await
    }

    /// [`Intake::submit`], and follow the job.
    pub async fn submit_and_watch(
        &self,
        admitted: &Admitted,
        request: Txt2Img,
        origin: Origin,
    ) -> Result<Submitted, Refusal> {
        self.submit_with(admitted, request, origin, true).await
    }

    async fn submit_with(
        &self,
        admitted: &Admitted,
        request: Txt2Img,
        origin: Origin,
        follow: bool,
    ) -> Result<Submitted, Refusal> {
        self.limits.check_asked(&request)?;
        let catalog = match self.catalog.models().await {
            Ok(models) => self.plugin_catalog.of(models),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the model catalog; deciding without it");
                Arc::from([])
            }
        };
        let limits = PolicyLimits {
            max_pixels: self.limits.max_pixels,
        };
        let verdict = self
            .plugins
            .decide(
                plugin_request(&request),
                admitted.plugin.clone(),
                catalog,
                limits,
            )
            .await;
        let asked = match verdict {
            Verdict::Allow(asked) => asked,
            Verdict::Deny(message) => return Err(Refusal::Policy { message }),
        };
        let mut job = request;
        apply(&asked, &mut job);
        let job = job.with_defaults();
        self.limits.check(&job)?;
        let (id, watch) = self
            .jobs
            .enqueue_new(&admitted.caller.user_id, &origin, &job, follow)
            .await
            .map_err(Refusal::Store)?;
        Ok(Submitted {
            job: id,
            request: job,
            asked,
            queue_depth: self.jobs.queue_depth(),
            watch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Txt2Img {
        Txt2Img {
            prompt: "a fox".into(),
            width: 512,
            height: 512,
            steps: 20,
            cfg_scale: 7.0,
            ..Txt2Img::default()
        }
    }

    #[test]
    fn limits_hold() {
        let limits = Limits {
            max_pixels: 3_686_400,
            max_side: Limits::MAX_SIDE,
            max_steps: Limits::MAX_STEPS,
        };
        assert_eq!(limits.check(&job()), Ok(()));
        let huge = Txt2Img {
            width: 4096,
            height: 4096,
            ..job()
        };
        let err = limits.check(&huge).unwrap_err();
        assert_eq!(
            err.to_string(),
            "The total value of (Width * Height) must not exceed 3686400"
        );
        assert_eq!(limits.check_asked(&huge), Err(err.clone()));
        assert_eq!(
            limits.check_asked(&Txt2Img {
                width: 4096,
                height: 0,
                ..job()
            }),
            Ok(()),
            "4096 x 512 (the default) fits"
        );
        assert_eq!(
            limits.check(&Txt2Img {
                prompt: "  ".into(),
                ..job()
            }),
            Err(LimitExceeded::EmptyPrompt)
        );
        assert_eq!(
            limits.check(&Txt2Img { steps: 0, ..job() }),
            Err(LimitExceeded::Steps { max: 10_000 })
        );
        assert_eq!(
            limits.check(&Txt2Img {
                hrf_steps: Some(20_000),
                ..job()
            }),
            Err(LimitExceeded::Steps { max: 10_000 })
        );
        assert_eq!(
            limits.check(&Txt2Img {
                cfg_scale: f64::NAN,
                ..job()
            }),
            Err(LimitExceeded::Cfg)
        );
        assert_eq!(
            limits.check(&Txt2Img { width: 0, ..job() }),
            Err(LimitExceeded::Side { max: 65_535 })
        );
    }

    #[test]
    fn the_plugin_view_keeps_unset_values_unset() {
        let parsed = JobRequest::with_prompt("a cat");
        let job = request_from_plugin(&parsed);
        assert_eq!((job.width, job.height, job.steps), (0, 0, 50));
        assert_eq!(plugin_request(&job), parsed);
        let queued = job.with_defaults();
        assert_eq!(
            (queued.width, queued.sampler_name.as_str()),
            (512, "DPM++ 2M")
        );
        // A policy's step cap reaches the hires pass.
        let mut hires = Txt2Img {
            hrf_steps: Some(80),
            ..queued
        };
        let capped = JobRequest {
            steps: 30,
            ..plugin_request(&hires)
        };
        apply(&capped, &mut hires);
        assert_eq!(hires.hrf_steps, Some(30));
    }
}
