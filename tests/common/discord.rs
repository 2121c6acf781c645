//! A fake Discord on 127.0.0.1 that the real twilight 0.18 `Shard` and `Client` talk to.
//!
//! [`FakeDiscord::start`] binds two ports: a gateway (websocket, `ws://127.0.0.1:P`, for
//! `twilight_gateway::ConfigBuilder::proxy_url`) and a REST API (`127.0.0.1:Q`, for
//! `twilight_http::ClientBuilder::proxy(api_host, true)`, which then speaks plain http to
//! `http://127.0.0.1:Q/api/v10/...`).
//!
//! Gateway: HELLO, IDENTIFY → READY + one GUILD_CREATE per guild, heartbeats are ACKed, RESUME
//! of the current session → RESUMED (nothing is replayed; events injected while no session was
//! connected are delivered after the next READY/RESUMED). Frames are zstd-stream compressed
//! (one stream per connection, flushed per message, binary frames) when the client asks for
//! `compress=zstd-stream`, plain text frames otherwise. Every dispatch a test injects is first
//! parsed with `twilight_gateway::parse`, so a payload twilight can't read panics in the test
//! with the JSON and the error instead of vanishing inside the bot.
//!
//! REST: every request is recorded as a [`RestCall`] and answered with JSON that deserializes
//! into the matching twilight-model type (checked before answering; a fake bug becomes a 500
//! whose body says what failed). Unknown routes get 404 `{"message":"Unknown route","code":0}`.
//!
//! Everything stops when the [`FakeDiscord`] is dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_websockets::{CloseCode, Message as WsMessage, ServerBuilder, WebSocketStream};
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

/// Heartbeat interval announced in HELLO unless [`FakeDiscord::set_heartbeat_interval`] changed it.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 41_250;

/// Permissions string used for the `@everyone` role, interaction members and `app_permissions`
/// (everything except administrator).
const ALL_PERMISSIONS: &str = "2251799813685239";
/// What a member without admin rights may do: view, send, react, read history, use commands.
const MEMBER_PERMISSIONS: &str = "2147552320";

/// Uploaded files as (filename, bytes).
type Files = Vec<(String, Vec<u8>)>;

/// Discord's snowflake epoch (2015-01-01) in Unix milliseconds.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// A user as the fake shows it to the bot (message authors, interaction users, the bot itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Author {
    /// User id.
    pub id: u64,
    /// Username (also used as `global_name`).
    pub name: String,
    /// Legacy discriminator; 0 means a new-style username (sent as `"0"`).
    pub discriminator: u16,
    /// Whether the user is a bot.
    pub bot: bool,
}

impl Author {
    /// A human user with a new-style name.
    pub fn user(id: u64, name: &str) -> Author {
        Author {
            id,
            name: name.to_owned(),
            discriminator: 0,
            bot: false,
        }
    }

    /// A bot user with a new-style name.
    pub fn bot(id: u64, name: &str) -> Author {
        Author {
            bot: true,
            ..Author::user(id, name)
        }
    }
}

/// A guild the bot is in; sent as GUILD_CREATE after READY.
#[derive(Clone, Debug)]
pub struct Guild {
    /// Guild id (also the id of its `@everyone` role).
    pub id: u64,
    /// Guild name.
    pub name: String,
    /// Text channels and threads (threads go to GUILD_CREATE's `threads`).
    pub channels: Vec<Channel>,
}

/// A guild channel.
#[derive(Clone, Debug)]
pub struct Channel {
    /// Channel id.
    pub id: u64,
    /// Channel name.
    pub name: String,
    /// Text channel or public thread.
    pub kind: ChannelKind,
}

impl Channel {
    /// A text channel.
    pub fn text(id: u64, name: &str) -> Channel {
        Channel {
            id,
            name: name.to_owned(),
            kind: ChannelKind::Text,
        }
    }

    /// A voice channel.
    pub fn voice(id: u64, name: &str) -> Channel {
        Channel {
            id,
            name: name.to_owned(),
            kind: ChannelKind::Voice,
        }
    }

    /// A category.
    pub fn category(id: u64, name: &str) -> Channel {
        Channel {
            id,
            name: name.to_owned(),
            kind: ChannelKind::Category,
        }
    }

    /// A public thread under `parent_id`.
    pub fn thread(id: u64, name: &str, parent_id: u64) -> Channel {
        Channel {
            id,
            name: name.to_owned(),
            kind: ChannelKind::PublicThread { parent_id },
        }
    }
}

/// What kind of guild channel a [`Channel`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    /// `GUILD_TEXT` (type 0).
    Text,
    /// `GUILD_VOICE` (type 2).
    Voice,
    /// `GUILD_CATEGORY` (type 4).
    Category,
    /// `PUBLIC_THREAD` (type 11) whose parent is the given text channel.
    PublicThread {
        /// The channel the thread lives in.
        parent_id: u64,
    },
}

/// One HTTP request the fake received, and what it answered.
#[derive(Clone, Debug)]
pub struct RestCall {
    /// HTTP method, upper case (`"POST"`).
    pub method: String,
    /// Percent-decoded path without the query, e.g. `/api/v10/channels/10/messages` or
    /// `/api/v10/channels/10/messages/7/reactions/👍/@me` (twilight percent-encodes unicode
    /// emoji; custom emoji appear as `name:id`).
    pub path: String,
    /// Raw query string without `?` (`"wait=true"`), empty if none.
    pub query: String,
    /// JSON body, or the `payload_json` part of a multipart/form-data body.
    pub json: Option<Value>,
    /// Multipart file parts (`files[N]`) as (filename, bytes), in body order.
    pub files: Vec<(String, Vec<u8>)>,
    /// The body as (lossy) text when it was neither JSON nor multipart, or failed to parse.
    pub body_text: Option<String>,
    /// The `Authorization` header, if any (`"Bot <token>"`).
    pub authorization: Option<String>,
    /// Status the fake answered with.
    pub status: u16,
    /// JSON body the fake answered with (`None` for 204).
    pub response: Option<Value>,
    /// When the fake had read the request.
    pub at: std::time::Instant,
}

impl RestCall {
    /// Whether this call has the given method and (decoded) path.
    pub fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path == path
    }

    /// One-line description for assertion messages.
    pub fn summary(&self) -> String {
        let mut s = format!("{} {}", self.method, self.path);
        if !self.query.is_empty() {
            let _ = write!(s, "?{}", self.query);
        }
        let _ = write!(s, " -> {}", self.status);
        if let Some(json) = &self.json {
            let _ = write!(s, " json={}", truncate(&json.to_string(), 300));
        }
        for (name, bytes) in &self.files {
            let _ = write!(s, " file={name}({} bytes)", bytes.len());
        }
        if let Some(text) = &self.body_text {
            let _ = write!(s, " body={:?}", truncate(text, 300));
        }
        if self.status >= 400
            && let Some(response) = &self.response
        {
            let _ = write!(s, " answer={response}");
        }
        s
    }
}

/// The fake Discord: a gateway and a REST API on 127.0.0.1. Dropping it stops both.
pub struct FakeDiscord {
    /// Gateway URL for `ConfigBuilder::proxy_url`, e.g. `ws://127.0.0.1:41234` (no trailing
    /// slash; twilight appends `/?v=10&encoding=json&compress=zstd-stream`).
    pub gateway_url: String,
    /// REST host for `ClientBuilder::proxy(api_host, true)`, e.g. `127.0.0.1:41235`.
    pub api_host: String,
    /// The application id (READY, interactions, `GET /applications/@me`).
    pub application_id: u64,
    /// The bot user (READY, authors of messages the bot creates).
    pub bot: Author,
    /// State shared with the servers.
    shared: Arc<Shared>,
    /// Set to `true` on drop; every server task watches it.
    shutdown: watch::Sender<bool>,
}

/// State shared by the test-facing handle, the REST server and gateway connections.
struct Shared {
    /// Everything mutable.
    state: Mutex<FakeState>,
    /// Bumped after every change a gateway connection may care about (outbox, close request).
    changed: watch::Sender<u64>,
    /// `ws://127.0.0.1:P`, also READY's `resume_gateway_url`.
    gateway_url: String,
    /// `http://127.0.0.1:Q`, base of attachment URLs.
    api_base: String,
    /// The bot user.
    bot: Author,
    /// The application id.
    application_id: u64,
}

/// An interaction the fake dispatched, looked up by token for callbacks and webhooks.
#[derive(Clone, Debug)]
struct InteractionInfo {
    /// Interaction id.
    id: u64,
    /// Channel it happened in (where responses and follow-ups go).
    channel_id: u64,
    /// Message the component was on, for UPDATE_MESSAGE callbacks.
    message_id: Option<u64>,
    /// Whether the callback was already posted.
    acknowledged: bool,
}

/// Mutable state behind [`Shared::state`].
struct FakeState {
    /// Guilds, including channels added by `create_channel`.
    guilds: Vec<Guild>,
    /// Every REST call, in arrival order.
    calls: Vec<RestCall>,
    /// IDENTIFYs received.
    identifies: usize,
    /// RESUMEs received.
    resumes: usize,
    /// Heartbeats received.
    heartbeats: usize,
    /// Websocket connections accepted.
    connections: usize,
    /// Query string of each accepted gateway connection.
    queries: Vec<String>,
    /// Interval announced in HELLO.
    heartbeat_interval_ms: u64,
    /// `d` of the last IDENTIFY.
    last_identify: Option<Value>,
    /// The current (resumable) session.
    session_id: Option<String>,
    /// Sessions created so far (for unique ids).
    sessions_made: u64,
    /// Last dispatch sequence number of the session.
    seq: u64,
    /// Last snowflake handed out.
    last_id: u64,
    /// Dispatches (event type, data) waiting for an identified connection.
    outbox: VecDeque<(String, Value)>,
    /// The connection that sent READY/RESUMED and is still open (the last one).
    active_conn: Option<u64>,
    /// Every connection that identified or resumed and is still open, with its shard
    /// `(id, total)`: dispatches go to the shard of their guild (`guild_id >> 22 % total`),
    /// DMs to shard 0.
    shards: HashMap<u64, (u64, u64)>,
    /// The shard of the current session (for a RESUME).
    session_shard: (u64, u64),
    /// `(id, total)` of every IDENTIFY, in order.
    identified: Vec<(u64, u64)>,
    /// Connections whose socket is still open.
    open_conns: HashSet<u64>,
    /// Last connection id handed out.
    next_conn: u64,
    /// (connection, close code) the test asked to drop.
    close_request: Option<(u64, u16)>,
    /// Problems found in frames the fake built itself (reported by `wait_ready`).
    errors: Vec<String>,
    /// Pending one-shot 429s: (method, path prefix, retry after seconds).
    rate_limits: Vec<(String, String, f64)>,
    /// Pending failures: (method, path prefix, status, raw body, how many more times).
    failures: Vec<(String, String, u16, String, u32)>,
    /// Every message the fake knows (injected or created via REST), REST shape.
    messages: HashMap<u64, Value>,
    /// Interaction token → what the fake dispatched.
    interactions: HashMap<String, InteractionInfo>,
    /// Interaction token → id of its `@original` response message.
    originals: HashMap<String, u64>,
    /// DM channel id → the other user.
    dm_recipients: HashMap<u64, Author>,
    /// Users seen so far (for resolving `<@id>` mentions).
    users: HashMap<u64, Author>,
    /// (guild id or None for global) → commands as last PUT.
    commands: HashMap<Option<u64>, Vec<Value>>,
    /// Command name → id used in interactions when the command wasn't registered.
    command_ids: HashMap<String, u64>,
    /// Attachment URL path → (content type, bytes).
    files: HashMap<String, (String, Vec<u8>)>,
}

impl FakeDiscord {
    /// Starts the gateway and REST servers on free ports of 127.0.0.1.
    pub async fn start(bot: Author, application_id: u64, guilds: Vec<Guild>) -> FakeDiscord {
        let gateway = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let api = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
        let gateway_url = format!("ws://{}", gateway.local_addr().unwrap());
        let api_host = api.local_addr().unwrap().to_string();
        let mut users = HashMap::new();
        users.insert(bot.id, bot.clone());
        let shared = Arc::new(Shared {
            state: Mutex::new(FakeState {
                guilds,
                calls: Vec::new(),
                identifies: 0,
                resumes: 0,
                heartbeats: 0,
                connections: 0,
                queries: Vec::new(),
                heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
                last_identify: None,
                session_id: None,
                sessions_made: 0,
                seq: 0,
                last_id: 0,
                outbox: VecDeque::new(),
                active_conn: None,
                shards: HashMap::new(),
                session_shard: (0, 1),
                identified: Vec::new(),
                open_conns: HashSet::new(),
                next_conn: 0,
                close_request: None,
                errors: Vec::new(),
                rate_limits: Vec::new(),
                failures: Vec::new(),
                messages: HashMap::new(),
                interactions: HashMap::new(),
                originals: HashMap::new(),
                dm_recipients: HashMap::new(),
                users,
                commands: HashMap::new(),
                command_ids: HashMap::new(),
                files: HashMap::new(),
            }),
            changed: watch::Sender::new(0),
            gateway_url: gateway_url.clone(),
            api_base: format!("http://{api_host}"),
            bot: bot.clone(),
            application_id,
        });

        // Check up front that READY and the GUILD_CREATEs parse, so a bad guild fails here.
        {
            let mut st = shared.lock();
            let ready = ready_data(&shared, &st, "check", json!([0, 1]));
            let mut frames = vec![dispatch_frame(&mut st, "READY", ready)];
            for guild in st.guilds.clone() {
                frames.push(dispatch_frame(
                    &mut st,
                    "GUILD_CREATE",
                    guild_data(&shared.bot, &guild),
                ));
            }
            for frame in frames {
                if let Err(e) = check_frame(&frame) {
                    panic!("{e}");
                }
            }
            st.seq = 0;
        }

        let (shutdown, shutdown_rx) = watch::channel(false);
        let app = Router::new()
            .fallback(rest_handler)
            .with_state(Arc::clone(&shared));
        let mut rx = shutdown_rx.clone();
        tokio::spawn(async move {
            let _ = axum::serve(api, app)
                .with_graceful_shutdown(async move { stopped(&mut rx).await })
                .await;
        });
        let gw_shared = Arc::clone(&shared);
        let mut rx = shutdown_rx;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stopped(&mut rx) => break,
                    accepted = gateway.accept() => {
                        if let Ok((tcp, _)) = accepted {
                            tokio::spawn(gateway_conn(Arc::clone(&gw_shared), tcp, rx.clone()));
                        }
                    }
                }
            }
        });

        FakeDiscord {
            gateway_url,
            api_host,
            application_id,
            bot,
            shared,
            shutdown,
        }
    }

    /// Base URL of the REST API, `http://127.0.0.1:Q/api/v10`.
    pub fn api_url(&self) -> String {
        format!("{}/api/v10", self.shared.api_base)
    }

    /// Heartbeat interval (ms) announced in the HELLO of later connections.
    pub fn set_heartbeat_interval(&self, ms: u64) {
        self.shared.lock().heartbeat_interval_ms = ms;
    }

    /// Waits until a shard has identified (or resumed) and got READY plus the GUILD_CREATEs.
    /// Panics on timeout, or if a frame the fake built doesn't parse with twilight.
    pub async fn wait_ready(&self, timeout: Duration) {
        self.poll(timeout, "a shard to identify and get READY", |st| {
            if !st.errors.is_empty() {
                panic!("fake discord built bad frames:\n{}", st.errors.join("\n"));
            }
            st.active_conn.map(|_| ())
        })
        .await
    }

    /// Dispatches MESSAGE_CREATE from `author` in `channel_id` and returns the message id.
    /// A channel of a known guild gets that `guild_id`, a `member` and its `channel_type`; any
    /// other channel id is a DM (no `guild_id`, `channel_type` 1). `<@id>` mentions of the bot
    /// or known authors fill `mentions`.
    pub async fn message(&self, channel_id: u64, author: &Author, content: &str) -> u64 {
        self.message_with(channel_id, author, content, json!({}))
            .await
    }

    /// Like [`FakeDiscord::message`], with extra fields merged into the message object
    /// (e.g. `attachments`, `message_reference`, `referenced_message`, `type`).
    pub async fn message_with(
        &self,
        channel_id: u64,
        author: &Author,
        content: &str,
        extra: Value,
    ) -> u64 {
        let (id, data) = {
            let mut st = self.shared.lock();
            st.users.insert(author.id, author.clone());
            let guild_id = st.guild_of(channel_id);
            if guild_id.is_none() {
                st.dm_recipients.insert(channel_id, author.clone());
            }
            let id = st.next_id();
            let mut msg = base_message(id, channel_id, author, content);
            msg["mentions"] = Value::Array(mentions(&st, content));
            merge(&mut msg, extra);
            st.messages.insert(id, msg.clone());
            let mut data = msg;
            data["channel_type"] = json!(match st.find_channel(channel_id) {
                Some((_, ch)) => match ch.kind {
                    ChannelKind::Text => 0,
                    ChannelKind::Voice => 2,
                    ChannelKind::Category => 4,
                    ChannelKind::PublicThread { .. } => 11,
                },
                None => 1,
            });
            if let Some(gid) = guild_id {
                data["guild_id"] = json!(gid.to_string());
                data["member"] = member_json(None);
            }
            (id, data)
        };
        self.dispatch("MESSAGE_CREATE", data).await;
        id
    }

    /// Dispatches INTERACTION_CREATE type 2 (slash command `name` with `options`, e.g.
    /// `[{"name":"prompt","type":3,"value":"a fox"}]`); `guild_id: None` is a DM.
    /// Returns (interaction id, token).
    pub async fn slash_command(
        &self,
        guild_id: Option<u64>,
        channel_id: u64,
        user: &Author,
        name: &str,
        options: Value,
    ) -> (u64, String) {
        let data = self.command_data(guild_id, name, options);
        self.interaction(2, guild_id, channel_id, user, data, None)
            .await
    }

    /// Dispatches INTERACTION_CREATE type 4 (autocomplete); mark the typed option with
    /// `"focused": true` in `options`. Returns (interaction id, token).
    pub async fn autocomplete(
        &self,
        guild_id: Option<u64>,
        channel_id: u64,
        user: &Author,
        name: &str,
        options: Value,
    ) -> (u64, String) {
        let data = self.command_data(guild_id, name, options);
        self.interaction(4, guild_id, channel_id, user, data, None)
            .await
    }

    /// Dispatches INTERACTION_CREATE type 3: `user` clicked the button `custom_id` on message
    /// `message_id` (the message as the fake knows it, or a bare bot message if unknown).
    /// Returns (interaction id, token).
    pub async fn component(
        &self,
        guild_id: Option<u64>,
        channel_id: u64,
        user: &Author,
        custom_id: &str,
        message_id: u64,
    ) -> (u64, String) {
        let data = json!({"custom_id": custom_id, "component_type": 2});
        self.interaction(3, guild_id, channel_id, user, data, Some(message_id))
            .await
    }

    /// Adds `channel` to guild `guild_id` and dispatches CHANNEL_CREATE (text) or
    /// THREAD_CREATE (thread). Panics if the guild is unknown.
    pub async fn create_channel(&self, guild_id: u64, channel: Channel) {
        let (event, data) = {
            let mut st = self.shared.lock();
            let guild = st
                .guilds
                .iter_mut()
                .find(|g| g.id == guild_id)
                .unwrap_or_else(|| panic!("create_channel: unknown guild {guild_id}"));
            guild.channels.push(channel.clone());
            let mut data = channel_json(Some(guild_id), &channel, &self.bot);
            let event = match channel.kind {
                ChannelKind::Text | ChannelKind::Voice | ChannelKind::Category => "CHANNEL_CREATE",
                ChannelKind::PublicThread { .. } => {
                    data["newly_created"] = json!(true);
                    "THREAD_CREATE"
                }
            };
            (event, data)
        };
        self.dispatch(event, data).await;
    }

    /// Dispatches any event (`t` = `event_type`, `d` = `data`). Panics if twilight can't
    /// parse it. Delivered now if a shard is connected, else after its next READY/RESUMED.
    pub async fn dispatch(&self, event_type: &str, data: Value) {
        let probe = json!({"op": 0, "s": 1, "t": event_type, "d": data}).to_string();
        if let Err(e) = check_frame(&probe) {
            panic!("{e}");
        }
        self.shared
            .lock()
            .outbox
            .push_back((event_type.to_owned(), data));
        self.shared.bump();
    }

    /// Every REST call so far, in arrival order.
    pub fn calls(&self) -> Vec<RestCall> {
        self.shared.lock().calls.clone()
    }

    /// How many REST calls so far satisfy `pred` (without copying them).
    pub fn count_calls(&self, pred: impl Fn(&RestCall) -> bool) -> usize {
        self.shared.lock().calls.iter().filter(|c| pred(c)).count()
    }

    /// Waits until at least `n` calls satisfy `pred` and returns all calls that do. Panics on
    /// timeout, listing every call seen.
    pub async fn wait_for_calls(
        &self,
        n: usize,
        pred: impl Fn(&RestCall) -> bool,
        timeout: Duration,
    ) -> Vec<RestCall> {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.calls();
            let matching: Vec<RestCall> = calls.iter().filter(|c| pred(c)).cloned().collect();
            if matching.len() >= n {
                return matching;
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> =
                    calls.iter().map(|c| format!("  {}", c.summary())).collect();
                panic!(
                    "timed out after {timeout:?} waiting for {n} matching REST calls ({} matched); \
                     calls seen:\n{}",
                    matching.len(),
                    if seen.is_empty() {
                        "  (none)".to_owned()
                    } else {
                        seen.join("\n")
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Closes the connected shard's socket with `close_code` (waiting up to 10 s for a
    /// connected shard) and waits until that connection is gone. For resumable codes (e.g.
    /// 4000) twilight reconnects to READY's `resume_gateway_url` and sends RESUME.
    pub async fn drop_connection(&self, close_code: u16) {
        let timeout = Duration::from_secs(10);
        let conn = self
            .poll(timeout, "a connected shard to drop", |st| st.active_conn)
            .await;
        self.shared.lock().close_request = Some((conn, close_code));
        self.shared.bump();
        self.poll(timeout, "the dropped connection to close", |st| {
            (!st.open_conns.contains(&conn)).then_some(())
        })
        .await
    }

    /// Number of IDENTIFYs received.
    pub fn identifies(&self) -> usize {
        self.shared.lock().identifies
    }

    /// Number of RESUMEs received.
    pub fn resumes(&self) -> usize {
        self.shared.lock().resumes
    }

    /// Number of heartbeats (op 1) received.
    pub fn heartbeats(&self) -> usize {
        self.shared.lock().heartbeats
    }

    /// Number of websocket connections accepted.
    pub fn connections(&self) -> usize {
        self.shared.lock().connections
    }

    /// Query string of each gateway connection so far, e.g.
    /// `v=10&encoding=json&compress=zstd-stream`.
    pub fn gateway_queries(&self) -> Vec<String> {
        self.shared.lock().queries.clone()
    }

    /// `(shard id, total)` of every IDENTIFY so far, in order.
    pub fn identified_shards(&self) -> Vec<(u64, u64)> {
        self.shared.lock().identified.clone()
    }

    /// The `d` of the last IDENTIFY (token, intents, properties, shard...).
    pub fn identify_payload(&self) -> Option<Value> {
        self.shared.lock().last_identify.clone()
    }

    /// Answers the next REST call whose method is `method` and whose decoded path starts with
    /// `path_prefix` (e.g. `/api/v10/channels/10/messages`) with 429 once: Discord's body
    /// `{"message":"You are being rate limited.","retry_after":X,"global":false}` plus
    /// `retry-after` and `x-ratelimit-{scope=user,bucket,limit,remaining=0,reset,reset-after}`,
    /// which make twilight's ratelimiter wait `retry_after_secs` and retry.
    pub fn rate_limit_next(&self, method: &str, path_prefix: &str, retry_after_secs: f64) {
        self.shared.lock().rate_limits.push((
            method.to_uppercase(),
            path_prefix.to_owned(),
            retry_after_secs,
        ));
    }

    /// Answers the next `times` REST calls whose method is `method` and whose decoded path
    /// starts with `path_prefix` with `status` and the raw `body` (no rate-limit headers).
    pub fn fail_next(&self, method: &str, path_prefix: &str, status: u16, body: &str, times: u32) {
        self.shared.lock().failures.push((
            method.to_uppercase(),
            path_prefix.to_owned(),
            status,
            body.to_owned(),
            times,
        ));
    }

    /// Makes a user known to `GET /users/{id}` (and DMs to them possible).
    pub fn add_user(&self, user: &Author) {
        self.shared.lock().users.insert(user.id, user.clone());
    }

    /// Hosts `bytes` at a URL on the fake and returns an attachment object for it, for
    /// `message_with(.., json!({"attachments": [fake.attachment(..)]}))` (the bot can GET it).
    pub fn attachment(&self, channel_id: u64, filename: &str, bytes: &[u8]) -> Value {
        let mut st = self.shared.lock();
        let mut msg = json!({"channel_id": channel_id.to_string(), "attachments": []});
        let files = vec![(filename.to_owned(), bytes.to_vec())];
        apply_payload(&self.shared, &mut st, &mut msg, None, &files);
        msg["attachments"][0].take()
    }

    /// The message object the fake knows under `id` (injected, or created/edited via REST).
    pub fn message_object(&self, id: u64) -> Option<Value> {
        self.shared.lock().messages.get(&id).cloned()
    }

    /// Commands last set with PUT, per guild (`None` = global).
    pub fn commands(&self, guild_id: Option<u64>) -> Vec<Value> {
        self.shared
            .lock()
            .commands
            .get(&guild_id)
            .cloned()
            .unwrap_or_default()
    }

    /// `data` of an application command interaction named `name`.
    fn command_data(&self, guild_id: Option<u64>, name: &str, options: Value) -> Value {
        let mut st = self.shared.lock();
        let registered = [guild_id, None].iter().find_map(|scope| {
            st.commands.get(scope)?.iter().find_map(|c| {
                (c["name"] == name)
                    .then(|| c["id"].as_str().and_then(|s| s.parse::<u64>().ok()))
                    .flatten()
            })
        });
        let id = match registered {
            Some(id) => id,
            None => match st.command_ids.get(name) {
                Some(id) => *id,
                None => {
                    let id = st.next_id();
                    st.command_ids.insert(name.to_owned(), id);
                    id
                }
            },
        };
        let mut data = json!({"id": id.to_string(), "name": name, "type": 1});
        if options.as_array().is_some_and(|o| !o.is_empty()) {
            data["options"] = options;
        }
        data
    }

    /// Builds, remembers and dispatches an INTERACTION_CREATE.
    async fn interaction(
        &self,
        kind: u8,
        guild_id: Option<u64>,
        channel_id: u64,
        user: &Author,
        data: Value,
        message_id: Option<u64>,
    ) -> (u64, String) {
        let (id, token, payload) = {
            let mut st = self.shared.lock();
            st.users.insert(user.id, user.clone());
            if guild_id.is_none() {
                st.dm_recipients.entry(channel_id).or_insert(user.clone());
            }
            let id = st.next_id();
            let token = format!("fake-interaction-token-{id}");
            let channel = match st.find_channel(channel_id) {
                Some((gid, ch)) => channel_json(Some(gid), &ch, &self.bot),
                None => dm_channel_json(channel_id, st.dm_recipients.get(&channel_id)),
            };
            let mut p = json!({
                "id": id.to_string(),
                "application_id": self.application_id.to_string(),
                "type": kind,
                "token": token,
                "version": 1,
                "data": data,
                "channel_id": channel_id.to_string(),
                "channel": channel,
                "app_permissions": ALL_PERMISSIONS,
                "locale": "en-US",
                "entitlements": [],
                "attachment_size_limit": 10_485_760,
            });
            match guild_id {
                Some(gid) => {
                    p["guild_id"] = json!(gid.to_string());
                    p["guild_locale"] = json!("en-US");
                    p["member"] = member_json(Some(user));
                    p["authorizing_integration_owners"] = json!({"0": gid.to_string()});
                    p["context"] = json!(0);
                }
                None => {
                    p["user"] = user_json(user);
                    p["authorizing_integration_owners"] = json!({"0": "0"});
                    p["context"] = json!(1);
                }
            }
            if let Some(mid) = message_id {
                let msg = st.messages.get(&mid).cloned().unwrap_or_else(|| {
                    let mut m = base_message(mid, channel_id, &self.bot, "");
                    m["application_id"] = json!(self.application_id.to_string());
                    m
                });
                p["message"] = msg;
            }
            st.interactions.insert(
                token.clone(),
                InteractionInfo {
                    id,
                    channel_id,
                    message_id,
                    acknowledged: false,
                },
            );
            (id, token, p)
        };
        self.dispatch("INTERACTION_CREATE", payload).await;
        (id, token)
    }

    /// Polls the state every 10 ms until `f` returns `Some`; panics after `timeout`.
    async fn poll<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&mut FakeState) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(&mut self.shared.lock()) {
                return v;
            }
            if Instant::now() >= deadline {
                let st = self.shared.lock();
                panic!(
                    "timed out after {timeout:?} waiting for {what} (connections={}, identifies={}, \
                     resumes={}, errors={:?})",
                    st.connections, st.identifies, st.resumes, st.errors
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeDiscord {
    /// Tells every server task to stop.
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl Shared {
    /// Locks the state (ignoring poisoning from a panicked test thread).
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the gateway connections to look at the state again.
    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

impl FakeState {
    /// A fresh snowflake, increasing and based on the current time.
    fn next_id(&mut self) -> u64 {
        let candidate = (now_ms() - DISCORD_EPOCH_MS) << 22;
        self.last_id = candidate.max(self.last_id + 1);
        self.last_id
    }

    /// The guild id and channel for a guild channel id.
    fn find_channel(&self, channel_id: u64) -> Option<(u64, Channel)> {
        self.guilds.iter().find_map(|g| {
            g.channels
                .iter()
                .find(|c| c.id == channel_id)
                .map(|c| (g.id, c.clone()))
        })
    }

    /// The guild a channel belongs to (`None`: a DM).
    fn guild_of(&self, channel_id: u64) -> Option<u64> {
        self.find_channel(channel_id).map(|(g, _)| g)
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------------

/// One gateway websocket connection.
struct Conn {
    /// The websocket.
    ws: WebSocketStream<TcpStream>,
    /// zstd-stream compressor when the client asked for `compress=zstd-stream`.
    zstd: Option<zstd::stream::raw::Encoder<'static>>,
}

impl Conn {
    /// Sends one payload (compressed if negotiated).
    async fn send(&mut self, text: String) -> Result<(), tokio_websockets::Error> {
        let msg = match &mut self.zstd {
            Some(encoder) => WsMessage::binary(zstd_compress(encoder, text.as_bytes())),
            None => WsMessage::text(text),
        };
        self.ws.send(msg).await
    }

    /// Sends payloads in order.
    async fn send_all(&mut self, frames: Vec<String>) -> Result<(), tokio_websockets::Error> {
        for frame in frames {
            self.send(frame).await?;
        }
        Ok(())
    }
}

/// Compresses one message into the connection's zstd stream and flushes the block.
fn zstd_compress(encoder: &mut zstd::stream::raw::Encoder<'static>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut input = InBuffer::around(data);
    while input.pos < data.len() {
        let written = {
            let mut output = OutBuffer::around(&mut buf[..]);
            encoder.run(&mut input, &mut output).expect("zstd compress");
            output.pos()
        };
        out.extend_from_slice(&buf[..written]);
    }
    loop {
        let (remaining, written) = {
            let mut output = OutBuffer::around(&mut buf[..]);
            let remaining = encoder.flush(&mut output).expect("zstd flush");
            (remaining, output.pos())
        };
        out.extend_from_slice(&buf[..written]);
        if remaining == 0 {
            return out;
        }
    }
}

/// Serves one gateway connection until it closes, is dropped by the test, or the fake stops.
async fn gateway_conn(shared: Arc<Shared>, tcp: TcpStream, mut shutdown: watch::Receiver<bool>) {
    let Ok((request, ws)) = ServerBuilder::new().accept(tcp).await else {
        return;
    };
    let query = request.uri().query().unwrap_or("").to_owned();
    let zstd = query.split('&').any(|kv| kv == "compress=zstd-stream");
    if !zstd && query.contains("compress=") {
        eprintln!("fake discord: unsupported compression in {query:?}; sending plain text");
    }
    let mut conn = Conn {
        ws,
        zstd: zstd.then(|| zstd::stream::raw::Encoder::new(3).expect("zstd encoder")),
    };
    let mut changed = shared.changed.subscribe();
    let (id, hello) = {
        let mut st = shared.lock();
        st.next_conn += 1;
        st.connections += 1;
        st.queries.push(query.clone());
        let id = st.next_conn;
        st.open_conns.insert(id);
        let hello = json!({"op": 10, "s": null, "t": null,
            "d": {"heartbeat_interval": st.heartbeat_interval_ms}});
        (id, hello.to_string())
    };
    if conn.send(hello).await.is_ok() {
        conn_loop(&shared, &mut conn, id, &mut changed, &mut shutdown).await;
    }
    let mut st = shared.lock();
    st.open_conns.remove(&id);
    st.shards.remove(&id);
    if st.active_conn == Some(id) {
        st.active_conn = None;
    }
    drop(st);
    shared.bump();
}

/// Resolves once the fake is shutting down (or its handle is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// What the connection loop should do after a state change.
enum Wake {
    Send(Vec<String>),
    Close(u16),
}

/// The read / wake-up loop of one gateway connection.
async fn conn_loop(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    id: u64,
    changed: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = stopped(shutdown) => return,
            res = changed.changed() => {
                if res.is_err() {
                    return;
                }
                let wake = {
                    let mut st = shared.lock();
                    match st.close_request {
                        Some((target, code)) if target == id => {
                            st.close_request = None;
                            Wake::Close(code)
                        }
                        _ if st.shards.contains_key(&id) => Wake::Send(drain_outbox(&mut st, id)),
                        _ => Wake::Send(Vec::new()),
                    }
                };
                match wake {
                    Wake::Send(frames) => {
                        if conn.send_all(frames).await.is_err() {
                            return;
                        }
                    }
                    Wake::Close(code) => {
                        {
                            let mut st = shared.lock();
                            st.shards.remove(&id);
                            if st.active_conn == Some(id) {
                                st.active_conn = None;
                            }
                        }
                        let code = CloseCode::try_from(code).ok();
                        let close = WsMessage::close(code, "fake discord drop");
                        if conn.ws.send(close).await.is_ok() {
                            // Let the client answer the close handshake.
                            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                                while let Some(Ok(_)) = conn.ws.next().await {}
                            })
                            .await;
                        }
                        return;
                    }
                }
            }
            msg = conn.ws.next() => {
                let Some(Ok(msg)) = msg else { return };
                let Some(text) = msg.as_text() else { continue };
                let frames = match serde_json::from_str::<Value>(text) {
                    Ok(payload) => handle_op(shared, id, &payload),
                    Err(e) => {
                        shared.lock().errors.push(format!("client sent non-JSON {text:?}: {e}"));
                        Vec::new()
                    }
                };
                if conn.send_all(frames).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Handles one client payload; returns the frames to send back.
fn handle_op(shared: &Shared, conn: u64, payload: &Value) -> Vec<String> {
    let d = &payload["d"];
    let mut st = shared.lock();
    match payload["op"].as_u64() {
        Some(1) => {
            st.heartbeats += 1;
            vec![json!({"op": 11, "s": null, "t": null, "d": null}).to_string()]
        }
        Some(2) => {
            st.identifies += 1;
            st.last_identify = Some(d.clone());
            st.sessions_made += 1;
            let session = format!("fake-session-{}", st.sessions_made);
            st.session_id = Some(session.clone());
            st.seq = 0;
            let shard = d.get("shard").cloned().unwrap_or(json!([0, 1]));
            let (id, total) = (
                shard[0].as_u64().unwrap_or(0),
                shard[1].as_u64().unwrap_or(1).max(1),
            );
            st.identified.push((id, total));
            st.session_shard = (id, total);
            st.shards.insert(conn, (id, total));
            let ready = ready_data(shared, &st, &session, shard);
            let mut frames = vec![dispatch_frame(&mut st, "READY", ready)];
            for guild in st.guilds.clone() {
                if shard_of(guild.id, total) != id {
                    continue;
                }
                let data = guild_data(&shared.bot, &guild);
                frames.push(dispatch_frame(&mut st, "GUILD_CREATE", data));
            }
            st.active_conn = Some(conn);
            frames.extend(drain_outbox(&mut st, conn));
            check_frames(&mut st, &frames);
            frames
        }
        Some(6) => {
            st.resumes += 1;
            if d["session_id"].as_str().is_some()
                && d["session_id"].as_str() == st.session_id.as_deref()
            {
                let mut frames = vec![dispatch_frame(&mut st, "RESUMED", json!({}))];
                st.active_conn = Some(conn);
                let shard = st.session_shard;
                st.shards.insert(conn, shard);
                frames.extend(drain_outbox(&mut st, conn));
                check_frames(&mut st, &frames);
                frames
            } else {
                vec![json!({"op": 9, "s": null, "t": null, "d": false}).to_string()]
            }
        }
        // Presence / voice state / request guild members: accepted and ignored.
        Some(3 | 4 | 8) => Vec::new(),
        _ => {
            st.errors
                .push(format!("client sent unexpected gateway payload {payload}"));
            Vec::new()
        }
    }
}

/// Numbers and serializes a dispatch.
fn dispatch_frame(st: &mut FakeState, event_type: &str, data: Value) -> String {
    st.seq += 1;
    json!({"op": 0, "s": st.seq, "t": event_type, "d": data}).to_string()
}

/// The shard a guild's events go to, of `total` (Discord's rule).
fn shard_of(guild_id: u64, total: u64) -> u64 {
    (guild_id >> 22) % total.max(1)
}

/// Numbers and serializes every queued dispatch for connection `conn`'s shard (the others
/// wait for theirs).
fn drain_outbox(st: &mut FakeState, conn: u64) -> Vec<String> {
    let (shard, total) = st.shards.get(&conn).copied().unwrap_or((0, 1));
    let pending: Vec<(String, Value)> = st.outbox.drain(..).collect();
    let mut frames = Vec::new();
    for (t, d) in pending {
        let guild = d["guild_id"].as_str().and_then(|g| g.parse::<u64>().ok());
        if guild.map_or(0, |g| shard_of(g, total)) == shard {
            frames.push(dispatch_frame(st, &t, d));
        } else {
            st.outbox.push_back((t, d));
        }
    }
    frames
}

/// Parses a gateway frame exactly as the shard will.
fn check_frame(frame: &str) -> Result<(), String> {
    match twilight_gateway::parse(frame.to_owned(), twilight_gateway::EventTypeFlags::all()) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!("twilight ignores this gateway frame: {frame}")),
        Err(e) => Err(format!(
            "twilight can't parse this gateway frame: {e} ({:?})\n{frame}",
            std::error::Error::source(&e).map(|s| s.to_string())
        )),
    }
}

/// Records frames twilight couldn't parse in `errors`.
fn check_frames(st: &mut FakeState, frames: &[String]) {
    for frame in frames {
        if let Err(e) = check_frame(frame) {
            st.errors.push(e);
        }
    }
}

/// `d` of READY.
fn ready_data(shared: &Shared, st: &FakeState, session: &str, shard: Value) -> Value {
    let (id, total) = (
        shard[0].as_u64().unwrap_or(0),
        shard[1].as_u64().unwrap_or(1),
    );
    json!({
        "v": 10,
        "user": current_user_json(&shared.bot),
        "guilds": st.guilds.iter()
            .filter(|g| shard_of(g.id, total) == id)
            .map(|g| json!({"id": g.id.to_string(), "unavailable": true}))
            .collect::<Vec<_>>(),
        "session_id": session,
        "resume_gateway_url": shared.gateway_url,
        "shard": shard,
        "application": {"id": shared.application_id.to_string(), "flags": 0},
        "private_channels": [],
        "presences": [],
    })
}

/// `d` of GUILD_CREATE: a full guild with its channels, threads, `@everyone` role and the bot
/// as member.
fn guild_data(bot: &Author, guild: &Guild) -> Value {
    let (threads, channels): (Vec<&Channel>, Vec<&Channel>) = guild
        .channels
        .iter()
        .partition(|c| matches!(c.kind, ChannelKind::PublicThread { .. }));
    let mut bot_member = member_json(Some(bot));
    bot_member.as_object_mut().unwrap().remove("permissions");
    json!({
        "id": guild.id.to_string(),
        "name": guild.name,
        "icon": null, "splash": null, "discovery_splash": null, "banner": null,
        "description": null,
        "owner_id": "1",
        "afk_channel_id": null, "afk_timeout": 300,
        "verification_level": 0, "default_message_notifications": 0,
        "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0,
        "roles": [{
            "id": guild.id.to_string(), "name": "@everyone", "color": 0,
            "colors": {"primary_color": 0, "secondary_color": null, "tertiary_color": null},
            "hoist": false, "icon": null, "unicode_emoji": null, "position": 0,
            "permissions": ALL_PERMISSIONS, "managed": false, "mentionable": false, "flags": 0,
        }],
        "emojis": [], "stickers": [], "features": [],
        "application_id": null, "system_channel_id": null, "system_channel_flags": 0,
        "rules_channel_id": null, "public_updates_channel_id": null,
        "safety_alerts_channel_id": null, "vanity_url_code": null,
        "premium_tier": 0, "premium_subscription_count": 0,
        "premium_progress_bar_enabled": false, "preferred_locale": "en-US",
        "joined_at": iso_timestamp(now_ms()), "large": false, "unavailable": false,
        "member_count": 2,
        "members": [bot_member],
        "channels": channels.iter().map(|c| channel_json(None, c, bot)).collect::<Vec<_>>(),
        "threads": threads.iter().map(|c| channel_json(Some(guild.id), c, bot)).collect::<Vec<_>>(),
        "presences": [], "voice_states": [], "stage_instances": [], "guild_scheduled_events": [],
    })
}

/// A user object.
fn user_json(a: &Author) -> Value {
    json!({
        "id": a.id.to_string(),
        "username": a.name,
        "global_name": a.name,
        "discriminator": discriminator(a.discriminator),
        "avatar": null,
        "bot": a.bot,
        "public_flags": 0,
    })
}

/// The bot as a current-user object (READY, `/users/@me`); twilight requires `mfa_enabled`.
fn current_user_json(a: &Author) -> Value {
    json!({
        "id": a.id.to_string(),
        "username": a.name,
        "global_name": a.name,
        "discriminator": discriminator(a.discriminator),
        "avatar": null, "banner": null, "accent_color": null,
        "bot": a.bot,
        "mfa_enabled": false,
        "verified": true,
        "flags": 0,
    })
}

/// Discord's discriminator string: `"0"` for new-style names, else four digits.
fn discriminator(d: u16) -> String {
    if d == 0 {
        "0".to_owned()
    } else {
        format!("{d:04}")
    }
}

/// A guild member object; with `user`, the interaction shape (user + permissions).
fn member_json(user: Option<&Author>) -> Value {
    let mut m = json!({
        "roles": [], "joined_at": iso_timestamp(now_ms()), "deaf": false, "mute": false,
        "flags": 0, "nick": null, "premium_since": null, "communication_disabled_until": null,
    });
    if let Some(user) = user {
        m["user"] = user_json(user);
        m["permissions"] = json!(MEMBER_PERMISSIONS);
    }
    m
}

/// A guild channel object (`guild_id` included when given).
fn channel_json(guild_id: Option<u64>, ch: &Channel, bot: &Author) -> Value {
    let mut c = match ch.kind {
        ChannelKind::Text => json!({
            "id": ch.id.to_string(), "type": 0, "name": ch.name, "position": 0,
            "permission_overwrites": [], "nsfw": false, "topic": null,
            "last_message_id": null, "rate_limit_per_user": 0, "parent_id": null, "flags": 0,
        }),
        ChannelKind::Voice => json!({
            "id": ch.id.to_string(), "type": 2, "name": ch.name, "position": 1,
            "permission_overwrites": [], "nsfw": false, "bitrate": 64000, "user_limit": 0,
            "rtc_region": null, "last_message_id": null, "rate_limit_per_user": 0,
            "parent_id": null, "flags": 0,
        }),
        ChannelKind::Category => json!({
            "id": ch.id.to_string(), "type": 4, "name": ch.name, "position": 2,
            "permission_overwrites": [], "nsfw": false, "parent_id": null, "flags": 0,
        }),
        ChannelKind::PublicThread { parent_id } => json!({
            "id": ch.id.to_string(), "type": 11, "name": ch.name,
            "parent_id": parent_id.to_string(), "owner_id": bot.id.to_string(),
            "last_message_id": null, "rate_limit_per_user": 0, "flags": 0,
            "message_count": 0, "member_count": 1, "total_message_sent": 0,
            "thread_metadata": {
                "archived": false, "auto_archive_duration": 1440,
                "archive_timestamp": iso_timestamp(now_ms()), "locked": false,
            },
        }),
    };
    if let Some(gid) = guild_id {
        c["guild_id"] = json!(gid.to_string());
    }
    c
}

/// A DM channel object (type 1).
fn dm_channel_json(channel_id: u64, recipient: Option<&Author>) -> Value {
    json!({
        "id": channel_id.to_string(), "type": 1, "last_message_id": null, "flags": 0,
        "recipients": recipient.map(user_json).into_iter().collect::<Vec<_>>(),
    })
}

/// A message object in REST shape (no `guild_id`/`member`).
fn base_message(id: u64, channel_id: u64, author: &Author, content: &str) -> Value {
    json!({
        "id": id.to_string(),
        "channel_id": channel_id.to_string(),
        "author": user_json(author),
        "content": content,
        "timestamp": iso_timestamp(now_ms()),
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": false,
        "type": 0,
        "flags": 0,
    })
}

/// `<@id>` / `<@!id>` mentions of known users in `content`.
fn mentions(st: &FakeState, content: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for piece in content.split("<@").skip(1) {
        let piece = piece.strip_prefix('!').unwrap_or(piece);
        let Some(end) = piece.find('>') else { continue };
        let Ok(id) = piece[..end].parse::<u64>() else {
            continue;
        };
        if let Some(user) = st.users.get(&id)
            && seen.insert(id)
        {
            out.push(user_json(user));
        }
    }
    out
}

/// Shallow-merges the fields of object `extra` into object `target`.
fn merge(target: &mut Value, extra: Value) {
    if let (Some(t), Value::Object(e)) = (target.as_object_mut(), extra) {
        t.extend(e);
    }
}

// ---------------------------------------------------------------------------------------------
// REST
// ---------------------------------------------------------------------------------------------

/// Which twilight-model type a REST answer must deserialize into.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Message,
    Channel,
    Commands,
    Application,
    CurrentUser,
    User,
    Guild,
    Channels,
    Any,
}

/// A REST answer before validation.
struct Reply {
    /// HTTP status.
    status: u16,
    /// JSON body (`None` for 204).
    body: Option<Value>,
    /// Type the body must deserialize into.
    shape: Shape,
}

impl Reply {
    /// 200 with a body of the given shape.
    fn ok(shape: Shape, body: Value) -> Reply {
        Reply {
            status: 200,
            body: Some(body),
            shape,
        }
    }

    /// 204.
    fn no_content() -> Reply {
        Reply {
            status: 204,
            body: None,
            shape: Shape::Any,
        }
    }

    /// A Discord-style error body `{"message","code"}`.
    fn error(status: u16, message: &str, code: u64) -> Reply {
        Reply {
            status,
            body: Some(json!({"message": message, "code": code})),
            shape: Shape::Any,
        }
    }

    /// 404 `Unknown route`.
    fn unknown_route() -> Reply {
        Reply::error(404, "Unknown route", 0)
    }

    /// Turns an answer twilight couldn't deserialize into a 500 that says why.
    fn validated(self) -> Reply {
        let Some(body) = &self.body else { return self };
        if self.status >= 300 {
            return self;
        }
        let v = body.clone();
        let result = match self.shape {
            Shape::Message => {
                serde_json::from_value::<twilight_model::channel::Message>(v).map(drop)
            }
            Shape::Channel => {
                serde_json::from_value::<twilight_model::channel::Channel>(v).map(drop)
            }
            Shape::Commands => {
                serde_json::from_value::<Vec<twilight_model::application::command::Command>>(v)
                    .map(drop)
            }
            Shape::Application => {
                serde_json::from_value::<twilight_model::oauth::Application>(v).map(drop)
            }
            Shape::CurrentUser => {
                serde_json::from_value::<twilight_model::user::CurrentUser>(v).map(drop)
            }
            Shape::User => serde_json::from_value::<twilight_model::user::User>(v).map(drop),
            Shape::Guild => serde_json::from_value::<twilight_model::guild::Guild>(v).map(drop),
            Shape::Channels => {
                serde_json::from_value::<Vec<twilight_model::channel::Channel>>(v).map(drop)
            }
            Shape::Any => Ok(()),
        };
        match result {
            Ok(()) => self,
            Err(e) => {
                let message = format!(
                    "fake discord bug: answer does not deserialize as twilight {:?}: {e}; body: {body}",
                    self.shape
                );
                eprintln!("{message}");
                Reply::error(500, &message, 0)
            }
        }
    }
}

/// The single axum handler: records the call, applies rate limits, answers.
async fn rest_handler(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let method = parts.method.as_str().to_owned();
    let path = percent_decode(parts.uri.path());
    let query = parts.uri.query().unwrap_or("").to_owned();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (json, files, body_text) = parse_body(&content_type, &bytes);
    let mut call = RestCall {
        method,
        path,
        query,
        json,
        files,
        body_text,
        authorization,
        status: 0,
        response: None,
        at: std::time::Instant::now(),
    };

    // Uploaded attachments are served back at their URL.
    let file = if call.method == "GET" {
        shared.lock().files.get(&call.path).cloned()
    } else {
        None
    };
    if let Some((content_type, bytes)) = file {
        call.status = 200;
        shared.lock().calls.push(call);
        return Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(bytes))
            .unwrap();
    }

    let limited = {
        let mut st = shared.lock();
        let hit = st
            .rate_limits
            .iter()
            .position(|(m, prefix, _)| *m == call.method && call.path.starts_with(prefix.as_str()));
        hit.map(|i| st.rate_limits.remove(i).2)
    };
    if let Some(secs) = limited {
        let body =
            json!({"message": "You are being rate limited.", "retry_after": secs, "global": false});
        call.status = 429;
        call.response = Some(body.clone());
        let bucket = format!("fake-{:x}", fnv(&format!("{} {}", call.method, call.path)));
        let reset = now_ms() as f64 / 1000.0 + secs;
        shared.lock().calls.push(call);
        let mut response = json_response(429, Some(&body));
        let headers = response.headers_mut();
        let mut set = |name: &'static str, value: String| {
            headers.insert(name, HeaderValue::from_str(&value).unwrap());
        };
        set("retry-after", format!("{}", secs.ceil().max(0.0) as u64));
        set("x-ratelimit-scope", "user".to_owned());
        set("x-ratelimit-bucket", bucket);
        set("x-ratelimit-limit", "5".to_owned());
        set("x-ratelimit-remaining", "0".to_owned());
        set("x-ratelimit-reset", format!("{reset:.3}"));
        set("x-ratelimit-reset-after", format!("{secs:.3}"));
        return response;
    }

    let failure = {
        let mut st = shared.lock();
        let hit = st.failures.iter().position(|(m, prefix, ..)| {
            *m == call.method && call.path.starts_with(prefix.as_str())
        });
        hit.map(|i| {
            let entry = &mut st.failures[i];
            entry.4 -= 1;
            let answer = (entry.2, entry.3.clone());
            if entry.4 == 0 {
                st.failures.remove(i);
            }
            answer
        })
    };
    if let Some((status, body)) = failure {
        call.status = status;
        call.response = serde_json::from_str(&body).ok();
        shared.lock().calls.push(call);
        let is_json = serde_json::from_str::<Value>(&body).is_ok();
        return Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header(
                header::CONTENT_TYPE,
                if is_json {
                    "application/json"
                } else {
                    "text/html"
                },
            )
            .body(Body::from(body))
            .unwrap();
    }

    let reply = route(&shared, &call).validated();
    call.status = reply.status;
    call.response = reply.body.clone();
    shared.lock().calls.push(call);
    json_response(reply.status, reply.body.as_ref())
}

/// An HTTP response with an optional JSON body.
fn json_response(status: u16, body: Option<&Value>) -> Response {
    let builder = Response::builder().status(StatusCode::from_u16(status).unwrap());
    match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

/// Answers one REST call (without recording it).
fn route(shared: &Shared, call: &RestCall) -> Reply {
    let Some(rest) = call.path.strip_prefix("/api/v10/") else {
        return Reply::unknown_route();
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let id = |s: &str| s.parse::<u64>().ok();
    let json = call.json.as_ref();
    let app = shared.application_id;
    match (call.method.as_str(), segs.as_slice()) {
        ("POST", ["channels", cid, "messages"]) => {
            let Some(cid) = id(cid) else {
                return Reply::unknown_route();
            };
            let mut st = shared.lock();
            let mid = st.next_id();
            let mut msg = base_message(mid, cid, &shared.bot, "");
            apply_payload(shared, &mut st, &mut msg, json, &call.files);
            if let Some(reference) = json.and_then(|j| j.get("message_reference"))
                && reference.get("message_id").is_some()
            {
                let mut r = reference.clone();
                r.as_object_mut().unwrap().remove("fail_if_not_exists");
                r["channel_id"] = json!(
                    r.get("channel_id")
                        .cloned()
                        .unwrap_or(json!(cid.to_string()))
                );
                msg["message_reference"] = r;
                msg["type"] = json!(19);
            }
            let msg = checked_message(msg);
            st.messages.insert(mid, msg.clone());
            Reply::ok(Shape::Message, msg)
        }
        ("GET", ["channels", _, "messages", mid]) => {
            match id(mid).and_then(|m| shared.lock().messages.get(&m).cloned()) {
                Some(msg) => Reply::ok(Shape::Message, msg),
                None => Reply::error(404, "Unknown Message", 10008),
            }
        }
        ("PATCH", ["channels", cid, "messages", mid]) => {
            let (Some(cid), Some(mid)) = (id(cid), id(mid)) else {
                return Reply::unknown_route();
            };
            edit_message(shared, mid, cid, json, &call.files)
        }
        ("DELETE", ["channels", _, "messages", mid]) => {
            if let Some(mid) = id(mid) {
                shared.lock().messages.remove(&mid);
            }
            Reply::no_content()
        }
        ("PUT" | "DELETE", ["channels", _, "messages", _, "reactions", _, "@me"]) => {
            Reply::no_content()
        }
        ("POST", ["channels", _, "typing"]) => Reply::no_content(),
        ("GET", ["channels", cid]) => {
            let Some(cid) = id(cid) else {
                return Reply::unknown_route();
            };
            let st = shared.lock();
            if let Some((gid, ch)) = st.find_channel(cid) {
                Reply::ok(Shape::Channel, channel_json(Some(gid), &ch, &shared.bot))
            } else if let Some(user) = st.dm_recipients.get(&cid) {
                Reply::ok(Shape::Channel, dm_channel_json(cid, Some(user)))
            } else {
                Reply::error(404, "Unknown Channel", 10003)
            }
        }
        ("PUT", ["applications", a, "commands"]) if id(a) == Some(app) => {
            set_commands(shared, None, json)
        }
        ("PUT", ["applications", a, "guilds", gid, "commands"]) if id(a) == Some(app) => {
            let Some(gid) = id(gid) else {
                return Reply::unknown_route();
            };
            set_commands(shared, Some(gid), json)
        }
        ("GET", ["applications", a, "commands"]) if id(a) == Some(app) => {
            let commands = shared
                .lock()
                .commands
                .get(&None)
                .cloned()
                .unwrap_or_default();
            Reply::ok(Shape::Commands, Value::Array(commands))
        }
        ("GET", ["applications", a, "guilds", gid, "commands"]) if id(a) == Some(app) => {
            let commands = shared
                .lock()
                .commands
                .get(&id(gid))
                .cloned()
                .unwrap_or_default();
            Reply::ok(Shape::Commands, Value::Array(commands))
        }
        ("GET", ["applications", "@me"] | ["oauth2", "applications", "@me"]) => Reply::ok(
            Shape::Application,
            json!({
                "id": app.to_string(), "name": shared.bot.name, "icon": null,
                "description": "", "bot_public": false, "bot_require_code_grant": false,
                "verify_key": "00", "flags": 0, "bot": user_json(&shared.bot),
            }),
        ),
        ("GET", ["users", "@me"]) => Reply::ok(Shape::CurrentUser, current_user_json(&shared.bot)),
        ("GET", ["users", uid]) => match id(uid).and_then(|u| shared.lock().users.get(&u).cloned())
        {
            Some(user) => Reply::ok(Shape::User, user_json(&user)),
            None => Reply::error(404, "Unknown User", 10013),
        },
        ("POST", ["users", "@me", "channels"]) => {
            let recipient = json
                .and_then(|j| j.get("recipient_id"))
                .and_then(|r| {
                    r.as_str()
                        .map(str::to_owned)
                        .or_else(|| r.as_u64().map(|n| n.to_string()))
                })
                .and_then(|r| r.parse::<u64>().ok());
            let mut st = shared.lock();
            let Some(user) = recipient.and_then(|u| st.users.get(&u).cloned()) else {
                return Reply::error(400, "Invalid Recipient(s)", 50033);
            };
            let existing = st
                .dm_recipients
                .iter()
                .find(|(_, a)| a.id == user.id)
                .map(|(c, _)| *c);
            let cid = existing.unwrap_or_else(|| st.next_id());
            st.dm_recipients.insert(cid, user.clone());
            Reply::ok(Shape::Channel, dm_channel_json(cid, Some(&user)))
        }
        ("GET", ["guilds", gid]) => {
            let st = shared.lock();
            match id(gid).and_then(|g| st.guilds.iter().find(|x| x.id == g)) {
                Some(guild) => Reply::ok(Shape::Guild, guild_data(&shared.bot, guild)),
                None => Reply::error(404, "Unknown Guild", 10004),
            }
        }
        ("GET", ["guilds", gid, "channels"]) => {
            let st = shared.lock();
            match id(gid).and_then(|g| st.guilds.iter().find(|x| x.id == g)) {
                Some(guild) => Reply::ok(
                    Shape::Channels,
                    Value::Array(
                        guild
                            .channels
                            .iter()
                            .filter(|c| !matches!(c.kind, ChannelKind::PublicThread { .. }))
                            .map(|c| channel_json(Some(guild.id), c, &shared.bot))
                            .collect(),
                    ),
                ),
                None => Reply::error(404, "Unknown Guild", 10004),
            }
        }
        ("POST", ["interactions", iid, token, "callback"]) => {
            interaction_callback(shared, id(iid), token, json, &call.files)
        }
        ("POST", ["webhooks", a, token]) if id(a) == Some(app) => {
            let mut st = shared.lock();
            let Some(info) = st.interactions.get(*token).cloned() else {
                return Reply::error(404, "Unknown Webhook", 10015);
            };
            let mid = st.next_id();
            let mut msg = webhook_message(shared, mid, info.channel_id);
            apply_payload(shared, &mut st, &mut msg, json, &call.files);
            let msg = checked_message(msg);
            st.messages.insert(mid, msg.clone());
            Reply::ok(Shape::Message, msg)
        }
        (method @ ("GET" | "PATCH" | "DELETE"), ["webhooks", a, token, "messages", which])
            if id(a) == Some(app) =>
        {
            let mid = {
                let st = shared.lock();
                let Some(info) = st.interactions.get(*token) else {
                    return Reply::error(404, "Unknown Webhook", 10015);
                };
                let mid = if *which == "@original" {
                    st.originals.get(*token).copied()
                } else {
                    id(which)
                };
                match mid {
                    Some(mid) if st.messages.contains_key(&mid) => (mid, info.channel_id),
                    _ => return Reply::error(404, "Unknown Message", 10008),
                }
            };
            match method {
                "GET" => Reply::ok(Shape::Message, shared.lock().messages[&mid.0].clone()),
                "PATCH" => edit_message(shared, mid.0, mid.1, json, &call.files),
                _ => {
                    shared.lock().messages.remove(&mid.0);
                    Reply::no_content()
                }
            }
        }
        _ => Reply::unknown_route(),
    }
}

/// A message posted through the application's interaction webhook.
fn webhook_message(shared: &Shared, id: u64, channel_id: u64) -> Value {
    let mut msg = base_message(id, channel_id, &shared.bot, "");
    msg["application_id"] = json!(shared.application_id.to_string());
    msg["webhook_id"] = json!(shared.application_id.to_string());
    msg
}

/// PATCH of a message the bot authored.
fn edit_message(
    shared: &Shared,
    mid: u64,
    cid: u64,
    json: Option<&Value>,
    files: &[(String, Vec<u8>)],
) -> Reply {
    let mut st = shared.lock();
    let Some(mut msg) = st.messages.get(&mid).cloned() else {
        return Reply::error(404, "Unknown Message", 10008);
    };
    if msg["channel_id"] != json!(cid.to_string()) {
        return Reply::error(404, "Unknown Message", 10008);
    }
    if msg["author"]["id"] != json!(shared.bot.id.to_string()) {
        return Reply::error(403, "Cannot edit a message authored by another user", 50005);
    }
    apply_payload(shared, &mut st, &mut msg, json, files);
    msg["edited_timestamp"] = json!(iso_timestamp(now_ms()));
    let msg = checked_message(msg);
    st.messages.insert(mid, msg.clone());
    Reply::ok(Shape::Message, msg)
}

/// POST `/interactions/{id}/{token}/callback`: acknowledges once, creates or updates the
/// `@original` message depending on the callback type.
fn interaction_callback(
    shared: &Shared,
    iid: Option<u64>,
    token: &str,
    json: Option<&Value>,
    files: &[(String, Vec<u8>)],
) -> Reply {
    let mut st = shared.lock();
    let info = match st.interactions.get_mut(token) {
        Some(info) if Some(info.id) == iid => info,
        _ => return Reply::error(404, "Unknown interaction", 10062),
    };
    if info.acknowledged {
        return Reply::error(400, "Interaction has already been acknowledged.", 40060);
    }
    info.acknowledged = true;
    let info = info.clone();
    let kind = json.and_then(|j| j["type"].as_u64()).unwrap_or(0);
    let data = json.and_then(|j| j.get("data"));
    match kind {
        // CHANNEL_MESSAGE_WITH_SOURCE / DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: the @original.
        4 | 5 => {
            let mid = st.next_id();
            let mut msg = webhook_message(shared, mid, info.channel_id);
            apply_payload(shared, &mut st, &mut msg, data, files);
            if kind == 5 {
                let flags = msg["flags"].as_u64().unwrap_or(0) | 128; // LOADING
                msg["flags"] = json!(flags);
            }
            let msg = checked_message(msg);
            st.messages.insert(mid, msg);
            st.originals.insert(token.to_owned(), mid);
        }
        // UPDATE_MESSAGE: edits the message the component is on.
        7 => {
            if let Some(mid) = info.message_id
                && let Some(mut msg) = st.messages.get(&mid).cloned()
            {
                apply_payload(shared, &mut st, &mut msg, data, files);
                msg["edited_timestamp"] = json!(iso_timestamp(now_ms()));
                let msg = checked_message(msg);
                st.messages.insert(mid, msg);
            }
            if let Some(mid) = info.message_id {
                st.originals.insert(token.to_owned(), mid);
            }
        }
        6 => {
            if let Some(mid) = info.message_id {
                st.originals.insert(token.to_owned(), mid);
            }
        }
        _ => {}
    }
    Reply::no_content()
}

/// PUT of the global or a guild's commands: echoed with ids, version and application id.
fn set_commands(shared: &Shared, guild_id: Option<u64>, json: Option<&Value>) -> Reply {
    let Some(list) = json.and_then(Value::as_array) else {
        return Reply::error(
            400,
            "Invalid Form Body (expected an array of commands)",
            50035,
        );
    };
    let mut st = shared.lock();
    let previous = st.commands.get(&guild_id).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for command in list {
        let mut c = command.clone();
        let name = c["name"].clone();
        let existing = previous
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["id"].as_str().and_then(|s| s.parse::<u64>().ok()));
        let cid = match existing {
            Some(cid) => cid,
            None => st.next_id(),
        };
        let version = st.next_id();
        c["id"] = json!(cid.to_string());
        c["application_id"] = json!(shared.application_id.to_string());
        c["version"] = json!(version.to_string());
        if c.get("type").is_none() {
            c["type"] = json!(1);
        }
        if c.get("description").is_none() {
            c["description"] = json!("");
        }
        match guild_id {
            Some(gid) => c["guild_id"] = json!(gid.to_string()),
            None => {
                if let Some(o) = c.as_object_mut() {
                    o.remove("guild_id");
                }
            }
        }
        out.push(c);
    }
    st.commands.insert(guild_id, out.clone());
    Reply::ok(Shape::Commands, Value::Array(out))
}

/// Applies a create/edit payload (content, embeds, components, flags, attachments) to `msg`.
fn apply_payload(
    shared: &Shared,
    st: &mut FakeState,
    msg: &mut Value,
    json: Option<&Value>,
    files: &[(String, Vec<u8>)],
) {
    let empty = json!({});
    let json = json.unwrap_or(&empty);
    if let Some(content) = json.get("content") {
        msg["content"] = json!(content.as_str().unwrap_or(""));
    }
    for key in ["embeds", "components"] {
        if let Some(v) = json.get(key) {
            msg[key] = if v.is_null() { json!([]) } else { v.clone() };
        }
    }
    if let Some(flags) = json.get("flags").and_then(Value::as_u64) {
        msg["flags"] = json!(flags);
    }
    // Attachments: those listed by id in the payload are kept (all are kept if the payload has
    // no `attachments`), then the uploaded files are added.
    let old = msg["attachments"].as_array().cloned().unwrap_or_default();
    let mut attachments: Vec<Value> = match json.get("attachments").and_then(Value::as_array) {
        Some(keep) => old
            .into_iter()
            .filter(|a| keep.iter().any(|k| id_str(&k["id"]) == id_str(&a["id"])))
            .collect(),
        None => old,
    };
    let channel_id = msg["channel_id"].as_str().unwrap_or("0").to_owned();
    for (filename, bytes) in files {
        let aid = st.next_id();
        let url_path = format!("/attachments/{channel_id}/{aid}/{filename}");
        let content_type = content_type_for(filename);
        st.files
            .insert(url_path.clone(), (content_type.clone(), bytes.clone()));
        let url = format!("{}{url_path}", shared.api_base);
        let mut a = json!({
            "id": aid.to_string(), "filename": filename, "size": bytes.len(),
            "url": url, "proxy_url": url, "content_type": content_type,
        });
        if let Some((w, h)) = png_size(bytes) {
            a["width"] = json!(w);
            a["height"] = json!(h);
        }
        attachments.push(a);
    }
    msg["attachments"] = Value::Array(attachments);
}

/// Returns `msg` if twilight can read it; otherwise drops the echoed optional parts
/// (embeds, components, reference) so the bot still gets a readable message, and says so.
fn checked_message(mut msg: Value) -> Value {
    if let Err(e) = serde_json::from_value::<twilight_model::channel::Message>(msg.clone()) {
        eprintln!(
            "fake discord: echoed message does not deserialize ({e}); dropping embeds/components/reference: {msg}"
        );
        msg["embeds"] = json!([]);
        if let Some(o) = msg.as_object_mut() {
            o.remove("components");
            o.remove("message_reference");
        }
        msg["type"] = json!(0);
    }
    msg
}

/// An id as a string whether it was sent as a string or a number.
fn id_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Splits a body into (JSON, files, leftover text): multipart → `payload_json` + `files[N]`
/// parts; otherwise JSON if it parses, else the lossy text.
fn parse_body(content_type: &str, bytes: &[u8]) -> (Option<Value>, Files, Option<String>) {
    if bytes.is_empty() {
        return (None, Vec::new(), None);
    }
    let text = || Some(String::from_utf8_lossy(bytes).into_owned());
    if content_type.starts_with("multipart/form-data") {
        return match parse_multipart(content_type, bytes) {
            Some((json, files)) => (json, files, None),
            None => (None, Vec::new(), text()),
        };
    }
    match serde_json::from_slice(bytes) {
        Ok(json) => (Some(json), Vec::new(), None),
        Err(_) => (None, Vec::new(), text()),
    }
}

/// Parses a multipart/form-data body into (`payload_json`, files). Other non-file fields
/// are collected into the JSON object when there is no `payload_json`.
fn parse_multipart(content_type: &str, body: &[u8]) -> Option<(Option<Value>, Files)> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("--{boundary}").into_bytes();
    let mut starts = Vec::new();
    let mut i = 0;
    while let Some(pos) = find(&body[i..], &delimiter) {
        starts.push(i + pos);
        i += pos + delimiter.len();
    }
    let mut json = None;
    let mut fields = serde_json::Map::new();
    let mut files = Vec::new();
    for pair in starts.windows(2) {
        let part = &body[pair[0] + delimiter.len()..pair[1]];
        let part = part.strip_prefix(b"\r\n")?;
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        let header_end = find(part, b"\r\n\r\n")?;
        let headers = String::from_utf8_lossy(&part[..header_end]);
        let content = &part[header_end + 4..];
        let disposition = headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
        let param = |key: &str| {
            let start = disposition.find(&format!("{key}=\""))? + key.len() + 2;
            let len = disposition[start..].find('"')?;
            Some(disposition[start..start + len].to_owned())
        };
        let name = param("name").unwrap_or_default();
        if let Some(filename) = param("filename") {
            files.push((filename, content.to_vec()));
        } else if name == "payload_json" {
            json = serde_json::from_slice(content).ok();
        } else {
            fields.insert(name, json!(String::from_utf8_lossy(content)));
        }
    }
    if json.is_none() && !fields.is_empty() {
        json = Some(Value::Object(fields));
    }
    Some((json, files))
}

/// Position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes `%XX` escapes (lossy UTF-8).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Content type guessed from a file extension.
fn content_type_for(filename: &str) -> String {
    let ext = filename
        .rsplit('.')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "txt" => "text/plain; charset=utf-8",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
    .to_owned()
}

/// Width and height from a PNG's IHDR.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" {
        return None;
    }
    let w = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    Some((w, h))
}

/// FNV-1a hash (for stable fake bucket ids).
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// At most `max` bytes of `s`, with an ellipsis if cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Unix time in milliseconds.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(DISCORD_EPOCH_MS)
}

/// `2025-01-02T03:04:05.678000+00:00`, the form Discord (and twilight's `Timestamp`) uses.
fn iso_timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let micros = (ms % 1000) * 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
