//! `easel bench api`: authenticated txt2img submits over HTTP, as Compass sends them, against
//! `GET /` on the same server in the same run (what axum, the loopback and the load generator
//! cost), at several concurrencies.
//!
//! The server is the real `easel serve` in a child process, on its defaults (simulated
//! backend, one worker, 20 ms per step) with the database given (a fresh SQLite file by
//! default); the load comes from this process: `concurrency` keep-alive HTTP/1.1 connections,
//! each sending its next request when the previous answer arrived (as wrk does).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

use super::{BenchError, Load, on_database};
use crate::store::Store;

/// What `easel bench api` measures.
#[derive(Clone, Debug)]
pub struct ApiBenchOptions {
    /// How long each measurement runs.
    pub seconds: f64,
    /// The concurrencies to measure at.
    pub concurrency: Vec<usize>,
    /// Database URL; `None`: a fresh SQLite file in a temporary directory.
    pub database: Option<String>,
}

/// The body Compass sends for a txt2img request (compat.md §3).
const COMPASS_BODY: &str = r#"{"prompt":"a red fox in the snow, highly detailed","negative_prompt":"blurry, lowres","model_name":"sdxl_base","sampler_name":"DPM++ 2M","scheduler_name":"Karras","steps":30,"width":1024,"height":1024,"cfg_scale":7,"distilled_cfg":3.5,"modules":[],"seed":-1,"subseed":-1,"subseed_strength":0,"image_enhancements":true}"#;

const SECRET: &str = "easel-bench-api-secret";
const USER: &str = "100000000000000001";

/// Runs `easel bench api` and prints the report.
pub async fn api(options: ApiBenchOptions) -> Result<(), BenchError> {
    let options = &options;
    on_database(options.database.as_deref(), |url| async move {
        api_on(&url, options).await
    })
    .await
}

/// A child `easel serve`, killed (`kill -9`) and its folder removed when dropped.
pub(super) struct Server {
    child: Child,
    port: u16,
    rt_port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, BenchError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `easel serve` on the database at `url` in a folder of its own, with more
/// `[database]` keys and more sections; returns once it answers.
pub(super) async fn start_server(
    url: &str,
    database: &str,
    extra: &str,
) -> Result<Server, BenchError> {
    let dir = std::env::temp_dir().join(format!(
        "easel-bench-api-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let rt_port = free_port()?;
    let config = format!(
        "[database]\nurl = {url:?}\n{database}\n[api]\nhttp_port = {port}\nrt_port = {rt_port}\nsecret_key = {SECRET:?}\n\
         superuser_token = \"bench-superuser\"\n[workers]\nbind = \"\"\n\
         [misc_settings]\nlog_dir = {:?}\n{extra}",
        dir.join("logs").display().to_string()
    );
    std::fs::write(dir.join("config.toml"), config)?;
    let log = std::fs::File::create(dir.join("server.log"))?;
    let child = Command::new(std::env::current_exe()?)
        .args(["serve", "--logging-level", "WARNING", "--config"])
        .arg(dir.join("config.toml"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let server = Server {
        child,
        port,
        rt_port,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default();
            return Err(BenchError::Other(format!(
                "the server did not start in 60 s:\n{log}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(server)
}

/// `concurrency` connections sending `request` back to back for `seconds`.
async fn load(
    port: u16,
    concurrency: usize,
    seconds: f64,
    make: impl Fn() -> Request<Full<Bytes>> + Clone + Send + 'static,
) -> Result<Load, BenchError> {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut connections = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let make = make.clone();
        connections.spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            let mut times = Vec::new();
            let mut errors = 0usize;
            while Instant::now() < until {
                let started = Instant::now();
                sender.ready().await.map_err(std::io::Error::other)?;
                let response = sender
                    .send_request(make())
                    .await
                    .map_err(std::io::Error::other)?;
                let ok = response.status() == 200;
                let _ = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(std::io::Error::other)?;
                times.push(started.elapsed());
                errors += usize::from(!ok);
            }
            Ok::<_, std::io::Error>((times, errors))
        });
    }
    let started = Instant::now();
    let mut times = Vec::new();
    let mut errors = 0;
    while let Some(done) = connections.join_next().await {
        let (mut t, e) = done.expect("load task")?;
        times.append(&mut t);
        errors += e;
    }
    Ok(Load::from_times(times, errors, started, seconds))
}

/// Enrols the benchmark's user in the database at `url`.
async fn enrol(url: &str) -> Result<crate::store::DatabaseKind, BenchError> {
    let store = Store::connect(url).await?;
    store.set_user_role(USER, 1).await?;
    let kind = store.kind();
    store.close().await;
    Ok(kind)
}

async fn api_on(url: &str, options: &ApiBenchOptions) -> Result<(), BenchError> {
    // The caller: an enrolled user with a Navigator JWT.
    let kind = enrol(url).await?;
    let now = crate::store::now_ms() / 1000;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"discord_id": USER, "role": 1, "iat": now, "exp": now + 86_400}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .map_err(|err| BenchError::Other(err.to_string()))?;
    let authorization = format!("Bearer {token}");

    let server = start_server(url, "", "").await?;
    println!(
        "easel bench api: {:?} database, simulated backend, {:.0} s per measurement, load from this process",
        kind, options.seconds
    );
    let port = server.port;
    let host = format!("127.0.0.1:{port}");
    let root = {
        let host = host.clone();
        move || {
            Request::get("/")
                .header("host", &host)
                .body(Full::new(Bytes::new()))
                .expect("a request")
        }
    };
    let submit = move || {
        Request::post("/api/queue/user/txt2img")
            .header("host", &host)
            .header("authorization", &authorization)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(COMPASS_BODY.as_bytes())))
            .expect("a request")
    };
    // Warm up (connections, caches, the first compiled plugin calls).
    load(port, 4, 1.0, submit.clone()).await?;
    println!(
        "{:>4}  {:>22}  {:>32}  {:>7}",
        "c", "baseline GET /", "txt2img submit", "ratio"
    );
    for &c in &options.concurrency {
        let baseline = load(port, c, options.seconds, root.clone()).await?;
        let submits = load(port, c, options.seconds, submit.clone()).await?;
        println!(
            "{c:>4}  {:>8.0}/s p99 {:>7.2?}  {:>8.0}/s p50 {:>7.2?} p99 {:>7.2?}  {:>6.3}x{}",
            baseline.rate,
            baseline.p99,
            submits.rate,
            submits.p50,
            submits.p99,
            submits.rate / baseline.rate,
            if submits.errors + baseline.errors > 0 {
                format!("  ({} non-200 answers)", submits.errors + baseline.errors)
            } else {
                String::new()
            }
        );
    }
    let log = std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default();
    let complaints = log.lines().filter(|l| l.contains("ERROR")).count();
    if complaints > 0 {
        println!("the server logged {complaints} errors; see a run with --logging-level INFO");
    }
    drop(server);

    events_on(url, &format!("Bearer {token}")).await
}

/// A database for one socket.io section, so no section waits behind the jobs an earlier one
/// left queued: a fresh SQLite file next to the given one (other engines: the same database).
fn section_database(url: &str, n: usize) -> String {
    match url.strip_prefix("sqlite://") {
        Some(path) => {
            let path = path.split('?').next().unwrap_or(path);
            format!("sqlite://{path}.events-{n}")
        }
        None => url.to_owned(),
    }
}

/// The socket.io measurements (see [`super::realtime`]).
async fn events_on(base_url: &str, authorization: &str) -> Result<(), BenchError> {
    let mut sections = 0;
    let mut next_url = || {
        sections += 1;
        section_database(base_url, sections)
    };
    use super::realtime::{fake_forge, listen, one_by_one, round};
    let small = serde_json::json!({"model_name": "m", "prompt": "a fox", "steps": 1,
                                   "width": 64, "height": 64});
    println!(
        "\nsocket.io: submit -> task-finished at a websocket client; baseline: the HTTP answer of the same submits"
    );
    let url = next_url();
    enrol(&url).await?;
    let instant = start_server(&url, "", "[simulated]\nworkers = 1\nstep_ms = 0\n").await?;
    let mut events = listen(instant.rt_port).await?;
    round(instant.port, authorization, &small, 50, 1, &mut events).await?;
    let idle = one_by_one(instant.port, authorization, &small, 300, &mut events).await?;
    println!("{}", idle.line("idle, one job at a time"));
    let busy = round(instant.port, authorization, &small, 2000, 16, &mut events).await?;
    println!("{}", busy.line("under load, 16 connections"));
    drop(instant);

    println!("\nend to end: 1000 jobs over 16 connections, every task-finished awaited");
    let url = next_url();
    enrol(&url).await?;
    let sim = start_server(&url, "", "[simulated]\nworkers = 4\nstep_ms = 0\n").await?;
    let mut events = listen(sim.rt_port).await?;
    round(sim.port, authorization, &small, 50, 4, &mut events).await?;
    let simulated = round(sim.port, authorization, &small, 1000, 16, &mut events).await?;
    println!("{}", simulated.line("simulated backend, 4 workers"));
    drop(sim);
    for delay_ms in [0u64, 20] {
        let mut one = 0.0;
        for machines in [1usize, 2, 4] {
            let mut extra = String::new();
            for _ in 0..machines {
                let port = fake_forge(Duration::from_millis(delay_ms)).await?;
                extra.push_str(&format!(
                    "[[forge]]\nurl = \"http://127.0.0.1:{port}\"\nprogress_ms = 2500\n"
                ));
            }
            let url = next_url();
            enrol(&url).await?;
            let server = start_server(&url, "", &extra).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut events = listen(server.rt_port).await?;
            round(server.port, authorization, &small, 50, 4, &mut events).await?;
            let jobs = if delay_ms == 0 { 1000 } else { 200 * machines };
            let forge = round(server.port, authorization, &small, jobs, 16, &mut events).await?;
            if machines == 1 {
                one = forge.rate();
            }
            println!(
                "{}  [{:.2}x one machine]",
                forge.line(&format!("{machines} fake Forge, {delay_ms} ms/picture")),
                forge.rate() / one.max(1e-9)
            );
        }
    }
    Ok(())
}
