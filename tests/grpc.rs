//! The gRPC API against discordproxy's own PyPI client and CLI (discordproxy==1.5.1, installed
//! into a venv this test creates), `easel send`, and a raw tonic client for the status codes,
//! with the fake Discord REST of `common::discord` behind easel.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::discord::{Author, Channel, FakeDiscord, Guild};
use common::{Server, ServerOptions, easel_bin, free_port};
use easel::grpc::proto;
use serde_json::{Value, json};

const APP: u64 = 3000;
const GUILD: u64 = 100;
const ART: u64 = 10;
const LOUNGE: u64 = 12;
const STUDIO: u64 = 13;
const THREAD: u64 = 11;
const ALICE: u64 = 2000;
const ALICE_ID: &str = "2000";
const ART_ID: &str = "10";
/// Back-off unit after a Discord server error in these tests (the default is 1 s).
const BACKOFF_MS: u64 = 10;

struct Proxy {
    fake: FakeDiscord,
    server: Server,
    grpc_port: u16,
    _dir: tempfile::TempDir,
}

impl Proxy {
    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    /// discordproxy's `DiscordClient` runs `request` (see tests/peers/discordproxy_client.py).
    async fn python(&self, mut request: Value) -> Value {
        request["target"] = json!(self.target());
        let python = venv().join("bin/python");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/peers/discordproxy_client.py"
        );
        let output = tokio::task::spawn_blocking(move || {
            Command::new(python)
                .arg(script)
                .arg(request.to_string())
                .output()
        })
        .await
        .unwrap()
        .expect("run the discordproxy client");
        assert!(
            output.status.success(),
            "discordproxy client failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.server.stderr()
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "not JSON ({err}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    async fn tonic(
        &self,
    ) -> proto::discord_api_client::DiscordApiClient<tonic::transport::Channel> {
        proto::discord_api_client::DiscordApiClient::connect(format!("http://{}", self.target()))
            .await
            .expect("connect to the gRPC API")
    }

    fn rest_calls(&self, method: &str, prefix: &str) -> usize {
        self.fake
            .count_calls(|c| c.method == method && c.path.starts_with(prefix))
    }
}

/// A fake Discord (guild "Studio": #art, voice "lounge", category "studio", thread "fox"; user
/// alice) and easel with the gateway off and the gRPC API on a free port.
async fn start(more: &str) -> Proxy {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeDiscord::start(
        Author::bot(1000, "easel"),
        APP,
        vec![Guild {
            id: GUILD,
            name: "Studio".into(),
            channels: vec![
                Channel::text(ART, "art"),
                Channel::voice(LOUNGE, "lounge"),
                Channel::category(STUDIO, "studio"),
                Channel::thread(THREAD, "fox", ART),
            ],
        }],
    )
    .await;
    fake.add_user(&Author::user(ALICE, "alice"));
    let (server, grpc_port, dir) = easel(&fake.api_host, more).await;
    Proxy {
        fake,
        server,
        grpc_port,
        _dir: dir,
    }
}

/// easel with the gateway off, Discord's REST at `api_host` and the gRPC API on a free port;
/// `more` is added to `[grpc]`.
async fn easel(api_host: &str, more: &str) -> (Server, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("easel.db").display());
    let grpc_port = free_port();
    let extra = format!(
        "[auth]\ndiscord_token = \"test-token\"\n[discord]\ngateway = false\n\
         api_base = \"http://{api_host}\"\nserver_error_backoff_ms = {BACKOFF_MS}\n\
         [grpc]\nport = {grpc_port}\n{more}\n"
    );
    let server = Server::start(ServerOptions {
        db_url: &db,
        dir: dir.path(),
        workers: 0,
        extra_toml: &extra,
        ..ServerOptions::default()
    })
    .await;
    server.wait_log("Started gRPC server", 1).await;
    (server, grpc_port, dir)
}

/// A venv with discordproxy 1.5.1 from PyPI, made once (other test processes wait on a lock).
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("discordproxy-1.5.1-venv");
        let ready = |dir: &Path| {
            Command::new(dir.join("bin/python"))
                .args(["-c", "import discordproxy.client"])
                .status()
                .is_ok_and(|s| s.success())
        };
        let lock = std::fs::File::create(dir.with_extension("lock")).unwrap();
        lock.lock().unwrap();
        if !ready(&dir) {
            let _ = std::fs::remove_dir_all(&dir);
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(made.success(), "python3 -m venv {}", dir.display());
            let installed = Command::new(dir.join("bin/pip"))
                .args([
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "discordproxy==1.5.1",
                ])
                .status()
                .unwrap();
            assert!(installed.success(), "pip install discordproxy==1.5.1");
            assert!(ready(&dir), "discordproxy does not import");
        }
        dir
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discordproxys_client_sends_and_reads() {
    let proxy = start("").await;

    // A channel message: the channel is read first (its guild goes into the answer).
    let sent = proxy
        .python(json!({"op": "channel", "id": ART, "content": "hello from the proxy"}))
        .await;
    let message = &sent["ok"];
    assert_eq!(message["content"], "hello from the proxy", "{sent}");
    assert_eq!(message["channel_id"], ART.to_string());
    assert_eq!(message["guild_id"], GUILD.to_string());
    assert_eq!(message["author"]["id"], "1000");
    assert_eq!(message["author"]["username"], "easel");
    assert_eq!(message["author"]["bot"], true);
    assert!(message.get("embeds").is_none());
    assert_eq!(
        proxy.rest_calls("GET", &format!("/api/v10/channels/{ART}")),
        1
    );

    // With an embed: it reaches Discord as Discord's embed and comes back.
    let embed = json!({
        "title": "A red fox", "description": "20 steps", "color": 16711680,
        "footer": {"text": "easel"},
        "image": {"url": "https://example.com/fox.png", "width": 512, "height": 384},
        "fields": [{"name": "seed", "value": "42", "inline": true}],
    });
    let sent = proxy
        .python(json!({"op": "channel", "id": ART, "content": "", "embed": embed}))
        .await;
    let back = &sent["ok"]["embeds"][0];
    assert_eq!(back["title"], "A red fox", "{sent}");
    assert_eq!(back["footer"]["text"], "easel");
    assert_eq!(back["image"]["width"], 512);
    assert_eq!(back["fields"][0]["name"], "seed");
    let posted = proxy
        .fake
        .calls()
        .into_iter()
        .rfind(|c| c.is("POST", &format!("/api/v10/channels/{ART}/messages")))
        .unwrap();
    let posted = posted.json.unwrap();
    assert_eq!(posted["embeds"][0]["title"], "A red fox");
    assert_eq!(
        posted["embeds"][0]["image"]["url"],
        "https://example.com/fox.png"
    );
    assert_eq!(posted["embeds"][0]["type"], "rich");

    // The client refuses an empty message itself.
    let refused = proxy.python(json!({"op": "channel", "id": ART})).await;
    assert_eq!(
        refused,
        json!({"value_error": "Either content or embed need to be specified."})
    );

    // A direct message: user, DM channel (opened once), send; no guild.
    for n in 0..2 {
        let sent = proxy
            .python(json!({"op": "direct", "id": ALICE, "content": format!("psst {n}")}))
            .await;
        assert_eq!(sent["ok"]["content"], format!("psst {n}"), "{sent}");
        assert!(sent["ok"].get("guild_id").is_none(), "{sent}");
    }
    assert_eq!(
        proxy.rest_calls("GET", &format!("/api/v10/users/{ALICE}")),
        1
    );
    assert_eq!(proxy.rest_calls("POST", "/api/v10/users/@me/channels"), 1);

    // Guild channels, with discordproxy's type numbers (Discord's plus one); no threads.
    let channels = proxy.python(json!({"op": "channels", "id": GUILD})).await;
    let mut seen: Vec<(String, String, String)> = channels["ok"]
        .as_array()
        .unwrap_or_else(|| panic!("{channels}"))
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["name"].as_str().unwrap().to_owned(),
                c["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (ART.to_string(), "art".into(), "GUILD_TEXT".into()),
            (LOUNGE.to_string(), "lounge".into(), "GUILD_VOICE".into()),
            (STUDIO.to_string(), "studio".into(), "GUILD_CATEGORY".into()),
        ]
    );
    let unknown = proxy.python(json!({"op": "channels", "id": 999})).await;
    assert_eq!(
        unknown["http"],
        json!({"status": 404, "code": 10004, "text": "Unknown Guild"})
    );
}

/// Each row of discordproxy's table: Discord's status → the client's exception and the raw
/// gRPC status; retried statuses are retried until the attempts run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_errors_map_as_discordproxy_mapped_them() {
    use tonic::Code;
    let proxy = start("").await;
    let rows: [(u16, Code, u32); 10] = [
        (400, Code::InvalidArgument, 1),
        (403, Code::PermissionDenied, 1),
        (404, Code::NotFound, 1),
        (405, Code::InvalidArgument, 1),
        (429, Code::ResourceExhausted, 5),
        (500, Code::Internal, 5),
        (502, Code::Unavailable, 5),
        (503, Code::Unknown, 5),
        (504, Code::DeadlineExceeded, 5),
        (599, Code::Unknown, 1),
    ];
    let mut client = proxy.tonic().await;
    for (status, code, tries) in rows {
        let channel = 9000 + u64::from(status);
        let path = format!("/api/v10/channels/{channel}");
        let (body, text, json_code) = match status {
            429 => (
                r#"{"message": "You are being rate limited.", "retry_after": 0.01, "global": false}"#
                    .to_owned(),
                "You are being rate limited.".to_owned(),
                0,
            ),
            400 => (
                r#"{"message": "Invalid Form Body", "code": 50035, "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}}}"#.to_owned(),
                "Invalid Form Body\nIn content: Must be 2000 or fewer in length.".to_owned(),
                50035,
            ),
            _ => (
                format!(r#"{{"message": "failure {status}", "code": {}}}"#, 40000 + u32::from(status)),
                format!("failure {status}"),
                40000 + u64::from(status),
            ),
        };
        // The PyPI client's exception.
        proxy.fake.fail_next("GET", &path, status, &body, tries);
        let started = Instant::now();
        let answer = proxy
            .python(json!({"op": "channel", "id": channel, "content": "x"}))
            .await;
        assert_eq!(
            answer["http"],
            json!({"status": status, "code": json_code, "text": text}),
            "HTTP {status}: {answer}"
        );
        assert_eq!(
            proxy.rest_calls("GET", &path),
            tries as usize,
            "HTTP {status}"
        );
        if matches!(status, 500 | 502 | 503 | 504) {
            // 1 + 3 + 5 + 7 + 9 back-off units.
            assert!(started.elapsed() >= Duration::from_millis(25 * BACKOFF_MS));
        }
        // The raw status.
        proxy.fake.fail_next("GET", &path, status, &body, tries);
        let err = client
            .send_channel_message(proto::SendChannelMessageRequest {
                channel_id: channel,
                content: "x".into(),
                embed: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "HTTP {status}: {err:?}");
        let details: Value = serde_json::from_str(err.message()).unwrap();
        assert_eq!(details["type"], "HTTPException");
        assert_eq!(details["status"], status);
    }
    // Nothing was sent on any of those channels.
    assert_eq!(proxy.rest_calls("POST", "/api/v10/channels/9"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_waited_out_within_the_clients_deadline() {
    let proxy = start("").await;
    let path = format!("/api/v10/channels/{ART}");
    proxy.fake.rate_limit_next("GET", &path, 0.5);
    let started = Instant::now();
    let sent = proxy
        .python(json!({"op": "channel", "id": ART, "content": "after the wait"}))
        .await;
    assert_eq!(sent["ok"]["content"], "after the wait", "{sent}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(proxy.rest_calls("GET", &path), 2, "one 429, one retry");
    let metrics = proxy.server.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "easel_discord_rest_429_total 1"),
        "the 429 is counted:\n{metrics}"
    );

    // A wait longer than the client's deadline: the client's timeout error.
    proxy.fake.rate_limit_next("GET", &path, 3.0);
    let answer = proxy
        .python(json!({"op": "channel", "id": ART, "content": "too late", "timeout": 0.5}))
        .await;
    assert!(answer.get("timeout").is_some(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_sends_all_arrive() {
    let proxy = start("").await;
    let sent = proxy
        .python(json!({"op": "burst", "id": ART, "n": 50}))
        .await;
    let mut expected: Vec<String> = (0..50).map(|i| format!("burst {i}")).collect();
    expected.sort();
    assert_eq!(sent["ok"], json!(expected), "{sent}");
    assert_eq!(
        proxy.rest_calls("POST", &format!("/api/v10/channels/{ART}/messages")),
        50
    );
}

fn run(program: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn easel_send_and_discordproxymessage_say_the_same() {
    let proxy = start("").await;
    let port = proxy.grpc_port.to_string();
    let cli = venv().join("bin/discordproxymessage");
    let easel = Path::new(easel_bin());
    for program in [cli.as_path(), easel] {
        let base: Vec<&str> = if program == easel {
            vec!["send", "--port", &port]
        } else {
            vec!["--host", "127.0.0.1", "--port", &port]
        };
        let args = |rest: [&'static str; 3]| {
            let mut all = base.clone();
            all.extend(rest);
            all
        };
        let sent = (true, "Message sent".to_owned());
        let who = program.display();
        assert_eq!(
            run(program, &args(["direct", ALICE_ID, "hi"]), &[]),
            sent,
            "{who}"
        );
        assert_eq!(
            run(program, &args(["channel", ART_ID, "hello"]), &[]),
            sent,
            "{who}"
        );
        assert_eq!(
            run(program, &args(["channel", "424242", "hello"]), &[]),
            (
                false,
                "ERROR: HTTP error from the Discord API. HTTP status code: 404 - JSON error code: 10003 - Error message: Unknown Channel"
                    .to_owned()
            ),
            "{who}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer() {
    let proxy = start("").await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.target()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "discord_api.DiscordApi".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["discord_api.DiscordApi", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_asked_for_when_configured() {
    let proxy = start("token = \"s3cret-token\"").await;
    let answer = proxy
        .python(json!({"op": "channel", "id": ART, "content": "no token"}))
        .await;
    assert_eq!(answer["grpc"]["status"], "UNAUTHENTICATED", "{answer}");
    assert_eq!(proxy.rest_calls("GET", "/api/v10/channels"), 0);
    let port = proxy.grpc_port.to_string();
    let args = ["send", "--port", &port, "channel", "10", "with the token"];
    let easel = Path::new(easel_bin());
    assert_eq!(
        run(easel, &args, &[("EASEL_GRPC_TOKEN", "s3cret-token")]),
        (true, "Message sent".to_owned())
    );
    let (ok, said) = run(easel, &args, &[("EASEL_GRPC_TOKEN", "wrong")]);
    assert!(!ok);
    assert!(
        said.starts_with("ERROR: gRPC error. Status code: UNAUTHENTICATED"),
        "{said}"
    );
    assert!(
        !proxy.server.stderr().contains("s3cret-token"),
        "the token is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_discord_is_unavailable_not_an_empty_ok() {
    // An easel whose Discord REST base is a closed port.
    let (_server, grpc_port, _dir) = easel(&format!("127.0.0.1:{}", free_port()), "").await;
    let mut client = proto::discord_api_client::DiscordApiClient::connect(format!(
        "http://127.0.0.1:{grpc_port}"
    ))
    .await
    .unwrap();
    let err = client
        .send_channel_message(proto::SendChannelMessageRequest {
            channel_id: ART,
            content: "lost?".into(),
            embed: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let details: Value = serde_json::from_str(err.message()).unwrap();
    assert_eq!(details["type"], "Unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_unauthenticated() {
    let proxy = start("").await;
    let path = format!("/api/v10/channels/{ART}");
    proxy.fake.fail_next(
        "GET",
        &path,
        401,
        r#"{"message": "401: Unauthorized", "code": 0}"#,
        1,
    );
    let answer = proxy
        .python(json!({"op": "channel", "id": ART, "content": "x"}))
        .await;
    assert_eq!(
        answer["http"],
        json!({"status": 401, "code": 0, "text": "401: Unauthorized"}),
        "{answer}"
    );
    // twilight stops using a token Discord refused: later calls fail the same way at once.
    let again = proxy
        .python(json!({"op": "channel", "id": ART, "content": "x"}))
        .await;
    assert_eq!(again["http"]["status"], 401, "{again}");
    assert_eq!(proxy.rest_calls("GET", &path), 1);
}
