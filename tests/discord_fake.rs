//! Self-test of the fake Discord in `common::discord`: twilight's own `Shard` and `Client`
//! (the libraries easel's Discord front end uses) talk to it.

mod common;

use std::time::{Duration, Instant};

use common::discord::{Author, Channel, FakeDiscord, Guild, RestCall};
use serde_json::json;
use tokio::sync::mpsc;
use twilight_gateway::{ConfigBuilder, Event, EventTypeFlags, Intents, Shard, ShardId, StreamExt};
use twilight_http::Client;
use twilight_http::request::channel::reaction::RequestReactionType;
use twilight_model::application::command::{CommandOptionType, CommandType};
use twilight_model::application::interaction::InteractionData;
use twilight_model::application::interaction::application_command::CommandOptionValue;
use twilight_model::gateway::payload::incoming::GuildCreate;
use twilight_model::http::attachment::Attachment;
use twilight_model::http::interaction::{InteractionResponse, InteractionResponseType};
use twilight_model::id::Id;

/// Upper bound for anything the tests wait for.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Application id of the fake bot.
const APP_ID: u64 = 3000;
/// The one guild.
const GUILD: u64 = 100;
/// Text channel in the guild.
const ART: u64 = 10;
/// Public thread under `ART`.
const THREAD: u64 = 11;
/// A channel id in no guild: a DM.
const DM: u64 = 555;

/// The bot user.
fn bot() -> Author {
    Author::bot(1000, "easel")
}

/// A human user.
fn alice() -> Author {
    Author::user(2000, "alice")
}

/// A fake with one guild holding `ART` and `THREAD`, with rustls' ring provider installed.
async fn start() -> FakeDiscord {
    let _ = rustls::crypto::ring::default_provider().install_default();
    FakeDiscord::start(
        bot(),
        APP_ID,
        vec![Guild {
            id: GUILD,
            name: "Studio".into(),
            channels: vec![
                Channel::text(ART, "art"),
                Channel::thread(THREAD, "fox", ART),
            ],
        }],
    )
    .await
}

/// Runs a real shard against the fake; its events (or errors) come out of the channel.
fn run_shard(fake: &FakeDiscord) -> mpsc::UnboundedReceiver<Result<Event, String>> {
    let intents = Intents::GUILDS
        | Intents::GUILD_MESSAGES
        | Intents::DIRECT_MESSAGES
        | Intents::MESSAGE_CONTENT;
    let config = ConfigBuilder::new("fake-token".into(), intents)
        .proxy_url(fake.gateway_url.clone())
        .build();
    let mut shard = Shard::with_config(ShardId::ONE, config);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = shard.next_event(EventTypeFlags::all()).await {
            let item = item.map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)));
            if tx.send(item).is_err() {
                break;
            }
        }
    });
    rx
}

/// A twilight HTTP client pointed at the fake.
fn client(fake: &FakeDiscord) -> Client {
    Client::builder()
        .token("fake-token".into())
        .proxy(fake.api_host.clone(), true)
        .build()
}

/// Next event for which `f` returns `Some`, skipping others; panics on shard errors.
async fn next<T>(
    rx: &mut mpsc::UnboundedReceiver<Result<Event, String>>,
    mut f: impl FnMut(Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let item = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("timed out waiting for a gateway event")
            .expect("shard task ended");
        match item {
            Ok(event) => {
                if let Some(v) = f(event) {
                    return v;
                }
            }
            Err(e) => panic!("shard error: {e}"),
        }
    }
}

/// A tiny 3×2 PNG.
fn png() -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, 3, 2);
    encoder.set_color(png::ColorType::Rgb);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&[7u8; 18]).unwrap();
    writer.finish().unwrap();
    bytes
}

/// READY, GUILD_CREATE, messages, interactions and thread creation reach a real shard.
#[tokio::test]
async fn gateway_events_reach_twilight() {
    let fake = start().await;
    fake.set_heartbeat_interval(100);
    let mut rx = run_shard(&fake);
    fake.wait_ready(TIMEOUT).await;

    let ready = next(&mut rx, |e| match e {
        Event::Ready(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(ready.user.id.get(), 1000);
    assert!(ready.user.bot);
    assert_eq!(ready.application.id.get(), APP_ID);
    assert_eq!(ready.resume_gateway_url, fake.gateway_url);
    let guild = next(&mut rx, |e| match e {
        Event::GuildCreate(g) => match *g {
            GuildCreate::Available(g) => Some(g),
            GuildCreate::Unavailable(_) => None,
        },
        _ => None,
    })
    .await;
    assert_eq!((guild.id.get(), guild.name.as_str()), (GUILD, "Studio"));
    assert_eq!(guild.channels.len(), 1);
    assert_eq!(guild.threads[0].parent_id, Some(Id::new(ART)));
    assert_eq!(guild.threads[0].guild_id, Some(Id::new(GUILD)));
    let identify = fake.identify_payload().unwrap();
    assert_eq!(identify["token"], "Bot fake-token");
    assert_eq!(fake.identifies(), 1);

    // A guild message mentioning the bot.
    let id = fake.message(ART, &alice(), "<@1000> draw a fox").await;
    let msg = next(&mut rx, |e| match e {
        Event::MessageCreate(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(msg.id.get(), id);
    assert_eq!(msg.content, "<@1000> draw a fox");
    assert_eq!(msg.author.id.get(), 2000);
    assert_eq!(msg.author.name, "alice");
    assert_eq!(msg.guild_id, Some(Id::new(GUILD)));
    assert_eq!(msg.channel_id.get(), ART);
    assert_eq!(msg.mentions.len(), 1);
    assert_eq!(msg.mentions[0].id.get(), 1000);
    assert!(msg.member.is_some());

    // A DM: no guild.
    fake.message(DM, &alice(), "hi").await;
    let dm = next(&mut rx, |e| match e {
        Event::MessageCreate(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(dm.guild_id, None);
    assert_eq!(
        dm.channel_type,
        Some(twilight_model::channel::ChannelType::Private)
    );

    // A message with a user attachment hosted by the fake.
    let attachment = fake.attachment(THREAD, "sketch.png", &png());
    fake.message_with(
        THREAD,
        &alice(),
        "like this",
        json!({"attachments": [attachment]}),
    )
    .await;
    let with_file = next(&mut rx, |e| match e {
        Event::MessageCreate(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(with_file.attachments[0].filename, "sketch.png");
    let served = easel::forge::http_client()
        .get(with_file.attachments[0].url.as_str())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(served.as_ref(), png().as_slice());

    // Slash command, autocomplete, button.
    let (iid, token) = fake
        .slash_command(
            Some(GUILD),
            ART,
            &alice(),
            "draw",
            json!([{"name": "prompt", "type": 3, "value": "a fox"}]),
        )
        .await;
    let interaction = next(&mut rx, |e| match e {
        Event::InteractionCreate(i) => Some(i.0),
        _ => None,
    })
    .await;
    assert_eq!(
        (interaction.id.get(), interaction.token.as_str()),
        (iid, token.as_str())
    );
    assert_eq!(interaction.guild_id, Some(Id::new(GUILD)));
    assert_eq!(interaction.author_id(), Some(Id::new(2000)));
    let Some(InteractionData::ApplicationCommand(data)) = &interaction.data else {
        panic!("not a command: {interaction:?}");
    };
    assert_eq!(data.name, "draw");
    assert_eq!(data.options[0].name, "prompt");
    assert_eq!(
        data.options[0].value,
        CommandOptionValue::String("a fox".into())
    );

    fake.autocomplete(
        None,
        DM,
        &alice(),
        "draw",
        json!([{"name": "style", "type": 3, "value": "wat", "focused": true}]),
    )
    .await;
    let auto = next(&mut rx, |e| match e {
        Event::InteractionCreate(i) => Some(i.0),
        _ => None,
    })
    .await;
    assert_eq!(auto.guild_id, None);
    assert_eq!(auto.user.as_ref().map(|u| u.id.get()), Some(2000));
    let Some(InteractionData::ApplicationCommand(data)) = &auto.data else {
        panic!("not autocomplete: {auto:?}");
    };
    assert_eq!(
        data.options[0].value,
        CommandOptionValue::Focused("wat".into(), CommandOptionType::String)
    );

    fake.component(Some(GUILD), ART, &alice(), "reroll:42", id)
        .await;
    let click = next(&mut rx, |e| match e {
        Event::InteractionCreate(i) => Some(i.0),
        _ => None,
    })
    .await;
    let Some(InteractionData::MessageComponent(data)) = &click.data else {
        panic!("not a component: {click:?}");
    };
    assert_eq!(data.custom_id, "reroll:42");
    assert_eq!(click.message.as_ref().map(|m| m.id.get()), Some(id));

    // A new thread.
    fake.create_channel(GUILD, Channel::thread(12, "owl", ART))
        .await;
    let thread = next(&mut rx, |e| match e {
        Event::ThreadCreate(t) => Some(t.0),
        _ => None,
    })
    .await;
    assert_eq!(
        (thread.id.get(), thread.parent_id),
        (12, Some(Id::new(ART)))
    );
    assert_eq!(thread.name.as_deref(), Some("owl"));

    // Heartbeats were ACKed (no zombie reconnects) over one zstd-stream connection.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(fake.heartbeats() >= 2, "heartbeats: {}", fake.heartbeats());
    assert_eq!(fake.connections(), 1);
    assert!(fake.gateway_queries()[0].contains("compress=zstd-stream"));
}

/// twilight's REST calls are recorded (multipart files intact, emoji decoded) and its
/// deserializers accept every answer.
#[tokio::test]
async fn rest_calls_are_recorded_and_answered() {
    let fake = start().await;
    let http = client(&fake);

    // Message with an attachment: multipart, bytes intact, answer readable by twilight.
    let bytes = png();
    let sent = http
        .create_message(Id::new(ART))
        .content("here you go")
        .attachments(&[Attachment::from_bytes("a.png".into(), bytes.clone(), 1)])
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    assert_eq!(sent.content, "here you go");
    assert_eq!(sent.author.id.get(), 1000);
    assert_eq!(sent.attachments[0].filename, "a.png");
    assert_eq!(sent.attachments[0].width, Some(3));
    let calls = fake
        .wait_for_calls(
            1,
            |c| c.is("POST", "/api/v10/channels/10/messages"),
            TIMEOUT,
        )
        .await;
    assert_eq!(calls[0].json.as_ref().unwrap()["content"], "here you go");
    assert_eq!(calls[0].files, vec![("a.png".to_owned(), bytes.clone())]);
    assert_eq!(calls[0].authorization.as_deref(), Some("Bot fake-token"));
    // The attachment URL serves the file.
    let served = easel::forge::http_client()
        .get(sent.attachments[0].url.as_str())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(served.as_ref(), bytes.as_slice());

    // Reaction: twilight percent-encodes the emoji, `path` holds it decoded.
    http.create_reaction(
        Id::new(ART),
        sent.id,
        &RequestReactionType::Unicode { name: "👍" },
    )
    .await
    .unwrap();
    let reaction_path = format!("/api/v10/channels/10/messages/{}/reactions/👍/@me", sent.id);
    fake.wait_for_calls(1, |c| c.is("PUT", &reaction_path), TIMEOUT)
        .await;

    // Edit and delete.
    let edited = http
        .update_message(Id::new(ART), sent.id)
        .content(Some("edited"))
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    assert_eq!(edited.content, "edited");
    assert_eq!(edited.attachments.len(), 1);
    assert!(edited.edited_timestamp.is_some());
    http.delete_message(Id::new(ART), sent.id).await.unwrap();

    // Channels, users, application, commands.
    let thread = http
        .channel(Id::new(THREAD))
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    assert_eq!(thread.parent_id, Some(Id::new(ART)));
    let me = http.current_user().await.unwrap().model().await.unwrap();
    assert_eq!(me.id.get(), 1000);
    let app = http
        .current_user_application()
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    assert_eq!(app.id.get(), APP_ID);
    let commands = [twilight_model::application::command::Command {
        application_id: None,
        contexts: None,
        default_member_permissions: None,
        description: "Draw something".into(),
        description_localizations: None,
        #[allow(deprecated)]
        dm_permission: None,
        guild_id: None,
        id: None,
        integration_types: None,
        kind: CommandType::ChatInput,
        name: "draw".into(),
        name_localizations: None,
        nsfw: None,
        options: Vec::new(),
        version: Id::new(1),
    }];
    let interaction_client = http.interaction(Id::new(APP_ID));
    let global = interaction_client
        .set_global_commands(&commands)
        .await
        .unwrap()
        .models()
        .await
        .unwrap();
    assert_eq!(global[0].name, "draw");
    assert!(global[0].id.is_some());
    let guild = interaction_client
        .set_guild_commands(Id::new(GUILD), &commands)
        .await
        .unwrap()
        .models()
        .await
        .unwrap();
    assert_eq!(guild[0].guild_id, Some(Id::new(GUILD)));
    assert_eq!(fake.commands(None)[0]["name"], "draw");

    // Interaction: defer, edit the original, follow up with a file.
    let (iid, token) = fake
        .slash_command(Some(GUILD), ART, &alice(), "draw", json!([]))
        .await;
    interaction_client
        .create_response(
            Id::new(iid),
            &token,
            &InteractionResponse {
                kind: InteractionResponseType::DeferredChannelMessageWithSource,
                data: None,
            },
        )
        .await
        .unwrap();
    let original = interaction_client
        .update_response(&token)
        .content(Some("done"))
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    assert_eq!(original.content, "done");
    let followup = interaction_client
        .create_followup(&token)
        .content("and a file")
        .attachments(&[Attachment::from_bytes("b.png".into(), bytes.clone(), 7)])
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    assert_eq!(followup.attachments[0].filename, "b.png");
    interaction_client.delete_response(&token).await.unwrap();
    let callback = format!("/api/v10/interactions/{iid}/{token}/callback");
    let calls = fake
        .wait_for_calls(1, |c| c.is("POST", &callback), TIMEOUT)
        .await;
    assert_eq!(calls[0].json.as_ref().unwrap()["type"], 5);
    assert_eq!(calls[0].status, 204);
    let webhook = format!("/api/v10/webhooks/{APP_ID}/{token}");
    let calls = fake
        .wait_for_calls(1, |c| c.is("POST", &webhook), TIMEOUT)
        .await;
    assert_eq!(calls[0].files[0].1, bytes);

    // A second acknowledgement is refused, like Discord does.
    let again = interaction_client
        .create_response(
            Id::new(iid),
            &token,
            &InteractionResponse {
                kind: InteractionResponseType::DeferredChannelMessageWithSource,
                data: None,
            },
        )
        .await;
    assert!(again.is_err());

    // Unknown routes: 404, recorded.
    assert!(http.roles(Id::new(GUILD)).await.is_err());
    let unknown = fake
        .wait_for_calls(1, |c| c.is("GET", "/api/v10/guilds/100/roles"), TIMEOUT)
        .await;
    assert_eq!(unknown[0].status, 404);
    assert_eq!(
        unknown[0].response.as_ref().unwrap()["message"],
        "Unknown route"
    );
}

/// A 4000 close makes the shard RESUME at `resume_gateway_url`, and events still arrive.
#[tokio::test]
async fn shard_resumes_after_a_dropped_connection() {
    let fake = start().await;
    let mut rx = run_shard(&fake);
    fake.wait_ready(TIMEOUT).await;
    next(&mut rx, |e| {
        matches!(e, Event::GuildCreate(_)).then_some(())
    })
    .await;

    fake.drop_connection(4000).await;
    fake.wait_ready(TIMEOUT).await;
    next(&mut rx, |e| matches!(e, Event::Resumed).then_some(())).await;
    assert_eq!((fake.identifies(), fake.resumes()), (1, 1));
    assert_eq!(fake.connections(), 2);

    fake.message(THREAD, &alice(), "still there?").await;
    let msg = next(&mut rx, |e| match e {
        Event::MessageCreate(m) => Some(m),
        Event::Ready(_) => panic!("identified again instead of resuming"),
        _ => None,
    })
    .await;
    assert_eq!(msg.content, "still there?");
    assert_eq!(msg.channel_id.get(), THREAD);
}

/// A 429 with Discord's headers makes twilight wait `retry_after` and retry once.
#[tokio::test]
async fn rate_limited_call_is_retried() {
    let fake = start().await;
    let http = client(&fake);
    fake.rate_limit_next("POST", "/api/v10/channels/10/messages", 1.0);
    let started = Instant::now();
    let msg = http
        .create_message(Id::new(ART))
        .content("patience")
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(msg.content, "patience");
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}"
    );
    let calls: Vec<RestCall> = fake
        .wait_for_calls(
            2,
            |c| c.is("POST", "/api/v10/channels/10/messages"),
            TIMEOUT,
        )
        .await;
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [429, 200]);
}
