//! The wire messages of the worker pool: one JSON object per ZeroMQ frame.
//!
//! Stably Discordant's messages are kept exactly (`READY`, `OUTPUT`, `GOODBYE` from workers; a
//! job object `{"prompt","cfg","steps","id_num"}` to them). easel workers add fields to READY
//! (`protocol`, `token`, `capabilities`), send `HEARTBEAT` and `FAILED`, and receive extended
//! jobs and the control messages `PONG`, `REANNOUNCE` and `REFUSED` — never sent to a seed
//! worker, which would crash on them.

use serde::{Deserialize, Serialize};

use crate::jobs::Txt2Img;

/// The protocol easel workers announce in READY.
pub const PROTOCOL: &str = "easel/1";

/// What a worker can do (easel workers only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Backend kind (`sim`, `forge`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// Models it has.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Largest `width * height` it draws.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pixels: Option<u64>,
}

/// A message from a worker.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type")]
pub enum Inbound {
    /// Idle and willing to take a job.
    #[serde(rename = "READY")]
    Ready {
        /// `socket.gethostname()`.
        #[serde(default)]
        hostname: Option<String>,
        /// `easel/1` for easel workers; absent for seed workers.
        #[serde(default)]
        protocol: Option<String>,
        /// The pool token, if the worker has one.
        #[serde(default)]
        token: Option<String>,
        /// What it can do.
        #[serde(default)]
        capabilities: Option<Capabilities>,
    },
    /// A finished job.
    #[serde(rename = "OUTPUT")]
    Output {
        /// Standard base64 (with padding) of the PNG file.
        image_data: String,
        /// Echo of the job's id.
        id_num: String,
        /// The worker's host name.
        #[serde(default)]
        hostname: Option<String>,
    },
    /// The worker could not make the image (easel workers).
    #[serde(rename = "FAILED")]
    Failed {
        /// Echo of the job's id.
        id_num: String,
        /// Why.
        #[serde(default)]
        error: String,
    },
    /// Still alive (easel workers, every second).
    #[serde(rename = "HEARTBEAT")]
    Heartbeat,
    /// Leaving.
    #[serde(rename = "GOODBYE")]
    Goodbye,
}

/// Why an inbound frame was dropped.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// A `type` easel does not know, or fields of the wrong shape.
    #[error("unknown or malformed message: {0}")]
    Shape(String),
}

impl Inbound {
    /// Parses one frame.
    pub fn parse(frame: &[u8]) -> Result<Self, ParseError> {
        let value: serde_json::Value =
            serde_json::from_slice(frame).map_err(|err| ParseError::Json(err.to_string()))?;
        serde_json::from_value(value).map_err(|err| ParseError::Shape(err.to_string()))
    }
}

/// The job object a seed worker gets: exactly these four keys (it crashes on any other).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct SeedJob {
    /// The prompt.
    pub prompt: String,
    /// Guidance scale.
    pub cfg: f64,
    /// Steps.
    pub steps: u32,
    /// 32 lowercase hex digits, echoed in OUTPUT.
    pub id_num: String,
}

/// The job object an easel worker gets.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ExtendedJob {
    /// The prompt.
    pub prompt: String,
    /// Guidance scale.
    pub cfg: f64,
    /// Steps.
    pub steps: u32,
    /// 32 lowercase hex digits, echoed in OUTPUT.
    pub id_num: String,
    /// What to avoid.
    #[serde(default)]
    pub negative_prompt: String,
    /// `-1`: random.
    pub seed: i64,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// Checkpoint.
    #[serde(default)]
    pub model: String,
    /// Sampler.
    #[serde(default)]
    pub sampler: String,
}

impl ExtendedJob {
    /// The job for `request`.
    pub fn new(request: &Txt2Img, id_num: &str) -> Self {
        Self {
            prompt: request.prompt.clone(),
            cfg: request.cfg_scale,
            steps: request.steps,
            id_num: id_num.to_owned(),
            negative_prompt: request.negative_prompt.clone().unwrap_or_default(),
            seed: request.seed,
            width: request.width,
            height: request.height,
            model: request.model_name.clone(),
            sampler: request.sampler_name.clone(),
        }
    }

    /// The request a worker runs.
    pub fn request(&self) -> Txt2Img {
        Txt2Img {
            model_name: self.model.clone(),
            prompt: self.prompt.clone(),
            negative_prompt: (!self.negative_prompt.is_empty())
                .then(|| self.negative_prompt.clone()),
            width: self.width,
            height: self.height,
            steps: self.steps,
            seed: self.seed,
            cfg_scale: self.cfg,
            sampler_name: self.sampler.clone(),
            ..Txt2Img::default()
        }
    }
}

/// A control message to an easel worker.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum Control {
    /// Heartbeat answer: the host knows this worker.
    #[serde(rename = "PONG")]
    Pong,
    /// The host does not know this worker (it restarted): send READY again.
    #[serde(rename = "REANNOUNCE")]
    Reannounce,
    /// READY was refused.
    #[serde(rename = "REFUSED")]
    Refused {
        /// Why.
        reason: String,
    },
}

/// A fresh job id: 32 lowercase hex digits.
pub fn new_id_num() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_messages_parse_in_python_formatting() {
        assert_eq!(
            Inbound::parse(br#"{"type": "READY", "hostname": "gpu-box"}"#).unwrap(),
            Inbound::Ready {
                hostname: Some("gpu-box".into()),
                protocol: None,
                token: None,
                capabilities: None
            }
        );
        assert!(matches!(
            Inbound::parse(
                br#"{"type": "OUTPUT", "image_data": "iVBO", "id_num": "ab", "hostname": "h"}"#
            ),
            Ok(Inbound::Output { .. })
        ));
        assert_eq!(
            Inbound::parse(br#"{"type": "GOODBYE"}"#).unwrap(),
            Inbound::Goodbye
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(matches!(Inbound::parse(b"{nope"), Err(ParseError::Json(_))));
        assert!(matches!(
            Inbound::parse(br#"{"type": "DANCE"}"#),
            Err(ParseError::Shape(_))
        ));
        assert!(matches!(
            Inbound::parse(br#"{"type": "OUTPUT", "id_num": 5}"#),
            Err(ParseError::Shape(_))
        ));
    }

    #[test]
    fn seed_job_has_exactly_four_keys() {
        let job = serde_json::to_value(SeedJob {
            prompt: "a red fox".into(),
            cfg: 7.5,
            steps: 50,
            id_num: new_id_num(),
        })
        .unwrap();
        let keys: Vec<_> = job.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["prompt", "cfg", "steps", "id_num"]);
        let id = job["id_num"].as_str().unwrap();
        assert!(
            id.len() == 32
                && id
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }
}
