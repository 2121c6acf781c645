//! The Discord front end: twilight gateway shards (`[discord] shards`: the range this host runs;
//! one shard by default) and an HTTP client, Stably Discordant's message flow run through the
//! policy plugins, the `/art` slash command, and result buttons.
//!
//! A message goes access plugin (the intake's admission) → parser plugin → the intake (model
//! policy, limits, queue); the reactions plugin decides what the bot shows at every stage
//! (accepted, help, rejected, queued, dispatched, progress, finished, failed) and this module
//! carries its actions out on Discord. Each queued job is followed through a job watch (it
//! consumes `Started`, `Progress`, `Finished`, `Failed`, `Interrupted`); a job's origin
//! (`discord:<channel>:<message>`) is stored with it, so jobs queued before a restart are
//! followed again at start and still reach their message; a failed one that an operator puts
//! back in the queue (`Requeued` with `revived`) is followed again too. Rate limits (429 with
//! `retry_after`) are twilight's; a dropped gateway connection is resumed by the shard.
//!
//! Off by default, as the seed had neither: `[discord] queue_position` tells a job its place
//! in line when others are ahead (flow.rs, `Bot::position`), and `[discord] progress` follows
//! a running job in one message edited at most every 2 s (progress.rs).

mod flow;
mod messenger;
mod places;
mod progress;
mod slash;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;
use twilight_gateway::{
    CloseFrame, ConfigBuilder, Event, EventTypeFlags, Intents, Shard, ShardId, StreamExt as _,
};
use twilight_model::id::Id;
use twilight_model::id::marker::{ApplicationMarker, ChannelMarker, GuildMarker, UserMarker};

use crate::accounts::Accounts;
use crate::catalog::Catalog;
use crate::config::{Commands, Config, Threads};
use crate::intake::Intake;
use crate::jobs::JobReader;
use crate::plugins::Registry;

pub use messenger::{Messenger, RetryPolicy, SendError, Sent, http_error};
pub use places::{Place, Places};

/// Why the front end could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscordError {
    /// `[discord] api_base` is not a usable URL.
    #[error("[discord] api_base {0:?} is not an http:// or https:// URL")]
    ApiBase(String),
    /// `[discord] shards` is not a shard range.
    #[error("[discord] shards {0:?} is not FIRST..END/TOTAL, ID/TOTAL or empty")]
    Shards(String),
}

/// What the bot learns about itself at READY.
#[derive(Clone, Copy, Debug)]
struct Me {
    user: Id<UserMarker>,
    application: Id<ApplicationMarker>,
}

/// The front end's settings, from `[discord]`.
#[derive(Clone, Debug)]
struct Settings {
    announce: bool,
    threads_own: bool,
    commands: Commands,
    /// `[discord] queue_position`.
    queue_position: bool,
    /// `[discord] progress`.
    progress: bool,
    /// The gateway shards this host runs, and their total.
    shards: std::ops::Range<u32>,
    shards_total: u32,
}

impl Settings {
    /// Whether this host's shards receive the events of `guild` (`None`: DMs, shard 0) —
    /// Discord's rule, `(guild id >> 22) % total`.
    fn has_guild(&self, guild: Option<Id<GuildMarker>>) -> bool {
        let shard = guild.map_or(0, |g| (g.get() >> 22) % u64::from(self.shards_total.max(1)));
        u32::try_from(shard).is_ok_and(|shard| self.shards.contains(&shard))
    }
}

/// What the front end works with: the services it calls and the read handles it reads.
#[derive(Clone, Debug)]
pub struct Services {
    /// Where requests become jobs.
    pub intake: Intake,
    /// Jobs and images, and following them.
    pub jobs: JobReader,
    /// Roles.
    pub accounts: Arc<Accounts>,
    /// Models (for autocomplete).
    pub catalog: Arc<Catalog>,
    /// The parser and reactions plugins.
    pub plugins: Arc<Registry>,
}

/// State shared by the gateway loop and the tasks it starts.
struct Bot {
    messenger: Messenger,
    intake: Intake,
    jobs: JobReader,
    accounts: Arc<Accounts>,
    catalog: Arc<Catalog>,
    plugins: Arc<Registry>,
    places: Places,
    me: OnceLock<Me>,
    settings: Settings,
    /// Channels that got `I'm here!` since start.
    announced: Mutex<HashSet<Id<ChannelMarker>>>,
}

/// The running front end; stops when [`DiscordHandle::shutdown`] is awaited.
pub struct DiscordHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DiscordHandle {
    /// Closes the gateway connection and stops following jobs.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// `http://host:port` → (`host:port`, plain HTTP); `https://host` → (`host`, TLS).
fn proxy_of(api_base: &str) -> Result<(String, bool), DiscordError> {
    let url = url::Url::parse(api_base).map_err(|_| DiscordError::ApiBase(api_base.to_owned()))?;
    let host = url
        .host_str()
        .ok_or_else(|| DiscordError::ApiBase(api_base.to_owned()))?;
    let host = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    match url.scheme() {
        "http" => Ok((host, true)),
        "https" => Ok((host, false)),
        _ => Err(DiscordError::ApiBase(api_base.to_owned())),
    }
}

/// The bot's REST client, shared by the front end and the gRPC API: the token, `[discord]
/// api_base`, the global rate limit and the retry policy of sends.
pub fn messenger(config: &Config) -> Result<Messenger, DiscordError> {
    // twilight enables no rustls crypto provider itself; easel builds rustls with ring only.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let discord = &config.discord;
    let mut http = twilight_http::Client::builder()
        .token(config.auth.discord_token.trim().to_owned())
        .ratelimiter(Some(twilight_http_ratelimiting::RateLimiter::new(
            discord.global_rate_limit,
        )));
    if !discord.api_base.is_empty() {
        let (host, plain) = proxy_of(&discord.api_base)?;
        http = http.proxy(host, plain);
    }
    Ok(Messenger::new(
        http.build(),
        RetryPolicy {
            tries: discord.rest_tries.max(1),
            server_error_unit: std::time::Duration::from_millis(discord.server_error_backoff_ms),
        },
    ))
}

/// Starts the front end: connects the shard, and follows the Discord jobs of a previous run.
pub fn start(
    config: &Config,
    services: Services,
    messenger: Messenger,
) -> Result<DiscordHandle, DiscordError> {
    let token = config.auth.discord_token.trim().to_owned();
    let discord = &config.discord;
    let intents = Intents::GUILDS
        | Intents::GUILD_MESSAGES
        | Intents::DIRECT_MESSAGES
        | Intents::MESSAGE_CONTENT
        | Intents::GUILD_MESSAGE_REACTIONS
        | Intents::DIRECT_MESSAGE_REACTIONS;
    let mut shard_config = ConfigBuilder::new(token, intents);
    if !discord.gateway_url.is_empty() {
        shard_config = shard_config.proxy_url(discord.gateway_url.trim_end_matches('/').to_owned());
    }
    let (ids, total) = crate::config::parse_shards(&discord.shards)
        .ok_or_else(|| DiscordError::Shards(discord.shards.clone()))?;
    let shard_config = shard_config.build();
    let shards: Vec<Shard> = ids
        .clone()
        .map(|id| Shard::with_config(ShardId::new(id, total), shard_config.clone()))
        .collect();
    let bot = Arc::new(Bot {
        messenger,
        intake: services.intake,
        jobs: services.jobs,
        accounts: services.accounts,
        catalog: services.catalog,
        plugins: services.plugins,
        places: Places::default(),
        me: OnceLock::new(),
        settings: Settings {
            announce: discord.announce,
            threads_own: discord.threads == Threads::Own,
            commands: discord.commands,
            queue_position: discord.queue_position,
            progress: discord.progress,
            shards: ids.clone(),
            shards_total: total,
        },
        announced: Mutex::new(HashSet::new()),
    });
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(bot.clone().adopt_unfinished());
    let mut tasks = vec![tokio::spawn(bot.clone().follow_revived(stopped.clone()))];
    for shard in shards {
        tasks.push(tokio::spawn(gateway_loop(
            bot.clone(),
            shard,
            stopped.clone(),
        )));
    }
    tracing::info!(shards = ?ids, total, "Discord front end starting");
    Ok(DiscordHandle { stop, tasks })
}

async fn gateway_loop(bot: Arc<Bot>, mut shard: Shard, mut stopped: watch::Receiver<bool>) {
    let id = shard.id().number();
    // Looked up at each change: the recorder may be installed after the shard starts.
    let connected =
        |up: bool| {
            metrics::gauge!("easel_discord_gateway_connected", "shard" => id.to_string())
                .set(if up { 1.0 } else { 0.0 });
        };
    let flags = EventTypeFlags::READY
        | EventTypeFlags::RESUMED
        | EventTypeFlags::GUILD_CREATE
        | EventTypeFlags::GUILD_UPDATE
        | EventTypeFlags::GUILD_DELETE
        | EventTypeFlags::CHANNEL_CREATE
        | EventTypeFlags::CHANNEL_UPDATE
        | EventTypeFlags::CHANNEL_DELETE
        | EventTypeFlags::THREAD_CREATE
        | EventTypeFlags::THREAD_UPDATE
        | EventTypeFlags::THREAD_DELETE
        | EventTypeFlags::MESSAGE_CREATE
        | EventTypeFlags::INTERACTION_CREATE;
    loop {
        let next = tokio::select! {
            _ = stopped.changed() => {
                shard.close(CloseFrame::NORMAL);
                connected(false);
                // Let the close frame go out.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), shard.next_event(flags)).await;
                return;
            }
            next = shard.next_event(flags) => next,
        };
        let event = match next {
            None => return,
            Some(Ok(event)) => event,
            Some(Err(err)) => {
                tracing::warn!(shard = id, error = %err, "Discord gateway error; the shard reconnects");
                connected(false);
                continue;
            }
        };
        if matches!(event, Event::Ready(_) | Event::Resumed) {
            connected(true);
        }
        bot.on_event(id, event);
    }
}

impl Bot {
    fn http(&self) -> &twilight_http::Client {
        self.messenger.http()
    }

    /// One gateway event of shard `shard`.
    fn on_event(self: &Arc<Self>, shard: u32, event: Event) {
        match event {
            Event::Ready(ready) => {
                let me = Me {
                    user: ready.user.id,
                    application: ready.application.id,
                };
                let _ = self.me.set(me);
                tracing::info!(shard, user = %ready.user.name, guilds = ready.guilds.len(), "Discord ready");
                // Global commands are the bot's, not a shard's: shard 0's host registers them.
                if self.settings.commands == Commands::Global && shard == 0 {
                    let bot = self.clone();
                    tokio::spawn(async move { bot.register_commands(None).await });
                }
            }
            Event::Resumed => {
                tracing::info!(shard, "Discord session resumed");
            }
            Event::GuildCreate(guild) => {
                if let twilight_model::gateway::payload::incoming::GuildCreate::Available(guild) =
                    &*guild
                {
                    self.places.add_guild(guild);
                    let (bot, id) = (self.clone(), guild.id);
                    tokio::spawn(async move {
                        if bot.settings.commands == Commands::Guild {
                            bot.register_commands(Some(id)).await;
                        }
                        if bot.settings.announce {
                            bot.announce(id).await;
                        }
                    });
                }
            }
            Event::GuildUpdate(update) => self.places.rename_guild(update.id, &update.name),
            Event::GuildDelete(gone) if !gone.unavailable.unwrap_or(false) => {
                self.places.remove_guild(gone.id);
            }
            Event::ChannelCreate(c) => self.places.add_channel(&c),
            Event::ChannelUpdate(c) => self.places.add_channel(&c),
            Event::ChannelDelete(c) => self.places.remove_channel(c.id),
            Event::ThreadCreate(c) => self.places.add_channel(&c),
            Event::ThreadUpdate(c) => self.places.add_channel(&c),
            Event::ThreadDelete(c) => self.places.remove_channel(c.id),
            Event::MessageCreate(message) => {
                let message = *message;
                let bot = self.clone();
                tokio::spawn(async move { bot.on_message(message.message).await });
            }
            Event::InteractionCreate(interaction) => {
                let interaction = *interaction;
                let bot = self.clone();
                tokio::spawn(async move { bot.on_interaction(interaction.0).await });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guilds_belong_to_shards_by_discords_rule() {
        let settings = |shards, shards_total| Settings {
            announce: false,
            threads_own: false,
            commands: Commands::Off,
            queue_position: false,
            progress: false,
            shards,
            shards_total,
        };
        let guild = |n: u64| Some(Id::new(n << 22 | 12345));
        assert!(settings(0..1, 1).has_guild(guild(7)));
        assert!(settings(0..1, 2).has_guild(guild(4)));
        assert!(!settings(0..1, 2).has_guild(guild(5)));
        assert!(settings(1..2, 2).has_guild(guild(5)));
        assert!(settings(0..1, 2).has_guild(None), "DMs go to shard 0");
        assert!(!settings(1..2, 2).has_guild(None));
    }
}
