//! One Forge/AUTOMATIC1111 machine over HTTP: the `/sdapi/v1` calls Navigator makes, plus
//! `/internal/progress`, with optional basic auth, over http or https (rustls).
//!
//! Errors say whose fault they are ([`ForgeError`]): the machine could not be reached or did
//! not answer in time (the job goes to another machine), or it answered with an error status
//! (a 4xx is the request's fault: the job fails with Forge's own message).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config;
use crate::error_chain;

/// A Forge call that did not give a usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForgeError {
    /// Connection refused, reset, DNS, TLS: the machine is not there.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("no answer from {url} within {seconds} s")]
    Timeout {
        /// The URL called.
        url: String,
        /// The limit.
        seconds: u64,
    },
    /// An error status.
    #[error("Request failed with status code {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// Forge's message (FastAPI's `detail`, or its `error`/`errors`), else the body.
        message: String,
    },
    /// An answer that is not what Forge sends.
    #[error("unexpected answer from {url}: {reason}")]
    BadAnswer {
        /// The URL called.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

impl ForgeError {
    /// Whether the machine, not the request, is at fault (the job may run elsewhere).
    pub fn is_machine_fault(&self) -> bool {
        match self {
            ForgeError::Unreachable { .. } | ForgeError::Timeout { .. } => true,
            ForgeError::Status { status, .. } => *status >= 500,
            ForgeError::BadAnswer { .. } => true,
        }
    }
}

/// The shared HTTP client (rustls with the ring provider).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Forge's answer to a generation.
#[derive(Debug, Deserialize)]
pub struct Generated {
    /// Base64 PNGs.
    #[serde(default)]
    pub images: Vec<String>,
    /// A JSON string (`seed`, `infotexts`, …).
    #[serde(default)]
    pub info: Option<String>,
}

impl Generated {
    /// The seed Forge actually used.
    pub fn seed(&self) -> Option<i64> {
        let info: Value = serde_json::from_str(self.info.as_deref()?).ok()?;
        info.get("seed")?.as_i64()
    }
}

/// Where a job stands, from `/internal/progress` and `/progress`.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// 0..1.
    pub progress: f64,
    /// Seconds left, as Forge guesses.
    pub eta_relative: f64,
    /// Steps done.
    pub step: u32,
    /// Steps in all.
    pub total: u32,
    /// The live preview (base64 PNG), if Forge has one.
    pub preview: Option<String>,
}

/// One Forge machine's endpoints and credentials.
#[derive(Clone, Debug)]
pub struct ForgeClient {
    http: reqwest::Client,
    /// `/sdapi/v1` base (Navigator's `SD_API_HOST`).
    api: String,
    /// Base of `/internal/progress` (Navigator's `SD_API_BASE`).
    base: String,
    auth: Option<(String, String)>,
    timeout: Duration,
}

impl ForgeClient {
    /// A client for `machine`.
    pub fn new(http: reqwest::Client, machine: &config::Forge) -> Self {
        let base = machine.url.trim_end_matches('/').to_owned();
        let api = if machine.api.is_empty() {
            format!("{base}/sdapi/v1")
        } else {
            machine.api.trim_end_matches('/').to_owned()
        };
        let auth = (!machine.username.is_empty())
            .then(|| (machine.username.clone(), machine.password.clone()));
        Self {
            http,
            api,
            base,
            auth,
            timeout: Duration::from_secs(machine.timeout_s.max(1)),
        }
    }

    /// The `/sdapi/v1` base URL.
    pub fn api_url(&self) -> &str {
        &self.api
    }

    async fn call(
        &self,
        url: String,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, ForgeError> {
        let mut request = match body {
            Some(body) => self.http.post(&url).json(body),
            None => self.http.get(&url),
        };
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        let transport = |err: reqwest::Error| {
            if err.is_timeout() {
                ForgeError::Timeout {
                    url: url.clone(),
                    seconds: timeout.as_secs(),
                }
            } else {
                ForgeError::Unreachable {
                    url: url.clone(),
                    reason: error_chain(&err),
                }
            }
        };
        let response = request.timeout(timeout).send().await.map_err(transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(ForgeError::Status {
                status: status.as_u16(),
                message: forge_message(&bytes),
            });
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|err| ForgeError::BadAnswer {
            url,
            reason: err.to_string(),
        })
    }

    /// `GET {api}/<path>`.
    pub async fn get(&self, path: &str) -> Result<Value, ForgeError> {
        self.call(format!("{}/{path}", self.api), None, self.timeout)
            .await
    }

    /// `POST {api}/<path>` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ForgeError> {
        self.call(format!("{}/{path}", self.api), Some(body), self.timeout)
            .await
    }

    /// `POST {api}/txt2img` or `img2img`: waits as long as the generation takes (`limit`).
    pub async fn generate(
        &self,
        kind: &str,
        body: &Value,
        limit: Duration,
    ) -> Result<Generated, ForgeError> {
        let url = format!("{}/{kind}", self.api);
        let answer = self.call(url.clone(), Some(body), limit).await?;
        serde_json::from_value(answer).map_err(|err| ForgeError::BadAnswer {
            url,
            reason: err.to_string(),
        })
    }

    /// Navigator's progress poll: `POST {base}/internal/progress` for the task, and only if
    /// it is active `GET {api}/progress`. `None` when the task is not running (yet).
    pub async fn progress(&self, task: &str) -> Result<Option<Progress>, ForgeError> {
        let state = self
            .call(
                format!("{}/internal/progress", self.base),
                Some(&json!({"id_task": task, "live_preview": false, "id_live_preview": -1})),
                self.timeout,
            )
            .await?;
        if state.get("active") != Some(&Value::Bool(true)) {
            return Ok(None);
        }
        let now = self.get("progress").await?;
        let number = |v: Option<&Value>| v.and_then(Value::as_f64).unwrap_or(0.0);
        let state = now.get("state");
        Ok(Some(Progress {
            progress: number(now.get("progress")),
            eta_relative: number(now.get("eta_relative")),
            step: number(state.and_then(|s| s.get("sampling_step"))) as u32,
            total: number(state.and_then(|s| s.get("sampling_steps"))) as u32,
            preview: now
                .get("current_image")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        }))
    }

    /// `POST {api}/png-info`.
    pub async fn png_info(&self, image_b64: &str) -> Result<Value, ForgeError> {
        self.post("png-info", &json!({"image": image_b64})).await
    }

    /// The model loaded now (`sd_model_checkpoint` of `/options`, a title).
    pub async fn loaded_model(&self) -> Result<Option<String>, ForgeError> {
        let options = self.get("options").await?;
        Ok(options
            .get("sd_model_checkpoint")
            .and_then(Value::as_str)
            .map(str::to_owned))
    }
}

/// Forge's error text: FastAPI's `detail` (a string or a list of `{msg}`), A1111's
/// `error`/`errors`, else the body itself (cut short).
fn forge_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return text.chars().take(500).collect();
    };
    let mut parts = Vec::new();
    for key in ["error", "detail", "errors"] {
        match value.get(key) {
            Some(Value::String(s)) if !s.is_empty() => parts.push(s.clone()),
            Some(Value::Array(items)) => {
                for item in items {
                    let msg = item.get("msg").and_then(Value::as_str);
                    let loc = item.get("loc").and_then(Value::as_array).map(|loc| {
                        loc.iter()
                            .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_owned))
                            .collect::<Vec<_>>()
                            .join(".")
                    });
                    match (loc, msg) {
                        (Some(loc), Some(msg)) => parts.push(format!("{loc}: {msg}")),
                        (None, Some(msg)) => parts.push(msg.to_owned()),
                        _ => parts.push(item.to_string()),
                    }
                }
            }
            _ => {}
        }
    }
    if parts.is_empty() {
        text.chars().take(500).collect()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forge_messages() {
        assert_eq!(
            forge_message(
                br#"{"detail":[{"loc":["body","prompt"],"msg":"field required","type":"x"}]}"#
            ),
            "body.prompt: field required"
        );
        assert_eq!(
            forge_message(
                br#"{"error":"RuntimeError","detail":"","errors":"model 'x' not found"}"#
            ),
            "RuntimeError; model 'x' not found"
        );
        assert_eq!(
            forge_message(b"Internal Server Error"),
            "Internal Server Error"
        );
        let e = ForgeError::Status {
            status: 422,
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "Request failed with status code 422: bad");
        assert!(!e.is_machine_fault());
    }
}
