//! Where messages come from: the names of the guilds and channels the bot can see, kept
//! current from gateway events (channels and threads created after start included), so the
//! access plugin can be asked about `Guild:channel` at any time.

use std::collections::HashMap;
use std::sync::Mutex;

use twilight_model::channel::{Channel, ChannelType};
use twilight_model::guild::Guild;
use twilight_model::id::Id;
use twilight_model::id::marker::{ChannelMarker, GuildMarker};

/// One channel or thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// Its guild (none for DMs).
    pub guild_id: Option<Id<GuildMarker>>,
    /// Its name ("" for DMs).
    pub name: String,
    /// The channel a thread lives in.
    pub parent_id: Option<Id<ChannelMarker>>,
    /// Its type.
    pub kind: ChannelType,
}

impl Place {
    /// From a channel object.
    pub fn from_channel(channel: &Channel) -> Self {
        Self {
            guild_id: channel.guild_id,
            name: channel.name.clone().unwrap_or_default(),
            parent_id: channel.parent_id,
            kind: channel.kind,
        }
    }

    /// A text channel in a guild where the bot can talk (not a thread, category or voice).
    pub fn is_text(&self) -> bool {
        matches!(
            self.kind,
            ChannelType::GuildText | ChannelType::GuildAnnouncement
        )
    }
}

/// Guild and channel names.
#[derive(Debug, Default)]
pub struct Places {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    guilds: HashMap<Id<GuildMarker>, String>,
    channels: HashMap<Id<ChannelMarker>, Place>,
}

impl Places {
    /// Records a guild with its channels and active threads.
    pub fn add_guild(&self, guild: &Guild) {
        let mut inner = self.inner.lock().expect("places lock");
        inner.guilds.insert(guild.id, guild.name.clone());
        for channel in guild.channels.iter().chain(&guild.threads) {
            let mut place = Place::from_channel(channel);
            place.guild_id = Some(guild.id);
            inner.channels.insert(channel.id, place);
        }
    }

    /// Forgets a guild the bot left.
    pub fn remove_guild(&self, id: Id<GuildMarker>) {
        let mut inner = self.inner.lock().expect("places lock");
        inner.guilds.remove(&id);
        inner.channels.retain(|_, p| p.guild_id != Some(id));
    }

    /// Renames a guild.
    pub fn rename_guild(&self, id: Id<GuildMarker>, name: &str) {
        let mut inner = self.inner.lock().expect("places lock");
        inner.guilds.insert(id, name.to_owned());
    }

    /// Records (or updates) a channel or thread.
    pub fn add_channel(&self, channel: &Channel) {
        let mut inner = self.inner.lock().expect("places lock");
        inner
            .channels
            .insert(channel.id, Place::from_channel(channel));
    }

    /// Forgets a channel or thread.
    pub fn remove_channel(&self, id: Id<ChannelMarker>) {
        self.inner.lock().expect("places lock").channels.remove(&id);
    }

    /// A channel or thread, if known.
    pub fn channel(&self, id: Id<ChannelMarker>) -> Option<Place> {
        self.inner
            .lock()
            .expect("places lock")
            .channels
            .get(&id)
            .cloned()
    }

    /// A guild's name, if known.
    pub fn guild_name(&self, id: Id<GuildMarker>) -> Option<String> {
        self.inner
            .lock()
            .expect("places lock")
            .guilds
            .get(&id)
            .cloned()
    }

    /// The text channels of a guild, by id.
    pub fn text_channels(&self, guild: Id<GuildMarker>) -> Vec<(Id<ChannelMarker>, Place)> {
        let inner = self.inner.lock().expect("places lock");
        let mut channels: Vec<_> = inner
            .channels
            .iter()
            .filter(|(_, p)| p.guild_id == Some(guild) && p.is_text())
            .map(|(id, p)| (*id, p.clone()))
            .collect();
        channels.sort_by_key(|(id, _)| *id);
        channels
    }
}
