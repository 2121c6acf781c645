//! The real socket.io-client 4.8 from npm as a child process, for tests of easel's socket.io
//! v4 API.
//!
//! [`node_modules`] installs `socket.io-client@4.8` once under `CARGO_TARGET_TMPDIR` (locked
//! across test processes). [`SocketClient::connect`] runs `node tests/peers/socketio_client.mjs`,
//! which prints one JSON line per happening: `{"event":"connect","transport":T}`,
//! `{"event":"upgrade","transport":T}`, `{"event":"disconnect","reason":R}`,
//! `{"event":"connect_error","message":M}`, and `{"event":NAME,"data":FIRST_ARG,"transport":T}`
//! for every event the server emits.
//!
//! Every line is logged in [`SocketClient::seen`]. Lines a `wait_for*` skips (and those
//! [`SocketClient::quiet_for`] only looks at) stay pending: a later `wait_for*` or `next`
//! finds them, so order doesn't matter. With the default transports the `upgrade` line often
//! comes *before* `connect`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::Instant;

/// The peer script run by `node`.
const PEER_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/peers/socketio_client.mjs"
);

/// `node_modules` with `socket.io-client@4.8` from npm (see [`super::npm`]).
pub fn node_modules() -> PathBuf {
    super::npm::node_modules("socket.io-client", "4.8")
}

/// How [`SocketClient::connect`] connects; `Default` is the client's defaults.
#[derive(Debug, Clone, Default)]
pub struct SocketOptions {
    /// `transports` for `io()`, e.g. `vec!["websocket"]`; `None`: polling, then upgrade.
    pub transports: Option<Vec<&'static str>>,
    /// Sent as the handshake `auth: {token}`.
    pub token: Option<String>,
    /// Sent as the `Authorization` header (`extraHeaders`: every polling request and the
    /// websocket handshake).
    pub authorization: Option<String>,
    /// More `extraHeaders`, e.g. `("x-forwarded-for", "203.0.113.7")`. Browser-forbidden
    /// names (`cookie`, `origin`, `host`, ...) are dropped on polling by the client's XHR.
    pub headers: Vec<(String, String)>,
}

/// One socket.io-client connection in a `node` child process; dropping it kills the child.
pub struct SocketClient {
    url: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: UnboundedReceiver<Value>,
    /// Every line received, in order.
    seen: Vec<Value>,
    /// Received lines not yet taken by `next` or a `wait_for*`.
    pending: VecDeque<Value>,
    stderr: Arc<Mutex<String>>,
}

impl SocketClient {
    /// Starts the client against `url` (e.g. `http://127.0.0.1:PORT`); it connects at once,
    /// without reconnection. Panics if `node` can't be started.
    pub fn connect(url: &str, options: SocketOptions) -> SocketClient {
        let modules = node_modules();
        assert!(
            Path::new(PEER_SCRIPT).is_file(),
            "socket.io peer script missing: {PEER_SCRIPT}"
        );
        let mut args = json!({ "url": url });
        if let Some(transports) = &options.transports {
            args["transports"] = json!(transports);
        }
        if let Some(token) = &options.token {
            args["token"] = json!(token);
        }
        if let Some(authorization) = &options.authorization {
            args["authorization"] = json!(authorization);
        }
        if !options.headers.is_empty() {
            let headers: serde_json::Map<String, Value> = options
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            args["headers"] = Value::Object(headers);
        }
        let mut child = Command::new("node")
            .arg(PEER_SCRIPT)
            .arg(args.to_string())
            .env("SIOCLIENT_DIR", &modules)
            .env("NODE_PATH", &modules)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting `node {PEER_SCRIPT}` (is node on PATH?): {e}"));

        let (tx, lines) = unbounded_channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({ "event": "non_json", "line": line }));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
                sink.push_str(&line);
                sink.push('\n');
            }
        });

        SocketClient {
            url: url.to_owned(),
            stdin: child.stdin.take(),
            child: Some(child),
            lines,
            seen: Vec::new(),
            pending: VecDeque::new(),
            stderr,
        }
    }

    /// The next line not yet taken (a pending one first), or `None` after `timeout` or once
    /// the client has exited.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(line) = self.pending.pop_front() {
            return Some(line);
        }
        self.receive(Instant::now() + timeout).await
    }

    /// The first line (pending or new) whose `event` is `event`; the others stay pending.
    /// Panics with everything seen if none comes within `timeout` or the client exits.
    pub async fn wait_for(&mut self, event: &str, timeout: Duration) -> Value {
        self.wait_until(timeout, &format!("{event:?}"), |line| {
            line["event"] == event
        })
        .await
    }

    /// Like [`wait_for`](Self::wait_for), for the line whose `data.job_id` is `job_id` (a
    /// string, or a number written as `job_id`).
    pub async fn wait_for_job(&mut self, event: &str, job_id: &str, timeout: Duration) -> Value {
        let what = format!("{event:?} for job {job_id:?}");
        self.wait_until(timeout, &what, |line| {
            line["event"] == event
                && match &line["data"]["job_id"] {
                    Value::String(id) => id == job_id,
                    Value::Number(id) => id.to_string() == job_id,
                    _ => false,
                }
        })
        .await
    }

    /// Every line that arrives within `d` (waits the whole `d` unless the client exits). They
    /// stay pending: a later `next` or `wait_for*` still gets them.
    pub async fn quiet_for(&mut self, d: Duration) -> Vec<Value> {
        let deadline = Instant::now() + d;
        let mut arrived = Vec::new();
        while let Some(line) = self.receive(deadline).await {
            self.pending.push_back(line.clone());
            arrived.push(line);
        }
        tokio::time::sleep_until(deadline).await;
        arrived
    }

    /// Every line received so far, in order (taken or not).
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    /// Closes the socket (`socket.close()`, so the server sees a client disconnect) and waits
    /// up to 5 s for the client to exit, then kills it.
    pub fn close(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"close\n").and_then(|()| stdin.flush());
        }
        if let Some(mut child) = self.child.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(i) = self.pending.iter().position(&matches) {
            return self.pending.remove(i).expect("index from position");
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.receive(deadline).await {
                Some(line) if matches(&line) => return line,
                Some(line) => self.pending.push_back(line),
                None => {
                    let why = if Instant::now() >= deadline {
                        format!("no {what} within {timeout:?}")
                    } else {
                        format!("the client exited before {what}")
                    };
                    panic!("socket.io client of {}: {why}\n{}", self.url, self.report());
                }
            }
        }
    }

    /// The next new line, logged in `seen`; `None` at `deadline` or EOF.
    async fn receive(&mut self, deadline: Instant) -> Option<Value> {
        let line = tokio::time::timeout_at(deadline, self.lines.recv())
            .await
            .ok()??;
        self.seen.push(line.clone());
        Some(line)
    }

    fn report(&self) -> String {
        let mut out = String::from("seen:\n");
        for line in &self.seen {
            let _ = writeln!(out, "  {line}");
        }
        let stderr = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        if !stderr.is_empty() {
            let _ = write!(out, "node stderr:\n{stderr}");
        }
        out
    }
}

impl Drop for SocketClient {
    fn drop(&mut self) {
        self.stdin.take();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
