//! CivitAI against a fake CivitAI (an axum app in the test) and fake Forge machines: LoRA
//! metadata (cache, the 7-day refresh, forced refreshes, by-hash misses, local overrides),
//! background model downloads (events through the real `socket.io-client`, the file on disk,
//! refusals, a download that breaks), the API proxy, the key check and `downloads_enabled`'s
//! three answers; the metadata tables on every engine.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use common::forge::{FakeForge, ForgeOptions};
use common::socketio::{SocketClient, SocketOptions};
use common::{Engine, Server, ServerOptions, TestDb, jwt, sqlite_store};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::Notify;

const SECRET: &str = "civitai-test-secret";
const KEY: &str = "civitai-test-key-5f1e";
const WAIT: Duration = Duration::from_secs(30);
/// The size of a full download.
const FILE_SIZE: usize = 3 * 1024 * 1024 + 123;

// ---------------------------------------------------------------------------------------------
// The fake CivitAI.

/// One request the fake received.
#[derive(Clone, Debug)]
struct Hit {
    path: String,
    query: Option<String>,
    authorization: Option<String>,
    user_agent: Option<String>,
}

/// How a download URL of the fake answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Serve {
    /// [`FILE_SIZE`] bytes in 64 KiB chunks.
    Full,
    /// The first chunk, then the rest once [`FakeCivitAi::release`] is called.
    Gated,
    /// Announces [`FILE_SIZE`] bytes, sends 100 KiB, then breaks the connection.
    Broken,
}

#[derive(Default)]
struct FakeState {
    hits: Vec<Hit>,
    /// Model versions by id.
    versions: HashMap<u64, Value>,
    /// Hash → model version id.
    hashes: HashMap<String, u64>,
    /// Download id → how it answers.
    downloads: HashMap<u64, Serve>,
}

struct FakeCivitAi {
    addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
    gate: Arc<Notify>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCivitAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct App {
    state: Arc<Mutex<FakeState>>,
    gate: Arc<Notify>,
    base: String,
}

/// The bytes of every download: a pattern that is not periodic in 64 KiB.
fn file_bytes() -> Vec<u8> {
    (0..FILE_SIZE)
        .map(|i| (i.wrapping_mul(31) ^ (i / 7)) as u8)
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl FakeCivitAi {
    async fn start() -> FakeCivitAi {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let gate = Arc::new(Notify::new());
        let app = App {
            state: state.clone(),
            gate: gate.clone(),
            base: format!("http://{addr}"),
        };
        let router = Router::new().fallback(fake_civitai).with_state(app);
        let server = tokio::spawn(async move {
            let _ = axum::serve(tcp, router).await;
        });
        FakeCivitAi {
            addr,
            state,
            gate,
            server,
        }
    }

    /// The API base (`[civitai] api`).
    fn api(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    /// A model version; its `downloadUrl` is the fake's `/download/<id>`.
    fn version(&self, id: u64, kind: &str, file: &str, serve: Serve) -> Value {
        let download = format!("http://{}/download/{id}", self.addr);
        let version = json!({
            "id": id, "modelId": id + 1000, "name": format!("Version {id}"),
            "baseModel": "SDXL 1.0", "description": null, "trainedWords": ["word"],
            "downloadUrl": download,
            "model": {"name": format!("Model {id}"), "type": kind, "nsfw": id.is_multiple_of(2), "poi": false},
            "files": [
                {"id": 1, "name": "notes.txt", "type": "Training Data", "primary": false,
                    "sizeKB": 1.0, "downloadUrl": format!("{download}?type=Training")},
                {"id": 2, "name": file, "type": "Model", "primary": true,
                    "sizeKB": FILE_SIZE as f64 / 1024.0, "downloadUrl": download},
            ],
            "images": [{"url": "https://img.test/1.png"}, {"url": "https://img.test/2.png"},
                {"url": "https://img.test/3.png"}],
        });
        let mut st = self.state.lock().unwrap();
        st.versions.insert(id, version.clone());
        st.downloads.insert(id, serve);
        version
    }

    /// Makes `hash` known as model version `id`.
    fn hash(&self, hash: &str, id: u64) {
        self.state
            .lock()
            .unwrap()
            .hashes
            .insert(hash.to_owned(), id);
    }

    /// Renames model version `id` (what a later fetch returns).
    fn rename(&self, id: u64, name: &str) {
        let mut st = self.state.lock().unwrap();
        st.versions.get_mut(&id).unwrap()["name"] = json!(name);
    }

    /// Lets the gated download send the rest (now, or when it gets there).
    fn release(&self) {
        self.gate.notify_one();
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.lock().unwrap().hits.clone()
    }

    /// Requests to exactly `path` (e.g. `/api/v1/model-versions/101`).
    fn count(&self, path: &str) -> usize {
        self.hits().iter().filter(|h| h.path == path).count()
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn fake_civitai(State(app): State<App>, uri: Uri, headers: HeaderMap) -> Response {
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let hit = Hit {
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        authorization: text(header::AUTHORIZATION),
        user_agent: text(header::USER_AGENT),
    };
    app.state.lock().unwrap().hits.push(hit.clone());
    let authorized = hit.authorization.as_deref() == Some(&format!("Bearer {KEY}"));
    let path = hit.path.as_str();
    let query = hit.query.clone().unwrap_or_default();
    if let Some(id) = path.strip_prefix("/download/") {
        let id: u64 = id.parse().unwrap_or(0);
        if !query.split('&').any(|kv| kv == format!("token={KEY}")) {
            return reply(StatusCode::UNAUTHORIZED, json!({"error": "token required"}));
        }
        let serve = app.state.lock().unwrap().downloads.get(&id).copied();
        return match serve {
            Some(serve) => stream_file(serve, app.gate.clone()),
            None => reply(StatusCode::NOT_FOUND, json!({"error": "no such file"})),
        };
    }
    let Some(api) = path.strip_prefix("/api/v1/") else {
        return reply(StatusCode::NOT_FOUND, json!({"error": "not found"}));
    };
    let st = app.state.lock().unwrap();
    let segments: Vec<&str> = api.split('/').collect();
    match segments.as_slice() {
        ["models"] if query == "hidden=1&limit=1" => {
            if authorized {
                reply(StatusCode::OK, json!({"items": [], "metadata": {}}))
            } else {
                reply(StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"}))
            }
        }
        ["models"] => reply(
            StatusCode::OK,
            json!({"items": [{"id": 1, "name": "a model"}], "metadata": {"query": query},
                "base": app.base}),
        ),
        ["models", id] if *id == "999" => reply(
            StatusCode::NOT_FOUND,
            json!({"error": "No model with id 999"}),
        ),
        ["models", id] => reply(StatusCode::OK, json!({"id": id, "name": "one model"})),
        ["model-versions", "by-hash", hash] => match st.hashes.get(*hash) {
            Some(id) => reply(StatusCode::OK, st.versions[id].clone()),
            None => reply(StatusCode::NOT_FOUND, json!({"error": "Model not found"})),
        },
        ["model-versions", id] => {
            match id.parse::<u64>().ok().and_then(|id| st.versions.get(&id)) {
                Some(version) => reply(StatusCode::OK, version.clone()),
                None => reply(
                    StatusCode::NOT_FOUND,
                    json!({"error": format!("No model version with id {id}")}),
                ),
            }
        }
        ["text"] => (StatusCode::OK, "plain words").into_response(),
        _ => reply(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}

/// The download body, 64 KiB per chunk.
fn stream_file(serve: Serve, gate: Arc<Notify>) -> Response {
    let bytes = file_bytes();
    let chunks: Vec<axum::body::Bytes> = bytes
        .chunks(64 * 1024)
        .map(axum::body::Bytes::copy_from_slice)
        .collect();
    let stream = futures_util::stream::unfold((0usize, chunks), move |(i, chunks)| {
        let gate = gate.clone();
        async move {
            if i >= chunks.len() {
                return None;
            }
            match serve {
                Serve::Gated if i == 1 => gate.notified().await,
                Serve::Broken if i == 2 => {
                    return Some((Err(std::io::Error::other("cut off")), (usize::MAX, chunks)));
                }
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
            let chunk = chunks[i].clone();
            Some((Ok::<_, std::io::Error>(chunk), (i + 1, chunks)))
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, FILE_SIZE)
        .body(Body::from_stream(stream))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Starts easel (SQLite in `dir`) with `[civitai]` and the Forge machines given; `users` are
/// enrolled with their roles first.
async fn easel(
    dir: &Path,
    civitai: &str,
    forges: &[&FakeForge],
    users: &[(&str, i64)],
    env: &[(&str, &str)],
) -> Server {
    let store = sqlite_store(dir).await;
    for (id, role) in users {
        store.set_user_role(id, *role).await.unwrap();
    }
    store.close().await;
    let mut extra = format!("[civitai]\n{civitai}\n");
    for (n, forge) in forges.iter().enumerate() {
        extra.push_str(&format!(
            "[[forge]]\nname = \"f{n}\"\nurl = \"{}\"\nprogress_ms = 50\n",
            forge.url()
        ));
    }
    let url = format!("sqlite://{}", dir.join("easel.db").display());
    let server = Server::start(ServerOptions {
        db_url: &url,
        dir,
        secret_key: SECRET,
        extra_toml: &extra,
        env,
        ..ServerOptions::default()
    })
    .await;
    if !forges.is_empty() {
        server.wait_log("Forge machine up", forges.len()).await;
    }
    server
}

fn bearer(id: &str) -> String {
    format!("Bearer {}", jwt(SECRET, id, 3600))
}

/// GET `path` with `auth` (none when empty): status, body as JSON (a non-JSON body as a JSON
/// string), content type.
async fn get(server: &Server, path: &str, auth: &str) -> (u16, Value, String) {
    let mut request = easel::forge::http_client().get(server.url(path));
    if !auth.is_empty() {
        request = request.header("Authorization", auth);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, kind)
}

async fn post(server: &Server, path: &str, auth: &str, body: &str) -> (u16, Value) {
    let response = easel::forge::http_client()
        .post(server.url(path))
        .header("Authorization", auth)
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The first `event` whose data's `id` is `id` (other lines are skipped).
async fn event_for(socket: &mut SocketClient, event: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let line = socket
            .next(left)
            .await
            .unwrap_or_else(|| panic!("no {event} for {id}; seen: {:?}", socket.seen()));
        if line["event"] == event && line["data"]["id"] == id {
            return line["data"].clone();
        }
    }
}

/// A direct connection to the server's SQLite file (the tests' way to age rows).
async fn sqlite(dir: &Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.join("easel.db").display()))
        .await
        .unwrap()
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|l| l["forge"]["name"].as_str().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// LoRA metadata.

const ALPHA_V3: &str = "abcdef0123456789abcdef0123456789";
const DELTA_V3: &str = "dddddddddddd0000";

fn forge_loras() -> Vec<Value> {
    vec![
        json!({"name": "alpha", "alias": "alpha", "path": "/forge/models/Lora/alpha.safetensors",
            "metadata": {"sshs_model_hash": ALPHA_V3, "ss_output_name": "alpha",
                "ss_tag_frequency": {"x": {"tag": 3}}, "ss_bucket_info": {"b": 1},
                "ss_datasets": [{"d": 1}], "ss_dataset_dirs": {"dir": {}}}}),
        json!({"name": "beta", "alias": "beta", "path": "/forge/models/Lora/beta.safetensors",
            "metadata": {}}),
        json!({"name": "gamma", "alias": "gamma-alias", "path": "/forge/models/Lora/gamma.safetensors",
            "metadata": {}}),
        json!({"name": "delta", "alias": "delta", "path": "/forge/models/Lora/delta.safetensors",
            "metadata": {"sshs_model_hash": DELTA_V3}}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_metadata_cache_refresh_and_overrides() {
    let civitai = FakeCivitAi::start().await;
    let forge = FakeForge::start(ForgeOptions {
        loras: forge_loras(),
        ..ForgeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("Lora")).unwrap();
    let beta_bytes = b"beta lora weights".repeat(1000);
    std::fs::write(models.join("Lora/beta.safetensors"), &beta_bytes).unwrap();
    let beta_sha = sha256_hex(&beta_bytes);
    civitai.version(101, "LORA", "alpha.safetensors", Serve::Full);
    civitai.version(102, "LORA", "beta.safetensors", Serve::Full);
    civitai.hash(&ALPHA_V3[..12], 101);
    civitai.hash(&beta_sha, 102);
    let config = format!(
        "api = {:?}\napi_key = {KEY:?}\nmodel_dir = {:?}\nlora_requests = true",
        civitai.api(),
        models.display().to_string()
    );
    let server = easel(
        dir.path(),
        &config,
        &[&forge],
        &[("1001", 1), ("1002", 2), ("1003", 3)],
        &[],
    )
    .await;
    let (apprentice, artificer, architect) = (bearer("1001"), bearer("1002"), bearer("1003"));

    assert_eq!(get(&server, "/api/models/loras", "").await.0, 401);

    // First read: alpha by its AutoV3 hash, beta by its file's SHA256, gamma (keyed by its
    // alias) and delta unknown to CivitAI, so left out.
    let (status, list, _) = get(&server, "/api/models/loras", &apprentice).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(names(&list), ["alpha", "beta"]);
    let alpha = &list[0];
    assert_eq!(
        common::keys(alpha),
        ["forge", "civitai", "alias", "name", "nsfw", "provider"]
    );
    assert_eq!(alpha["name"], "Version 101");
    assert_eq!(alpha["alias"], "alpha");
    assert_eq!(alpha["nsfw"], false);
    assert_eq!(alpha["provider"], 1);
    assert_eq!(alpha["civitai"]["id"], 101);
    assert_eq!(alpha["civitai"]["images"].as_array().unwrap().len(), 1);
    assert_eq!(
        alpha["forge"]["metadata"],
        json!({"sshs_model_hash": ALPHA_V3, "ss_output_name": "alpha"})
    );
    assert_eq!(list[1]["nsfw"], true);
    assert_eq!(list[1]["civitai"]["id"], 102);
    let by_hash = |h: &str| format!("/api/v1/model-versions/by-hash/{h}");
    for hash in [&ALPHA_V3[..12], &beta_sha, "gamma-alias", &DELTA_V3[..12]] {
        assert_eq!(civitai.count(&by_hash(hash)), 1, "{hash}");
    }
    assert!(
        civitai
            .hits()
            .iter()
            .filter(|h| h.path.contains("/model-versions/"))
            .all(|h| h.authorization.as_deref() == Some(&format!("Bearer {KEY}")))
    );
    let db = sqlite(dir.path()).await;
    let cached: Vec<(String, String)> =
        sqlx::query_as("SELECT file_name, sha256 FROM file_sha256_cache")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(cached, [("beta".to_owned(), beta_sha.clone())]);

    // Second read: everything from the cache (misses too), CivitAI is not asked.
    let before = civitai.hits().len();
    let (_, again, _) = get(&server, "/api/models/loras", &apprentice).await;
    assert_eq!(again, list);
    assert_eq!(civitai.hits().len(), before, "{:?}", civitai.hits());

    // Forcing needs role 2; the raw Forge list is stripped too.
    let (status, body, _) = get(
        &server,
        "/api/models/loras?force_update_metadata=true",
        &apprentice,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        json!({"error": "You are not authorized to force refresh metadata."})
    );
    let (status, raw, _) = get(&server, "/api/models/loras?forge_only=true", &apprentice).await;
    assert_eq!(status, 200);
    assert_eq!(raw.as_array().unwrap().len(), 4);
    assert_eq!(raw[0]["metadata"], alpha["forge"]["metadata"]);
    assert_eq!(raw[2], forge_loras()[2]);

    // A row older than 7 days is fetched again, by its model version id, and stored.
    civitai.rename(101, "Version 101, renamed");
    let old = easel::store::now_ms() - 8 * 24 * 3600 * 1000;
    sqlx::query("UPDATE model_metadata SET updated_at = ? WHERE hash = ?")
        .bind(old)
        .bind(&ALPHA_V3[..12])
        .execute(&db)
        .await
        .unwrap();
    let (_, list, _) = get(&server, "/api/models/loras", &apprentice).await;
    assert_eq!(list[0]["name"], "Version 101, renamed");
    assert_eq!(civitai.count("/api/v1/model-versions/101"), 1);
    assert_eq!(civitai.count("/api/v1/model-versions/102"), 0);
    assert_eq!(civitai.count(&by_hash(&ALPHA_V3[..12])), 1);
    let (updated_at, stored): (i64, String) =
        sqlx::query_as("SELECT updated_at, metadata FROM model_metadata WHERE hash = ?")
            .bind(&ALPHA_V3[..12])
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(updated_at > old + 24 * 3600 * 1000);
    assert!(stored.contains("Version 101, renamed"));

    // A forced read (role 2) asks again about everything, misses included, except a row
    // whose updates are disabled.
    sqlx::query("UPDATE model_metadata SET updates_disabled = 1 WHERE hash = ?")
        .bind(&beta_sha)
        .execute(&db)
        .await
        .unwrap();
    let (status, _, _) = get(
        &server,
        "/api/models/loras?force_update_metadata=true",
        &artificer,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(civitai.count("/api/v1/model-versions/101"), 2);
    assert_eq!(civitai.count("/api/v1/model-versions/102"), 0);
    assert_eq!(civitai.count(&by_hash("gamma-alias")), 2);
    assert_eq!(civitai.count(&by_hash(&DELTA_V3[..12])), 2);

    // Local overrides: role 3 only, a strictly checked body.
    let path = format!("/api/models/loras/override/{}", &DELTA_V3[..12]);
    let good = r#"{"name":"Delta","description":"by hand","nsfw":true,"baseModel":"SDXL 1.0","trainedWords":["dd"]}"#;
    let (status, body) = post(&server, &path, &artificer, good).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body,
        json!({"error": "You are not authorized to set local overrides."})
    );
    for bad in [
        r#"{"name":"Delta","description":"d","nsfw":true}"#,
        r#"{"name":"Delta","description":"d","nsfw":"yes","baseModel":"b"}"#,
        r#"{"name":"Delta","description":"d","nsfw":true,"baseModel":"b","images":[1]}"#,
        r#"{"name":"Delta","description":"d","nsfw":true,"baseModel":"b","extra":1}"#,
        "not json",
    ] {
        let (status, body) = post(&server, &path, &architect, bad).await;
        assert_eq!(
            (status, body),
            (400, json!({"error": "Invalid override format!"})),
            "{bad}"
        );
    }
    let (status, body) = post(&server, &path, &architect, good).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"message": format!("Successfully set local override for lora Delta ({})", &DELTA_V3[..12])})
    );
    let (_, list, _) = get(&server, "/api/models/loras", &apprentice).await;
    assert_eq!(names(&list), ["alpha", "beta", "delta"]);
    let delta = &list[2];
    assert_eq!(
        common::keys(delta),
        [
            "forge",
            "localOverride",
            "alias",
            "name",
            "nsfw",
            "provider"
        ]
    );
    assert_eq!(
        delta["localOverride"],
        json!({"name": "Delta", "description": "by hand", "nsfw": true, "baseModel": "SDXL 1.0",
            "trainedWords": ["dd"]})
    );
    assert_eq!(
        (&delta["name"], &delta["nsfw"], &delta["provider"]),
        (&json!("delta"), &json!(true), &json!(0))
    );
    // The superuser may set overrides too.
    let (status, _) = post(&server, &path, &server.token, good).await;
    assert_eq!(status, 200);
    db.close().await;
}

// ---------------------------------------------------------------------------------------------
// Downloads.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_run_in_the_background() {
    let civitai = FakeCivitAi::start().await;
    let forge = FakeForge::start(ForgeOptions::default()).await;
    civitai.version(555, "LORA", "fancy.safetensors", Serve::Full);
    civitai.version(556, "Checkpoint", "slow.safetensors", Serve::Gated);
    civitai.version(557, "TextualInversion", "broken.pt", Serve::Broken);
    civitai.version(558, "Poses", "pose.zip", Serve::Full);
    civitai.version(559, "LORA", "../evil.safetensors", Serve::Full);
    civitai.version(560, "Hypernetwork", "stuck.pt", Serve::Gated);
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let config = format!(
        "api = {:?}\napi_key = {KEY:?}\nmodel_dir = {:?}",
        civitai.api(),
        models.display().to_string()
    );
    let server = easel(
        dir.path(),
        &config,
        &[&forge],
        &[("2001", 1), ("2002", 2)],
        &[],
    )
    .await;
    let (apprentice, artificer) = (bearer("2001"), bearer("2002"));
    let (_, enabled, _) = get(&server, "/3papi/civitai/downloads_enabled", &apprentice).await;
    assert_eq!(enabled, json!({"downloadsEnabled": true}));
    let (_, tested, _) = get(&server, "/3papi/test_civitai", "").await;
    assert_eq!(tested, json!({"isAuthenticated": true}));

    let download = |id: u64| format!("/3papi/civitai/download/{id}");
    assert_eq!(get(&server, &download(555), "").await.0, 401);
    let (status, body, _) = get(&server, &download(555), &apprentice).await;
    assert_eq!(
        (status, body),
        (
            403,
            json!({"message": "You are not authorized to download models."})
        )
    );

    let mut socket = SocketClient::connect(
        &format!("http://127.0.0.1:{}", server.rt_port),
        SocketOptions::default(),
    );
    socket.wait_for("connected", WAIT).await;

    // A download answers at once and runs in the background.
    let (status, body, _) = get(&server, &download(555), &artificer).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["message"], "Model download started");
    let started = &body["download"];
    assert_eq!(
        common::keys(started),
        ["id", "model_version_id", "file", "folder"]
    );
    assert_eq!(
        (
            &started["model_version_id"],
            &started["file"],
            &started["folder"]
        ),
        (&json!(555), &json!("fancy.safetensors"), &json!("Lora"))
    );
    let id = started["id"].as_str().unwrap().to_owned();
    let progress = event_for(&mut socket, "model-download-progress", &id).await;
    assert_eq!(progress["total"], FILE_SIZE);
    let finished = event_for(&mut socket, "model-download-finished", &id).await;
    assert_eq!(
        (&finished["received"], &finished["total"]),
        (&json!(FILE_SIZE), &json!(FILE_SIZE))
    );
    let refreshed = socket.wait_for("models-refreshed", WAIT).await;
    assert_eq!(
        refreshed["data"],
        json!(r#"{"message":"Models refreshed by CivitAI download"}"#)
    );
    let target = models.join("Lora/fancy.safetensors");
    assert_eq!(
        sha256_hex(&std::fs::read(&target).unwrap()),
        sha256_hex(&file_bytes())
    );
    assert!(!models.join("Lora/fancy.safetensors.part").exists());
    for refresh in ["refresh-embeddings", "refresh-checkpoints", "refresh-loras"] {
        assert_eq!(
            forge.count("POST", &format!("/sdapi/v1/{refresh}")),
            1,
            "{refresh}"
        );
    }
    let fetched: Vec<Hit> = civitai
        .hits()
        .into_iter()
        .filter(|h| h.path == "/download/555")
        .collect();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].query.as_deref(), Some(&*format!("token={KEY}")));

    // Refusals, in Navigator's words.
    let refused = [
        (555, 400, "Model already downloaded"),
        (558, 400, "Unsupported model type"),
        (559, 400, "Invalid model file name"),
        (9999, 404, "Model not found"),
    ];
    for (version, status, message) in refused {
        let (got, body, _) = get(&server, &download(version), &artificer).await;
        assert_eq!(
            (got, body),
            (status, json!({"message": message})),
            "{version}"
        );
    }
    let (status, body, _) = get(&server, "/3papi/civitai/download/abc", &artificer).await;
    assert_eq!((status, body), (404, json!({"message": "Model not found"})));

    // One download per file at a time.
    let (status, body, _) = get(&server, &download(556), &artificer).await;
    assert_eq!(status, 202, "{body}");
    let slow = body["download"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["download"]["folder"], "Stable-diffusion");
    event_for(&mut socket, "model-download-progress", &slow).await;
    let (status, body, _) = get(&server, &download(556), &server.token).await;
    assert_eq!(
        (status, body),
        (409, json!({"message": "Model is already being downloaded"}))
    );
    assert!(
        models
            .join("Stable-diffusion/slow.safetensors.part")
            .exists()
    );
    assert!(!models.join("Stable-diffusion/slow.safetensors").exists());
    civitai.release();
    event_for(&mut socket, "model-download-finished", &slow).await;
    assert_eq!(
        std::fs::read(models.join("Stable-diffusion/slow.safetensors"))
            .unwrap()
            .len(),
        FILE_SIZE
    );

    // A download that breaks leaves no file, only an event and a log line.
    let (status, body, _) = get(&server, &download(557), &artificer).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["download"]["folder"], "../embeddings");
    let broken = body["download"]["id"].as_str().unwrap().to_owned();
    let failed = event_for(&mut socket, "model-download-failed", &broken).await;
    let error = failed["error"].as_str().unwrap();
    assert!(!error.is_empty());
    assert!(!error.contains(KEY), "{error}");
    let embeddings = dir.path().join("embeddings");
    assert!(!embeddings.join("broken.pt").exists());
    assert!(!embeddings.join("broken.pt.part").exists());
    server.wait_log("model download failed", 1).await;

    // A download still running at shutdown is stopped and leaves no file.
    let (status, body, _) = get(&server, &download(560), &artificer).await;
    assert_eq!(status, 202, "{body}");
    let stuck = body["download"]["id"].as_str().unwrap().to_owned();
    event_for(&mut socket, "model-download-progress", &stuck).await;
    let part = models.join("hypernetworks/stuck.pt.part");
    assert!(part.exists());
    let mut server = server;
    assert!(server.terminate().success(), "{}", server.stderr());
    assert!(!part.exists());
    assert!(!models.join("hypernetworks/stuck.pt").exists());
    assert_eq!(server.lines_with("stopping model downloads").len(), 1);
    assert!(!server.stderr().contains(KEY), "the key was logged");
}

// ---------------------------------------------------------------------------------------------
// The key check, downloads_enabled, the proxy, a full disk.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_checks_proxy_and_full_disks() {
    let civitai = FakeCivitAi::start().await;
    civitai.version(555, "LORA", "fancy.safetensors", Serve::Full);
    let forge = FakeForge::start(ForgeOptions {
        embeddings: vec!["emb-a".into(), "emb-b".into()],
        ..ForgeOptions::default()
    })
    .await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/api/v1", listener.local_addr().unwrap())
    };

    // No model folder, CivitAI not there, no Forge machine, LoRA requests off.
    let dir = tempfile::tempdir().unwrap();
    let server = easel(
        dir.path(),
        &format!("api = {dead:?}\napi_key = {KEY:?}"),
        &[],
        &[],
        &[],
    )
    .await;
    let su = server.token.clone();
    let (_, body, _) = get(&server, "/3papi/civitai/downloads_enabled", &su).await;
    assert_eq!(
        body,
        json!({"downloadsEnabled": false, "message": "Model directory not set"})
    );
    assert_eq!(
        get(&server, "/3papi/civitai/downloads_enabled", "").await.0,
        401
    );
    let (status, body, _) = get(&server, "/3papi/civitai/download/555", &su).await;
    assert_eq!(
        (status, body),
        (500, json!({"message": "Model directory not set"}))
    );
    let (_, body, _) = get(&server, "/3papi/test_civitai", "").await;
    assert_eq!(body, json!({"isAuthenticated": false}));
    let (status, body, kind) = get(&server, "/3papi/civitai/api-proxy/models", &su).await;
    assert_eq!((status, body), (500, json!("Upstream API did not respond")));
    assert!(kind.starts_with("text/"), "{kind}");
    assert_eq!(get(&server, "/api/models/loras", &su).await.1, json!([]));
    assert_eq!(
        get(&server, "/api/models/embeddings", "").await.1,
        json!([])
    );
    drop(server);

    // A key CivitAI refuses.
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "api = {:?}\napi_key = \"wrong\"\nmodel_dir = {:?}",
        civitai.api(),
        dir.path().display().to_string()
    );
    let server = easel(dir.path(), &config, &[], &[], &[]).await;
    let su = server.token.clone();
    let (_, body, _) = get(&server, "/3papi/civitai/downloads_enabled", &su).await;
    assert_eq!(
        body,
        json!({"downloadsEnabled": false, "message": "CivitAI authentication failed"})
    );
    let (status, body, _) = get(&server, "/3papi/civitai/download/555", &su).await;
    assert_eq!(
        (status, body),
        (500, json!({"message": "CivitAI authentication failed"}))
    );
    assert_eq!(
        get(&server, "/3papi/test_civitai", "").await.1,
        json!({"isAuthenticated": false})
    );
    drop(server);

    // The right key, a "full" disk (more free space wanted than any disk has), the proxy.
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let config = format!(
        "api = {:?}\napi_key = {KEY:?}\nmodel_dir = {:?}",
        civitai.api(),
        models.display().to_string()
    );
    let server = easel(
        dir.path(),
        &config,
        &[&forge],
        &[("3001", 1)],
        &[("EASEL_MIN_FREE_PERCENT", "101")],
    )
    .await;
    let apprentice = bearer("3001");
    let su = server.token.clone();
    let (status, body, _) = get(&server, "/3papi/civitai/download/555", &su).await;
    assert_eq!(
        (status, body),
        (
            500,
            json!({"message": "Low storage space", "error": "LOW_STORAGE_SPACE"})
        )
    );
    assert!(!models.join("Lora/fancy.safetensors").exists());

    let query = "query=cat&types=LORA&nsfw=false&limit=5";
    let (status, body, kind) = get(
        &server,
        &format!("/3papi/civitai/api-proxy/models?{query}"),
        &apprentice,
    )
    .await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("application/json"), "{kind}");
    assert_eq!(body["metadata"]["query"], query);
    let hit = civitai
        .hits()
        .into_iter()
        .rfind(|h| h.path == "/api/v1/models")
        .unwrap();
    assert_eq!(hit.query.as_deref(), Some(query));
    assert_eq!(hit.user_agent.as_deref(), Some("Navigator"));
    assert_eq!(hit.authorization, Some(format!("Bearer {KEY}")));
    let (status, body, _) = get(&server, "/3papi/civitai/api-proxy/models/999", &apprentice).await;
    assert_eq!(
        (status, body),
        (404, json!({"error": "No model with id 999"}))
    );
    let (status, body, _) = get(&server, "/3papi/civitai/api-proxy/models/12", &apprentice).await;
    assert_eq!(
        (status, body),
        (200, json!({"id": "12", "name": "one model"}))
    );
    let (status, body, _) = get(&server, "/3papi/civitai/api-proxy/text", &apprentice).await;
    assert_eq!((status, body), (200, json!("plain words")));
    assert_eq!(
        get(&server, "/3papi/civitai/api-proxy/models", "").await.0,
        401
    );
    // Embeddings: the loaded ones' names, without authentication.
    let (status, body, _) = get(&server, "/api/models/embeddings", "").await;
    assert_eq!((status, body), (200, json!(["emb-a", "emb-b"])));
}

// ---------------------------------------------------------------------------------------------
// The metadata tables on every engine.

async fn metadata_store(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let store = easel::store::Store::connect(&db.url).await.unwrap();
    assert_eq!(store.model_metadata("h1").await.unwrap(), None);
    let first = easel::store::NewMetadata {
        hash: "h1",
        model_type: 0,
        metadata: r#"{"id":7}"#,
        provider: 1,
        metadata_id: Some(7),
    };
    store.put_model_metadata(first).await.unwrap();
    let row = store.model_metadata("h1").await.unwrap().unwrap();
    assert_eq!(
        (
            row.metadata.as_deref(),
            row.provider,
            row.metadata_id,
            row.updates_disabled
        ),
        (Some(r#"{"id":7}"#), 1, Some(7), 0)
    );
    assert!(row.updated_at > easel::store::now_ms() - 60_000);
    // The same row again (MariaDB reports 0 changed rows for it), then a replacement.
    store.put_model_metadata(first).await.unwrap();
    assert!(
        store
            .set_model_metadata_updates_disabled("h1", true)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_model_metadata_updates_disabled("nope", true)
            .await
            .unwrap()
    );
    store
        .put_model_metadata(easel::store::NewMetadata {
            metadata: r#"{"name":"local"}"#,
            provider: 0,
            metadata_id: Some(0),
            ..first
        })
        .await
        .unwrap();
    let row = store.model_metadata("h1").await.unwrap().unwrap();
    assert_eq!(
        (row.metadata.as_deref(), row.provider, row.updates_disabled),
        (Some(r#"{"name":"local"}"#), 0, 1)
    );
    assert_eq!(store.file_sha256("a").await.unwrap(), None);
    store.put_file_sha256("a", "aa").await.unwrap();
    store.put_file_sha256("a", "bb").await.unwrap();
    assert_eq!(store.file_sha256("a").await.unwrap().as_deref(), Some("aa"));
    store.close().await;
    db.cleanup().await;
}

per_engine!(metadata_store);
