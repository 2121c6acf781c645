//! The message flow (compat.md §1.7 through the plugins and the intake) and what follows a
//! queued request: the reactions plugin's actions at every stage, carried out on the message
//! (or on the slash command's interaction), with the picture attached when the job finishes.
//! Each queued request is followed by a task of its own holding the job's [`JobWatch`], which
//! ends with the job whatever happens to it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

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
use super::messenger::counted;
use super::progress::ProgressMessage;
use crate::accounts::role;
use crate::intake::{self, Admitted, FrontEnd, LimitExceeded, Refusal};
use crate::jobs::{EventKind, JobEvent, JobWatch, Origin, Received};
use crate::plugins::{Action, Caller, JobRequest, Outcome, Stage};
use crate::store::JobRow;

/// Discord's longest message.
const MAX_CONTENT: usize = 2000;
/// Interaction tokens live 15 minutes; past this, results go to the channel instead.
pub(super) const TOKEN_LIFETIME: Duration = Duration::from_secs(14 * 60 + 30);
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
    /// A channel: a slash command's job adopted after a restart (its token is gone).
    Channel { channel: Id<ChannelMarker> },
}

impl Target {
    /// What is stored as the job's origin, so a restarted server can still answer.
    fn origin(&self) -> Origin {
        match self {
            Target::Message { channel, message } => Origin::Discord {
                channel: channel.get(),
                message: Some(message.get()),
                user: None,
            },
            Target::Interaction { channel, user, .. } => Origin::Discord {
                channel: channel.get(),
                message: None,
                user: Some(user.get()),
            },
            Target::Channel { channel } => Origin::Discord {
                channel: channel.get(),
                message: None,
                user: None,
            },
        }
    }

    /// The target an origin names, for a job this process did not queue (a slash command's
    /// interaction token is not stored: its job is answered in its channel).
    fn from_origin(origin: &Origin) -> Option<(Target, Option<Id<UserMarker>>)> {
        let Origin::Discord {
            channel,
            message,
            user,
        } = origin
        else {
            return None;
        };
        let channel = Id::new_checked(*channel)?;
        match message {
            Some(message) => Some((
                Target::Message {
                    channel,
                    message: Id::new_checked(*message)?,
                },
                None,
            )),
            None => Some((Target::Channel { channel }, user.and_then(Id::new_checked))),
        }
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

impl Bot {
    /// Who sent a message (or used a command), and where, as the plugins see it.
    pub(super) async fn caller(
        &self,
        channel: Id<ChannelMarker>,
        guild: Option<Id<GuildMarker>>,
        author: Id<UserMarker>,
        tag: String,
    ) -> intake::Caller {
        let mut place = self.places.channel(channel);
        if place.is_none() && guild.is_some() {
            // A channel the gateway did not tell about (yet): ask once, remember.
            match counted(self.http().channel(channel).into_future(), None).await {
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
        let role = match self.accounts.stored_role(&author.to_string()).await {
            Ok(Some(role)) => role,
            Ok(None) => role::APPRENTICE,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read a user's role; using 1");
                role::APPRENTICE
            }
        };
        intake::Caller {
            front_end: FrontEnd::Discord,
            user_id: author.to_string(),
            user_tag: tag,
            role,
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
        let admitted = match self.intake.admit(caller).await {
            Ok(admitted) => admitted,
            Err(refusal) => {
                tracing::debug!(channel_id = %message.channel_id, user = %message.author.name, %refusal, "message not for the bot here");
                return;
            }
        };
        let caller = admitted.plugin_caller().clone();
        let outcome = self.plugins.parse(message.content, caller.clone()).await;
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
                self.submit(&admitted, parsed.request, parsed.warnings, target)
                    .await;
            }
        }
    }

    /// Through the intake (model policy, limits, queue); a refusal is shown with the
    /// `rejected` stage, a queued job is followed until it ends. A `/art` job's deferred reply
    /// says "Queued `<job>`: <prompt>" before it is followed. With `[discord] queue_position`, a
    /// job with others ahead of it says so: a reply "Queued: position N" to a message, or
    /// "Queued `<job>` (position N): <prompt>" for `/art` (see [`Bot::position`]).
    pub(super) async fn submit(
        self: &Arc<Self>,
        admitted: &Admitted,
        request: JobRequest,
        warnings: Vec<String>,
        target: Target,
    ) -> Option<String> {
        let caller = admitted.plugin_caller();
        let prompt = request.prompt.clone();
        let submitted = self
            .intake
            .submit_and_watch(
                admitted,
                intake::request_from_plugin(&request),
                target.origin(),
            )
            .await;
        let submitted = match submitted {
            Ok(submitted) => submitted,
            Err(refusal) => {
                let text = match &refusal {
                    Refusal::Policy { message } => message.clone(),
                    // The seed's reply for a request without a prompt.
                    Refusal::Limit(LimitExceeded::EmptyPrompt) => {
                        "Skipping request with empty prompt.".to_owned()
                    }
                    Refusal::Limit(limit) => limit.to_string(),
                    Refusal::Store(err) => {
                        tracing::error!(error = %err, "cannot queue a Discord request");
                        "Sorry, the request could not be queued. Please try again later.".to_owned()
                    }
                    other => {
                        tracing::error!(refusal = %other, "a Discord request was refused");
                        crate::plugins::POLICY_UNAVAILABLE.to_owned()
                    }
                };
                self.stages(caller, &target, Some(&request), &[(Stage::Rejected, &text)])
                    .await;
                return None;
            }
        };
        let job_id = submitted.job.to_string();
        let followed = Followed {
            caller: caller.clone(),
            request: submitted.asked,
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
        let position = self.position(&job_id).await;
        let ack = match &followed.target {
            Target::Interaction {
                application, token, ..
            } => {
                let text = match position {
                    Some(n) => format!("Queued `{job_id}` (position {n}): {prompt}"),
                    None => format!("Queued `{job_id}`: {prompt}"),
                };
                let text: String = text.chars().take(MAX_CONTENT).collect();
                if let Err(err) = counted(
                    self.http()
                        .interaction(*application)
                        .update_response(token)
                        .content(Some(&text))
                        .into_future(),
                    None,
                )
                .await
                {
                    tracing::warn!(error = %err, "cannot update an interaction response");
                }
                Some(text)
            }
            target => {
                if let Some(n) = position {
                    self.reply(target, &format!("Queued: position {n}"), None)
                        .await;
                }
                None
            }
        };
        let watch = submitted.watch.expect("asked for a watch");
        tokio::spawn(self.clone().follow(watch, followed, ack));
        Some(job_id)
    }

    /// With `[discord] queue_position`, a queued job's place in line when it is not first: 1 +
    /// the jobs ahead of it in claim order that are still queued or already running (exact,
    /// read from the store just after the job was queued). `None` when the switch is off, the
    /// job is first, or the store cannot say.
    async fn position(&self, job_id: &str) -> Option<u64> {
        if !self.settings.queue_position {
            return None;
        }
        match self.jobs.queue_position(job_id).await {
            Ok(position) => position.filter(|n| *n > 1),
            Err(err) => {
                tracing::warn!(job_id, error = %err, "cannot read a job's place in line");
                None
            }
        }
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
        self.plugins
            .on_stage(stage, caller.clone(), request.cloned(), info.to_owned())
            .await
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
                        continue; // No message of the user's to react to.
                    };
                    let http = self.http();
                    let kind = reaction(emoji);
                    let request = if matches!(action, Action::AddEmoji(_)) {
                        http.create_reaction(*channel, *message, &kind)
                            .into_future()
                    } else {
                        http.delete_current_user_reaction(*channel, *message, &kind)
                            .into_future()
                    };
                    let outcome = counted(request, None).await.map(drop);
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
    pub(super) async fn reply(&self, target: &Target, text: &str, result: Option<(&str, Vec<u8>)>) {
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
                Target::Message { channel, message } => counted(
                    self.http()
                        .create_message(*channel)
                        .reply(*message)
                        .content(chunk)
                        .attachments(files)
                        .components(buttons)
                        .into_future(),
                    None,
                )
                .await
                .map(drop),
                Target::Interaction {
                    application,
                    token,
                    created,
                    ..
                } if created.elapsed() < TOKEN_LIFETIME => counted(
                    self.http()
                        .interaction(*application)
                        .create_followup(token)
                        .content(chunk)
                        .attachments(files)
                        .components(buttons)
                        .into_future(),
                    None,
                )
                .await
                .map(drop),
                Target::Channel { channel } => counted(
                    self.http()
                        .create_message(*channel)
                        .content(chunk)
                        .attachments(files)
                        .components(buttons)
                        .into_future(),
                    None,
                )
                .await
                .map(drop),
                Target::Interaction { channel, user, .. } => {
                    let text = format!("<@{user}> {chunk}");
                    let text: String = text.chars().take(MAX_CONTENT).collect();
                    counted(
                        self.http()
                            .create_message(*channel)
                            .content(&text)
                            .attachments(files)
                            .components(buttons)
                            .into_future(),
                        None,
                    )
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
            let caller = intake::Caller {
                front_end: FrontEnd::Discord,
                user_id: String::new(),
                user_tag: String::new(),
                role: role::NONE,
                guild: guild_name.clone(),
                channel: place.name.clone(),
                channel_id: channel.to_string(),
                is_dm: false,
                is_self: false,
            };
            if self.intake.admit(caller).await.is_err() {
                continue;
            }
            if let Err(err) = counted(
                self.http()
                    .create_message(channel)
                    .content("I'm here!")
                    .into_future(),
                None,
            )
            .await
            {
                tracing::warn!(%channel, error = %err, "cannot announce in a channel");
            }
        }
    }

    /// Shows a followed job's stages as its events arrive, until it ends. `ack`: what a `/art`
    /// deferred reply says (restored when progress was shown in it).
    async fn follow(self: Arc<Self>, mut watch: JobWatch, followed: Followed, ack: Option<String>) {
        let mut last_progress: Option<Instant> = None;
        let mut progress = self.settings.progress.then(|| ProgressMessage::new(ack));
        while let Some(event) = watch.next().await {
            if self
                .show(&followed, event, &mut last_progress, progress.as_mut())
                .await
            {
                break;
            }
        }
    }

    /// One event of a followed job; true when the job ended.
    async fn show(
        &self,
        f: &Followed,
        event: JobEvent,
        last_progress: &mut Option<Instant>,
        mut progress: Option<&mut ProgressMessage>,
    ) -> bool {
        let request = Some(&f.request);
        let job_id = event.job.as_str();
        let ends = matches!(
            event.kind,
            EventKind::Finished { .. } | EventKind::Failed { .. } | EventKind::Interrupted { .. }
        );
        if ends && let Some(progress) = progress.as_deref_mut() {
            self.end_progress(&f.target, progress).await;
        }
        match event.kind {
            EventKind::Started { backend, .. } => {
                self.stages(
                    &f.caller,
                    &f.target,
                    request,
                    &[(Stage::Dispatched, &backend)],
                )
                .await;
                false
            }
            EventKind::Progress {
                step,
                total,
                preview,
            } => {
                if let Some(progress) = progress {
                    self.show_progress(&f.target, progress, job_id, (step, total, preview))
                        .await;
                }
                if last_progress.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY) {
                    *last_progress = Some(Instant::now());
                    let info = format!("{step}/{total}");
                    self.stages(&f.caller, &f.target, request, &[(Stage::Progress, &info)])
                        .await;
                }
                false
            }
            EventKind::Finished { backend } => {
                let png = match self.jobs.image_png(job_id).await {
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
            EventKind::Failed { error } => {
                self.stages(&f.caller, &f.target, request, &[(Stage::Failed, &error)])
                    .await;
                true
            }
            EventKind::Interrupted { .. } => {
                self.stages(
                    &f.caller,
                    &f.target,
                    request,
                    &[(Stage::Failed, "interrupted")],
                )
                .await;
                true
            }
            _ => false,
        }
    }

    /// Follows the Discord jobs that were queued before this process started (a restart):
    /// their answers go where they were asked.
    pub(super) async fn adopt_unfinished(self: Arc<Self>) {
        let rows = match self.jobs.unfinished_from(Origin::DISCORD_PREFIX).await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the Discord jobs of a previous run");
                return;
            }
        };
        if !rows.is_empty() {
            tracing::info!(
                jobs = rows.len(),
                "following Discord jobs queued before the start"
            );
        }
        for row in rows {
            let watch = self.jobs.watch(row.id.as_str().into());
            self.follow_row(row, watch, None).await;
        }
    }

    /// Follows Discord jobs again that an operator put back in the queue after they failed
    /// (their follower ended with the failure): each shows the queued stage again and its
    /// answer goes where it was asked. Ends with the job service or when `stopped` turns.
    pub(super) async fn follow_revived(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut events = self.jobs.subscribe();
        loop {
            let received = tokio::select! {
                _ = stopped.changed() => return,
                received = events.recv() => received,
            };
            let event = match received {
                Received::Event(event) => event,
                Received::Lagged(missed) => {
                    tracing::warn!(
                        missed,
                        "job events missed: a requeued Discord job may go unanswered"
                    );
                    continue;
                }
                Received::Closed => return,
            };
            if !matches!(event.kind, EventKind::Requeued { revived: true, .. }) {
                continue;
            }
            // Wherever the operator requeued it, the host whose shards have its guild answers.
            let Origin::Discord { channel, .. } = *event.origin else {
                continue;
            };
            let Some(channel) = Id::new_checked(channel) else {
                continue;
            };
            if !self.answers_in(channel).await {
                continue;
            }
            // Watched before anything is read: its start may come any moment.
            let watch = self.jobs.watch(event.job.clone());
            match self.jobs.job(event.job.as_str()).await {
                Ok(Some(row)) => self.follow_row(row, watch, Some(Stage::Queued)).await,
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(job_id = %event.job, error = %err, "cannot read a requeued Discord job");
                }
            }
        }
    }

    /// Whether this host's shards have `channel`'s guild (its DMs: shard 0). Asks Discord
    /// about a channel the gateway did not tell this host about.
    async fn answers_in(&self, channel: Id<ChannelMarker>) -> bool {
        if self.settings.shards_total <= 1 {
            return true;
        }
        let guild = match self.places.channel(channel) {
            Some(place) => place.guild_id,
            None => match counted(self.http().channel(channel).into_future(), None).await {
                Ok(response) => match response.model().await {
                    Ok(found) => found.guild_id,
                    Err(_) => return false,
                },
                Err(err) => {
                    tracing::warn!(%channel, error = %err, "cannot tell whose shard a channel is");
                    return false;
                }
            },
        };
        self.settings.has_guild(guild)
    }

    /// Follows one stored Discord job through `watch` to its end (showing `first`, if any,
    /// before its events).
    async fn follow_row(self: &Arc<Self>, row: JobRow, watch: JobWatch, first: Option<Stage>) {
        let origin = Origin::parse(row.origin.as_deref());
        let Some((target, user)) = Target::from_origin(&origin) else {
            return;
        };
        let Ok(job) = serde_json::from_str::<crate::jobs::Txt2Img>(&row.request) else {
            return;
        };
        let Some(author) = user.or_else(|| row.owner_id.parse().ok().and_then(Id::new_checked))
        else {
            return;
        };
        let channel = match &target {
            Target::Message { channel, .. } | Target::Channel { channel } => *channel,
            Target::Interaction { channel, .. } => *channel,
        };
        let guild = self.places.channel(channel).and_then(|p| p.guild_id);
        // The user's name is not stored with the job: the tag stays empty.
        let caller = self.caller(channel, guild, author, String::new()).await;
        let followed = Followed {
            caller: caller.plugin(),
            request: intake::plugin_request(&job),
            target,
        };
        if let Some(stage) = first {
            self.stages(
                &followed.caller,
                &followed.target,
                Some(&followed.request),
                &[(stage, "")],
            )
            .await;
        }
        tokio::spawn(self.clone().follow(watch, followed, None));
    }
}
