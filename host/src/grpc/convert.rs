//! Between the protobuf messages of `discord_api` and twilight's Discord models, filled as
//! discordproxy filled them (compat.md §4.3): what it left at the default stays at the default.

use prost::Message as _;
use serde_json::{Map, Value, json};
use twilight_model::channel::message::Embed;
use twilight_model::channel::{Channel, ChannelType};
use twilight_model::guild::PartialMember;
use twilight_model::user::User;

use super::proto;
use crate::discord::{SendError, Sent};

/// The request's embed as Discord's, or `None` when it is empty (serialises to nothing), as
/// discordproxy decided. The protobuf goes through JSON (field names are Discord's, empty
/// fields left out), as discordproxy's `MessageToDict` did.
pub fn embed_to_discord(embed: Option<&proto::Embed>) -> Result<Option<Embed>, SendError> {
    let Some(embed) = embed.filter(|e| e.encoded_len() > 0) else {
        return Ok(None);
    };
    let mut out = Map::new();
    put_str(&mut out, "title", &embed.title);
    put_str(
        &mut out,
        "type",
        if embed.r#type.is_empty() {
            "rich"
        } else {
            &embed.r#type
        },
    );
    put_str(&mut out, "description", &embed.description);
    put_str(&mut out, "url", &embed.url);
    put_str(&mut out, "timestamp", &embed.timestamp);
    if embed.color != 0 {
        out.insert("color".into(), json!(embed.color));
    }
    if let Some(f) = &embed.footer {
        let mut o = Map::new();
        put_str(&mut o, "text", &f.text);
        put_str(&mut o, "icon_url", &f.icon_url);
        put_str(&mut o, "proxy_icon_url", &f.proxy_icon_url);
        out.insert("footer".into(), Value::Object(o));
    }
    if let Some(i) = &embed.image {
        out.insert(
            "image".into(),
            media(&i.url, &i.proxy_icon_url, i.height, i.width),
        );
    }
    if let Some(t) = &embed.thumbnail {
        out.insert(
            "thumbnail".into(),
            media(&t.url, &t.proxy_url, t.height, t.width),
        );
    }
    if let Some(v) = &embed.video {
        out.insert(
            "video".into(),
            media(&v.url, &v.proxy_icon_url, v.height, v.width),
        );
    }
    if let Some(p) = &embed.provider {
        let mut o = Map::new();
        put_str(&mut o, "name", &p.name);
        put_str(&mut o, "url", &p.url);
        out.insert("provider".into(), Value::Object(o));
    }
    if let Some(a) = &embed.author {
        let mut o = Map::new();
        put_str(&mut o, "name", &a.name);
        put_str(&mut o, "url", &a.url);
        put_str(&mut o, "icon_url", &a.icon_url);
        put_str(&mut o, "proxy_icon_url", &a.proxy_icon_url);
        out.insert("author".into(), Value::Object(o));
    }
    if !embed.fields.is_empty() {
        let fields: Vec<Value> = embed
            .fields
            .iter()
            .map(|f| json!({"name": f.name, "value": f.value, "inline": f.inline}))
            .collect();
        out.insert("fields".into(), Value::Array(fields));
    }
    serde_json::from_value(Value::Object(out))
        .map(Some)
        .map_err(|err| SendError::Invalid(format!("embed: {err}")))
}

fn put_str(out: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        out.insert(key.to_owned(), Value::String(value.to_owned()));
    }
}

/// An image, thumbnail or video: Discord's names (`proxy_url`), whatever the proto calls it.
fn media(url: &str, proxy: &str, height: i32, width: i32) -> Value {
    let mut o = Map::new();
    o.insert("url".into(), Value::String(url.to_owned()));
    put_str(&mut o, "proxy_url", proxy);
    if height > 0 {
        o.insert("height".into(), json!(height));
    }
    if width > 0 {
        o.insert("width".into(), json!(width));
    }
    Value::Object(o)
}

fn clamp(value: Option<u64>) -> i32 {
    value.map_or(0, |v| i32::try_from(v).unwrap_or(i32::MAX))
}

/// Discord's embed as the protobuf one.
pub fn embed_from_discord(embed: &Embed) -> proto::Embed {
    use proto::embed;
    proto::Embed {
        title: embed.title.clone().unwrap_or_default(),
        r#type: embed.kind.clone(),
        description: embed.description.clone().unwrap_or_default(),
        url: embed.url.clone().unwrap_or_default(),
        timestamp: embed
            .timestamp
            .map(|t| t.iso_8601().to_string())
            .unwrap_or_default(),
        color: embed
            .color
            .map_or(0, |c| i32::try_from(c).unwrap_or_default()),
        footer: embed.footer.as_ref().map(|f| embed::Footer {
            text: f.text.clone(),
            icon_url: f.icon_url.clone().unwrap_or_default(),
            proxy_icon_url: f.proxy_icon_url.clone().unwrap_or_default(),
        }),
        image: embed.image.as_ref().map(|i| embed::Image {
            url: i.url.clone(),
            proxy_icon_url: i.proxy_url.clone().unwrap_or_default(),
            height: clamp(i.height),
            width: clamp(i.width),
        }),
        thumbnail: embed.thumbnail.as_ref().map(|t| embed::Thumbnail {
            url: t.url.clone(),
            proxy_url: t.proxy_url.clone().unwrap_or_default(),
            height: clamp(t.height),
            width: clamp(t.width),
        }),
        video: embed.video.as_ref().map(|v| embed::Video {
            url: v.url.clone().unwrap_or_default(),
            proxy_icon_url: v.proxy_url.clone().unwrap_or_default(),
            height: clamp(v.height),
            width: clamp(v.width),
        }),
        provider: embed.provider.as_ref().map(|p| embed::Provider {
            name: p.name.clone().unwrap_or_default(),
            url: p.url.clone().unwrap_or_default(),
        }),
        author: embed.author.as_ref().map(|a| embed::Author {
            name: a.name.clone(),
            url: a.url.clone().unwrap_or_default(),
            icon_url: a.icon_url.clone().unwrap_or_default(),
            proxy_icon_url: a.proxy_icon_url.clone().unwrap_or_default(),
        }),
        fields: embed
            .fields
            .iter()
            .map(|f| embed::Field {
                name: f.name.clone(),
                value: f.value.clone(),
                inline: f.inline,
            })
            .collect(),
    }
}

/// A user: id, name, discriminator (`"0"` for new-style names), avatar hash, bot, system.
pub fn user(user: &User) -> proto::User {
    proto::User {
        id: user.id.get(),
        username: user.name.clone(),
        discriminator: match user.discriminator {
            0 => "0".to_owned(),
            n => format!("{n:04}"),
        },
        avatar: user.avatar.map(|a| a.to_string()).unwrap_or_default(),
        bot: user.bot,
        system: user.system.unwrap_or(false),
        ..Default::default()
    }
}

fn member(member: &PartialMember, author: &User) -> proto::GuildMember {
    proto::GuildMember {
        user: Some(user(member.user.as_ref().unwrap_or(author))),
        nick: member.nick.clone().unwrap_or_default(),
        roles: member.roles.iter().map(|r| r.get()).collect(),
        joined_at: member
            .joined_at
            .map(|t| t.iso_8601().to_string())
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// A sent message: ids, guild (none for a DM), author, member (when Discord gave one),
/// content, embeds.
pub fn message(sent: &Sent) -> proto::Message {
    let m = &sent.message;
    proto::Message {
        id: m.id.get(),
        channel_id: m.channel_id.get(),
        guild_id: sent.guild_id.or(m.guild_id).map_or(0, |g| g.get()),
        author: Some(user(&m.author)),
        member: m.member.as_ref().map(|pm| member(pm, &m.author)),
        content: m.content.clone(),
        embeds: m.embeds.iter().map(embed_from_discord).collect(),
        ..Default::default()
    }
}

/// discordproxy's channel type: Discord's raw number plus one for the six it knew, else
/// `UNDEFINED`.
pub fn channel_type(kind: ChannelType) -> proto::channel::Type {
    use proto::channel::Type;
    match u8::from(kind) {
        0 => Type::GuildText,
        1 => Type::Dm,
        2 => Type::GuildVoice,
        3 => Type::GroupDm,
        4 => Type::GuildCategory,
        5 => Type::GuildNews,
        _ => Type::Undefined,
    }
}

/// A channel: id, name, type, guild, position, parent; topic, nsfw and last message only for
/// text (and news) channels.
pub fn channel(channel: &Channel) -> proto::Channel {
    let text = matches!(
        channel.kind,
        ChannelType::GuildText | ChannelType::GuildAnnouncement
    );
    proto::Channel {
        id: channel.id.get(),
        r#type: channel_type(channel.kind).into(),
        guild_id: channel.guild_id.map_or(0, |g| g.get()),
        position: channel.position.unwrap_or(0),
        name: channel.name.clone().unwrap_or_default(),
        topic: if text {
            channel.topic.clone().unwrap_or_default()
        } else {
            String::new()
        },
        nsfw: text && channel.nsfw.unwrap_or(false),
        last_message_id: if text {
            channel.last_message_id.map_or(0, |m| m.get())
        } else {
            0
        },
        parent_id: channel.parent_id.map_or(0, |p| p.get()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_types_are_offset_by_one() {
        use proto::channel::Type;
        assert_eq!(channel_type(ChannelType::GuildText), Type::GuildText);
        assert_eq!(channel_type(ChannelType::Private), Type::Dm);
        assert_eq!(channel_type(ChannelType::GuildVoice), Type::GuildVoice);
        assert_eq!(channel_type(ChannelType::Group), Type::GroupDm);
        assert_eq!(
            channel_type(ChannelType::GuildCategory),
            Type::GuildCategory
        );
        assert_eq!(
            channel_type(ChannelType::GuildAnnouncement),
            Type::GuildNews
        );
        assert_eq!(channel_type(ChannelType::GuildForum), Type::Undefined);
        assert_eq!(channel_type(ChannelType::PublicThread), Type::Undefined);
    }

    #[test]
    fn embeds_go_both_ways() {
        assert_eq!(embed_to_discord(None).unwrap(), None);
        assert_eq!(
            embed_to_discord(Some(&proto::Embed::default())).unwrap(),
            None,
            "an empty embed is no embed"
        );
        let asked = proto::Embed {
            title: "Fox".into(),
            description: "a red fox".into(),
            color: 0xff0000,
            timestamp: "2026-12-02T10:00:00+00:00".into(),
            footer: Some(proto::embed::Footer {
                text: "easel".into(),
                ..Default::default()
            }),
            image: Some(proto::embed::Image {
                url: "https://example.com/fox.png".into(),
                width: 512,
                height: 384,
                ..Default::default()
            }),
            fields: vec![proto::embed::Field {
                name: "steps".into(),
                value: "20".into(),
                inline: true,
            }],
            ..Default::default()
        };
        let discord = embed_to_discord(Some(&asked)).unwrap().unwrap();
        assert_eq!(discord.kind, "rich");
        assert_eq!(discord.image.as_ref().unwrap().width, Some(512));
        let back = embed_from_discord(&discord);
        assert_eq!(
            back,
            proto::Embed {
                r#type: "rich".into(),
                timestamp: "2026-12-02T10:00:00.000000+00:00".into(),
                ..asked
            }
        );
        assert!(matches!(
            embed_to_discord(Some(&proto::Embed {
                timestamp: "yesterday".into(),
                ..Default::default()
            })),
            Err(SendError::Invalid(_))
        ));
    }
}
