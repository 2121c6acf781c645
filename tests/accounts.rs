//! Navigator's accounts API against the real binary: tokens that PyJWT and npm's
//! jsonwebtoken read and mint, Discord login through a fake Discord, the auth answers of every
//! protected route, the admin routes, and one user's gallery and categories never reaching
//! another's.

mod common;

use std::process::Command;
use std::time::Duration;

use common::oauth::FakeOAuth;
use common::{Server, ServerOptions};
use serde_json::{Value, json};

const SECRET: &str = "accounts-test-secret";
const ALICE: &str = "111111111111111111";
const BOB: &str = "222222222222222222";

async fn start(
    dir: &std::path::Path,
    oauth: Option<&FakeOAuth>,
    env: &[(&str, &str)],
    extra: &str,
) -> Server {
    let url = format!("sqlite://{}", dir.join("easel.db").display());
    let mut extra_toml = oauth.map(FakeOAuth::toml).unwrap_or_default();
    extra_toml.push_str(extra);
    Server::start(ServerOptions {
        db_url: &url,
        dir,
        step_ms: 0,
        workers: 2,
        secret_key: SECRET,
        extra_toml: &extra_toml,
        env,
        ..ServerOptions::default()
    })
    .await
}

/// A request with an optional `Authorization`; the status and the JSON body (`Null` when
/// there is none).
async fn call(
    server: &Server,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = easel::forge::http_client().request(method, server.url(path));
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// `GET path` with `Authorization: auth`.
async fn get(server: &Server, path: &str, auth: &str) -> (u16, Value) {
    call(server, "GET", path, Some(auth), None).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Runs a JWT peer (`python3 tests/peers/jwt_peer.py` or `node tests/peers/jwt_peer.mjs`);
/// its stdout and whether it succeeded.
fn peer(program: &str, args: &[&str]) -> (bool, String) {
    let script = match program {
        "python3" => concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/peers/jwt_peer.py"),
        _ => concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/peers/jwt_peer.mjs"),
    };
    let mut command = Command::new(program);
    command.arg(script).args(args);
    if program == "node" {
        command.env("NODE_PATH", common::npm::node_modules("jsonwebtoken", "9"));
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.code().is_some_and(|c| c < 2),
        "{program} peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

/// Logs `code` in; the status and body.
async fn login(server: &Server, code: &str) -> (u16, Value) {
    call(
        server,
        "POST",
        "/api/auth/login",
        None,
        Some(json!({"code": code})),
    )
    .await
}

#[tokio::test]
async fn discord_login_enrolment_and_tokens_other_libraries_read() {
    let dir = tempfile::tempdir().unwrap();
    let discord = FakeOAuth::start().await;
    let alice = discord.user("alice-code", ALICE, "alice");
    discord.user("bob-code", BOB, "bob");
    let server = start(
        dir.path(),
        Some(&discord),
        &[("TOKEN_EXPIRATION_TIME", "14d")],
        "",
    )
    .await;

    // Nobody has access yet: Discord knows alice, easel does not.
    let (status, body) = login(&server, "alice-code").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body,
        json!({"error": "This user does not have API access yet. Please contact an Administrator to get access."})
    );
    // The code exchange is Discord's authorization-code grant, form-encoded.
    let exchange = discord
        .calls()
        .into_iter()
        .find(|c| c.path == "/api/v10/oauth2/token")
        .expect("a code exchange");
    assert_eq!(exchange.method, "POST");
    let form = &exchange.form;
    assert_eq!(form["client_id"], "4242");
    assert_eq!(form["client_secret"], "very-secret-client");
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "alice-code");
    assert_eq!(form["redirect_uri"], "http://127.0.0.1:4173/");
    assert_eq!(form["scope"], "identify");
    let me = discord
        .calls()
        .into_iter()
        .find(|c| c.path == "/api/v10/users/@me")
        .expect("a /users/@me call");
    assert_eq!(me.authorization.as_deref(), Some("Bearer token-alice-code"));

    // The superuser lets alice in: the first user with a role becomes a superuser too.
    let (status, body) = get(
        &server,
        &format!("/api/admin/authorize-user/{ALICE}"),
        &server.token,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"message": "User authorized!", "discord_id": ALICE})
    );
    let (status, body) = login(&server, "alice-code").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], 4);
    assert_eq!(body["user"], alice, "Discord's user object, as it came");
    let token = body["token"].as_str().unwrap().to_owned();
    // The client secret never reaches the log.
    assert!(!server.stderr().contains("very-secret-client"));

    // PyJWT and npm's jsonwebtoken verify it with the shared secret.
    for program in ["python3", "node"] {
        let (ok, out) = peer(program, &["verify", SECRET, &token]);
        assert!(ok, "{program} refused easel's token: {out}");
        let payload: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(payload["discord_id"], ALICE, "{program}: {payload}");
        assert_eq!(payload["role"], 4);
        let lifetime = payload["exp"].as_i64().unwrap() - payload["iat"].as_i64().unwrap();
        assert_eq!(lifetime, 14 * 86_400, "TOKEN_EXPIRATION_TIME=14d");
        let (ok, out) = peer(program, &["verify", "another-secret", &token]);
        assert!(!ok, "{program} must refuse a wrong secret: {out}");
    }

    // Tokens they mint are easel's tokens: the role comes from the store, not the token.
    let payload = json!({"discord_id": ALICE, "role": 1}).to_string();
    let (_, from_python) = peer("python3", &["mint", SECRET, &payload]);
    let (_, from_node) = peer("node", &["mint", SECRET, &payload, "1h"]);
    for token in [&from_python, &from_node] {
        let (status, body) = get(&server, "/api/user/me", &bearer(token)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user"]["discord_id"], ALICE);
        assert_eq!(body["user"]["role"], 4);
    }

    // The refusals, with jsonwebtoken's messages.
    let (_, wrong) = peer("node", &["mint", "not-the-secret", &payload]);
    let (_, expired) = peer("node", &["mint", SECRET, &payload, "-10s"]);
    let no_id = peer("python3", &["mint", SECRET, r#"{"role":4}"#]).1;
    let unsigned = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"discord_id":"{ALICE}","role":4}}"#))
        )
    };
    for (token, error) in [
        (wrong.as_str(), "invalid signature"),
        (expired.as_str(), "jwt expired"),
        ("not.a.jwt", "jwt malformed"),
        (unsigned.as_str(), "jwt signature is required"),
        (no_id.as_str(), "Malformed token!"),
    ] {
        let (status, body) = get(&server, "/api/user/me", &bearer(token)).await;
        assert_eq!(status, 401, "{token}: {body}");
        assert_eq!(body, json!({"message": "Unauthorized", "error": error}));
    }
    let (status, body) = call(&server, "GET", "/api/user/me", None, None).await;
    assert_eq!((status, body), (401, json!({"message": "Unauthorized"})));

    // Alice (a superuser now) lets bob in: role 1. Disabling him ends his tokens at once.
    let alice_auth = bearer(&token);
    let (status, _) = get(
        &server,
        &format!("/api/admin/authorize-user/{BOB}"),
        &alice_auth,
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = login(&server, "bob-code").await;
    assert_eq!((status, body["role"].clone()), (200, json!(1)), "{body}");
    let bob_auth = bearer(body["token"].as_str().unwrap());
    let (status, body) = get(&server, "/api/user/me", &bob_auth).await;
    assert_eq!((status, body["user"]["role"].clone()), (200, json!(1)));
    let (status, body) = get(
        &server,
        &format!("/api/admin/disable-user/{BOB}"),
        &alice_auth,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"message": "User disabled!", "discord_id": BOB})
    );
    let (status, body) = get(&server, "/api/user/me", &bob_auth).await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        json!({"message": "Forbidden", "error": "User is disabled", "error_code": "USER_DISABLED"})
    );
    let (status, _) = login(&server, "bob-code").await;
    assert_eq!(status, 403, "a disabled user cannot log in");

    // Bad input and Discord trouble.
    let (status, body) = call(&server, "POST", "/api/auth/login", None, Some(json!({}))).await;
    assert_eq!(
        (status, body),
        (400, json!({"message": "Code is required"}))
    );
    let (status, body) = login(&server, "unknown-code").await;
    assert_eq!(
        (status, body),
        (
            401,
            json!({"error": "Authentication through Discord failed"})
        )
    );
    discord.set_down(true);
    let (status, body) = login(&server, "alice-code").await;
    assert_eq!(
        (status, body),
        (
            401,
            json!({"error": "Authentication through Discord failed"})
        )
    );
    let (status, body) = login(&server, "DEMO_USER").await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        json!({"error": "Demo user is not enabled", "error_code": "DEMO_USER_DISABLED"})
    );
}

#[tokio::test]
async fn the_demo_user_and_roles_two_and_three() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), None, &[("ENABLE_DEMO_USER", "true")], "").await;
    let (status, body) = login(&server, "DEMO_USER").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], 2);
    assert_eq!(body["user"]["id"], "demo_user");
    assert_eq!(body["user"]["username"], "DemoUser");
    let demo = bearer(body["token"].as_str().unwrap());
    let (_, out) = peer(
        "python3",
        &["verify", SECRET, body["token"].as_str().unwrap()],
    );
    let payload: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        payload["exp"].as_i64().unwrap() - payload["iat"].as_i64().unwrap(),
        3 * 3600
    );
    let (status, body) = get(&server, "/api/user/me", &demo).await;
    assert_eq!((status, body["user"]["role"].clone()), (200, json!(2)));
    // The demo user is an artificer, not an administrator.
    let (status, body) = get(
        &server,
        &format!("/api/admin/authorize-user/{ALICE}"),
        &demo,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body,
        json!({"error": "You do not have permission to authorize users!"})
    );

    // Roles 2 and 3 (Navigator had no route for them).
    let su = server.token.clone();
    let role = |id: &'static str, role: Value, auth: String| {
        let server = &server;
        async move {
            call(
                server,
                "PUT",
                &format!("/api/admin/users/{id}/role"),
                Some(&auth),
                Some(json!({ "role": role })),
            )
            .await
        }
    };
    let (status, body) = role(ALICE, json!(3), su.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"message": "Role set!", "discord_id": ALICE, "role": 3})
    );
    let alice = bearer(&common::jwt(SECRET, ALICE, 3600));
    let (_, body) = get(&server, "/api/user/me", &alice).await;
    assert_eq!(body["user"]["role"], 3, "seen at once: {body}");
    // An architect gives role 2, but cannot make architects or change herself.
    let (status, body) = role(BOB, json!(2), alice.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = role(BOB, json!(3), alice.clone()).await;
    assert_eq!(status, 403);
    let (status, body) = role(ALICE, json!(1), alice.clone()).await;
    assert_eq!(
        (status, body),
        (400, json!({"error": "You cannot change your own role!"}))
    );
    for bad in [json!(0), json!(4), json!("2"), Value::Null] {
        let (status, _) = role(BOB, bad.clone(), su.clone()).await;
        assert_eq!(status, 400, "role {bad}");
    }
    let (status, body) = get(&server, "/api/admin/authorize-user/not-a-number", &su).await;
    assert_eq!(
        (status, body),
        (400, json!({"error": "Discord ID must be a number"}))
    );
    let bob = bearer(&common::jwt(SECRET, BOB, 3600));
    let (_, body) = get(&server, "/api/user/me", &bob).await;
    assert_eq!(body["user"]["role"], 2);
}

#[tokio::test]
async fn admin_checks_ids_with_discord_when_a_bot_token_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let discord = FakeOAuth::start().await;
    let bob = discord.user("bob-code", BOB, "bob");
    let api = discord.base.trim_end_matches("/api/v10").to_owned();
    // The bot itself talks to a gateway nobody answers: only the id checks matter here.
    let extra = format!(
        "[auth]\ndiscord_token = \"bot-token-for-tests\"\n[discord]\ngateway_url = \
         \"ws://127.0.0.1:{}\"\napi_base = \"{api}\"\n[grpc]\nenabled = false\n",
        common::free_port()
    );
    let server = start(dir.path(), Some(&discord), &[], &extra).await;
    let su = server.token.clone();
    let (status, body) = get(&server, "/api/admin/authorize-user/333333333333333333", &su).await;
    assert_eq!(
        (status, body),
        (400, json!({"error": "Failed to validate Discord ID!"}))
    );
    let (status, body) = get(&server, &format!("/api/admin/authorize-user/{BOB}"), &su).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"], bob, "the Discord user, as Navigator answers");
    let check = discord
        .calls()
        .into_iter()
        .find(|c| c.path == format!("/api/v10/users/{BOB}"))
        .expect("an id check");
    assert_eq!(
        check.authorization.as_deref(),
        Some("Bot bot-token-for-tests")
    );
    assert!(!server.stderr().contains("bot-token-for-tests"));
}

/// Every route that needs a user, with a body that would be valid.
fn protected_routes() -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("GET", "/api/user/me".into(), None),
        ("GET", "/api/user/jobs".into(), None),
        ("DELETE", "/api/user/image/0badf00d".into(), None),
        ("GET", "/api/user/image/0badf00d/meta".into(), None),
        (
            "PUT",
            "/api/user/image/0badf00d/category".into(),
            Some(json!({"categoryId": 0})),
        ),
        ("GET", "/api/user/categories".into(), None),
        (
            "POST",
            "/api/user/category".into(),
            Some(json!({"name": "x"})),
        ),
        ("DELETE", "/api/user/category/1".into(), None),
        (
            "PATCH",
            "/api/user/category/1".into(),
            Some(json!({"name": "y"})),
        ),
        (
            "POST",
            "/api/queue/user/txt2img".into(),
            Some(json!({"model_name": "m", "prompt": "p", "width": 64, "height": 64})),
        ),
        ("POST", "/api/queue/interrupt/0badf00d".into(), None),
        ("GET", format!("/api/admin/authorize-user/{BOB}"), None),
        ("GET", format!("/api/admin/disable-user/{BOB}"), None),
        (
            "PUT",
            format!("/api/admin/users/{BOB}/role"),
            Some(json!({"role": 2})),
        ),
        ("GET", "/api/admin/plugins".into(), None),
        ("GET", "/api/admin/backends".into(), None),
    ]
}

#[tokio::test]
async fn every_protected_route_answers_bad_credentials_alike() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), None, &[], "").await;
    let store = common::sqlite_store(dir.path()).await;
    store.set_user_role("900", 0).await.unwrap();
    store.set_user_role("901", 1).await.unwrap();
    store.close().await;
    let other_secret = common::jwt("other-secret", "901", 3600);
    let expired = common::jwt(SECRET, "901", -60);
    let disabled = common::jwt(SECRET, "900", 3600);
    let unknown = common::jwt(SECRET, "902", 3600);
    let apprentice = common::jwt(SECRET, "901", 3600);
    let unauthorized = |error: &str| json!({"message": "Unauthorized", "error": error});
    let user_disabled =
        json!({"message": "Forbidden", "error": "User is disabled", "error_code": "USER_DISABLED"});
    for (method, path, body) in protected_routes() {
        let cases: Vec<(Option<String>, u16, Value)> = vec![
            (None, 401, json!({"message": "Unauthorized"})),
            (
                Some("Bearer garbage".into()),
                401,
                unauthorized("jwt malformed"),
            ),
            (Some(bearer(&expired)), 401, unauthorized("jwt expired")),
            (
                Some(bearer(&other_secret)),
                401,
                unauthorized("invalid signature"),
            ),
            (Some(bearer(&disabled)), 403, user_disabled.clone()),
            (Some(bearer(&unknown)), 403, user_disabled.clone()),
        ];
        for (auth, want_status, want_body) in cases {
            let (status, got) = call(&server, method, &path, auth.as_deref(), body.clone()).await;
            assert_eq!(
                (status, &got),
                (want_status, &want_body),
                "{method} {path} with {auth:?}"
            );
        }
        // An apprentice is in everywhere but the admin routes.
        let (status, got) = call(&server, method, &path, Some(&bearer(&apprentice)), body).await;
        if path.starts_with("/api/admin/") {
            assert_eq!(status, 403, "{method} {path}: {got}");
            let error = got["error"].as_str().unwrap_or_default();
            assert!(error.starts_with("You do not have permission to"), "{got}");
        } else {
            // Past authentication: whatever the route says of the request itself.
            assert!(
                status != 401 && got.get("error_code").is_none(),
                "{method} {path} refused an apprentice: {status} {got}"
            );
        }
    }
}

/// Queues a job as `auth`; its id.
async fn queue(server: &Server, auth: &str, body: Value) -> String {
    let (status, answer) = call(
        server,
        "POST",
        "/api/queue/user/txt2img",
        Some(auth),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer["job_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn galleries_pages_and_categories_stay_their_owners() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), None, &[], "").await;
    let store = common::sqlite_store(dir.path()).await;
    store.set_user_role(ALICE, 1).await.unwrap();
    store.set_user_role(BOB, 1).await.unwrap();
    store.close().await;
    let alice = bearer(&common::jwt(SECRET, ALICE, 3600));
    let bob = bearer(&common::jwt(SECRET, BOB, 3600));

    // Categories: create (the name is stored as base64 of its UTF-8), list, rename.
    let (status, body) = call(
        &server,
        "POST",
        "/api/user/category",
        Some(&alice),
        Some(json!({"name": "Füchse 🦊"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let foxes = body["id"].as_i64().unwrap();
    let (_, body) = call(
        &server,
        "POST",
        "/api/user/category",
        Some(&alice),
        Some(json!({"name": "Owls"})),
    )
    .await;
    let owls = body["id"].as_i64().unwrap();
    let (status, body) = get(&server, "/api/user/categories", &alice).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!([
            {"id": foxes, "owner_id": ALICE, "name": "Füchse 🦊"},
            {"id": owls, "owner_id": ALICE, "name": "Owls"},
        ])
    );
    for (body, message) in [
        (json!({}), "missing required fields"),
        (json!({"name": ""}), "missing required fields"),
        (
            json!({"name": "x".repeat(200)}),
            "Category name is too long",
        ),
    ] {
        let (status, got) = call(
            &server,
            "POST",
            "/api/user/category",
            Some(&alice),
            Some(body),
        )
        .await;
        assert_eq!((status, got), (400, json!({"message": message})));
    }
    let (status, body) = call(
        &server,
        "PATCH",
        "/api/user/category/abc",
        Some(&alice),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(
        (status, body),
        (400, json!({"message": "Category ID must be a number"}))
    );

    // 12 jobs for alice, the 4 oldest in Foxes, and one for bob.
    let mut ids = Vec::new();
    for n in 0..12 {
        let mut body =
            json!({"model_name": "m", "prompt": format!("fox {n}"), "width": 64, "height": 64});
        if n < 4 {
            body["categoryId"] = json!(foxes);
        }
        // One after the other: newest first is queue time, then queue order within a millisecond.
        ids.push(queue(&server, &alice, body).await);
    }
    let bobs = queue(
        &server,
        &bob,
        json!({"model_name": "m", "prompt": "an owl", "width": 64, "height": 64}),
    )
    .await;
    server.wait_image(&bobs, Duration::from_secs(30)).await;
    for id in &ids {
        server.wait_image(id, Duration::from_secs(30)).await;
    }
    let newest_first: Vec<&String> = ids.iter().rev().collect();
    let page = |query: &'static str, auth: String| {
        let server = &server;
        async move {
            let (status, body) = call(
                server,
                "GET",
                &format!("/api/user/jobs{query}"),
                Some(&auth),
                None,
            )
            .await;
            assert_eq!(status, 200, "{query}: {body}");
            body
        }
    };
    let first = page("?page=1&limit=5&category_id=0", alice.clone()).await;
    assert_eq!(first["count"], 12);
    assert_eq!(first["totalPages"], 3);
    assert_eq!(first["currentPage"], 1);
    assert_eq!(first["previousPage"], Value::Null);
    assert_eq!(first["nextPage"], 2);
    let listed: Vec<&str> = first["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        newest_first[..5]
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
    );
    let last = page("?page=3&limit=5", alice.clone()).await;
    assert_eq!(last["images"].as_array().unwrap().len(), 2);
    assert_eq!(last["previousPage"], 2);
    assert_eq!(last["nextPage"], Value::Null);
    let defaults = page("", alice.clone()).await;
    assert_eq!(defaults["images"].as_array().unwrap().len(), 10);
    let in_foxes = page(
        match foxes {
            1 => "?category_id=1",
            _ => panic!("a fresh database numbers categories from 1"),
        },
        alice.clone(),
    )
    .await;
    assert_eq!(in_foxes["count"], 4);
    assert!(
        in_foxes["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["category_id"] == foxes)
    );
    let bob_page = page("", bob.clone()).await;
    assert_eq!(bob_page["count"], 1);
    assert_eq!(bob_page["images"][0]["id"], bobs.as_str());
    let (status, _) = get(&server, "/api/user/jobs?page=0", &alice).await;
    assert_eq!(status, 400);

    // Meta, and moving a picture between categories.
    let newest = ids.last().unwrap().clone();
    let (status, meta) = get(&server, &format!("/api/user/image/{newest}/meta"), &alice).await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["owner_id"], ALICE);
    assert_eq!(meta["category_id"], Value::Null);
    assert_eq!(meta["message_id"], Value::Null);
    assert!(meta["created_at"].as_str().unwrap().ends_with('Z'));
    let put = |id: String, category: Value, auth: String| {
        let server = &server;
        async move {
            call(
                server,
                "PUT",
                &format!("/api/user/image/{id}/category"),
                Some(&auth),
                Some(category),
            )
            .await
        }
    };
    let (status, body) = put(newest.clone(), json!({"categoryId": owls}), alice.clone()).await;
    assert_eq!((status, body), (204, Value::Null));
    let (_, meta) = get(&server, &format!("/api/user/image/{newest}/meta"), &alice).await;
    assert_eq!(meta["category_id"], owls);
    for (body, message) in [
        (json!({}), "Missing required fields"),
        (
            json!({"categoryId": "owls"}),
            "Category ID must be a number",
        ),
    ] {
        let (status, got) = put(newest.clone(), body, alice.clone()).await;
        assert_eq!((status, got), (400, json!({"message": message})));
    }

    // Bob never sees, moves or deletes alice's pictures or categories.
    let (status, body) = get(&server, &format!("/api/user/image/{newest}/meta"), &bob).await;
    assert_eq!(
        (status, body),
        (403, json!({"message": "You do not own this image"}))
    );
    let (status, body) = get(&server, "/api/user/image/ffffffff/meta", &bob).await;
    assert_eq!((status, body), (404, json!({"message": "Image not found"})));
    let (status, body) = put(newest.clone(), json!({"categoryId": 0}), bob.clone()).await;
    assert_eq!(
        (status, body),
        (
            403,
            json!({"message": "Image does not exist or you do not own it"})
        )
    );
    let (status, body) = put(bobs.clone(), json!({"categoryId": owls}), bob.clone()).await;
    assert_eq!(
        (status, body),
        (
            403,
            json!({"message": "Category does not exist or you do not own it"})
        )
    );
    let (status, _) = call(
        &server,
        "DELETE",
        &format!("/api/user/image/{newest}"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(status, 204, "always 204, as Navigator");
    server.wait_image(&newest, Duration::from_secs(1)).await;
    let (_, cats) = get(&server, "/api/user/categories", &bob).await;
    assert_eq!(cats, json!([]));
    call(
        &server,
        "PATCH",
        &format!("/api/user/category/{owls}"),
        Some(&bob),
        Some(json!({"name": "Bob's now"})),
    )
    .await;
    call(
        &server,
        "DELETE",
        &format!("/api/user/category/{owls}"),
        Some(&bob),
        None,
    )
    .await;
    let (_, cats) = get(&server, "/api/user/categories", &alice).await;
    assert_eq!(cats[1]["name"], "Owls", "{cats}");

    // Alice renames and deletes: the pictures stay, without a category.
    let (status, _) = call(
        &server,
        "PATCH",
        &format!("/api/user/category/{foxes}"),
        Some(&alice),
        Some(json!({"name": "Foxes"})),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(
        &server,
        "DELETE",
        &format!("/api/user/category/{foxes}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (_, cats) = get(&server, "/api/user/categories", &alice).await;
    assert_eq!(
        cats,
        json!([{"id": owls, "owner_id": ALICE, "name": "Owls"}])
    );
    let after = page("?limit=20", alice.clone()).await;
    assert_eq!(after["count"], 12);
    assert!(
        after["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["category_id"] != foxes)
    );
    server.wait_image(&ids[0], Duration::from_secs(1)).await;

    // Alice deletes her newest picture: gone from the gallery and the image route.
    let (status, body) = call(
        &server,
        "DELETE",
        &format!("/api/user/image/{newest}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!((status, body), (204, Value::Null));
    let (status, _) = call(&server, "GET", &format!("/api/images/{newest}"), None, None).await;
    assert_eq!(status, 404);
    assert_eq!(page("", alice.clone()).await["count"], 11);
}
