//! The `/art` slash command (registered at start, globally or per guild), its model
//! autocomplete, and the result buttons (re-roll with a new seed; delete, for the requester or
//! an admin).

use std::sync::Arc;
use std::time::Instant;

use twilight_model::application::command::{
    Command, CommandOption, CommandOptionChoice, CommandOptionChoiceValue, CommandOptionType,
    CommandOptionValue as OptionBound, CommandType,
};
use twilight_model::application::interaction::application_command::{
    CommandDataOption, CommandOptionValue,
};
use twilight_model::application::interaction::{Interaction, InteractionData, InteractionType};
use twilight_model::channel::message::MessageFlags;
use twilight_model::guild::Permissions;
use twilight_model::http::interaction::{
    InteractionResponse, InteractionResponseData, InteractionResponseType,
};
use twilight_model::id::Id;
use twilight_model::id::marker::GuildMarker;

use super::Bot;
use super::flow::{DELETE, REROLL, Target, user_tag};
use super::messenger::counted;
use crate::accounts::role::ARCHITECT;
use crate::plugins::JobRequest;

/// What `/art` is called.
const NAME: &str = "art";

fn option(
    kind: CommandOptionType,
    name: &str,
    description: &str,
    required: bool,
    bounds: Option<(OptionBound, OptionBound)>,
) -> CommandOption {
    CommandOption {
        autocomplete: (name == "model").then_some(true),
        channel_types: None,
        choices: None,
        description: description.to_owned(),
        description_localizations: None,
        kind,
        max_length: None,
        max_value: bounds.map(|b| b.1),
        min_length: None,
        min_value: bounds.map(|b| b.0),
        name: name.to_owned(),
        name_localizations: None,
        options: None,
        file_types: None,
        required: Some(required),
    }
}

/// The `/art` command.
fn command() -> Command {
    use CommandOptionType::{Integer, Number, String as Text};
    use OptionBound::{Integer as I, Number as N};
    Command {
        application_id: None,
        contexts: None,
        default_member_permissions: None,
        description: "Draw a picture".to_owned(),
        description_localizations: None,
        #[allow(deprecated)]
        dm_permission: None,
        guild_id: None,
        id: None,
        integration_types: None,
        kind: CommandType::ChatInput,
        name: NAME.to_owned(),
        name_localizations: None,
        nsfw: None,
        options: vec![
            option(Text, "prompt", "What to draw", true, None),
            option(Text, "negative_prompt", "What to avoid", false, None),
            option(
                Number,
                "cfg",
                "Guidance scale (default 7.5)",
                false,
                Some((N(0.0), N(30.0))),
            ),
            option(
                Integer,
                "steps",
                "Sampling steps (default 50)",
                false,
                Some((I(1), I(150))),
            ),
            option(
                Integer,
                "seed",
                "Seed (-1: random)",
                false,
                Some((I(-1), I(i64::from(u32::MAX)))),
            ),
            option(
                Integer,
                "width",
                "Width in pixels",
                false,
                Some((I(64), I(4096))),
            ),
            option(
                Integer,
                "height",
                "Height in pixels",
                false,
                Some((I(64), I(4096))),
            ),
            option(Text, "model", "Model", false, None),
        ],
        version: Id::new(1),
    }
}

/// The request `/art` options describe (the parser's defaults for what is left out).
fn request_of(options: &[CommandDataOption]) -> JobRequest {
    let mut request = JobRequest::with_prompt("");
    for option in options {
        let whole = |v: &CommandOptionValue| match v {
            CommandOptionValue::Integer(i) => Some(*i),
            _ => None,
        };
        let text = |v: &CommandOptionValue| match v {
            CommandOptionValue::String(s) => Some(s.clone()),
            _ => None,
        };
        let v = &option.value;
        match option.name.as_str() {
            "prompt" => request.prompt = text(v).unwrap_or_default().trim().to_owned(),
            "negative_prompt" => request.negative_prompt = text(v).unwrap_or_default(),
            "cfg" => {
                if let CommandOptionValue::Number(n) = v {
                    request.cfg = *n;
                }
            }
            "steps" => request.steps = whole(v).and_then(|n| u32::try_from(n).ok()).unwrap_or(50),
            "seed" => request.seed = whole(v).unwrap_or(-1),
            "width" => request.width = whole(v).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
            "height" => request.height = whole(v).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
            "model" => request.model = text(v).unwrap_or_default(),
            _ => {}
        }
    }
    request
}

fn data(content: &str, ephemeral: bool) -> InteractionResponseData {
    InteractionResponseData {
        content: Some(content.to_owned()),
        flags: ephemeral.then_some(MessageFlags::EPHEMERAL),
        ..InteractionResponseData::default()
    }
}

impl Bot {
    /// Registers `/art` globally (`guild` none) or in one guild.
    pub(super) async fn register_commands(&self, guild: Option<Id<GuildMarker>>) {
        let Some(me) = self.me.get() else { return };
        let commands = [command()];
        let client = self.http().interaction(me.application);
        let done = match guild {
            None => counted(client.set_global_commands(&commands).into_future(), None)
                .await
                .map(drop),
            Some(guild) => counted(
                client.set_guild_commands(guild, &commands).into_future(),
                None,
            )
            .await
            .map(drop),
        };
        match done {
            Ok(()) => tracing::info!(guild = ?guild, "slash command /art registered"),
            Err(err) => tracing::warn!(error = %err, "cannot register the /art command"),
        }
    }

    async fn respond(&self, interaction: &Interaction, response: InteractionResponse) {
        let sent = counted(
            self.http()
                .interaction(interaction.application_id)
                .create_response(interaction.id, &interaction.token, &response)
                .into_future(),
            None,
        )
        .await;
        if let Err(err) = sent {
            tracing::warn!(error = %err, "cannot answer an interaction");
        }
    }

    /// Slash commands, autocomplete, and result buttons.
    pub(super) async fn on_interaction(self: Arc<Self>, interaction: Interaction) {
        let received = Instant::now();
        let user = interaction
            .member
            .as_ref()
            .and_then(|m| m.user.clone())
            .or_else(|| interaction.user.clone());
        #[allow(deprecated)] // Older payloads carry only `channel_id`.
        let channel = interaction
            .channel
            .as_ref()
            .map(|c| c.id)
            .or(interaction.channel_id);
        let (Some(user), Some(channel)) = (user, channel) else {
            return;
        };
        match (&interaction.kind, &interaction.data) {
            (
                InteractionType::ApplicationCommandAutocomplete,
                Some(InteractionData::ApplicationCommand(data)),
            ) => {
                let typed = data
                    .options
                    .iter()
                    .find_map(|o| match &o.value {
                        CommandOptionValue::Focused(text, _) => Some(text.to_lowercase()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let models = self.catalog.models().await.unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "cannot read the model catalog");
                    Vec::new().into()
                });
                let choices = models
                    .iter()
                    .filter(|m| {
                        m.name.to_lowercase().contains(&typed)
                            || m.friendly_name
                                .as_deref()
                                .is_some_and(|f| f.to_lowercase().contains(&typed))
                    })
                    .take(25)
                    .map(|m| CommandOptionChoice {
                        name: m
                            .friendly_name
                            .as_deref()
                            .unwrap_or(&m.name)
                            .chars()
                            .take(100)
                            .collect(),
                        name_localizations: None,
                        value: CommandOptionChoiceValue::String(m.name.clone()),
                    })
                    .collect();
                self.respond(
                    &interaction,
                    InteractionResponse {
                        kind: InteractionResponseType::ApplicationCommandAutocompleteResult,
                        data: Some(InteractionResponseData {
                            choices: Some(choices),
                            ..InteractionResponseData::default()
                        }),
                    },
                )
                .await;
            }
            (
                InteractionType::ApplicationCommand,
                Some(InteractionData::ApplicationCommand(data)),
            ) if data.name == NAME => {
                // Acknowledge within Discord's 3 s; the answer follows.
                self.respond(
                    &interaction,
                    InteractionResponse {
                        kind: InteractionResponseType::DeferredChannelMessageWithSource,
                        data: None,
                    },
                )
                .await;
                let caller = self
                    .caller(channel, interaction.guild_id, user.id, user_tag(&user))
                    .await;
                let client = self.http().interaction(interaction.application_id);
                let token = interaction.token.clone();
                let update = |text: String| async move {
                    if let Err(err) = counted(
                        client
                            .update_response(&token)
                            .content(Some(&text))
                            .into_future(),
                        None,
                    )
                    .await
                    {
                        tracing::warn!(error = %err, "cannot update an interaction response");
                    }
                };
                let admitted = match self.intake.admit(caller).await {
                    Ok(admitted) => admitted,
                    Err(refusal) => {
                        tracing::debug!(%refusal, "slash command refused");
                        update("Sorry, you cannot use /art here.".to_owned()).await;
                        return;
                    }
                };
                let request = request_of(&data.options);
                if request.prompt.is_empty() {
                    update("Skipping request with empty prompt.".to_owned()).await;
                    return;
                }
                let target = Target::Interaction {
                    application: interaction.application_id,
                    token: interaction.token.clone(),
                    channel,
                    user: user.id,
                    created: received,
                };
                let prompt = request.prompt.clone();
                // A queued job's deferred reply is updated by `submit`, before it is followed.
                if self
                    .submit(&admitted, request, Vec::new(), target)
                    .await
                    .is_none()
                {
                    let text = format!("Not queued: {prompt}");
                    update(text.chars().take(2000).collect()).await;
                }
            }
            (InteractionType::MessageComponent, Some(InteractionData::MessageComponent(data))) => {
                if let Some(job_id) = data.custom_id.strip_prefix(REROLL) {
                    self.reroll(&interaction, job_id, &user, channel).await;
                } else if let Some(job_id) = data.custom_id.strip_prefix(DELETE) {
                    self.delete(&interaction, job_id, &user).await;
                }
            }
            _ => {}
        }
    }

    /// The same request with a new seed, answered on the result message.
    async fn reroll(
        self: &Arc<Self>,
        interaction: &Interaction,
        job_id: &str,
        user: &twilight_model::user::User,
        channel: twilight_model::id::Id<twilight_model::id::marker::ChannelMarker>,
    ) {
        let job = self.jobs.request(job_id).await.ok().flatten();
        let (Some(job), Some(message)) = (job, interaction.message.as_ref()) else {
            self.respond(
                interaction,
                ephemeral("That picture is gone; nothing to re-roll."),
            )
            .await;
            return;
        };
        self.respond(interaction, defer_update()).await;
        let caller = self
            .caller(channel, interaction.guild_id, user.id, user_tag(user))
            .await;
        let Ok(admitted) = self.intake.admit(caller).await else {
            return;
        };
        let mut request = crate::intake::plugin_request(&job);
        request.seed = i64::from(rand::random::<u32>());
        let target = Target::Message {
            channel: message.channel_id,
            message: message.id,
        };
        self.submit(&admitted, request, Vec::new(), target).await;
    }

    /// Deletes a result message: the requester, a role-3 user or a guild admin only.
    async fn delete(
        &self,
        interaction: &Interaction,
        job_id: &str,
        user: &twilight_model::user::User,
    ) {
        let owner = match self.jobs.job(job_id).await {
            Ok(Some(row)) => Some(row.owner_id),
            _ => None,
        };
        let admin_permission = interaction
            .member
            .as_ref()
            .and_then(|m| m.permissions)
            .is_some_and(|p| {
                p.intersects(Permissions::ADMINISTRATOR | Permissions::MANAGE_MESSAGES)
            });
        let role = self
            .accounts
            .stored_role(&user.id.to_string())
            .await
            .ok()
            .flatten()
            .unwrap_or(0);
        let allowed =
            owner.as_deref() == Some(&user.id.to_string()) || admin_permission || role >= ARCHITECT;
        let Some(message) = interaction.message.as_ref().filter(|_| allowed) else {
            self.respond(
                interaction,
                ephemeral(
                    "Only the person who asked for this picture (or an admin) can delete it.",
                ),
            )
            .await;
            return;
        };
        self.respond(interaction, defer_update()).await;
        if let Err(err) = counted(
            self.http()
                .delete_message(message.channel_id, message.id)
                .into_future(),
            None,
        )
        .await
        {
            tracing::warn!(error = %err, "cannot delete a result message");
        }
    }
}

/// "Working on it", without changing the message the button is on.
fn defer_update() -> InteractionResponse {
    InteractionResponse {
        kind: InteractionResponseType::DeferredUpdateMessage,
        data: None,
    }
}

fn ephemeral(text: &str) -> InteractionResponse {
    InteractionResponse {
        kind: InteractionResponseType::ChannelMessageWithSource,
        data: Some(data(text, true)),
    }
}
