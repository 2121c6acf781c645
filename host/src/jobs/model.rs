//! The job model: ids, where a request came from, and the request itself.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A job's public id: 8 lowercase hex digits when easel draws it (as Navigator makes them).
/// Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Arc<str>);

impl JobId {
    /// A fresh random id (8 lowercase hex digits).
    pub fn random() -> Self {
        Self(Arc::from(format!("{:08x}", rand::random::<u32>())))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

impl std::fmt::Debug for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::borrow::Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for JobId {
    fn from(id: &str) -> Self {
        Self(Arc::from(id))
    }
}

impl From<String> for JobId {
    fn from(id: String) -> Self {
        Self(Arc::from(id))
    }
}

impl PartialEq<str> for JobId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for JobId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// Where a request came from: who to answer, and what Navigator clients see as `origin`.
///
/// Stored with the job as text: Discord `discord:<channel>:<message>` (a slash command:
/// `discord:<channel>:0:<user>`), HTTP the client's address as Navigator records it, gRPC
/// `grpc:<peer>`, anything easel queues itself `easel:<what>`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A Discord message or slash command.
    Discord {
        /// The channel.
        channel: u64,
        /// The user's message (`None` for a slash command, answered through its interaction).
        message: Option<u64>,
        /// Who used the slash command.
        user: Option<u64>,
    },
    /// An HTTP API client.
    Http {
        /// Its address (left-most `X-Forwarded-For`, else the peer).
        client: String,
    },
    /// A gRPC client.
    Grpc {
        /// Its address.
        peer: String,
    },
    /// easel itself (benchmarks, tools).
    Internal {
        /// What queued it.
        what: String,
    },
}

impl Origin {
    /// The stored text.
    pub fn to_stored(&self) -> String {
        match self {
            Origin::Discord {
                channel,
                message: Some(message),
                ..
            } => format!("discord:{channel}:{message}"),
            Origin::Discord { channel, user, .. } => {
                format!("discord:{channel}:0:{}", user.unwrap_or_default())
            }
            Origin::Http { client } => client.clone(),
            Origin::Grpc { peer } => format!("grpc:{peer}"),
            Origin::Internal { what } => format!("easel:{what}"),
        }
    }

    /// Reads the stored text back (anything unrecognised is an HTTP client's address, as
    /// Navigator stores it).
    pub fn parse(stored: Option<&str>) -> Origin {
        let Some(stored) = stored else {
            return Origin::Internal {
                what: String::new(),
            };
        };
        if let Some(rest) = stored.strip_prefix("discord:") {
            let mut parts = rest.split(':').map(str::parse::<u64>);
            if let (Some(Ok(channel)), Some(Ok(message))) = (parts.next(), parts.next()) {
                let user = parts.next().and_then(Result::ok);
                return Origin::Discord {
                    channel,
                    message: (message != 0).then_some(message),
                    user,
                };
            }
        }
        if let Some(peer) = stored.strip_prefix("grpc:") {
            return Origin::Grpc {
                peer: peer.to_owned(),
            };
        }
        if let Some(what) = stored.strip_prefix("easel:") {
            return Origin::Internal {
                what: what.to_owned(),
            };
        }
        Origin::Http {
            client: stored.to_owned(),
        }
    }

    /// The front end it came through, as a label: `discord`, `http`, `grpc` or `internal`.
    pub fn front_end(&self) -> &'static str {
        match self {
            Origin::Discord { .. } => "discord",
            Origin::Http { .. } => "http",
            Origin::Grpc { .. } => "grpc",
            Origin::Internal { .. } => "internal",
        }
    }

    /// The prefix of the stored text of every Discord origin.
    pub const DISCORD_PREFIX: &'static str = "discord:";
}

/// A text-to-image request. Front ends normalise what they received into one (HTTP:
/// Navigator's `||` rules; Discord: the parser's defaults); `0` and `""` in the size, sampler,
/// scheduler and distilled CFG mean "not given" until [`Txt2Img::with_defaults`] fills them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Txt2Img {
    /// Checkpoint name ("" for the backend's default).
    pub model_name: String,
    /// What to draw.
    pub prompt: String,
    /// What to avoid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// Sampling steps.
    pub steps: u32,
    /// High-res fix steps (Navigator: `hrf_steps || steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hrf_steps: Option<u32>,
    /// `-1`: random.
    pub seed: i64,
    /// Classifier-free guidance.
    pub cfg_scale: f64,
    /// Flux distilled CFG.
    pub distilled_cfg: f64,
    /// Sampler.
    pub sampler_name: String,
    /// Scheduler.
    pub scheduler_name: String,
    /// 0 means unset.
    pub denoising_strength: f64,
    /// Force the high-res fix.
    pub force_hr_fix: bool,
    /// Variation seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subseed: Option<i64>,
    /// Variation strength.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subseed_strength: Option<f64>,
    /// Upscaler for the high-res fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upscaler_name: Option<String>,
    /// FreeU + SAG.
    pub image_enhancements: bool,
    /// Extra Forge modules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<Vec<String>>,
    /// Image category of the owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_id: Option<i64>,
    /// What kind of picture: from text (the default) or from a starting picture.
    #[serde(default, skip_serializing_if = "Task::is_txt2img")]
    pub task: Task,
    /// img2img: the starting picture, base64 PNG (no `data:` prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<String>,
    /// img2img: the inpainting mask, base64 PNG (painted pixels opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// Upscale-hrf: the first pass to reuse, base64 PNG (Forge's `firstpass_image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_pass_image: Option<String>,
}

/// What kind of picture a request asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// From the prompt alone.
    #[default]
    Txt2Img,
    /// From a starting picture (and maybe a mask).
    Img2Img,
}

impl Task {
    /// Navigator's `type` / `task_type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Txt2Img => "txt2img",
            Task::Img2Img => "img2img",
        }
    }

    fn is_txt2img(&self) -> bool {
        *self == Task::Txt2Img
    }
}

impl Txt2Img {
    /// Navigator's defaults for what is not given: 512×512, sampler `DPM++ 2M`, scheduler
    /// `automatic`, distilled CFG 3.5. Applied once, by the intake, to what is queued.
    pub fn with_defaults(mut self) -> Self {
        if self.width == 0 {
            self.width = 512;
        }
        if self.height == 0 {
            self.height = 512;
        }
        if self.sampler_name.is_empty() {
            "DPM++ 2M".clone_into(&mut self.sampler_name);
        }
        if self.scheduler_name.is_empty() {
            "automatic".clone_into(&mut self.scheduler_name);
        }
        if self.distilled_cfg == 0.0 {
            self.distilled_cfg = 3.5;
        }
        self
    }

    /// `width * height`.
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// The size of a PNG, from its header; `None` if the bytes are not a PNG.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 24 || &bytes[..8] != SIGNATURE || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let height = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    (width > 0 && height > 0).then_some((width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_round_trip_through_their_stored_text() {
        for origin in [
            Origin::Discord {
                channel: 10,
                message: Some(42),
                user: None,
            },
            Origin::Discord {
                channel: 10,
                message: None,
                user: Some(7),
            },
            Origin::Http {
                client: "203.0.113.9".into(),
            },
            Origin::Grpc {
                peer: "127.0.0.1:5000".into(),
            },
            Origin::Internal {
                what: "bench".into(),
            },
        ] {
            assert_eq!(Origin::parse(Some(&origin.to_stored())), origin);
        }
        assert_eq!(
            Origin::parse(Some("discord:x:y")),
            Origin::Http {
                client: "discord:x:y".into()
            }
        );
    }

    #[test]
    fn defaults_fill_only_what_is_missing() {
        let filled = Txt2Img {
            width: 768,
            sampler_name: "Euler a".into(),
            ..Txt2Img::default()
        }
        .with_defaults();
        assert_eq!((filled.width, filled.height), (768, 512));
        assert_eq!(filled.sampler_name, "Euler a");
        assert_eq!(filled.scheduler_name, "automatic");
        assert_eq!(filled.distilled_cfg, 3.5);
        assert_eq!(JobId::random().as_str().len(), 8);
    }
}
