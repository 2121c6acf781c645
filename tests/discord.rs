//! The Discord front end end to end: the real `easel` binary, its twilight shard and HTTP
//! client pointed at the fake Discord of `common::discord`; every scenario asserts the REST
//! calls the bot made, in order.

mod common;

use std::time::Duration;

use common::discord::{Author, Channel, FakeDiscord, Guild, RestCall};
use common::{Server, ServerOptions};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(20);
const APP: u64 = 3000;
const GUILD: u64 = 100;
const ART: u64 = 10;
const OFF_TOPIC: u64 = 12;
const THREAD: u64 = 11;
const DM: u64 = 555;

fn alice() -> Author {
    Author::user(2000, "alice")
}

fn bob() -> Author {
    Author::user(2001, "bob")
}

struct Bot {
    fake: FakeDiscord,
    server: Server,
    _dir: tempfile::TempDir,
}

/// A fake Discord with guild "Studio" (#art, #off-topic, thread "fox" in #art) and easel
/// connected to it; `discord` is added to `[discord]`, `more` appended (further sections).
async fn start(discord: &str, more: &str, workers: u32) -> Bot {
    start_with(discord, more, workers, "").await
}

/// [`start`], with extra `[workers]` keys.
async fn start_with(discord: &str, more: &str, workers: u32, workers_toml: &str) -> Bot {
    start_bot(BotOptions {
        discord,
        more,
        workers,
        workers_toml,
        ..BotOptions::default()
    })
    .await
}

/// How to start a bot.
#[derive(Default)]
struct BotOptions<'a> {
    /// Keys of `[discord]`.
    discord: &'a str,
    /// Further sections.
    more: &'a str,
    /// Simulated backends.
    workers: u32,
    /// Keys of `[workers]`.
    workers_toml: &'a str,
    /// Files of the repository's `plugins/` copied into the server's plugin directory.
    plugins: &'a [&'a str],
    /// Environment of the server.
    env: &'a [(&'a str, &'a str)],
    /// `[simulated] step_ms`: how long each step of a simulated job takes.
    step_ms: u64,
}

const REPO_PLUGINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins");

async fn start_bot(options: BotOptions<'_>) -> Bot {
    let BotOptions {
        discord,
        more,
        workers,
        workers_toml,
        plugins,
        env,
        step_ms,
    } = options;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeDiscord::start(
        Author::bot(1000, "easel"),
        APP,
        vec![Guild {
            id: GUILD,
            name: "Studio".into(),
            channels: vec![
                Channel::text(ART, "art"),
                Channel::text(OFF_TOPIC, "off-topic"),
                Channel::thread(THREAD, "fox", ART),
            ],
        }],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    if !plugins.is_empty() {
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        for file in plugins {
            std::fs::copy(
                format!("{REPO_PLUGINS}/{file}"),
                dir.path().join("plugins").join(file),
            )
            .unwrap();
        }
    }
    let db = format!("sqlite://{}", dir.path().join("easel.db").display());
    let extra = format!(
        "[auth]\ndiscord_token = \"test-token\"\n[grpc]\nenabled = false\n\
         [discord]\ngateway_url = {:?}\napi_base = \"http://{}\"\n{discord}\n{more}\n",
        fake.gateway_url, fake.api_host
    );
    let server = Server::start(ServerOptions {
        db_url: &db,
        dir: dir.path(),
        step_ms,
        workers,
        workers_toml,
        extra_toml: &extra,
        env,
        ..ServerOptions::default()
    })
    .await;
    fake.wait_ready(TIMEOUT).await;
    Bot {
        fake,
        server,
        _dir: dir,
    }
}

/// What a REST call did to the user's message `message` in `channel`: `+emoji`, `-emoji`,
/// `reply:<text>` (with ` [file]` when a picture is attached); `None` if it is about something
/// else.
fn about(call: &RestCall, channel: u64, message: u64) -> Option<String> {
    let reactions = format!("/api/v10/channels/{channel}/messages/{message}/reactions/");
    if let Some(emoji) = call
        .path
        .strip_prefix(&reactions)
        .and_then(|rest| rest.strip_suffix("/@me"))
    {
        if call.status >= 300 {
            return None; // A 429 retried: the retry is what counts.
        }
        return match call.method.as_str() {
            "PUT" => Some(format!("+{emoji}")),
            "DELETE" => Some(format!("-{emoji}")),
            _ => None,
        };
    }
    let json = call.json.as_ref()?;
    let replied = json["message_reference"]["message_id"].as_str()? == message.to_string();
    if call.is("POST", &format!("/api/v10/channels/{channel}/messages")) && replied {
        let file = if call.files.is_empty() { "" } else { " [file]" };
        return Some(format!(
            "reply:{}{file}",
            json["content"].as_str().unwrap_or("")
        ));
    }
    None
}

impl Bot {
    /// Waits for `expected.len()` actions on `message` and checks them, in order.
    async fn expect(&self, channel: u64, message: u64, expected: &[&str]) {
        let calls = self
            .fake
            .wait_for_calls(
                expected.len(),
                |c| about(c, channel, message).is_some(),
                TIMEOUT,
            )
            .await;
        let seen: Vec<String> = calls
            .iter()
            .filter_map(|c| about(c, channel, message))
            .collect();
        assert_eq!(seen, expected, "actions on message {message}");
    }

    /// Nothing was done about `message`.
    fn untouched(&self, channel: u64, message: u64) {
        let seen: Vec<String> = self
            .fake
            .calls()
            .iter()
            .filter_map(|c| about(c, channel, message))
            .collect();
        assert!(seen.is_empty(), "message {message} got {seen:?}");
    }
}

/// The actions of a request that finishes, with `reply` the repr of its args.
fn finished(args: &str) -> Vec<String> {
    vec![
        "+👍".into(),
        "+⏱️".into(),
        "-⏱️".into(),
        "+💯".into(),
        format!("reply:Parsed args: {args} processed by hostname: simulated-0 [file]"),
    ]
}

#[tokio::test]
async fn ready_greets_allowed_channels_and_registers_the_command() {
    let bot = start(
        "",
        "[discord.settings]\nlisten_channels = [\"Studio:art\"]\n",
        1,
    )
    .await;
    let greetings = bot
        .fake
        .wait_for_calls(
            1,
            |c| c.method == "POST" && c.json.as_ref().is_some_and(|j| j["content"] == "I'm here!"),
            TIMEOUT,
        )
        .await;
    assert_eq!(
        greetings[0].path,
        format!("/api/v10/channels/{ART}/messages")
    );
    let registered = bot
        .fake
        .wait_for_calls(
            1,
            |c| c.is("PUT", &format!("/api/v10/applications/{APP}/commands")),
            TIMEOUT,
        )
        .await;
    let command = &registered[0].json.as_ref().unwrap()[0];
    assert_eq!(command["name"], "art");
    let options: Vec<&str> = command["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        options,
        [
            "prompt",
            "negative_prompt",
            "cfg",
            "steps",
            "seed",
            "width",
            "height",
            "model"
        ]
    );
    // Only #art: not #off-topic, not the thread.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let greeted = bot
        .fake
        .calls()
        .iter()
        .filter(|c| c.json.as_ref().is_some_and(|j| j["content"] == "I'm here!"))
        .count();
    assert_eq!(greeted, 1);
}

#[tokio::test]
async fn the_parse_table_through_messages() {
    let bot = start("announce = false\ncommands = \"off\"", "", 1).await;
    let a = alice();
    let rows: Vec<(&str, Vec<String>)> = vec![
        ("/art a cat", finished("{'prompt': 'a cat', 'cfg': 7.5, 'steps': 50}")),
        (
            "/art a cat --cfg 5",
            finished("{'prompt': 'a cat', 'cfg': 5.0, 'steps': 50}"),
        ),
        ("/art a cat --cfg 5 more words", {
            let mut v = finished("{'prompt': 'a cat', 'cfg': 5.0, 'steps': 50}");
            v.insert(1, "reply:Skipping unknown args: more words".into());
            v
        }),
        (
            "/art a \"cat dog\" --steps 10",
            finished("{'prompt': 'a \"cat dog\"', 'cfg': 7.5, 'steps': 10}"),
        ),
        ("/art a cat -h", {
            let mut v = finished("{'prompt': 'a cat', 'cfg': 7.5, 'steps': 50}");
            v.insert(1, "reply:Skipping unknown args: -h".into());
            v
        }),
        (
            "/art a \"cat",
            vec![
                "+👍".into(),
                "reply:Prompt has open quotation with no closing quotation. Please fix and try again.".into(),
            ],
        ),
        (
            "/art a cat --steps x",
            vec![
                "+👍".into(),
                "reply:Prompt has invalid integer input on integer argument. Please fix and try again.".into(),
            ],
        ),
        (
            "/art --steps 5",
            vec!["+👍".into(), "reply:Skipping request with empty prompt.".into()],
        ),
        (
            "/art a red fox --st 20",
            finished("{'prompt': 'a red fox', 'cfg': 7.5, 'steps': 20}"),
        ),
        ("/art a cat --foo bar", {
            let mut v = finished("{'prompt': 'a cat', 'cfg': 7.5, 'steps': 50}");
            v.insert(1, "reply:Skipping unknown args: --foo bar".into());
            v
        }),
        (
            "/art a cat --steps 2.5",
            vec![
                "+👍".into(),
                "reply:Prompt has invalid integer input on integer argument. Please fix and try again.".into(),
            ],
        ),
        (
            "/art a cat --cfg",
            vec![
                "+👍".into(),
                "reply:Prompt has invalid integer input on integer argument. Please fix and try again.".into(),
            ],
        ),
        (
            "/art --steps 20 a cat",
            finished("{'prompt': 'a cat', 'cfg': 7.5, 'steps': 20}"),
        ),
        (
            "/art a cat --c=3",
            finished("{'prompt': 'a cat', 'cfg': 3.0, 'steps': 50}"),
        ),
        (
            "/art a cat --cfg -1",
            finished("{'prompt': 'a cat', 'cfg': -1.0, 'steps': 50}"),
        ),
    ];
    for (content, expected) in &rows {
        let id = bot.fake.message(ART, &a, content).await;
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        bot.expect(ART, id, &expected).await;
    }
    // --help: the help text, then the done emoji.
    let id = bot.fake.message(ART, &a, "/art a cat --help").await;
    let calls = bot
        .fake
        .wait_for_calls(3, |c| about(c, ART, id).is_some(), TIMEOUT)
        .await;
    let seen: Vec<String> = calls.iter().filter_map(|c| about(c, ART, id)).collect();
    assert_eq!(seen[0], "+👍");
    assert!(
        seen[1].starts_with("reply:usage: StableDiscord [--cfg CFG] [--steps STEPS] [prompt ...]"),
        "{seen:?}"
    );
    assert_eq!(seen[2], "+💯");
    // Not addressed to the bot: nothing at all.
    let ignored = bot.fake.message(ART, &a, "/ART a cat").await;
    let other = bot.fake.message(ART, &a, "hello /art").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bot.untouched(ART, ignored);
    bot.untouched(ART, other);
    // No job was queued for the errors: as many PNGs as finished requests.
    let pictures = bot
        .fake
        .calls()
        .iter()
        .filter(|c| !c.files.is_empty())
        .count();
    assert_eq!(pictures, 10);
    // Each is a real PNG of the default size, named after its job.
    for call in bot.fake.calls().iter().filter(|c| !c.files.is_empty()) {
        let (name, bytes) = &call.files[0];
        assert!(name.ends_with(".png") && name.len() == 12, "{name}");
        assert_eq!(common::png_size(bytes), (512, 512));
    }
}

#[tokio::test]
async fn lists_the_bot_itself_threads_new_channels_and_dms() {
    let bot = start(
        "announce = false\ncommands = \"off\"",
        "[discord.settings]\nlisten_users = [\"alice#0\"]\nignore_channels = [\"Studio:off-topic\"]\n",
        1,
    )
    .await;
    let a = alice();
    let by_bob = bot.fake.message(ART, &bob(), "/art a cat").await;
    let by_bot = bot.fake.message(ART, &bot.fake.bot, "/art a cat").await;
    let off_topic = bot.fake.message(OFF_TOPIC, &a, "/art a cat").await;
    let dm = bot.fake.message(DM, &a, "/art a cat").await;
    // A thread of #art follows #art; a channel created after start works.
    let in_thread = bot.fake.message(THREAD, &a, "/art x --steps -").await;
    bot.expect(
        THREAD,
        in_thread,
        &[
            "+👍",
            "reply:Prompt has invalid integer input on integer argument. Please fix and try again.",
        ],
    )
    .await;
    bot.fake
        .create_channel(GUILD, Channel::text(13, "new-art"))
        .await;
    let fresh = bot.fake.message(13, &a, "/art --steps 3").await;
    bot.expect(
        13,
        fresh,
        &["+👍", "reply:Skipping request with empty prompt."],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bot.untouched(ART, by_bob);
    bot.untouched(ART, by_bot);
    bot.untouched(OFF_TOPIC, off_topic);
    bot.untouched(DM, dm);
}

#[tokio::test]
async fn direct_messages_when_allowed() {
    let bot = start(
        "announce = false\ncommands = \"off\"\nallow_dms = true",
        "",
        1,
    )
    .await;
    let dm = bot.fake.message(DM, &alice(), "/art --steps 3").await;
    bot.expect(
        DM,
        dm,
        &["+👍", "reply:Skipping request with empty prompt."],
    )
    .await;
}

#[tokio::test]
async fn a_job_that_fails_then_is_requeued() {
    // No simulated backend: one slow easel worker whose job misses its deadline, and one
    // fault fails the job.
    let bot = start_with(
        "announce = false\ncommands = \"off\"",
        "",
        0,
        "deadline_min_s = 0.5\ndeadline_scale = 0.001\nmax_faults = 1",
    )
    .await;
    let mut worker = std::process::Command::new(common::easel_bin())
        .args(["worker", "--host-ip", "127.0.0.1", "--host-port"])
        .arg(bot.server.pool_port.to_string())
        .args(["--step-ms", "100000"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let id = bot.fake.message(ART, &alice(), "/art a slow fox").await;
    let calls = bot
        .fake
        .wait_for_calls(5, |c| about(c, ART, id).is_some(), TIMEOUT)
        .await;
    let _ = worker.kill();
    let _ = worker.wait();
    let seen: Vec<String> = calls.iter().filter_map(|c| about(c, ART, id)).collect();
    assert_eq!(seen[..4], ["+👍", "+⏱️", "-⏱️", "+❌"], "{seen:?}");
    assert!(
        seen[4].starts_with("reply:Sorry, this request failed: ") && seen[4].len() > 40,
        "{seen:?}"
    );

    // An operator requeues it (the dashboard's action) and a quick worker takes it: the user
    // sees it queued again, then gets the picture on the same message.
    let failed = bot.server.wait_log("job failed", 1).await;
    let job_id = failed[0]
        .split("job_id=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the failed job's id")
        .to_owned();
    let mut worker = std::process::Command::new(common::easel_bin())
        .args(["worker", "--host-ip", "127.0.0.1", "--host-port"])
        .arg(bot.server.pool_port.to_string())
        .args(["--step-ms", "1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let requeued = easel::forge::http_client()
        .post(bot.server.url(&format!("/api/admin/jobs/{job_id}/requeue")))
        .header("Authorization", &bot.server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(requeued.status(), 200);
    let calls = bot
        .fake
        .wait_for_calls(9, |c| about(c, ART, id).is_some(), TIMEOUT)
        .await;
    let _ = worker.kill();
    let _ = worker.wait();
    let seen: Vec<String> = calls.iter().filter_map(|c| about(c, ART, id)).collect();
    assert_eq!(seen[5..8], ["+⏱️", "-⏱️", "+💯"], "{seen:?}");
    assert!(
        seen[8].starts_with("reply:Parsed args: ") && seen[8].ends_with(" [file]"),
        "{seen:?}"
    );
}

/// The interaction calls of `token`, as (method, path suffix after the token, json).
fn interaction_calls(fake: &FakeDiscord, id: u64, token: &str) -> Vec<(String, Value)> {
    let callback = format!("/api/v10/interactions/{id}/{token}/callback");
    let webhook = format!("/api/v10/webhooks/{APP}/{token}");
    fake.calls()
        .iter()
        .filter_map(|c| {
            let what = if c.path == callback {
                "callback".to_owned()
            } else {
                let rest = c.path.strip_prefix(&webhook)?;
                format!("{} webhook{rest}", c.method)
            };
            let mut json = c.json.clone().unwrap_or(Value::Null);
            if !c.files.is_empty() {
                json["files"] = json!(c.files.iter().map(|f| f.0.clone()).collect::<Vec<_>>());
            }
            Some((what, json))
        })
        .collect()
}

#[tokio::test]
async fn the_slash_command_end_to_end() {
    let bot = start("announce = false\ncommands = \"guild\"", "", 1).await;
    // Registered in the guild.
    bot.fake
        .wait_for_calls(
            1,
            |c| {
                c.is(
                    "PUT",
                    &format!("/api/v10/applications/{APP}/guilds/{GUILD}/commands"),
                )
            },
            TIMEOUT,
        )
        .await;
    let (id, token) = bot
        .fake
        .slash_command(
            Some(GUILD),
            ART,
            &alice(),
            "art",
            json!([
                {"name": "prompt", "type": 3, "value": "a red fox"},
                {"name": "steps", "type": 4, "value": 20},
            ]),
        )
        .await;
    let webhook = format!("/api/v10/webhooks/{APP}/{token}");
    bot.fake
        .wait_for_calls(
            1,
            |c| c.is("POST", &webhook) && !c.files.is_empty(),
            TIMEOUT,
        )
        .await;
    let calls = interaction_calls(&bot.fake, id, &token);
    assert_eq!(calls[0].0, "callback");
    assert_eq!(calls[0].1["type"], 5, "deferred first");
    assert_eq!(calls[1].0, "PATCH webhook/messages/@original");
    let queued = calls[1].1["content"].as_str().unwrap();
    assert!(
        queued.starts_with("Queued `") && queued.ends_with("`: a red fox"),
        "{queued}"
    );
    let job = &queued[8..16];
    assert_eq!(calls[2].0, "POST webhook");
    assert_eq!(
        calls[2].1["content"],
        "Parsed args: {'prompt': 'a red fox', 'cfg': 7.5, 'steps': 20} processed by hostname: simulated-0"
    );
    assert_eq!(calls[2].1["files"], json!([format!("{job}.png")]));
    let buttons: Vec<&str> = calls[2].1["components"][0]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        buttons,
        [
            format!("easel:reroll:{job}").as_str(),
            format!("easel:delete:{job}").as_str()
        ]
    );
    let result_id: u64 = bot
        .fake
        .calls()
        .iter()
        .find(|c| c.is("POST", &webhook))
        .and_then(|c| c.response.as_ref()?["id"].as_str()?.parse().ok())
        .unwrap();

    // Re-roll: the same request with a new seed, answered on the result message.
    let (reroll, reroll_token) = bot
        .fake
        .component(
            Some(GUILD),
            ART,
            &alice(),
            &format!("easel:reroll:{job}"),
            result_id,
        )
        .await;
    let again = bot
        .fake
        .wait_for_calls(
            1,
            |c| about(c, ART, result_id).is_some_and(|a| a.ends_with("[file]")),
            TIMEOUT,
        )
        .await;
    let text = about(&again[0], ART, result_id).unwrap();
    assert!(
        text.starts_with(
            "reply:Parsed args: {'prompt': 'a red fox', 'cfg': 7.5, 'steps': 20, 'seed': "
        ),
        "{text}"
    );
    assert_eq!(
        interaction_calls(&bot.fake, reroll, &reroll_token)[0].1["type"],
        6
    );

    // Delete: not by someone else; by the requester.
    let (refused, refused_token) = bot
        .fake
        .component(
            Some(GUILD),
            ART,
            &bob(),
            &format!("easel:delete:{job}"),
            result_id,
        )
        .await;
    let callback = format!("/api/v10/interactions/{refused}/{refused_token}/callback");
    let answer = bot
        .fake
        .wait_for_calls(1, |c| c.path == callback, TIMEOUT)
        .await;
    let answer = answer[0].json.as_ref().unwrap();
    assert_eq!(
        (answer["type"].clone(), answer["data"]["flags"].clone()),
        (json!(4), json!(64))
    );
    bot.fake
        .component(
            Some(GUILD),
            ART,
            &alice(),
            &format!("easel:delete:{job}"),
            result_id,
        )
        .await;
    bot.fake
        .wait_for_calls(
            1,
            |c| {
                c.is(
                    "DELETE",
                    &format!("/api/v10/channels/{ART}/messages/{result_id}"),
                )
            },
            TIMEOUT,
        )
        .await;

    // Model autocomplete from the catalog.
    let store = easel::store::Store::connect(&format!(
        "sqlite://{}",
        bot.server.dir.join("easel.db").display()
    ))
    .await
    .unwrap();
    store
        .add_model("sdxl_base", Some("SDXL"), false)
        .await
        .unwrap();
    store.add_model("flux_dev", None, false).await.unwrap();
    // The server reads the catalog through a cache (models added behind its back, as here
    // through the store, appear within its time to live): ask until they do.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let (auto, auto_token) = bot
            .fake
            .autocomplete(
                Some(GUILD),
                ART,
                &alice(),
                "art",
                json!([
                    {"name": "prompt", "type": 3, "value": "x"},
                    {"name": "model", "type": 3, "value": "sd", "focused": true},
                ]),
            )
            .await;
        let callback = format!("/api/v10/interactions/{auto}/{auto_token}/callback");
        let answer = bot
            .fake
            .wait_for_calls(1, |c| c.path == callback, TIMEOUT)
            .await;
        let answer = answer[0].json.as_ref().unwrap();
        assert_eq!(answer["type"], 8);
        if answer["data"]["choices"] == json!([{"name": "SDXL", "value": "sdxl_base"}]) {
            break;
        }
        assert_eq!(
            answer["data"]["choices"],
            json!([]),
            "only the stale catalog"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the new models never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.close().await;
}

/// 4096×4096 is over the pixel limit: refused with its message whatever the model policy's
/// failure policy is, while that policy cannot load — from a message, from `/art`, and over
/// HTTP (Navigator's 400). Nothing is queued.
#[tokio::test]
async fn oversized_requests_are_refused_under_every_failure_policy() {
    const REFUSAL: &str = "The total value of (Width * Height) must not exceed 3686400";
    for policy in ["builtin", "fail-open", "fail-closed"] {
        let more = format!(
            "[plugins.roles]\nparser = \"parser-extended\"\nmodel-policy = \"missing\"\n\
             [plugins.missing]\non_failure = \"{policy}\"\n"
        );
        let bot = start_bot(BotOptions {
            discord: "announce = false\ncommands = \"off\"",
            more: &more,
            workers: 1,
            plugins: &["parser-extended.wasm"],
            ..BotOptions::default()
        })
        .await;
        let id = bot
            .fake
            .message(ART, &alice(), "/art a fox --size 4096x4096")
            .await;
        bot.expect(ART, id, &["+👍", &format!("reply:{REFUSAL}")])
            .await;

        let (interaction, token) = bot
            .fake
            .slash_command(
                Some(GUILD),
                ART,
                &alice(),
                "art",
                json!([
                    {"name": "prompt", "type": 3, "value": "a fox"},
                    {"name": "width", "type": 4, "value": 4096},
                    {"name": "height", "type": 4, "value": 4096},
                ]),
            )
            .await;
        let original = format!("/api/v10/webhooks/{APP}/{token}/messages/@original");
        bot.fake
            .wait_for_calls(1, |c| c.is("PATCH", &original), TIMEOUT)
            .await;
        let calls = interaction_calls(&bot.fake, interaction, &token);
        let said: Vec<(&str, &str)> = calls
            .iter()
            .map(|(what, json)| (what.as_str(), json["content"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(
            said,
            [
                ("callback", ""),
                ("POST webhook", REFUSAL),
                ("PATCH webhook/messages/@original", "Not queued: a fox"),
            ],
            "with on_failure = {policy}"
        );

        let response = easel::forge::http_client()
            .post(bot.server.url("/api/queue/user/txt2img"))
            .header("Authorization", &bot.server.token)
            .json(&json!({"model_name": "m", "prompt": "a fox", "width": 4096, "height": 4096}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"error": REFUSAL})
        );
        let store = easel::store::Store::connect(&format!(
            "sqlite://{}",
            bot.server.dir.join("easel.db").display()
        ))
        .await
        .unwrap();
        assert!(store.jobs().await.unwrap().is_empty(), "nothing was queued");
        store.close().await;
    }
}

/// 2,000 requests through Discord while the job-event broadcast holds a single event: every
/// request gets its picture (followers do not depend on the broadcast), and no job is still
/// followed at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_gets_its_reply_with_a_tiny_event_buffer() {
    const JOBS: usize = 2000;
    let mut bot = start_bot(BotOptions {
        // A bot whose global rate limit Discord raised: the test is about the events, not
        // about waiting out 50 requests per second.
        discord: "announce = false\ncommands = \"off\"\nglobal_rate_limit = 10000",
        more: "[plugins.roles]\nparser = \"parser-extended\"\n",
        workers: 4,
        plugins: &["parser-extended.wasm"],
        env: &[("EASEL_EVENT_BUFFER", "1")],
        ..BotOptions::default()
    })
    .await;
    let started = std::time::Instant::now();
    let mut ids = Vec::with_capacity(JOBS);
    for i in 0..JOBS {
        let content = format!("/art fox {i} --size 64x64 --steps 2");
        ids.push(bot.fake.message(ART, &alice(), &content).await);
    }
    eprintln!("{JOBS} messages sent in {:?}", started.elapsed());
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let with_picture = |c: &RestCall| !c.files.is_empty();
    while bot.fake.count_calls(with_picture) < JOBS {
        assert!(
            std::time::Instant::now() < deadline,
            "{} pictures of {JOBS}",
            bot.fake.count_calls(with_picture)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{JOBS} pictures after {:?}", started.elapsed());
    let pictures: Vec<RestCall> = bot.fake.calls().into_iter().filter(with_picture).collect();
    let answered: std::collections::HashSet<String> = pictures
        .iter()
        .filter_map(|c| c.json.as_ref()?["message_reference"]["message_id"].as_str())
        .map(str::to_owned)
        .collect();
    for id in &ids {
        assert!(
            answered.contains(&id.to_string()),
            "message {id} got no picture"
        );
    }
    let status = bot.server.terminate();
    assert!(status.success(), "{status:?}");
    let followed = bot.server.lines_with("jobs still followed at shutdown");
    assert_eq!(followed.len(), 1, "{}", bot.server.stderr());
    assert!(followed[0].ends_with("jobs=0"), "{}", followed[0]);
}

#[tokio::test]
async fn resume_after_a_dropped_connection_and_a_429() {
    let bot = start("announce = false\ncommands = \"off\"", "", 1).await;
    bot.fake.drop_connection(4000).await;
    let deadline = std::time::Instant::now() + TIMEOUT;
    while bot.fake.resumes() < 1 {
        assert!(std::time::Instant::now() < deadline, "no RESUME");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bot.fake.identifies(), 1, "resumed, not identified again");
    let id = bot.fake.message(ART, &alice(), "/art --steps 3").await;
    bot.expect(
        ART,
        id,
        &["+👍", "reply:Skipping request with empty prompt."],
    )
    .await;

    // One 429 on the next reaction: twilight waits retry_after and the call goes through.
    bot.fake
        .rate_limit_next("PUT", &format!("/api/v10/channels/{ART}/messages"), 1.0);
    let started = std::time::Instant::now();
    let id = bot.fake.message(ART, &alice(), "/art --steps 4").await;
    bot.expect(
        ART,
        id,
        &["+👍", "reply:Skipping request with empty prompt."],
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    let statuses: Vec<u16> = bot
        .fake
        .calls()
        .iter()
        .filter(|c| {
            c.method == "PUT"
                && c.path
                    .starts_with(&format!("/api/v10/channels/{ART}/messages/{id}/"))
        })
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, [429, 204]);
    // /metrics: the session is up again.
    let text = bot.server.metrics().await;
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.contains(&"easel_discord_gateway_connected{shard=\"0\"} 1"),
        "{text}"
    );
    // The reaction's 429, waited out, is counted.
    assert!(lines.contains(&"easel_discord_rest_429_total 1"), "{text}");
}

/// The bot's reply to `message` whose content starts with `prefix`, and its id.
fn reply_starting(calls: &[RestCall], message: u64, prefix: &str) -> Option<(usize, u64)> {
    calls.iter().enumerate().find_map(|(i, c)| {
        let text = about(c, ART, message)?;
        let text = text.strip_prefix("reply:")?;
        if !text.starts_with(prefix) {
            return None;
        }
        let id = c.response.as_ref()?["id"].as_str()?.parse().ok()?;
        Some((i, id))
    })
}

#[tokio::test]
async fn progress_is_one_message_edited_every_two_seconds_then_the_result() {
    // 30 steps of 200 ms: about 6 s of progress, previews along the way.
    let bot = start_bot(BotOptions {
        discord: "announce = false\ncommands = \"off\"\nprogress = true",
        workers: 1,
        step_ms: 200,
        ..BotOptions::default()
    })
    .await;
    let id = bot
        .fake
        .message(ART, &alice(), "/art a fox --steps 30")
        .await;
    let result = |c: &RestCall| {
        about(c, ART, id).is_some_and(|a| a.starts_with("reply:Parsed args") && !c.files.is_empty())
    };
    bot.fake.wait_for_calls(1, result, TIMEOUT).await;
    // Anything late would show up here.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let calls = bot.fake.calls();
    let (created_at, progress) =
        reply_starting(&calls, id, "⏱️ step ").expect("a progress message");
    let edits: Vec<&RestCall> = calls
        .iter()
        .filter(|c| {
            c.is(
                "PATCH",
                &format!("/api/v10/channels/{ART}/messages/{progress}"),
            )
        })
        .collect();
    assert!(edits.len() >= 2, "{} edits", edits.len());
    // One message: no second progress reply.
    let progress_replies = calls
        .iter()
        .filter(|c| about(c, ART, id).is_some_and(|a| a.starts_with("reply:⏱️")))
        .count();
    assert_eq!(progress_replies, 1);
    // At least 2 s between the post and each edit, and between edits.
    let mut times = vec![calls[created_at].at];
    times.extend(edits.iter().map(|c| c.at));
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_secs(2), "edits {gap:?} apart");
    }
    // Steps as the text, rising; a preview attached to some of them.
    let steps: Vec<u32> = edits
        .iter()
        .map(|c| {
            let text = c.json.as_ref().unwrap()["content"].as_str().unwrap();
            let (step, total) = text
                .strip_prefix("⏱️ step ")
                .and_then(|t| t.split_once('/'))
                .unwrap_or_else(|| panic!("{text}"));
            assert_eq!(total, "30");
            step.parse().unwrap()
        })
        .collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    let previews = std::iter::once(&calls[created_at])
        .chain(edits.iter().copied())
        .filter(|c| !c.files.is_empty())
        .count();
    assert!(previews >= 1, "no preview attached");
    for c in std::iter::once(&calls[created_at]).chain(edits.iter().copied()) {
        for (name, bytes) in &c.files {
            assert!(name.ends_with("-preview.png"), "{name}");
            assert!(bytes.starts_with(b"\x89PNG"), "{name} is a PNG");
        }
    }
    // The progress message is deleted before the result, which is the seed's reply.
    let deleted = calls
        .iter()
        .position(|c| {
            c.is(
                "DELETE",
                &format!("/api/v10/channels/{ART}/messages/{progress}"),
            )
        })
        .expect("the progress message is deleted");
    let final_at = calls.iter().position(result).unwrap();
    assert!(deleted < final_at);
    let final_reply = &calls[final_at];
    assert_eq!(
        about(final_reply, ART, id).unwrap(),
        "reply:Parsed args: {'prompt': 'a fox', 'cfg': 7.5, 'steps': 30} processed by hostname: simulated-0 [file]"
    );
    assert!(final_reply.files[0].0.ends_with(".png"));
    assert!(!final_reply.files[0].0.ends_with("-preview.png"));
    // Nothing is edited once the job ended.
    let late: Vec<String> = calls[deleted..]
        .iter()
        .filter(|c| c.method == "PATCH")
        .map(RestCall::summary)
        .collect();
    assert!(late.is_empty(), "edited after the end: {late:?}");
    // The reactions are the seed's.
    let reactions: Vec<String> = calls
        .iter()
        .filter_map(|c| about(c, ART, id))
        .filter(|a| !a.starts_with("reply:"))
        .collect();
    assert_eq!(reactions, ["+👍", "+⏱️", "-⏱️", "+💯"]);
}

#[tokio::test]
async fn slash_progress_edits_the_deferred_reply_then_restores_it() {
    let bot = start_bot(BotOptions {
        discord: "announce = false\ncommands = \"guild\"\nprogress = true",
        workers: 1,
        step_ms: 200,
        ..BotOptions::default()
    })
    .await;
    let (id, token) = bot
        .fake
        .slash_command(
            Some(GUILD),
            ART,
            &alice(),
            "art",
            json!([
                {"name": "prompt", "type": 3, "value": "a red fox"},
                {"name": "steps", "type": 4, "value": 25},
            ]),
        )
        .await;
    let webhook = format!("/api/v10/webhooks/{APP}/{token}");
    bot.fake
        .wait_for_calls(
            1,
            |c| c.is("POST", &webhook) && !c.files.is_empty(),
            TIMEOUT,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let calls = interaction_calls(&bot.fake, id, &token);
    let what: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(what[0], "callback");
    assert_eq!(what[1], "PATCH webhook/messages/@original");
    let queued = calls[1].1["content"].as_str().unwrap().to_owned();
    assert!(
        queued.starts_with("Queued `") && queued.ends_with("`: a red fox"),
        "{queued}"
    );
    // Then the progress edits, the acknowledgement again, and the result: the last call.
    let last = calls.len() - 1;
    assert_eq!(what[last], "POST webhook");
    assert!(
        calls[last].1["files"][0]
            .as_str()
            .unwrap()
            .ends_with(".png")
    );
    assert_eq!(what[last - 1], "PATCH webhook/messages/@original");
    assert_eq!(calls[last - 1].1["content"], json!(queued));
    assert_eq!(
        calls[last - 1].1["attachments"],
        json!([]),
        "the preview goes"
    );
    let progress = &calls[2..last - 1];
    assert!(progress.len() >= 2, "{what:?}");
    for (kind, json) in progress {
        assert_eq!(kind, "PATCH webhook/messages/@original");
        let text = json["content"].as_str().unwrap();
        assert!(
            text.starts_with("⏱️ step ") && text.ends_with("/25"),
            "{text}"
        );
    }
    let at: Vec<std::time::Instant> = bot
        .fake
        .calls()
        .iter()
        .filter(|c| {
            c.is("PATCH", &format!("{webhook}/messages/@original"))
                && c.json
                    .as_ref()
                    .is_some_and(|j| j["content"].as_str().is_some_and(|t| t.starts_with("⏱️")))
        })
        .map(|c| c.at)
        .collect();
    for pair in at.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_secs(2),
            "{:?}",
            pair[1] - pair[0]
        );
    }
}

#[tokio::test]
async fn queue_position_when_jobs_are_ahead() {
    let bot = start_bot(BotOptions {
        discord: "announce = false\ncommands = \"off\"\nqueue_position = true",
        workers: 1,
        step_ms: 100,
        ..BotOptions::default()
    })
    .await;
    // The first job runs (dispatched) before the others are asked for.
    let first = bot.fake.message(ART, &alice(), "/art one --steps 40").await;
    bot.expect(ART, first, &["+👍", "+⏱️"]).await;
    let second = bot.fake.message(ART, &alice(), "/art two --steps 2").await;
    bot.expect(ART, second, &["+👍", "reply:Queued: position 2"])
        .await;
    let third = bot.fake.message(ART, &bob(), "/art three --steps 2").await;
    bot.expect(ART, third, &["+👍", "reply:Queued: position 3"])
        .await;
    // /art says it in its deferred reply.
    let (slash, token) = bot
        .fake
        .slash_command(
            Some(GUILD),
            ART,
            &alice(),
            "art",
            json!([
                {"name": "prompt", "type": 3, "value": "four"},
                {"name": "steps", "type": 4, "value": 2},
            ]),
        )
        .await;
    let original = format!("/api/v10/webhooks/{APP}/{token}/messages/@original");
    bot.fake
        .wait_for_calls(1, |c| c.is("PATCH", &original), TIMEOUT)
        .await;
    let calls = interaction_calls(&bot.fake, slash, &token);
    let acknowledged = calls[1].1["content"].as_str().unwrap();
    assert!(
        acknowledged.starts_with("Queued `") && acknowledged.ends_with("` (position 4): four"),
        "{acknowledged}"
    );
    // Each still gets the seed's answer; the first, alone in line, was told no position.
    let args = |p: &str, steps: u32| format!("{{'prompt': '{p}', 'cfg': 7.5, 'steps': {steps}}}");
    bot.expect(
        ART,
        first,
        &finished(&args("one", 40))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    let mut second_seen = vec!["+👍".to_owned(), "reply:Queued: position 2".to_owned()];
    second_seen.extend(finished(&args("two", 2)).into_iter().skip(1));
    bot.expect(
        ART,
        second,
        &second_seen.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
}

#[tokio::test]
async fn queue_position_is_off_by_default() {
    let bot = start_bot(BotOptions {
        discord: "announce = false\ncommands = \"off\"",
        workers: 1,
        step_ms: 100,
        ..BotOptions::default()
    })
    .await;
    let first = bot.fake.message(ART, &alice(), "/art one --steps 20").await;
    bot.expect(ART, first, &["+👍", "+⏱️"]).await;
    let second = bot.fake.message(ART, &alice(), "/art two --steps 2").await;
    let args = "{'prompt': 'two', 'cfg': 7.5, 'steps': 2}";
    bot.expect(
        ART,
        second,
        &finished(args)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    // And no progress message either.
    assert_eq!(
        bot.fake.count_calls(|c| c.method == "PATCH"),
        0,
        "nothing edited"
    );
}

/// Two hosts of one bot with disjoint shard ranges (`0/2` and `1/2`): each identifies only
/// its shard and gets only its guilds; a message in a guild of either is answered once, by
/// the host whose shard has that guild.
#[tokio::test]
async fn two_hosts_split_the_shards() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Guild ids whose shard of 2 is 0 and 1 (Discord's rule: (id >> 22) % total).
    let (even, odd) = (2u64 << 22, 3u64 << 22);
    let fake = FakeDiscord::start(
        Author::bot(1000, "easel"),
        APP,
        vec![
            Guild {
                id: even,
                name: "Even".into(),
                channels: vec![Channel::text(20, "art")],
            },
            Guild {
                id: odd,
                name: "Odd".into(),
                channels: vec![Channel::text(30, "art")],
            },
        ],
    )
    .await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut hosts = Vec::new();
    for (dir, shards) in dirs.iter().zip(["0/2", "1/2"]) {
        let db = format!("sqlite://{}", dir.path().join("easel.db").display());
        let extra = format!(
            "[auth]\ndiscord_token = \"test-token\"\n[grpc]\nenabled = false\n\
             [discord]\ngateway_url = {:?}\napi_base = \"http://{}\"\nannounce = false\n\
             commands = \"off\"\nshards = {shards:?}\n",
            fake.gateway_url, fake.api_host
        );
        hosts.push(
            Server::start(ServerOptions {
                db_url: &db,
                dir: dir.path(),
                extra_toml: &extra,
                ..ServerOptions::default()
            })
            .await,
        );
    }
    let deadline = std::time::Instant::now() + TIMEOUT;
    while fake.identified_shards().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "both shards identify");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut identified = fake.identified_shards();
    identified.sort();
    assert_eq!(identified, [(0, 2), (1, 2)]);
    for host in &hosts {
        let ready = host.wait_log("Discord ready", 1).await;
        assert!(ready[0].contains("guilds=1"), "{ready:?}");
    }
    let metrics = [hosts[0].metrics().await, hosts[1].metrics().await];
    assert!(metrics[0].contains("easel_discord_gateway_connected{shard=\"0\"} 1"));
    assert!(metrics[1].contains("easel_discord_gateway_connected{shard=\"1\"} 1"));
    assert!(!metrics[0].contains("shard=\"1\""));

    for (channel, host) in [(20u64, 0usize), (30, 1)] {
        let id = fake
            .message(channel, &alice(), "/art a fox --steps 2")
            .await;
        let expected: Vec<String> = finished("{'prompt': 'a fox', 'cfg': 7.5, 'steps': 2}");
        // finished() names the simulated backend; only its first reaction is checked here.
        let calls = fake
            .wait_for_calls(expected.len(), |c| about(c, channel, id).is_some(), TIMEOUT)
            .await;
        let seen: Vec<String> = calls.iter().filter_map(|c| about(c, channel, id)).collect();
        assert_eq!(seen[0], "+👍", "{seen:?}");
        assert!(seen.last().unwrap().ends_with("[file]"), "{seen:?}");
        // Answered once: one reply, by the host whose shard has the guild.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let replies = fake
            .calls()
            .iter()
            .filter(|c| about(c, channel, id).is_some_and(|a| a.starts_with("reply:")))
            .count();
        assert_eq!(replies, 1, "message in channel {channel}");
        // Each host has its own database here: the one that answered queued and ran it.
        assert_eq!(
            hosts[host].lines_with("job started").len(),
            1,
            "host {host}"
        );
        assert_eq!(
            hosts[1 - host].lines_with("job started").len(),
            usize::from(host == 1),
            "the other host ran only its own job"
        );
    }
}
