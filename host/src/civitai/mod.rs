//! CivitAI: the HTTP client ([`CivitAi`]), the LoRA metadata service ([`Loras`]) and model
//! downloads into the Forge's model folder ([`Downloads`]), bundled as [`Services`] for the API.
//!
//! Owns the `model_metadata` and `file_sha256_cache` tables (through the store) and the files it
//! downloads under `[civitai] model_dir`. Consumes no job events. Emits socket.io events to every
//! socket, from [`Downloads`] only: `model-download-progress`, then `model-download-finished`
//! or `model-download-failed`, and after a finished download `models-refreshed` (once every
//! Forge machine was asked to refresh its lists).
//!
//! The API key goes into an `Authorization: Bearer` header, and into the `token` query
//! parameter of a download URL, as CivitAI wants; it is never logged nor part of an error
//! message (URLs in errors and logs are shown without their query).

pub mod downloads;
pub mod loras;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

pub use downloads::{Downloads, Refusal, Started};
pub use loras::{LocalOverride, Loras};

use crate::api::Realtime;
use crate::forge::Offer;
use crate::store::Store;

/// How long one API call to CivitAI may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the answer of [`CivitAi::authenticated`] is reused (Compass asks on every page).
const AUTH_TTL: Duration = Duration::from_secs(60);

/// A CivitAI call (or download) that did not give a usable answer; branch on the variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CivitAiError {
    /// `[civitai] api` is empty.
    #[error("no CivitAI API configured ([civitai] api is empty)")]
    NotConfigured,
    /// No HTTP answer: connection refused or broken, DNS, TLS, timeout.
    #[error("no answer from CivitAI for {what}")]
    Unreachable {
        /// What was asked (a URL without its query).
        what: String,
        /// Why (reqwest's error, its URL removed).
        #[source]
        source: reqwest::Error,
    },
    /// An error status.
    #[error("CivitAI answered {status} for {what}")]
    Status {
        /// What was asked.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The answer's body.
        body: Bytes,
    },
    /// An answer that is not what CivitAI sends.
    #[error("unexpected answer from CivitAI for {what}: {reason}")]
    BadAnswer {
        /// What was asked.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// A download broke off after it had begun.
    #[error("the download from {what} broke off")]
    Interrupted {
        /// What was downloaded (a URL without its query).
        what: String,
        /// Why (reqwest's error, its URL removed).
        #[source]
        source: reqwest::Error,
    },
    /// A download sent nothing for too long.
    #[error("the download stalled: no data for {seconds} s")]
    Stalled {
        /// The limit.
        seconds: u64,
    },
    /// A download ended before its announced length.
    #[error("the download ended after {received} of {total} bytes")]
    Incomplete {
        /// Bytes received.
        received: u64,
        /// Bytes announced (`Content-Length`).
        total: u64,
    },
    /// A file could not be written, read or renamed.
    #[error("cannot write {path}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl CivitAiError {
    /// Whether CivitAI answered 404 (no such model version, no model with that hash).
    pub fn is_not_found(&self) -> bool {
        matches!(self, CivitAiError::Status { status: 404, .. })
    }

    /// The HTTP status CivitAI answered with, if it answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            CivitAiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A URL as logs and errors show it: without its query (which may hold the key).
pub(crate) fn shown(url: &url::Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    let _ = url.set_password(None);
    url.to_string()
}

/// An answer relayed by [`CivitAi::proxy`]: CivitAI's status and a JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Relayed {
    /// CivitAI's status (an error status too).
    pub status: u16,
    /// CivitAI's JSON body (a body that is not JSON becomes a JSON string, as Navigator
    /// relays it).
    pub body: Bytes,
}

/// The CivitAI REST API (`[civitai] api`, default `https://civitai.com/api/v1`); cheap to share.
pub struct CivitAi {
    http: reqwest::Client,
    /// The API base; `None` when `[civitai] api` is empty.
    api: Option<url::Url>,
    key: String,
    /// The last answer of [`CivitAi::authenticated`] and when it was given.
    auth: Mutex<Option<(Instant, bool)>>,
}

impl std::fmt::Debug for CivitAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CivitAi")
            .field("api", &self.api.as_ref().map(url::Url::as_str))
            .field(
                "key",
                &if self.key.is_empty() {
                    "<empty>"
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

impl CivitAi {
    /// A client for `api` (an empty or unparsable one: every call fails with
    /// [`CivitAiError::NotConfigured`]) with the Bearer `key` (may be empty).
    pub fn new(http: reqwest::Client, api: &str, key: &str) -> Self {
        let api = url::Url::parse(api.trim_end_matches('/'))
            .ok()
            .filter(|u| !u.cannot_be_a_base());
        Self {
            http,
            api,
            key: key.to_owned(),
            auth: Mutex::new(None),
        }
    }

    /// Whether an API key is set.
    pub fn has_key(&self) -> bool {
        !self.key.is_empty()
    }

    /// `{api}/<segments…>` with each segment percent-encoded (a `/` in one stays inside it).
    fn endpoint<'a>(
        &self,
        segments: impl IntoIterator<Item = &'a str>,
    ) -> Result<url::Url, CivitAiError> {
        let mut url = self.api.clone().ok_or(CivitAiError::NotConfigured)?;
        url.path_segments_mut()
            .map_err(|()| CivitAiError::NotConfigured)?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn get(&self, url: url::Url) -> reqwest::RequestBuilder {
        let request = self.http.get(url).timeout(CALL_TIMEOUT);
        if self.key.is_empty() {
            request
        } else {
            request.bearer_auth(&self.key)
        }
    }

    /// Sends `request` for `url`; the status and body, or why there is no answer.
    async fn send(
        &self,
        url: &url::Url,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Bytes), CivitAiError> {
        let what = shown(url);
        let unreachable = |err: reqwest::Error| CivitAiError::Unreachable {
            what: what.clone(),
            source: err.without_url(),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(unreachable)?;
        Ok((status, body))
    }

    /// GETs `url` and parses the JSON answer of a 2xx.
    async fn get_json(&self, url: url::Url) -> Result<Value, CivitAiError> {
        let (status, body) = self.send(&url, self.get(url.clone())).await?;
        if !(200..300).contains(&status) {
            return Err(CivitAiError::Status {
                what: shown(&url),
                status,
                body,
            });
        }
        serde_json::from_slice(&body).map_err(|err| CivitAiError::BadAnswer {
            what: shown(&url),
            reason: err.to_string(),
        })
    }

    /// Navigator's check: `GET {api}/models?hidden=1&limit=1` with the key answers 200. False
    /// without a key (without asking) and when CivitAI cannot be reached. The answer is reused
    /// for a minute.
    pub async fn authenticated(&self) -> bool {
        if !self.has_key() || self.api.is_none() {
            return false;
        }
        if let Some((at, answer)) = *self.auth.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < AUTH_TTL
        {
            return answer;
        }
        let answer = match self.endpoint(["models"]) {
            Ok(mut url) => {
                url.query_pairs_mut()
                    .append_pair("hidden", "1")
                    .append_pair("limit", "1");
                match self.send(&url, self.get(url.clone())).await {
                    Ok((200, _)) => true,
                    Ok((status, _)) => {
                        tracing::warn!(status, "CivitAI refused the API key");
                        false
                    }
                    Err(err) => {
                        tracing::warn!(error = %crate::error_chain(&err), "cannot check the CivitAI API key");
                        false
                    }
                }
            }
            Err(_) => false,
        };
        *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), answer));
        answer
    }

    /// `GET {api}/model-versions/<id>`, with only the first of its `images`.
    pub async fn model_version(&self, id: u64) -> Result<Value, CivitAiError> {
        let url = self.endpoint(["model-versions", &id.to_string()])?;
        let version = self.get_json(url.clone()).await?;
        checked_version(version, &url)
    }

    /// `GET {api}/model-versions/by-hash/<hash>` (AutoV3, SHA256, …), with only the first of
    /// its `images`.
    pub async fn by_hash(&self, hash: &str) -> Result<Value, CivitAiError> {
        let url = self.endpoint(["model-versions", "by-hash", hash])?;
        let version = self.get_json(url.clone()).await?;
        checked_version(version, &url)
    }

    /// `/3papi/civitai/api-proxy/<path>?<query>`: `GET {api}/<path>?<query>` with
    /// `User-Agent: Navigator` and the key; CivitAI's status and body, error statuses included.
    /// Errors: [`CivitAiError::Unreachable`] when no answer came, another kind otherwise.
    pub async fn proxy(&self, path: &str, query: Option<&str>) -> Result<Relayed, CivitAiError> {
        let segments: Vec<&str> = path.split('/').collect();
        if segments.iter().any(|s| *s == "." || *s == "..") {
            return Err(CivitAiError::BadAnswer {
                what: path.to_owned(),
                reason: "a path with `.` or `..` segments is not proxied".to_owned(),
            });
        }
        let mut url = self.endpoint(segments)?;
        url.set_query(query.filter(|q| !q.is_empty()));
        let request = self
            .get(url.clone())
            .header(reqwest::header::USER_AGENT, "Navigator");
        let (status, body) = self.send(&url, request).await?;
        let body = if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok() {
            body
        } else {
            Bytes::from(serde_json::to_vec(&String::from_utf8_lossy(&body)).unwrap_or_default())
        };
        Ok(Relayed { status, body })
    }

    /// A download request for `url` (the key goes in as `token`, as CivitAI wants).
    pub(crate) fn download_request(&self, url: &url::Url) -> reqwest::RequestBuilder {
        let mut url = url.clone();
        if self.has_key() {
            url.query_pairs_mut().append_pair("token", &self.key);
        }
        self.http.get(url)
    }
}

/// A model version as Navigator keeps it: an object with an `id`, the first image only.
fn checked_version(mut version: Value, url: &url::Url) -> Result<Value, CivitAiError> {
    if version.get("id").and_then(Value::as_u64).is_none() {
        return Err(CivitAiError::BadAnswer {
            what: shown(url),
            reason: "a model version without an `id`".to_owned(),
        });
    }
    if let Some(images) = version.get_mut("images").and_then(Value::as_array_mut) {
        images.truncate(1);
    }
    Ok(version)
}

/// The CivitAI services the API routes use; cheap to clone.
#[derive(Clone, Debug)]
pub struct Services {
    /// The client.
    pub client: Arc<CivitAi>,
    /// LoRA lists with metadata, local overrides.
    pub loras: Loras,
    /// Model downloads.
    pub downloads: Downloads,
}

impl Services {
    /// Starts the services of `[civitai]`: metadata in `store`, lists and refreshes through
    /// `offer`, download events to every socket of `realtime`.
    pub fn start(
        config: &crate::config::CivitAi,
        store: Arc<Store>,
        offer: Offer,
        realtime: Realtime,
    ) -> Self {
        let client = Arc::new(CivitAi::new(
            crate::forge::http_client(),
            &config.api,
            &config.api_key,
        ));
        let model_dir = (!config.model_dir.is_empty()).then(|| config.model_dir.clone().into());
        let loras = Loras::new(
            store,
            client.clone(),
            offer.clone(),
            model_dir.clone(),
            config.lora_requests,
        );
        let downloads = Downloads::start(client.clone(), offer, realtime, model_dir);
        Self {
            client,
            loras,
            downloads,
        }
    }

    /// Stops the downloads still running (their partial files are removed).
    pub async fn shutdown(&self) {
        self.downloads.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_encode_segments() {
        let client = CivitAi::new(
            crate::forge::http_client(),
            "https://civitai.com/api/v1/",
            "k",
        );
        let url = client
            .endpoint(["model-versions", "by-hash", "a/b c?"])
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://civitai.com/api/v1/model-versions/by-hash/a%2Fb%20c%3F"
        );
        let none = CivitAi::new(crate::forge::http_client(), "", "k");
        assert!(matches!(
            none.endpoint(["models"]),
            Err(CivitAiError::NotConfigured)
        ));
    }

    #[test]
    fn errors_hide_queries_and_say_their_kind() {
        let url = url::Url::parse("https://x.test/d/1?token=secret&type=Model").unwrap();
        assert_eq!(shown(&url), "https://x.test/d/1");
        let err = CivitAiError::Status {
            what: shown(&url),
            status: 404,
            body: Bytes::new(),
        };
        assert!(err.is_not_found());
        assert_eq!(err.status(), Some(404));
        assert_eq!(
            err.to_string(),
            "CivitAI answered 404 for https://x.test/d/1"
        );
        let io = CivitAiError::Io {
            path: "/m/x".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(crate::error_chain(&io), "cannot write /m/x: disk full");
        assert!(!io.is_not_found());
        let client = CivitAi::new(crate::forge::http_client(), "https://x.test", "secret");
        assert!(!format!("{client:?}").contains("secret"));
    }

    #[test]
    fn versions_keep_their_first_image() {
        let url = url::Url::parse("https://x.test/v").unwrap();
        let v = serde_json::json!({"id": 7, "images": [1, 2, 3]});
        assert_eq!(
            checked_version(v, &url).unwrap(),
            serde_json::json!({"id": 7, "images": [1]})
        );
        assert!(checked_version(serde_json::json!({"name": "x"}), &url).is_err());
    }
}
