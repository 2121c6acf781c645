//! The Forge backend against fake Forge machines that record every request: Navigator's
//! request bodies, progress with live previews, Forge's errors, a machine dying mid-job,
//! interrupts, and model affinity over two machines. Events are read with the real
//! `socket.io-client` from npm.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::forge::{FakeForge, ForgeOptions};
use common::socketio::{SocketClient, SocketOptions};
use common::{Server, ServerOptions};
use serde_json::{Value, json};

const SECRET: &str = "forge-test-secret";
const WAIT: Duration = Duration::from_secs(30);

/// easel over `forges` (SQLite), `progress_ms` 50.
async fn easel(dir: &std::path::Path, forges: &[(&FakeForge, &[&str])]) -> Server {
    let mut extra = String::new();
    for (n, (forge, models)) in forges.iter().enumerate() {
        extra.push_str(&format!(
            "[[forge]]\nname = \"f{n}\"\nurl = \"{}\"\nprogress_ms = 50\nmodels = {models:?}\n",
            forge.url()
        ));
    }
    let url = format!("sqlite://{}", dir.join("easel.db").display());
    let server = Server::start(ServerOptions {
        db_url: &url,
        dir,
        secret_key: SECRET,
        extra_toml: &extra,
        ..ServerOptions::default()
    })
    .await;
    server.wait_log("Forge machine up", forges.len()).await;
    server
}

async fn post(server: &Server, path: &str, auth: &str, body: Value) -> (u16, Value) {
    let response = easel::forge::http_client()
        .post(server.url(path))
        .header("Authorization", auth)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(server: &Server, path: &str) -> (u16, Vec<u8>) {
    let response = easel::forge::http_client()
        .get(server.url(path))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.bytes().await.unwrap().to_vec(),
    )
}

fn id(job: &Value) -> String {
    job["job_id"].as_str().expect("a job id").to_owned()
}

/// The Forge body recorded for `job`.
fn body_of(forge: &FakeForge, path: &str, job: &str) -> Value {
    forge
        .bodies(path)
        .into_iter()
        .find(|b| b["force_task_id"] == format!("navigator-{job}"))
        .unwrap_or_else(|| panic!("no {path} body for {job}"))
}

fn tiny_png_b64() -> String {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 8, 8);
    encoder.set_color(png::ColorType::Rgba);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&[200u8; 8 * 8 * 4]).unwrap();
    writer.finish().unwrap();
    base64::engine::general_purpose::STANDARD.encode(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forge_bodies_follow_navigator() {
    let forge = FakeForge::start(ForgeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = easel(dir.path(), &[(&forge, &[])]).await;
    let su = server.token.clone();
    let queue = |body: Value| {
        let su = su.clone();
        let server = &server;
        async move {
            let (status, job) = post(server, "/api/queue/user/txt2img", &su, body).await;
            assert_eq!(status, 200, "{job}");
            let id = id(&job);
            server.wait_image(&id, WAIT).await;
            (job, id)
        }
    };

    // Defaults; the sampler alias becomes its name; the upscaler falls back.
    let (job, a) = queue(json!({"model_name": "sd_xl_base_1.0", "prompt": "a fox",
                                "sampler_name": "k_euler_a", "scheduler_name": "Karras"}))
    .await;
    assert_eq!(job["sampler_name"], "Euler a", "{job}");
    assert_eq!(job["scheduler_name"], "karras", "lower-cased retry: {job}");
    let body = body_of(&forge, "/sdapi/v1/txt2img", &a);
    assert_eq!(body["prompt"], "a fox");
    assert!(body.get("negative_prompt").is_none(), "{body}");
    assert_eq!(
        (
            &body["width"],
            &body["height"],
            &body["steps"],
            &body["seed"]
        ),
        (&json!(512), &json!(512), &json!(50), &json!(-1))
    );
    assert_eq!(body["sampler_name"], "Euler a");
    assert_eq!(body["scheduler"], "karras");
    assert_eq!(body["cfg_scale"], 7);
    assert_eq!(body["distilled_cfg_scale"], 3.5);
    assert_eq!(body["enable_hr"], false);
    assert_eq!(body["hr_upscaler"], "4x_NMKD-Siax_200k");
    assert_eq!(body["save_images"], false);
    assert_eq!(
        body["override_settings"],
        json!({"sd_model_checkpoint": "sd_xl_base_1.0", "forge_additional_modules": []})
    );
    assert_eq!(body["override_settings_restore_afterwards"], false);
    assert!(body.get("alwayson_scripts").is_none());

    // HR fix: twice the size, the hires steps, the default denoise.
    let (_, b) = queue(
        json!({"model_name": "sd_xl_base_1.0", "prompt": "p", "steps": 30,
                              "hrf_steps": 12, "force_hr_fix": true, "image_enhancements": true}),
    )
    .await;
    let body = body_of(&forge, "/sdapi/v1/txt2img", &b);
    assert_eq!(
        (
            &body["enable_hr"],
            &body["hr_resize_x"],
            &body["hr_resize_y"]
        ),
        (&json!(true), &json!(1024), &json!(1024))
    );
    assert_eq!(body["hr_second_pass_steps"], 12);
    assert_eq!(body["denoising_strength"], 0.35);
    let scripts = body["alwayson_scripts"].as_object().unwrap();
    assert_eq!(
        scripts["FreeU Integrated (SD 1.x, SD 2.x, SDXL)"]["args"],
        json!([true, 1.1, 1.2, 0.6, 0.4, 0, 1])
    );
    assert_eq!(
        scripts["SelfAttentionGuidance Integrated (SD 1.x, SD 2.x, SDXL)"]["args"],
        json!([true, 0.5, 2, 1])
    );

    // A big image: half size first, then the hires pass to the size asked.
    let (_, c) = queue(
        json!({"model_name": "sd_xl_base_1.0", "prompt": "p", "steps": 40,
                              "width": 1536, "height": 1100}),
    )
    .await;
    let body = body_of(&forge, "/sdapi/v1/txt2img", &c);
    assert_eq!(
        (&body["width"], &body["height"]),
        (&json!(768), &json!(550))
    );
    assert_eq!(
        (&body["hr_resize_x"], &body["hr_resize_y"]),
        (&json!(1536), &json!(1100))
    );
    assert_eq!(body["hr_second_pass_steps"], 30);

    // img2img with a mask (intended argument order; steps capped at 75).
    let init = tiny_png_b64();
    let (status, job) = post(
        &server,
        "/api/queue/user/img2img",
        &su,
        json!({"model_name": "flux1-dev", "prompt": "paint", "steps": 100, "cfg_scale": 6,
               "width": 640, "height": 480, "denoising_strength": 0.5,
               "scheduler_name": "Karras", "init_image": init, "mask": init}),
    )
    .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(
        common::keys(&job),
        [
            "type",
            "job_id",
            "owner_id",
            "queue_size",
            "task_type",
            "status",
            "origin",
            "image_enhancements"
        ]
    );
    let d = id(&job);
    server.wait_image(&d, WAIT).await;
    let body = body_of(&forge, "/sdapi/v1/img2img", &d);
    assert_eq!(
        (
            &body["steps"],
            &body["cfg_scale"],
            &body["width"],
            &body["height"]
        ),
        (&json!(75), &json!(6), &json!(640), &json!(480))
    );
    assert_eq!(
        body["scheduler"], "automatic",
        "img2img: no lower-case retry"
    );
    assert_eq!(body["init_images"], json!([init]));
    assert_eq!(body["mask"], json!(init));
    assert_eq!(body["denoising_strength"], 0.5);
    assert_eq!(body["inpainting_fill"], 1);
    assert_eq!(body["image_cfg_scale"], 1.5);
    assert_eq!(
        body["override_settings"]["sd_model_checkpoint"],
        "flux1-dev"
    );

    // img2img from a stored job: its picture is the starting image; no mask.
    let (status, job) = post(
        &server,
        "/api/queue/user/img2img",
        &su,
        json!({"model_name": "sd_xl_base_1.0", "prompt": "again",
               "init_image": format!("NAVIGATOR_{a}")}),
    )
    .await;
    assert_eq!(status, 200, "{job}");
    let e = id(&job);
    server.wait_image(&e, WAIT).await;
    let body = body_of(&forge, "/sdapi/v1/img2img", &e);
    let stored = get(&server, &format!("/api/images/{a}")).await.1;
    assert_eq!(
        body["init_images"],
        json!([base64::engine::general_purpose::STANDARD.encode(stored)])
    );
    assert!(body.get("mask").is_none());

    // upscale-hrf: the first pass is the stored picture; the parameters come from png-info,
    // as numbers.
    let (status, job) = post(
        &server,
        &format!("/api/queue/user/txt2img/upscale-hrf/{b}"),
        &su,
        json!({"hrf_steps": 9}),
    )
    .await;
    assert_eq!(status, 200, "{job}");
    let f = id(&job);
    server.wait_image(&f, WAIT).await;
    let body = body_of(&forge, "/sdapi/v1/txt2img", &f);
    let first_pass = get(&server, &format!("/api/images/{b}")).await.1;
    assert_eq!(
        body["firstpass_image"],
        json!(base64::engine::general_purpose::STANDARD.encode(first_pass))
    );
    assert_eq!(body["enable_hr"], true);
    assert_eq!(body["hr_second_pass_steps"], 9);
    assert!(body["seed"].is_i64() && body["steps"] == 30, "{body}");
    assert!(
        body.get("alwayson_scripts").is_some(),
        "enhancements carried: {body}"
    );
    let (status, _) = post(
        &server,
        "/api/queue/user/txt2img/upscale-hrf/ffffffff",
        &su,
        json!({}),
    )
    .await;
    assert_eq!(status, 400);

    // The info route: Forge's png-info with the owner.
    let (status, info) = get(&server, &format!("/api/images/{a}/info")).await;
    assert_eq!(status, 200);
    let info: Value = serde_json::from_slice(&info).unwrap();
    assert_eq!(info["parameters"]["Prompt"], "a fox", "{info}");
    assert_eq!(info["parameters"]["owner_id"], "superuser");
    assert!(info["info"].as_str().unwrap().contains("Steps: 50"));

    // The lists are Forge's (samplers cut to 24 unless `all`; no "None" upscaler).
    let samplers: Vec<Value> =
        serde_json::from_slice(&get(&server, "/api/samplers").await.1).unwrap();
    assert_eq!(samplers.len(), 24);
    let all: Vec<Value> =
        serde_json::from_slice(&get(&server, "/api/samplers?all=true").await.1).unwrap();
    assert!(all.len() > 24);
    let upscalers: Vec<Value> =
        serde_json::from_slice(&get(&server, "/api/upscalers").await.1).unwrap();
    assert!(upscalers.iter().all(|u| u["name"] != "None"));
    let models: Value = serde_json::from_slice(&get(&server, "/api/models").await.1).unwrap();
    assert_eq!(models["models"][0]["model_name"], "sd_xl_base_1.0");
    assert_eq!(models["models"][0]["known"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_previews_errors_and_events() {
    let forge = FakeForge::start(ForgeOptions {
        steps_ms: 40,
        ..ForgeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = easel(dir.path(), &[(&forge, &[])]).await;
    let mut socket = SocketClient::connect(
        &format!("http://127.0.0.1:{}", server.rt_port),
        SocketOptions::default(),
    );
    socket.wait_for("connected", WAIT).await;
    let (status, job) = post(
        &server,
        "/api/queue/user/txt2img",
        &server.token,
        json!({"model_name": "flux1-dev", "prompt": "slow", "steps": 25}),
    )
    .await;
    assert_eq!(status, 200);
    let a = id(&job);
    socket.wait_for_job("task-started", &a, WAIT).await;
    let changed = socket.wait_for_job("model-changed", &a, WAIT).await;
    assert_eq!(
        changed["data"],
        json!({"model_name": "flux1-dev", "job_id": a})
    );
    // Previews change while the job runs.
    let mut previews = Vec::new();
    let deadline = Instant::now() + WAIT;
    while previews.len() < 2 && Instant::now() < deadline {
        let event = socket.wait_for_job("task-progress", &a, WAIT).await;
        let data = &event["data"];
        assert_eq!(data["progress_path"], format!("/api/previews/{a}"));
        let (status, png) = get(&server, &format!("/api/previews/{a}?step=3")).await;
        if status == 200 && previews.last() != Some(&png) {
            previews.push(png);
        }
    }
    assert!(previews.len() >= 2, "the preview changed during the job");
    let finished = socket.wait_for_job("task-finished", &a, WAIT).await;
    let data = &finished["data"];
    assert_eq!(data["img_path"], format!("/api/images/{a}"));
    assert!(
        data["seed"].as_i64().unwrap() > 0,
        "the actual seed: {data}"
    );
    assert_eq!(data["status"], "finished");
    for hidden in ["prompt", "negative_prompt", "owner_id", "width", "height"] {
        assert!(data.get(hidden).is_none(), "{hidden} is not sent: {data}");
    }

    // A 422 fails the job with Forge's message.
    forge.fail_next(
        422,
        json!({"detail": "sampler exploded", "error": "ValueError"}),
    );
    let (_, job) = post(
        &server,
        "/api/queue/user/txt2img",
        &server.token,
        json!({"model_name": "flux1-dev", "prompt": "bad"}),
    )
    .await;
    let b = id(&job);
    let failed = socket.wait_for_job("task-failed", &b, WAIT).await;
    let error = failed["data"]["error"].as_str().unwrap();
    assert!(
        error.contains("Request failed with status code 422") && error.contains("sampler exploded"),
        "{error}"
    );
    assert_eq!(
        forge.count("POST", "/sdapi/v1/txt2img"),
        2,
        "no retry after a 4xx"
    );
    socket.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_machine_hands_its_job_to_another() {
    let dying = FakeForge::start(ForgeOptions {
        steps_ms: 30,
        ..ForgeOptions::default()
    })
    .await;
    let healthy = FakeForge::start(ForgeOptions {
        loaded: Some("flux1-dev".into()),
        ..ForgeOptions::default()
    })
    .await;
    dying.die_during_next_generation();
    let dir = tempfile::tempdir().unwrap();
    let server = easel(dir.path(), &[(&dying, &[]), (&healthy, &[])]).await;
    // sd_xl is loaded on the first machine: the job goes there, which dies mid-job.
    let job = server
        .queue(json!({"model_name": "sd_xl_base_1.0", "prompt": "survive", "steps": 10}))
        .await;
    let a = id(&job);
    server.wait_image(&a, WAIT).await;
    assert_eq!(dying.count("POST", "/sdapi/v1/txt2img"), 1);
    assert_eq!(healthy.count("POST", "/sdapi/v1/txt2img"), 1);
    server
        .wait_log("Forge fault; the job goes back to the queue", 1)
        .await;
    // The admin view says which machine is down.
    let response = easel::forge::http_client()
        .get(server.url("/api/admin/backends"))
        .header("Authorization", &server.token)
        .send()
        .await
        .unwrap();
    let state: Value = response.json().await.unwrap();
    let forge = state["forge"].as_array().unwrap();
    assert_eq!(
        (&forge[0]["name"], &forge[0]["up"]),
        (&json!("f0"), &json!(false)),
        "{state}"
    );
    assert_eq!(
        (&forge[1]["up"], &forge[1]["jobs_done"]),
        (&json!(true), &json!(1))
    );
    assert_eq!(forge[0]["faults"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupts_by_owner_and_stranger() {
    let forge = FakeForge::start(ForgeOptions {
        steps_ms: 100,
        ..ForgeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = easel(dir.path(), &[(&forge, &[])]).await;
    let store = common::sqlite_store(dir.path()).await;
    store.set_user_role("111", 1).await.unwrap();
    store.set_user_role("222", 1).await.unwrap();
    let owner = format!("Bearer {}", common::jwt(SECRET, "111", 3600));
    let stranger = format!("Bearer {}", common::jwt(SECRET, "222", 3600));
    let mut socket = SocketClient::connect(
        &format!("http://127.0.0.1:{}", server.rt_port),
        SocketOptions {
            token: Some(owner.clone()),
            ..SocketOptions::default()
        },
    );
    socket.wait_for("connected", WAIT).await;
    let body = json!({"model_name": "sd_xl_base_1.0", "prompt": "long", "steps": 200});
    let (_, running) = post(&server, "/api/queue/user/txt2img", &owner, body.clone()).await;
    let (_, queued) = post(&server, "/api/queue/user/txt2img", &owner, body).await;
    let (running, queued) = (id(&running), id(&queued));
    socket.wait_for_job("task-progress", &running, WAIT).await;

    // A stranger may not interrupt either; an unknown job is 404.
    for job in [&running, &queued] {
        let (status, answer) = post(
            &server,
            &format!("/api/queue/interrupt/{job}"),
            &stranger,
            json!({}),
        )
        .await;
        assert_eq!((status, answer), (403, json!({"error": "Unauthorized"})));
    }
    let (status, _) = post(&server, "/api/queue/interrupt/00000000", &owner, json!({})).await;
    assert_eq!(status, 404);

    // The owner removes the queued one, and stops the running one: Forge hands back the
    // partial picture, which is the job's picture.
    let (status, answer) = post(
        &server,
        &format!("/api/queue/interrupt/{queued}"),
        &owner,
        json!({}),
    )
    .await;
    assert_eq!(
        (status, answer),
        (
            200,
            json!({"message": "Task removed!", "status": "removed"})
        )
    );
    let (status, answer) = post(
        &server,
        &format!("/api/queue/interrupt/{running}"),
        &owner,
        json!({}),
    )
    .await;
    assert_eq!(
        (status, answer),
        (
            200,
            json!({"message": "Task interrupted!", "status": "interrupted"})
        )
    );
    socket
        .wait_for_job("task-interrupted", &running, WAIT)
        .await;
    socket.wait_for_job("task-finished", &running, WAIT).await;
    assert_eq!(forge.interrupted(), 1);
    server.wait_image(&running, WAIT).await;
    assert_eq!(
        forge.count("POST", "/sdapi/v1/txt2img"),
        1,
        "the removed job never ran"
    );
    socket.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_go_to_the_machine_with_their_model() {
    let a = FakeForge::start(ForgeOptions {
        steps_ms: 20,
        loaded: Some("sd_xl_base_1.0".into()),
        ..ForgeOptions::default()
    })
    .await;
    let b = FakeForge::start(ForgeOptions {
        steps_ms: 20,
        loaded: Some("flux1-dev".into()),
        ..ForgeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = easel(dir.path(), &[(&a, &[]), (&b, &[])]).await;
    let models = ["sd_xl_base_1.0", "flux1-dev"];
    let mut ids = Vec::new();
    for n in 0..12 {
        let job = server
            .queue(json!({"model_name": models[n % 2], "prompt": format!("job {n}"), "steps": 5}))
            .await;
        ids.push(id(&job));
    }
    for id in &ids {
        server.wait_image(id, WAIT).await;
    }
    // Round-robin over two machines with alternating models would swap on every job after
    // the first two that happen to match (10 of 12); affinity keeps each model on its
    // machine while both are free.
    let swaps = a.swaps() + b.swaps();
    assert!(
        swaps <= 4,
        "{swaps} checkpoint swaps for 12 alternating jobs"
    );
    assert_eq!(
        a.count("POST", "/sdapi/v1/txt2img") + b.count("POST", "/sdapi/v1/txt2img"),
        12
    );
}

/// Starts easel on one Forge (from `extra` or `env`) and runs one job on it.
async fn one_job(dir: &std::path::Path, extra: &str, env: &[(&str, &str)]) -> Server {
    let url = format!("sqlite://{}", dir.join("easel.db").display());
    let server = Server::start(ServerOptions {
        db_url: &url,
        dir,
        extra_toml: extra,
        env,
        ..ServerOptions::default()
    })
    .await;
    server.wait_log("Forge machine up", 1).await;
    let job = server
        .queue(json!({"model_name": "sd_xl_base_1.0", "prompt": "one job"}))
        .await;
    server.wait_image(&id(&job), WAIT).await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_and_navigators_environment() {
    // Forge started with --api-auth: every call carries the credentials.
    let guarded = FakeForge::start(ForgeOptions {
        basic_auth: Some(("easel".into(), "s3cret".into())),
        ..ForgeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[forge]]\nurl = \"{}\"\nusername = \"easel\"\npassword = \"s3cret\"\n",
        guarded.url()
    );
    let server = one_job(dir.path(), &extra, &[]).await;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("easel:s3cret")
    );
    let requests = guarded.requests();
    assert!(requests.iter().any(|r| r.path == "/sdapi/v1/txt2img"));
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some(expected.as_str())),
        "every call authenticated"
    );
    assert!(
        !server.stderr().contains("s3cret"),
        "the password is not logged"
    );
    drop(server);

    // No [[forge]]: Navigator's SD_API_HOST / SD_API_BASE make one machine.
    let plain = FakeForge::start(ForgeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let host = format!("{}/sdapi/v1", plain.url());
    let base = plain.url();
    one_job(
        dir.path(),
        "",
        &[("SD_API_HOST", &host), ("SD_API_BASE", &base)],
    )
    .await;
    assert_eq!(plain.count("POST", "/sdapi/v1/txt2img"), 1);
}
