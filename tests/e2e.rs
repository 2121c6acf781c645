//! End to end: the real `easel` binary on free ports, driven over HTTP.

mod common;

use std::time::Duration;

use common::{Server, ServerOptions, png_size};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &str = "e2e-secret-key";

async fn start(dir: &std::path::Path, step_ms: u64) -> Server {
    let url = format!("sqlite://{}", dir.join("easel.db").display());
    Server::start(ServerOptions {
        db_url: &url,
        dir,
        step_ms,
        workers: 2,
        secret_key: SECRET,
        ..ServerOptions::default()
    })
    .await
}

fn jwt(discord_id: &str, exp_offset: i64) -> String {
    common::jwt(SECRET, discord_id, exp_offset)
}

async fn post(server: &Server, auth: Option<&str>, body: &str) -> (u16, Value) {
    let mut request = easel::forge::http_client()
        .post(server.url("/api/queue/user/txt2img"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("answer is not JSON ({status}): {text}"));
    (status, value)
}

#[tokio::test]
async fn queue_jobs_and_fetch_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 2).await;
    let client = easel::forge::http_client();

    let root: Value = client
        .get(server.url("/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(root, json!({"message": "Hello World!", "status": "online"}));
    let limits: Value = client
        .get(server.url("/api/config/limits"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(limits, json!({"max_pixels": 3686400}));

    let sizes = [(64u32, 48u32), (320, 200), (512, 512), (1024, 96)];
    let mut jobs = Vec::new();
    for (i, (w, h)) in sizes.iter().enumerate() {
        let job = server
            .queue(
                json!({"model_name": "sdxl_base", "prompt": format!("fox {i}"),
                          "width": w, "height": h, "steps": 5, "cfg_scale": 6.5}),
            )
            .await;
        // Navigator's job object, in its key order.
        let keys = common::keys(&job);
        assert_eq!(
            keys,
            [
                "type",
                "model_name",
                "prompt",
                "owner_id",
                "job_id",
                "width",
                "height",
                "steps",
                "hrf_steps",
                "seed",
                "cfg_scale",
                "distilled_cfg",
                "sampler_name",
                "scheduler_name",
                "denoising_strength",
                "force_hr_fix",
                "queue_size",
                "task_type",
                "status",
                "origin",
                "image_enhancements"
            ]
        );
        assert_eq!(job["status"], "queued");
        assert_eq!(job["origin"], "127.0.0.1");
        assert_eq!(job["cfg_scale"], json!(6.5));
        assert_eq!(job["seed"], json!(-1));
        let id = job["job_id"].as_str().unwrap().to_owned();
        assert!(id.len() == 8 && id.chars().all(|c| c.is_ascii_hexdigit()));
        jobs.push((id, *w, *h));
    }
    for (id, w, h) in &jobs {
        let png = server.wait_image(id, Duration::from_secs(60)).await;
        assert_eq!(png_size(&png), (*w, *h), "job {id}");
    }
    // `.png` suffix works too; an unknown id is a JSON 404.
    let with_suffix = client
        .get(server.url(&format!("/api/images/{}.png", jobs[0].0)))
        .send()
        .await
        .unwrap();
    assert_eq!(with_suffix.status(), 200);
    let missing = client
        .get(server.url("/api/images/ffffffff"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap(),
        json!({"error": "Image not found"})
    );
}

#[tokio::test]
async fn same_request_same_image() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 0).await;
    let body = json!({"model_name": "m", "prompt": "a red fox", "seed": 1234,
                      "width": 128, "height": 64, "steps": 2});
    let a = server.queue(body.clone()).await;
    let b = server.queue(body).await;
    let a = server
        .wait_image(a["job_id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    let b = server
        .wait_image(b["job_id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(a, b);
}

#[tokio::test]
async fn auth_and_bad_input_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 0).await;
    let ok_body = r#"{"model_name":"m","prompt":"p","width":64,"height":64,"steps":1}"#;

    assert_eq!(
        post(&server, None, ok_body).await,
        (401, json!({"message": "Unauthorized"}))
    );
    assert_eq!(
        post(&server, Some("not-the-token"), ok_body).await,
        (
            401,
            json!({"message": "Unauthorized", "error": "jwt must be provided"})
        )
    );
    assert_eq!(
        post(&server, Some("Bearer abc.def"), ok_body).await,
        (
            401,
            json!({"message": "Unauthorized", "error": "jwt malformed"})
        )
    );
    let expired = format!("Bearer {}", jwt("111", -3600));
    assert_eq!(
        post(&server, Some(&expired), ok_body).await,
        (
            401,
            json!({"message": "Unauthorized", "error": "jwt expired"})
        )
    );
    let forged = format!(
        "Bearer {}",
        jsonwebtoken::encode(
            &Header::default(),
            &json!({"discord_id": "111", "exp": 9999999999i64}),
            &EncodingKey::from_secret(b"another secret"),
        )
        .unwrap()
    );
    assert_eq!(
        post(&server, Some(&forged), ok_body).await,
        (
            401,
            json!({"message": "Unauthorized", "error": "invalid signature"})
        )
    );
    // A valid JWT for a user with no role is refused; with a role, accepted as that user.
    let user = format!("Bearer {}", jwt("111", 3600));
    assert_eq!(
        post(&server, Some(&user), ok_body).await,
        (
            403,
            json!({"message": "Forbidden", "error": "User is disabled", "error_code": "USER_DISABLED"})
        )
    );
    let store = common::sqlite_store(dir.path()).await;
    store.set_user_role("111", 1).await.unwrap();
    let (status, job) = post(&server, Some(&user), ok_body).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["owner_id"], "111");
    // A category the user does not own.
    let other = store.create_category("b3RoZXI=", "222").await.unwrap();
    let (status, body) = post(
        &server,
        Some(&user),
        &format!(r#"{{"model_name":"m","prompt":"p","categoryId":{other}}}"#),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            403,
            json!({"error": "Category does not exist or you do not own it"})
        )
    );
    store.close().await;

    let su = server.token.clone();
    let su = Some(su.as_str());
    let (status, body) = post(&server, su, "{not json").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with("Invalid JSON"),
        "{body}"
    );
    assert_eq!(
        post(&server, su, r#"{"prompt":"no model"}"#).await,
        (400, json!({"error": "Missing required parameters"}))
    );
    assert_eq!(
        post(&server, su, "").await,
        (400, json!({"error": "Missing required parameters"}))
    );
    assert_eq!(
        post(
            &server,
            su,
            r#"{"model_name":"m","prompt":"p","width":4096,"height":4096}"#
        )
        .await,
        (
            400,
            json!({"error": "The total value of (Width * Height) must not exceed 3686400"})
        )
    );
    assert_eq!(
        post(
            &server,
            su,
            r#"{"model_name":"m","prompt":"p","steps":"many"}"#
        )
        .await,
        (
            400,
            json!({"error": "Invalid value for steps: expected a number"})
        )
    );
    let (status, body) = post(&server, su, "[1,2]").await;
    assert_eq!(
        (status, body),
        (400, json!({"error": "Request body must be a JSON object"}))
    );

    // Unknown routes are JSON too.
    let response = easel::forge::http_client()
        .get(server.url("/api/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"error": "Cannot GET /api/nothing"})
    );

    // Nothing of the above was queued except the two accepted jobs... and the log never shows
    // a secret.
    let log = server.stderr();
    assert!(
        !log.contains(&server.token),
        "superuser token leaked into the log"
    );
    assert!(!log.contains(SECRET), "secret key leaked into the log");
}

#[tokio::test]
async fn generated_superuser_token_is_written_not_logged() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    std::fs::write(
        dir.path().join("config.toml"),
        format!("[api]\nhttp_port = {port}\nrt_port = {}\n[simulated]\nstep_ms = 0\n[workers]\nbind = \"\"\n", common::free_port()),
    )
    .unwrap();
    let mut child = std::process::Command::new(common::easel_bin())
        .args(["serve"])
        .current_dir(dir.path())
        .env_remove("SUPERUSER_ADMIN_TOKEN")
        .env_remove("SECRET_KEY")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let token_file = dir.path().join("easel-superuser.token");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let client = easel::forge::http_client();
    let job = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "server never accepted the token"
        );
        // The file may exist before its contents are written.
        let token = std::fs::read_to_string(&token_file).unwrap_or_default();
        if !token.trim().is_empty()
            && let Ok(response) = client
                .post(format!("http://127.0.0.1:{port}/api/queue/user/txt2img"))
                .header("Authorization", token.trim())
                .json(&json!({"model_name": "m", "prompt": "default db", "steps": 1, "width": 32, "height": 32}))
                .send()
                .await
        {
            assert_eq!(response.status(), 200);
            break response.json::<Value>().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let id = job["job_id"].as_str().unwrap();
    let png = loop {
        let response = client
            .get(format!("http://127.0.0.1:{port}/api/images/{id}"))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            break response.bytes().await.unwrap();
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(png_size(&png), (32, 32));
    // The embedded default database is an SQLite file in the working directory.
    assert!(dir.path().join("easel.db").exists());
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let token = std::fs::read_to_string(&token_file).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains(token.trim()), "generated token was logged");
    assert!(
        stderr.contains("Discord front end and gRPC API off"),
        "{stderr}"
    );
}

#[tokio::test]
async fn user_me_and_cors_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 0).await;
    let store = common::sqlite_store(dir.path()).await;
    store.set_user_role("111", 2).await.unwrap();
    let http = easel::forge::http_client();
    // The token's payload, with the role read afresh (Compass reads `user.role`).
    let me: Value = http
        .get(server.url("/api/user/me"))
        .header("Authorization", format!("Bearer {}", jwt("111", 3600)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"]["discord_id"], "111");
    assert_eq!(
        me["user"]["role"], 2,
        "the stored role, not the token's: {me}"
    );
    assert!(me["user"]["exp"].is_i64());
    // A browser's preflight and an unknown route both carry CORS headers, so a web client
    // sees the JSON error instead of a CORS failure.
    let preflight = http
        .request(reqwest::Method::OPTIONS, server.url("/api/not-yet"))
        .header("Origin", "http://compass.example")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let missing = http
        .get(server.url("/api/not-yet"))
        .header("Origin", "http://compass.example")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn the_embedded_default_is_a_whole_system() {
    // No Forge: the simulated backend answers the lists, img2img and upscale-hrf.
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 0).await;
    let http = easel::forge::http_client();
    let list = |path: &'static str| {
        let http = http.clone();
        let url = server.url(path);
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let models = list("/api/models").await;
    let first = models["models"][0]["model_name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        models["models"][0]["title"]
            .as_str()
            .unwrap()
            .contains(".safetensors [")
    );
    assert_eq!(list("/api/samplers").await.as_array().unwrap().len(), 24);
    assert!(list("/api/samplers?all").await.as_array().unwrap().len() > 24);
    let schedulers = list("/api/schedulers").await;
    assert_eq!(
        schedulers[0],
        json!({"name": "automatic", "label": "Automatic", "aliases": null, "default_rho": -1, "need_inner_model": false})
    );
    assert!(
        list("/api/upscalers")
            .await
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["name"] != "None")
    );
    assert!(!list("/api/modules").await.as_array().unwrap().is_empty());

    let source = server
        .queue(
            json!({"model_name": first, "prompt": "a fox", "width": 96, "height": 64,
                      "steps": 2, "scheduler_name": "karras"}),
        )
        .await;
    let source = source["job_id"].as_str().unwrap().to_owned();
    let picture = server.wait_image(&source, Duration::from_secs(30)).await;
    let info: Value = http
        .get(server.url(&format!("/api/images/{source}/info")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        info["parameters"]["Schedule type"], "Karras",
        "Forge writes the label"
    );
    assert!(
        info["parameters"]["Seed"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            >= 0
    );

    // img2img from the stored picture: same size, derived from it.
    let response = http
        .post(server.url("/api/queue/user/img2img"))
        .header("Authorization", &server.token)
        .json(
            &json!({"model_name": first, "prompt": "a fox at night", "width": 96,
                      "height": 64, "steps": 2, "init_image": format!("NAVIGATOR_{source}")}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await.unwrap();
    let derived = server
        .wait_image(job["job_id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(common::png_size(&derived), (96, 64));
    assert_ne!(derived, picture);

    // upscale-hrf: twice the size, from the first pass.
    let response = http
        .post(server.url(&format!("/api/queue/user/txt2img/upscale-hrf/{source}")))
        .header("Authorization", &server.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["force_hr_fix"], true);
    let upscaled = server
        .wait_image(job["job_id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(common::png_size(&upscaled), (192, 128));
}

#[tokio::test]
async fn health_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 0).await;
    let http = easel::forge::http_client();
    let get = |path: &'static str| {
        let http = http.clone();
        let url = server.url(path);
        async move {
            let response = http.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await, (200, json!({"status": "ok"})));
    let (status, ready) = get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["store"], "ok");
    // No plugin directory here: the roles fall back to the built-ins, which serve.
    let roles = ready["plugins"].as_object().unwrap();
    assert_eq!(roles.len(), 4, "{ready}");
    assert!(
        roles.values().all(|serving| serving == "builtin"),
        "{ready}"
    );

    // A role whose plugin is missing and may not fall back: not ready, and why.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("easel.db").display());
    let server = Server::start(ServerOptions {
        db_url: &url,
        dir: dir.path(),
        extra_toml: "[plugins.roles]\naccess = \"no-such-plugin\"\n\
                     [plugins.no-such-plugin]\non_failure = \"fail-closed\"\n",
        ..ServerOptions::default()
    })
    .await;
    let response = http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "not ready");
    assert_eq!(body["plugins"]["access"], "none");
    assert_eq!(
        body["reasons"],
        json!(["no plugin serves access (no-such-plugin is not loaded)"])
    );
}

#[tokio::test]
async fn status_shows_the_queue_backends_and_plugins() {
    let dir = tempfile::tempdir().unwrap();
    // One slow simulated worker: one job runs, the next waits.
    let server = start(dir.path(), 200).await;
    let first = server
        .queue(json!({"model_name": "m", "prompt": "slow fox", "steps": 50, "width": 64, "height": 48}))
        .await;
    let second = server
        .queue(json!({"model_name": "m", "prompt": "next fox", "steps": 50, "width": 64, "height": 48}))
        .await;
    let status = |token: &str| {
        let out = std::process::Command::new(common::easel_bin())
            .args(["status", "--url", &server.url(""), "--config"])
            .arg(dir.path().join("config.toml"))
            .env("SUPERUSER_ADMIN_TOKEN", token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let screen = loop {
        let (ok, screen, err) = status(&server.token);
        assert!(ok, "{err}");
        if screen.contains("running") || std::time::Instant::now() > deadline {
            break screen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first = first["job_id"].as_str().unwrap();
    let second = second["job_id"].as_str().unwrap();
    assert!(screen.contains("running"), "{screen}");
    assert!(
        screen.contains(first) && screen.contains(second),
        "{screen}"
    );
    assert!(screen.contains("64x48"), "{screen}");
    assert!(screen.contains("BACKENDS"), "{screen}");
    assert!(screen.contains("worker pool: 0 connected"), "{screen}");
    assert!(screen.contains("PLUGINS"), "{screen}");
    assert!(screen.contains("parser"), "{screen}");
    let (ok, _, err) = status("not-the-token");
    assert!(!ok);
    assert!(err.contains("answered 401"), "{err}");
}
