//! Shared test helpers: a fresh database per test on each engine, and the real `easel` binary
//! as a child process on free ports.
//!
//! Database servers come from env vars with the machine defaults:
//! `EASEL_TEST_MYSQL_URL` (`mysql://root@127.0.0.1:3306/test`) and `EASEL_TEST_POSTGRES_URL`
//! (`postgres://postgres@127.0.0.1:5432/test`). Each test creates its own database there and
//! drops it at the end. A missing server fails the test with its name; someone without those
//! servers opts out with `EASEL_TEST_SKIP_DATABASES=mysql,postgres`, and each skipped test says
//! so loudly on stderr.

#![allow(dead_code)]

pub mod discord;
pub mod forge;
pub mod npm;
pub mod oauth;
pub mod socketio;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One `#[tokio::test]` per engine for each async `fn name(engine: Engine)` listed (the
/// module invoking it must have `Engine` in scope).
#[macro_export]
macro_rules! per_engine {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Engine::Sqlite).await })*
        }
        mod mysql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Engine::MySql).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Engine::Postgres).await })*
        }
    };
}

/// The three engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    MySql,
    Postgres,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::MySql => "mysql",
            Engine::Postgres => "postgres",
        }
    }

    fn admin_url(self) -> String {
        match self {
            Engine::Sqlite => String::new(),
            Engine::MySql => std::env::var("EASEL_TEST_MYSQL_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into()),
            Engine::Postgres => std::env::var("EASEL_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        }
    }

    fn skipped(self) -> bool {
        std::env::var("EASEL_TEST_SKIP_DATABASES")
            .unwrap_or_default()
            .split(',')
            .any(|s| s.trim().eq_ignore_ascii_case(self.name()))
    }
}

/// A database of its own for one test; dropped (server side) on [`TestDb::cleanup`] or drop.
pub struct TestDb {
    pub engine: Engine,
    pub url: String,
    name: String,
    admin_url: String,
    _dir: Option<tempfile::TempDir>,
    cleaned: bool,
}

fn unique_name() -> String {
    format!(
        "easel_t{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let base = base.rsplit_once('/').map_or(base, |(head, _)| head);
    format!("{base}/{db}{query}")
}

impl TestDb {
    /// A fresh database, or `None` (with a loud line) if the engine was opted out.
    pub async fn create(engine: Engine) -> Option<TestDb> {
        if engine.skipped() {
            eprintln!(
                "!!! SKIPPED: {} tests (EASEL_TEST_SKIP_DATABASES is set); this run does NOT cover {}",
                engine.name(),
                engine.name()
            );
            return None;
        }
        let name = unique_name();
        match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}", dir.path().join("easel.db").display());
                Some(TestDb {
                    engine,
                    url,
                    name,
                    admin_url: String::new(),
                    _dir: Some(dir),
                    cleaned: true,
                })
            }
            Engine::MySql | Engine::Postgres => {
                let admin_url = engine.admin_url();
                admin_exec(engine, &admin_url, &format!("CREATE DATABASE {name}")).await;
                Some(TestDb {
                    engine,
                    url: with_database(&admin_url, &name),
                    name,
                    admin_url,
                    _dir: None,
                    cleaned: false,
                })
            }
        }
    }

    /// Drops the database.
    pub async fn cleanup(mut self) {
        self.drop_now().await;
    }

    async fn drop_now(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        let sql = match self.engine {
            Engine::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            _ => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        admin_exec(self.engine, &self.admin_url, &sql).await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // A test that panicked still removes its database, from a thread of its own (we may be
        // inside a runtime here).
        let mut this = TestDb {
            engine: self.engine,
            url: self.url.clone(),
            name: self.name.clone(),
            admin_url: self.admin_url.clone(),
            _dir: None,
            cleaned: false,
        };
        self.cleaned = true;
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(this.drop_now());
        })
        .join();
    }
}

async fn admin_exec(engine: Engine, admin_url: &str, sql: &str) {
    use sqlx::Connection;
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    let result = match engine {
        Engine::MySql => match sqlx::MySqlConnection::connect(admin_url).await {
            Ok(mut conn) => sqlx::query(sql).execute(&mut conn).await.map(drop),
            Err(err) => Err(err),
        },
        Engine::Postgres => match sqlx::PgConnection::connect(admin_url).await {
            Ok(mut conn) => sqlx::query(sql).execute(&mut conn).await.map(drop),
            Err(err) => Err(err),
        },
        Engine::Sqlite => Ok(()),
    };
    if let Err(err) = result {
        panic!(
            "the {} server at {admin_url} is needed by this test and failed: {err}\n\
             (start it, point EASEL_TEST_{}_URL at one, or opt out with \
             EASEL_TEST_SKIP_DATABASES={})",
            engine.name(),
            engine.name().to_uppercase(),
            engine.name()
        );
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The store of a server started on `dir/easel.db` (as the tests start them), to enrol users.
pub async fn sqlite_store(dir: &Path) -> easel::store::Store {
    easel::store::Store::connect(&format!("sqlite://{}", dir.join("easel.db").display()))
        .await
        .unwrap()
}

/// An HS256 JWT for `discord_id`, as Navigator issues them, expiring `exp_offset` seconds from
/// now.
pub fn jwt(secret: &str, discord_id: &str, exp_offset: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"discord_id": discord_id, "role": 1, "iat": now, "exp": now + exp_offset}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// The `easel` binary under test.
pub fn easel_bin() -> &'static str {
    env!("CARGO_BIN_EXE_easel")
}

/// A running `easel serve`, killed on drop. Its stderr is collected line by line.
pub struct Server {
    child: Child,
    pub port: u16,
    /// The socket.io port.
    pub rt_port: u16,
    pub pool_port: u16,
    pub token: String,
    pub dir: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    /// Copies stderr into `lines`; finished once the pipe has closed.
    reader: std::thread::JoinHandle<()>,
}

/// How to start a server.
pub struct ServerOptions<'a> {
    pub db_url: &'a str,
    /// Extra keys of `[database]` (host id, lease).
    pub database_toml: &'a str,
    pub dir: &'a Path,
    pub step_ms: u64,
    pub workers: u32,
    pub secret_key: &'a str,
    /// Extra keys of `[workers]` (the pool always binds a free port on 127.0.0.1).
    pub workers_toml: &'a str,
    /// More sections, appended at the end of the file.
    pub extra_toml: &'a str,
    /// Environment variables for the server process.
    pub env: &'a [(&'a str, &'a str)],
}

impl Default for ServerOptions<'_> {
    fn default() -> Self {
        ServerOptions {
            db_url: "",
            database_toml: "",
            dir: Path::new("."),
            step_ms: 0,
            workers: 1,
            secret_key: "",
            workers_toml: "",
            extra_toml: "",
            env: &[],
        }
    }
}

impl Server {
    /// Starts `easel serve` in `dir` with a config file written there; waits until it answers.
    pub async fn start(options: ServerOptions<'_>) -> Server {
        Self::start_on(&options, None).await
    }

    /// Like [`Server::start`], with the worker pool on `pool_port`.
    pub async fn start_with_pool_port(options: ServerOptions<'_>, pool_port: u16) -> Server {
        Self::start_on(&options, Some(pool_port)).await
    }

    /// Starts the server on free ports; a port another test took between [`free_port`] and
    /// the server's bind is drawn again (a few times).
    async fn start_on(options: &ServerOptions<'_>, pool_port: Option<u16>) -> Server {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(options, pool_port.unwrap_or_else(free_port)).await {
                Ok(server) => return server,
                Err(stderr) if attempt < 5 && stderr.contains("Address already in use") => {
                    eprintln!("a port was taken meanwhile; starting easel again");
                }
                Err(stderr) => panic!("easel did not start; stderr:\n{stderr}"),
            }
        }
    }

    async fn try_start(options: &ServerOptions<'_>, pool_port: u16) -> Result<Server, String> {
        let port = free_port();
        let rt_port = free_port();
        let token = format!("test-superuser-{:08x}", rand::random::<u32>());
        let config = format!(
            "[database]\nurl = {:?}\n{}\n[api]\nhttp_port = {port}\nrt_port = {rt_port}\nsecret_key = {:?}\n\
             [simulated]\nworkers = {}\nstep_ms = {}\n[misc_settings]\nlog_dir = \"logs\"\n\
             [workers]\nbind = \"tcp://127.0.0.1:{pool_port}\"\n{}\n{}\n",
            options.db_url,
            options.database_toml,
            options.secret_key,
            options.workers,
            options.step_ms,
            options.workers_toml,
            options.extra_toml
        );
        std::fs::write(options.dir.join("config.toml"), config).unwrap();
        let mut child = Command::new(easel_bin())
            .arg("serve")
            .arg("--config")
            .arg(options.dir.join("config.toml"))
            .current_dir(options.dir)
            .env("SUPERUSER_ADMIN_TOKEN", &token)
            .envs(options.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start easel");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = Server {
            child,
            port,
            rt_port,
            pool_port,
            token,
            dir: options.dir.to_owned(),
            lines,
            reader,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Waits until this server (not another test's on the same port) listens and answers;
    /// its stderr if it stopped or did not answer in 60 s.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = easel::forge::http_client();
        // "HTTP API listening address=<bind>:<port> host=…"
        let listening = format!(":{} ", self.port);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                // Stopped: everything it wrote is in once the pipe closes.
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while !self.reader.is_finished() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await;
                return Err(self.stderr());
            }
            let mine = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("HTTP API listening") && l.contains(&listening));
            if mine && client.get(self.url("/")).send().await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("no answer in 60 s:\n{}", self.stderr()))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Lines of stderr containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Waits (at most 30 s) until the server has logged `needle` at least `n` times; those lines.
    /// Log lines reach the test through a pipe, after the response that caused them.
    pub async fn wait_log(&self, needle: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines = self.lines_with(needle);
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "fewer than {n} {needle:?} lines:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for the server to stop by itself (a clean shutdown).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let status = self.child.wait().unwrap();
        // The stderr reader has seen everything once the pipe closes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !self.reader.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
        }
        status
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `GET /metrics` from loopback: the Prometheus text.
    pub async fn metrics(&self) -> String {
        easel::forge::http_client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Queues a txt2img job as the superuser; returns the job object.
    pub async fn queue(&self, body: serde_json::Value) -> serde_json::Value {
        let response = easel::forge::http_client()
            .post(self.url("/api/queue/user/txt2img"))
            .header("Authorization", &self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "queue failed");
        response.json().await.unwrap()
    }

    /// Waits until `GET /api/images/{id}` returns a PNG; returns its bytes.
    pub async fn wait_image(&self, id: &str, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let client = easel::forge::http_client();
        loop {
            let response = client
                .get(self.url(&format!("/api/images/{id}")))
                .send()
                .await
                .unwrap();
            if response.status() == 200 {
                assert_eq!(response.headers()["content-type"], "image/png");
                return response.bytes().await.unwrap().to_vec();
            }
            assert!(
                Instant::now() < deadline,
                "job {id} did not finish in {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `dir/plugins` holding a copy of the repository's `access.wasm` (a plugin a test can rewrite
/// to see it reload); returns the plugin file's path.
#[allow(dead_code)]
pub fn access_plugin_in(dir: &Path) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let file = plugins.join("access.wasm");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/access.wasm"),
        &file,
    )
    .unwrap();
    file
}

/// Decodes a PNG; returns (width, height).
pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("PNG image data decodes");
    (info.width, info.height)
}

/// The keys of a JSON object, in order.
pub fn keys(value: &serde_json::Value) -> Vec<&str> {
    value
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect()
}

/// The services of one easel host inside a test: the job service, an intake with the
/// built-in plugins, and the backends' ports.
pub struct Services {
    pub jobs: Arc<easel::jobs::JobService>,
    pub intake: easel::intake::Intake,
    pub backends: easel::jobs::Backends,
}

/// [`Services`] over `store` as host `host`.
pub fn services(store: Arc<easel::store::Store>, host: &str) -> Services {
    services_with_buffer(store, host, 1024)
}

/// [`services`] with a job-event broadcast of `event_buffer` events.
pub fn services_with_buffer(
    store: Arc<easel::store::Store>,
    host: &str,
    event_buffer: usize,
) -> Services {
    let mut settings = easel::jobs::JobSettings::new(host);
    settings.event_buffer = event_buffer;
    let jobs = easel::jobs::JobService::new(store.clone(), settings);
    let runtime = easel::plugins::Runtime::new(easel::plugins::Limits::default()).unwrap();
    let plugins = easel::plugins::Registry::open(
        runtime,
        Path::new("/nonexistent-easel-plugins"),
        easel::plugins::PluginSettings::default(),
    );
    let intake = easel::intake::Intake::new(
        plugins,
        jobs.clone(),
        Arc::new(easel::catalog::Catalog::new(store)),
        easel::intake::Limits {
            max_pixels: 3_686_400,
            max_side: easel::intake::Limits::MAX_SIDE,
            max_steps: easel::intake::Limits::MAX_STEPS,
        },
    );
    let backends = easel::jobs::Backends::new(jobs.clone());
    Services {
        jobs,
        intake,
        backends,
    }
}

impl Services {
    async fn submit_with(
        &self,
        request: easel::jobs::Txt2Img,
        watch: bool,
    ) -> (easel::jobs::JobId, Option<easel::jobs::JobWatch>) {
        let admitted = self
            .intake
            .admit(easel::intake::Caller::http("owner", 1))
            .await
            .expect("the built-in access plugin admits role 1");
        let origin = easel::jobs::Origin::Http {
            client: "203.0.113.9".into(),
        };
        let submitted = if watch {
            self.intake
                .submit_and_watch(&admitted, request, origin)
                .await
        } else {
            self.intake.submit(&admitted, request, origin).await
        }
        .expect("queued");
        (submitted.job, submitted.watch)
    }

    /// Submits `request` as user `owner` over "HTTP" from 203.0.113.9.
    pub async fn submit(&self, request: easel::jobs::Txt2Img) -> easel::jobs::JobId {
        self.submit_with(request, false).await.0
    }

    /// [`Services::submit`], following the job.
    pub async fn submit_and_watch(
        &self,
        request: easel::jobs::Txt2Img,
    ) -> (easel::jobs::JobId, easel::jobs::JobWatch) {
        let (id, watch) = self.submit_with(request, true).await;
        (id, watch.expect("asked for a watch"))
    }
}
