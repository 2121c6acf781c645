//! The plugins inside a running server: API requests go through the access and model-policy
//! plugins, `[plugins]` settings change without a restart, roles without a file fall back to
//! the built-in plugins, and `GET /api/admin/plugins` shows what serves.

mod common;

use std::time::{Duration, Instant};

use common::{Server, ServerOptions, jwt};
use serde_json::{Value, json};

const SECRET: &str = "plugin-server-secret";
const REPO_PLUGINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins");

async fn post(server: &Server, auth: &str, body: Value) -> (u16, Value) {
    let response = easel::forge::http_client()
        .post(server.url("/api/queue/user/txt2img"))
        .header("Authorization", auth)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Posts until the answer has `status` (roles set behind the server's back, as this test does
/// through the store, reach it within the role cache's time to live).
async fn post_until(server: &Server, auth: &str, body: Value, status: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (got, answer) = post(server, auth, body.clone()).await;
        if got == status {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "still {got} {answer}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get(server: &Server, auth: Option<&str>, path: &str) -> (u16, Value) {
    let mut request = easel::forge::http_client().get(server.url(path));
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn api_requests_go_through_access_and_model_policy() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for name in ["access", "model-policy"] {
        std::fs::copy(
            format!("{REPO_PLUGINS}/{name}.wasm"),
            plugins.join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    let db = format!("sqlite://{}", dir.path().join("easel.db").display());
    let server = Server::start(ServerOptions {
        db_url: &db,
        dir: dir.path(),
        step_ms: 1,
        workers: 1,
        secret_key: SECRET,
        extra_toml: "[plugins.model-policy]\nmax_steps = 30\n\
                     [plugins.access]\nhttp_min_role = 2\n",
        ..ServerOptions::default()
    })
    .await;
    let store = easel::store::Store::connect(&db).await.unwrap();
    store.set_user_role("111", 1).await.unwrap();
    store.add_model("secret-model", None, true).await.unwrap();
    store
        .add_model("sdxl_base", Some("SDXL"), false)
        .await
        .unwrap();
    let user = format!("Bearer {}", jwt(SECRET, "111", 3600));

    // The superuser passes access; the model policy caps the steps and maps a friendly name.
    let job = server
        .queue(json!({"model_name": "SDXL", "prompt": "a fox", "steps": 100}))
        .await;
    assert_eq!(
        (job["steps"].clone(), job["model_name"].clone()),
        (json!(30), json!("sdxl_base"))
    );
    assert_eq!(job["hrf_steps"], 30, "the cap holds for the hires pass");

    // Role 1 is below http_min_role = 2: refused, the reason stays in the log.
    let (status, body) = post(&server, &user, json!({"model_name": "m", "prompt": "p"})).await;
    assert_eq!(
        (status, body),
        (403, json!({"error": "You are not allowed to queue jobs."}))
    );
    // The access plugin's reason is logged.
    server.wait_log("http_min_role", 1).await;

    // Role 2 passes access, but a restricted model needs role 3.
    store.set_user_role("111", 2).await.unwrap();
    let body = post_until(
        &server,
        &user,
        json!({"model_name": "secret-model", "prompt": "p"}),
        400,
    )
    .await;
    assert_eq!(
        body,
        json!({"error": "The model secret-model is restricted."})
    );
    let (status, _) = post(
        &server,
        &user,
        json!({"model_name": "other", "prompt": "p"}),
    )
    .await;
    assert_eq!(status, 200);

    // Lower http_min_role in config.toml: applied without a restart.
    store.set_user_role("111", 1).await.unwrap();
    post_until(
        &server,
        &user,
        json!({"model_name": "m", "prompt": "p"}),
        403,
    )
    .await;
    let config_path = dir.path().join("config.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        config.replace("http_min_role = 2", "http_min_role = 1"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = post(&server, &user, json!({"model_name": "m", "prompt": "p"})).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new settings not applied: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken config.toml keeps the settings in force.
    std::fs::write(&config_path, "[plugins\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server
        .lines_with("config changed but cannot be read")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "broken config not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = post(&server, &user, json!({"model_name": "m", "prompt": "p"})).await;
    assert_eq!(status, 200);

    // The admin view: superuser or role >= 3 only.
    let (status, _) = get(&server, None, "/api/admin/plugins").await;
    assert_eq!(status, 401);
    let (status, body) = get(&server, Some(&user), "/api/admin/plugins").await;
    assert_eq!(
        (status, body),
        (
            403,
            json!({"error": "You do not have permission to view plugins!"})
        )
    );
    let (status, body) = get(&server, Some(&server.token), "/api/admin/plugins").await;
    assert_eq!(status, 200, "{body}");
    let plugins = body["plugins"].as_array().unwrap();
    let names: Vec<&str> = plugins
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["access", "model-policy"]);
    let access = &plugins[0];
    assert_eq!(access["status"], "ok");
    assert_eq!(access["roles"], json!(["access"]));
    assert_eq!(access["wit_version"], "0.1.0");
    assert_eq!(access["exports"], json!(["easel:plugin/access@0.1.0"]));
    assert_eq!(access["reloads"], 0);
    assert!(access["last_reload"].as_f64().unwrap() > 1.7e9);
    assert_eq!(access["sha256"].as_str().unwrap().len(), 64);
    let roles = body["roles"].as_array().unwrap();
    let parser = roles.iter().find(|r| r["role"] == "parser").unwrap();
    assert_eq!(
        parser,
        &json!({"role": "parser", "plugin": "parser", "served_by": "builtin", "on_failure": "builtin"})
    );
    store.close().await;
}
