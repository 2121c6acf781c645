//! The message flow (compat.md §1.7 through the plugins) and what follows a queued request:
//! the reactions plugin's actions at every stage, carried out on the message (or on the slash
//! command's interaction), with the picture attached when the job finishes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};
use twilight_http::request::channel::reaction::RequestReactionType;
use twilight_model::channel::Message;
use twilight_model::channel::message::Component;
use twilight_model::channel::message::component::{ActionRow, Button, ButtonStyle};
use twilight_model::http::attachment::Attachment;
use twilight_model::id::Id;
use twilight_model::id::marker::{
    ApplicationMarker, ChannelMarker, GuildMarker, MessageMarker, UserMarker,
};
use twilight_model::user::User;

use super::Bot;
use crate::jobs::{JobEvent, Txt2Img};
use crate::plugins::{
    Action, Caller, Decision, FrontEnd, JobRequest, Outcome, PolicyLimits, Stage, Verdict,
};

/// Discord's longest message.
const MAX_CONTENT: usize = 2000;
/// Interaction tokens live 15 minutes; past this, results go to the channel instead.
const TOKEN_LIFETIME: Duration = Duration::from_secs(14 * 60 + 30);
/// Progress is shown to the reactions plugin at most this often per job.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Custom id prefixes of the result buttons.
pub(super) const REROLL: &str = "easel:reroll:";
pub(super) const DELETE: &str = "easel:delete:";

/// Where a request's answers go.
#[derive(Clone, Debug)]
pub(super) enum Target {
    /// Replies and reactions on a user's (or the bot's result) message.
    Message {
        channel: Id<ChannelMarker>,
        message: Id<MessageMarker>,
    },
    /// Follow-ups of a slash command; the channel once the token expired.
    Interaction {
        application: Id<ApplicationMarker>,
        token: String,
        channel: Id<ChannelMarker>,
        user: Id<UserMarker>,
        created: Instant,
    },
}

impl Target {
    /// What is stored as the job's origin, so a restarted server can still answer.
    fn origin(&self) -> String {
        match self {
            Target::Message { channel, message } => format!("discord:{channel}:{message}"),
            Target::Interaction { channel, user, .. } => format!("discord:{channel}:0:{user}"),
        }
    }

    /// The target an origin names, for a job this process did not queue.
    fn from_origin(origin: &str) -> Option<Target> {
        let mut parts = origin.strip_prefix("discord:")?.split(':');
        let channel = Id::new_checked(parts.next()?.parse().ok()?)?;
        let message: u64 = parts.next()?.parse().ok()?;
        Some(Target::Message {
            channel,
            message: Id::new_checked(message)?,
        })
    }
}

/// A request being followed: who asked, what, and where to answer.
pub(super) struct Followed {
    pub caller: Caller,
    pub request: JobRequest,
    pub target: Target,
}

/// `name#discriminator` as discord.py prints it (`name#0` for new-style accounts).
pub(super) fn user_tag(user: &User) -> String {
    if user.discriminator == 0 {
        format!("{}#0", user.name)
    } else {
        format!("{}#{:04}", user.name, user.discriminator)
    }
}

/// The job the backends run for a plugin request (0 width/height: 512, Navigator's default).
pub(super) fn txt2img(request: &JobRequest) -> Txt2Img {
    let side = |v: u32| if v == 0 { 512 } else { v };
    Txt2Img {
        model_name: request.model.clone(),
        prompt: request.prompt.clone(),
        negative_prompt: (!request.negative_prompt.is_empty())
            .then(|| request.negative_prompt.clone()),
        width: side(request.width),
        height: side(request.height),
        steps: request.steps,
        seed: request.seed,
        cfg_scale: request.cfg,
        distilled_cfg: 3.5,
        sampler_name: if request.sampler.is_empty() {
            "DPM++ 2M".to_owned()
        } else {
            request.sampler.clone()
        },
        scheduler_name: "automatic".to_owned(),
        ..Txt2Img::default()
    }
}

/// Splits text into Discord-sized messages, on character boundaries.
fn chunks(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars
        .chunks(MAX_CONTENT)
        .map(|c| c.iter().collect())
        .collect()
}

/// A unicode emoji, or a custom one written `<:name:id>` / `<a:name:id>`.
fn reaction(emoji: &str) -> RequestReactionType<'_> {
    let custom = emoji
        .strip_prefix("<a:")
        .or_else(|| emoji.strip_prefix("<:"))
        .and_then(|rest| rest.strip_suffix('>'))
        .and_then(|rest| rest.rsplit_once(':'))
        .and_then(|(name, id)| Some((name, Id::new_checked(id.parse().ok()?)?)));
    match custom {
        Some((name, id)) => RequestReactionType::Custom {
            id,
            name: Some(name),
        },
        None => RequestReactionType::Unicode { name: emoji },
    }
}

/// The buttons under a result.
fn result_buttons(job_id: &str) -> Vec<Component> {
    let button = |id: String, label: &str, style| {
        Component::Button(Button {
            custom_id: Some(id),
            disabled: false,
            emoji: None,
            id: None,
            label: Some(label.to_owned()),
            sku_id: None,
            style,
            url: None,
        })
    };
    vec![Component::ActionRow(ActionRow {
        components: vec![
            button(
                format!("{REROLL}{job_id}"),
                "Re-roll",
                ButtonStyle::Secondary,
            ),
            button(format!("{DELETE}{job_id}"), "Delete", ButtonStyle::Danger),
        ],
        id: None,
    })]
}

/// Runs plugin calls off the async threads (a call may use its whole deadline).
pub(super) async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f)
        .await
        .expect("plugin calls do not panic")
}

impl Bot {
    /// Who sent a message (or used a command), and where, as the plugins see it.
    pub(super) async fn caller(
        &self,
        channel: Id<ChannelMarker>,
        guild: Option<Id<GuildMarker>>,
        author: Id<UserMarker>,
        tag: String,
    ) -> Caller {
        let mut place = self.places.channel(channel);
        if place.is_none() && guild.is_some() {
            // A channel the gateway did not tell about (yet): ask once, remember.
            match self.http.channel(channel).await {
                Ok(response) => match response.model().await {
                    Ok(c) => {
                        self.places.add_channel(&c);
                        place = Some(super::Place::from_channel(&c));
                    }
                    Err(err) => tracing::warn!(%channel, error = %err, "unreadable channel"),
                },
                Err(err) => tracing::warn!(%channel, error = %err, "cannot look the channel up"),
            }
        }
        let mut name = place.as_ref().map(|p| p.name.clone()).unwrap_or_default();
        if let Some(parent) = place
            .as_ref()
            .filter(|p| p.kind.is_thread() && !self.settings.threads_own)
            .and_then(|p| p.parent_id)
            .and_then(|id| self.places.channel(id))
        {
            name = parent.name;
        }
        let role = match self.jobs.store().user_role(&author.to_string()).await {
            Ok(Some(role)) => role,
            Ok(None) => 1,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read a user's role; using 1");
                1
            }
        };
        Caller {
            front_end: FrontEnd::Discord,
            user_id: author.to_string(),
            user_tag: tag,
            role: u8::try_from(role.clamp(0, 255)).unwrap_or(u8::MAX),
            guild: guild
                .and_then(|g| self.places.guild_name(g))
                .unwrap_or_default(),
            channel: name,
            channel_id: channel.to_string(),
            is_dm: guild.is_none(),
            is_self: self.me.get().is_some_and(|me| me.user == author),
        }
    }

    /// compat.md §1.7: a message addressed to the bot, allowed where it was sent, becomes a
    /// job; the reactions plugin shows each step.
    pub(super) async fn on_message(self: Arc<Self>, message: Message) {
        let caller = self
            .caller(
                message.channel_id,
                message.guild_id,
                message.author.id,
                user_tag(&message.author),
            )
            .await;
        let target = Target::Message {
            channel: message.channel_id,
            message: message.id,
        };
        let plugins = self.plugins.clone();
        let (content, asked) = (message.content, caller.clone());
        let outcome = blocking(move || match plugins.check(&asked) {
            Decision::Deny(reason) => Err(reason),
            Decision::Allow => Ok(plugins.parse(&content, &asked)),
        })
        .await;
        let outcome = match outcome {
            Err(reason) => {
                tracing::debug!(channel = %caller.channel, user = %caller.user_tag, reason, "message not for the bot here");
                return;
            }
            Ok(outcome) => outcome,
        };
        match outcome {
            Outcome::Ignore => {}
            Outcome::Help(text) => {
                self.stages(
                    &caller,
                    &target,
                    None,
                    &[(Stage::Accepted, ""), (Stage::Help, &text)],
                )
                .await;
            }
            Outcome::Error(text) => {
                self.stages(
                    &caller,
                    &target,
                    None,
                    &[(Stage::Accepted, ""), (Stage::Rejected, &text)],
                )
                .await;
            }
            Outcome::Request(parsed) => {
                self.stages(
                    &caller,
                    &target,
                    Some(&parsed.request),
                    &[(Stage::Accepted, "")],
                )
                .await;
                self.submit(caller, parsed.request, parsed.warnings, target)
                    .await;
            }
        }
    }

    /// The model policy, then the queue; answers a refusal with the `rejected` stage.
    pub(super) async fn submit(
        self: &Arc<Self>,
        caller: Caller,
        request: JobRequest,
        warnings: Vec<String>,
        target: Target,
    ) -> Option<String> {
        let catalog = match crate::plugins::catalog(self.jobs.store()).await {
            Ok(catalog) => catalog,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the model catalog; deciding without it");
                Vec::new()
            }
        };
        let limits = PolicyLimits {
            max_pixels: self.settings.pixel_limit,
        };
        let (plugins, asked, who) = (self.plugins.clone(), request.clone(), caller.clone());
        let verdict = blocking(move || plugins.decide(&asked, &who, &catalog, limits)).await;
        let request = match verdict {
            Verdict::Deny(text) => {
                self.stages(
                    &caller,
                    &target,
                    Some(&request),
                    &[(Stage::Rejected, &text)],
                )
                .await;
                return None;
            }
            Verdict::Allow(request) => request,
        };
        let job = txt2img(&request);
        if job.prompt.is_empty() || job.steps == 0 || !job.cfg_scale.is_finite() {
            tracing::error!(?request, "the model policy returned an unusable request");
            self.stages(
                &caller,
                &target,
                Some(&request),
                &[(Stage::Rejected, crate::plugins::POLICY_UNAVAILABLE)],
            )
            .await;
            return None;
        }
        // Follow the job before it is stored, so none of its events is missed.
        let (tx, rx) = mpsc::unbounded_channel();
        let origin = target.origin();
        let mut tries = 0;
        let job_id = loop {
            let id = crate::jobs::new_job_id();
            self.followers
                .lock()
                .expect("followers lock")
                .insert(id.clone(), tx.clone());
            match self
                .jobs
                .enqueue(&id, &caller.user_id, Some(&origin), &job)
                .await
            {
                Ok(()) => break id,
                Err(err) => {
                    self.followers.lock().expect("followers lock").remove(&id);
                    if err.is_duplicate_id() && tries < 5 {
                        tries += 1;
                        continue;
                    }
                    tracing::error!(error = %err, "cannot queue a Discord request");
                    self.stages(
                        &caller,
                        &target,
                        Some(&request),
                        &[(
                            Stage::Rejected,
                            "Sorry, the request could not be queued. Please try again later.",
                        )],
                    )
                    .await;
                    return None;
                }
            }
        };
        let followed = Followed {
            caller,
            request,
            target,
        };
        let lines = warnings.join("\n");
        self.stages(
            &followed.caller,
            &followed.target,
            Some(&followed.request),
            &[(Stage::Queued, &lines)],
        )
        .await;
        tokio::spawn(self.clone().follow(job_id.clone(), followed, rx));
        Some(job_id)
    }

    /// Asks the reactions plugin about each stage in turn and carries the actions out.
    pub(super) async fn stages(
        &self,
        caller: &Caller,
        target: &Target,
        request: Option<&JobRequest>,
        stages: &[(Stage, &str)],
    ) {
        for (stage, info) in stages {
            let actions = self.reactions(caller, request, *stage, info).await;
            self.act(target, &actions, None).await;
        }
    }

    async fn reactions(
        &self,
        caller: &Caller,
        request: Option<&JobRequest>,
        stage: Stage,
        info: &str,
    ) -> Vec<Action> {
        let (plugins, caller, request, info) = (
            self.plugins.clone(),
            caller.clone(),
            request.cloned(),
            info.to_owned(),
        );
        blocking(move || plugins.on_stage(stage, &caller, request.as_ref(), &info)).await
    }

    /// Carries actions out. With `result`, the first reply carries the picture and the result
    /// buttons (a reply of its own if the plugin asked for none). Failures are logged; the rest
    /// still runs.
    pub(super) async fn act(
        &self,
        target: &Target,
        actions: &[Action],
        result: Option<(&str, Vec<u8>)>,
    ) {
        let mut result = result;
        for action in actions {
            match action {
                Action::AddEmoji(emoji) | Action::RemoveEmoji(emoji) => {
                    let Target::Message { channel, message } = target else {
                        continue; // A slash command has no message of the user's to react to.
                    };
                    let outcome = if matches!(action, Action::AddEmoji(_)) {
                        self.http
                            .create_reaction(*channel, *message, &reaction(emoji))
                            .await
                            .map(drop)
                    } else {
                        self.http
                            .delete_current_user_reaction(*channel, *message, &reaction(emoji))
                            .await
                            .map(drop)
                    };
                    if let Err(err) = outcome {
                        tracing::warn!(emoji, error = %err, "cannot change a reaction");
                    }
                }
                Action::Reply(text) => {
                    self.reply(target, text, result.take()).await;
                }
            }
        }
        if let Some(result) = result {
            self.reply(target, "", Some(result)).await;
        }
    }

    /// One reply (in several messages if long); the picture goes with the first.
    async fn reply(&self, target: &Target, text: &str, result: Option<(&str, Vec<u8>)>) {
        let (attachments, components) = match result {
            Some((job_id, png)) => (
                vec![Attachment::from_bytes(format!("{job_id}.png"), png, 1)],
                result_buttons(job_id),
            ),
            None => (Vec::new(), Vec::new()),
        };
        for (i, chunk) in chunks(text).iter().enumerate() {
            let (files, buttons): (&[Attachment], &[Component]) = if i == 0 {
                (&attachments, &components)
            } else {
                (&[], &[])
            };
            if chunk.is_empty() && files.is_empty() {
                continue;
            }
            let sent = match target {
                Target::Message { channel, message } => self
                    .http
                    .create_message(*channel)
                    .reply(*message)
                    .content(chunk)
                    .attachments(files)
                    .components(buttons)
                    .await
                    .map(drop),
                Target::Interaction {
                    application,
                    token,
                    created,
                    ..
                } if created.elapsed() < TOKEN_LIFETIME => self
                    .http
                    .interaction(*application)
                    .create_followup(token)
                    .content(chunk)
                    .attachments(files)
                    .components(buttons)
                    .await
                    .map(drop),
                Target::Interaction { channel, user, .. } => {
                    let text = format!("<@{user}> {chunk}");
                    let text: String = text.chars().take(MAX_CONTENT).collect();
                    self.http
                        .create_message(*channel)
                        .content(&text)
                        .attachments(files)
                        .components(buttons)
                        .await
                        .map(drop)
                }
            };
            if let Err(err) = sent {
                tracing::warn!(error = %err, "cannot send a Discord reply");
            }
        }
    }

    /// `I'm here!` to every channel of `guild` that the access plugin allows (asked about the
    /// place alone: an empty user), once per channel per start.
    pub(super) async fn announce(&self, guild: Id<GuildMarker>) {
        let guild_name = self.places.guild_name(guild).unwrap_or_default();
        for (channel, place) in self.places.text_channels(guild) {
            if !self
                .announced
                .lock()
                .expect("announced lock")
                .insert(channel)
            {
                continue;
            }
            let caller = Caller {
                front_end: FrontEnd::Discord,
                user_id: String::new(),
                user_tag: String::new(),
                role: 0,
                guild: guild_name.clone(),
                channel: place.name.clone(),
                channel_id: channel.to_string(),
                is_dm: false,
                is_self: false,
            };
            let plugins = self.plugins.clone();
            if blocking(move || plugins.check(&caller)).await != Decision::Allow {
                continue;
            }
            if let Err(err) = self.http.create_message(channel).content("I'm here!").await {
                tracing::warn!(%channel, error = %err, "cannot announce in a channel");
            }
        }
    }

    /// Shows a followed job's stages as its events arrive, until it ends.
    async fn follow(
        self: Arc<Self>,
        job_id: String,
        followed: Followed,
        mut events: mpsc::UnboundedReceiver<JobEvent>,
    ) {
        let mut last_progress: Option<Instant> = None;
        while let Some(event) = events.recv().await {
            let done = self
                .show(&job_id, &followed, event, &mut last_progress)
                .await;
            if done {
                break;
            }
        }
        self.followers
            .lock()
            .expect("followers lock")
            .remove(&job_id);
    }

    /// One event of a followed job; true when the job ended.
    async fn show(
        &self,
        job_id: &str,
        f: &Followed,
        event: JobEvent,
        last_progress: &mut Option<Instant>,
    ) -> bool {
        let request = Some(&f.request);
        match event {
            JobEvent::Started { backend, .. } => {
                self.stages(
                    &f.caller,
                    &f.target,
                    request,
                    &[(Stage::Dispatched, &backend)],
                )
                .await;
                false
            }
            JobEvent::Progress { step, total, .. } => {
                if last_progress.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY) {
                    *last_progress = Some(Instant::now());
                    let info = format!("{step}/{total}");
                    self.stages(&f.caller, &f.target, request, &[(Stage::Progress, &info)])
                        .await;
                }
                false
            }
            JobEvent::Finished { backend, .. } => {
                let png = match self.jobs.store().image_png(job_id).await {
                    Ok(Some(png)) => png,
                    Ok(None) | Err(_) => {
                        tracing::error!(job_id, "finished job has no image");
                        let actions = self
                            .reactions(&f.caller, request, Stage::Failed, "the picture was lost")
                            .await;
                        self.act(&f.target, &actions, None).await;
                        return true;
                    }
                };
                let actions = self
                    .reactions(&f.caller, request, Stage::Finished, &backend)
                    .await;
                self.act(&f.target, &actions, Some((job_id, png))).await;
                true
            }
            JobEvent::Failed { error, .. } => {
                self.stages(&f.caller, &f.target, request, &[(Stage::Failed, &error)])
                    .await;
                true
            }
            JobEvent::Interrupted { .. } => {
                self.stages(
                    &f.caller,
                    &f.target,
                    request,
                    &[(Stage::Failed, "interrupted")],
                )
                .await;
                true
            }
            JobEvent::Queued { .. } | JobEvent::Requeued { .. } => false,
        }
    }

    /// A job this process does not follow ended: if it came from Discord (queued before a
    /// restart), answer where it was asked.
    async fn adopt(self: &Arc<Self>, event: JobEvent) {
        let job_id = match &event {
            JobEvent::Finished { job_id, .. } | JobEvent::Failed { job_id, .. } => job_id.clone(),
            _ => return,
        };
        let row = match self.jobs.store().job(&job_id).await {
            Ok(Some(row)) => row,
            _ => return,
        };
        let Some(target) = row.origin.as_deref().and_then(Target::from_origin) else {
            return;
        };
        let Ok(job) = serde_json::from_str::<Txt2Img>(&row.request) else {
            return;
        };
        let Target::Message { channel, .. } = &target else {
            return;
        };
        let Some(author) = row.owner_id.parse().ok().and_then(Id::new_checked) else {
            return;
        };
        let place_guild = self.places.channel(*channel).and_then(|p| p.guild_id);
        // The user's name is not stored with the job: the tag stays empty.
        let caller = self
            .caller(*channel, place_guild, author, String::new())
            .await;
        let followed = Followed {
            caller,
            request: JobRequest::from_txt2img(&job),
            target,
        };
        self.show(&job_id, &followed, event, &mut None).await;
    }
}

/// Routes job events to the jobs this process follows (and adopts Discord jobs it does not).
pub(super) async fn follow_jobs(
    bot: Arc<Bot>,
    mut events: broadcast::Receiver<JobEvent>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            _ = stopped.changed() => return,
            event = events.recv() => event,
        };
        let event = match event {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "Discord front end fell behind on job events");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let job_id = match &event {
            JobEvent::Queued { job_id }
            | JobEvent::Started { job_id, .. }
            | JobEvent::Progress { job_id, .. }
            | JobEvent::Finished { job_id, .. }
            | JobEvent::Failed { job_id, .. }
            | JobEvent::Requeued { job_id, .. }
            | JobEvent::Interrupted { job_id, .. } => job_id.clone(),
        };
        let follower = bot
            .followers
            .lock()
            .expect("followers lock")
            .get(&job_id)
            .cloned();
        match follower {
            Some(tx) => {
                let _ = tx.send(event);
            }
            None if matches!(event, JobEvent::Finished { .. } | JobEvent::Failed { .. }) => {
                let bot = bot.clone();
                tokio::spawn(async move { bot.adopt(event).await });
            }
            None => {}
        }
    }
}
