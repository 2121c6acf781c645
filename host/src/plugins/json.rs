//! WIT values as JSON, for `easel plugin call` and the tests that drive plugins through it.
//!
//! The mapping: records are objects with the WIT field names (kebab-case; snake_case accepted
//! on input), variants are `{"case": payload}` (`null` payload for a case without one), enums
//! are their case name as a string, options are `null` or the value, tuples are arrays. On
//! input, a record's missing fields keep the values of the defaults below, and parameters left
//! out at the end of the call get defaults too: the caller is [`example_caller`] (a Discord user
//! in a guild channel that the default access rules allow), the request is [`example_request`],
//! the stage `accepted`, the info "", the catalog empty, the limits easel's default pixel limit.

use serde_json::{Map, Value, json};

use super::{
    Action, Caller, Decision, FrontEnd, JobRequest, Model, Outcome, Plugin, PluginConfig,
    PluginError, PolicyLimits, Stage, Verdict,
};

/// A call that could not be made: bad arguments (exit code 2) or a failing plugin.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The arguments do not fit the function.
    #[error("{0}")]
    Usage(String),
    /// The plugin failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

/// A caller that the default access rules allow: a Discord user in a guild channel.
pub fn example_caller() -> Caller {
    Caller {
        front_end: FrontEnd::Discord,
        user_id: "100000000000000001".into(),
        user_tag: "artist#0".into(),
        role: 1,
        guild: "Guild".into(),
        channel: "art".into(),
        channel_id: "200000000000000002".into(),
        is_dm: false,
        is_self: false,
    }
}

/// The request the default parser makes of `/art a red fox`.
pub fn example_request() -> JobRequest {
    JobRequest::with_prompt("a red fox")
}

/// Calls `function` of `plugin` with JSON arguments; the result as JSON.
pub fn call_json(
    plugin: &Plugin,
    config: &PluginConfig,
    function: &str,
    args: &[Value],
    pixel_limit: u64,
) -> Result<Value, CallError> {
    let usage = |signature: &str, count: usize| {
        if args.len() > count {
            Err(CallError::Usage(format!(
                "{function} takes {signature}: at most {count} arguments, got {}",
                args.len()
            )))
        } else {
            Ok(())
        }
    };
    match function {
        "parse" => {
            usage("CONTENT [CALLER]", 2)?;
            let content = match args.first() {
                Some(Value::String(s)) => s.as_str(),
                Some(other) => {
                    return Err(usage_error(format!(
                        "content: expected a JSON string, found {other}"
                    )));
                }
                None => {
                    return Err(usage_error(
                        "parse takes CONTENT [CALLER]: the JSON of a string, then optionally of a caller",
                    ));
                }
            };
            let caller = caller_arg(args.get(1))?;
            Ok(outcome_json(&plugin.parse(config, content, &caller)?))
        }
        "check" => {
            usage("[CALLER]", 1)?;
            let caller = caller_arg(args.first())?;
            Ok(match plugin.check(config, &caller)? {
                Decision::Allow => json!({"allow": null}),
                Decision::Deny(reason) => json!({"deny": reason}),
            })
        }
        "on-stage" | "on_stage" => {
            usage("[STAGE] [CALLER] [REQUEST] [INFO]", 4)?;
            let stage = match args.first() {
                None => Stage::Accepted,
                Some(v) => stage_from_json(v)?,
            };
            let caller = caller_arg(args.get(1))?;
            let request = match args.get(2) {
                None | Some(Value::Null) => None,
                Some(v) => Some(request_from_json(v)?),
            };
            let info = match args.get(3) {
                None => "",
                Some(Value::String(s)) => s.as_str(),
                Some(other) => {
                    return Err(usage_error(format!(
                        "info: expected a JSON string, found {other}"
                    )));
                }
            };
            let actions = plugin.on_stage(config, stage, &caller, request.as_ref(), info)?;
            Ok(Value::Array(actions.iter().map(action_json).collect()))
        }
        "decide" => {
            usage("[REQUEST] [CALLER] [CATALOG] [LIMITS]", 4)?;
            let request = match args.first() {
                None => example_request(),
                Some(v) => request_from_json(v)?,
            };
            let caller = caller_arg(args.get(1))?;
            let catalog = match args.get(2) {
                None => Vec::new(),
                Some(v) => catalog_from_json(v)?,
            };
            let limits = match args.get(3) {
                None => PolicyLimits {
                    max_pixels: pixel_limit,
                },
                Some(v) => limits_from_json(v)?,
            };
            Ok(
                match plugin.decide(config, &request, &caller, &catalog, limits)? {
                    Verdict::Allow(request) => json!({"allow": request_json(&request)}),
                    Verdict::Deny(reason) => json!({"deny": reason}),
                },
            )
        }
        other => Err(usage_error(format!(
            "unknown function {other:?}; plugins have: parse (parser), check (access), on-stage (reactions), decide (model-policy)"
        ))),
    }
}

fn usage_error(message: impl Into<String>) -> CallError {
    CallError::Usage(message.into())
}

fn caller_arg(value: Option<&Value>) -> Result<Caller, CallError> {
    value
        .map_or_else(|| Ok(example_caller()), caller_from_json)
        .map_err(CallError::Usage)
}

/// The JSON form of a parser outcome.
pub fn outcome_json(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Ignore => json!({"ignore": null}),
        Outcome::Help(text) => json!({"help": text}),
        Outcome::Error(text) => json!({"error": text}),
        Outcome::Request(parsed) => json!({"request": {
            "request": request_json(&parsed.request),
            "warnings": parsed.warnings,
        }}),
    }
}

/// The JSON form of a job request.
pub fn request_json(r: &JobRequest) -> Value {
    json!({
        "prompt": r.prompt,
        "negative-prompt": r.negative_prompt,
        "cfg": r.cfg,
        "steps": r.steps,
        "width": r.width,
        "height": r.height,
        "seed": r.seed,
        "model": r.model,
        "sampler": r.sampler,
        "extra": r.extra,
    })
}

/// The JSON form of a reactions action.
pub fn action_json(action: &Action) -> Value {
    match action {
        Action::AddEmoji(e) => json!({"add-emoji": e}),
        Action::RemoveEmoji(e) => json!({"remove-emoji": e}),
        Action::Reply(text) => json!({"reply": text}),
    }
}

fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("a {what} is a JSON object, found {value}"))
}

fn text(v: &Value, what: &str, key: &str) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{what}.{key}: expected a string, found {v}"))
}

fn flag(v: &Value, what: &str, key: &str) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("{what}.{key}: expected true or false, found {v}"))
}

fn whole<T: TryFrom<i64>>(v: &Value, what: &str, key: &str) -> Result<T, String> {
    v.as_i64()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{what}.{key}: expected a whole number in range, found {v}"))
}

/// A caller from JSON; keys left out keep the values of [`example_caller`].
pub fn caller_from_json(value: &Value) -> Result<Caller, String> {
    let mut caller = example_caller();
    for (key, v) in object(value, "caller")? {
        let (t, f) = (|| text(v, "caller", key), || flag(v, "caller", key));
        match key.replace('_', "-").as_str() {
            "front-end" => {
                caller.front_end = match v.as_str() {
                    Some("discord") => FrontEnd::Discord,
                    Some("http") => FrontEnd::Http,
                    _ => {
                        return Err(format!(
                            "caller.{key}: expected \"discord\" or \"http\", found {v}"
                        ));
                    }
                }
            }
            "user-id" => caller.user_id = t()?,
            "user-tag" => caller.user_tag = t()?,
            "role" => caller.role = whole(v, "caller", key)?,
            "guild" => caller.guild = t()?,
            "channel" => caller.channel = t()?,
            "channel-id" => caller.channel_id = t()?,
            "is-dm" => caller.is_dm = f()?,
            "is-self" => caller.is_self = f()?,
            other => return Err(format!("caller has no field `{other}`")),
        }
    }
    Ok(caller)
}

/// A job request from JSON; keys left out keep the values of [`example_request`].
pub fn request_from_json(value: &Value) -> Result<JobRequest, CallError> {
    let mut r = example_request();
    let fields = object(value, "request").map_err(CallError::Usage)?;
    for (key, v) in fields {
        let t = || text(v, "request", key);
        match key.replace('_', "-").as_str() {
            "prompt" => r.prompt = t()?,
            "negative-prompt" => r.negative_prompt = t()?,
            "cfg" => {
                r.cfg = v
                    .as_f64()
                    .ok_or_else(|| format!("request.cfg: expected a number, found {v}"))?
            }
            "steps" => r.steps = whole(v, "request", key)?,
            "width" => r.width = whole(v, "request", key)?,
            "height" => r.height = whole(v, "request", key)?,
            "seed" => r.seed = whole(v, "request", key)?,
            "model" => r.model = t()?,
            "sampler" => r.sampler = t()?,
            "extra" => {
                r.extra = serde_json::from_value(v.clone()).map_err(|_| {
                    format!("request.extra: expected [[\"key\", \"value\"], …], found {v}")
                })?
            }
            other => return Err(usage_error(format!("request has no field `{other}`"))),
        }
    }
    Ok(r)
}

fn stage_from_json(value: &Value) -> Result<Stage, CallError> {
    let stages = [
        ("accepted", Stage::Accepted),
        ("help", Stage::Help),
        ("rejected", Stage::Rejected),
        ("queued", Stage::Queued),
        ("dispatched", Stage::Dispatched),
        ("progress", Stage::Progress),
        ("finished", Stage::Finished),
        ("failed", Stage::Failed),
    ];
    value
        .as_str()
        .and_then(|s| stages.iter().find(|(n, _)| *n == s))
        .map(|(_, stage)| *stage)
        .ok_or_else(|| {
            let names: Vec<&str> = stages.iter().map(|(n, _)| *n).collect();
            usage_error(format!(
                "stage: expected one of {}, found {value}",
                names.join(", ")
            ))
        })
}

fn catalog_from_json(value: &Value) -> Result<Vec<Model>, CallError> {
    let items = value
        .as_array()
        .ok_or_else(|| usage_error(format!("catalog: expected a JSON array, found {value}")))?;
    items
        .iter()
        .map(|item| {
            let mut model = Model {
                name: String::new(),
                friendly_name: None,
                restricted: false,
            };
            for (key, v) in object(item, "model")? {
                match key.replace('_', "-").as_str() {
                    "name" => model.name = text(v, "model", key)?,
                    "friendly-name" => {
                        model.friendly_name =
                            (!v.is_null()).then(|| text(v, "model", key)).transpose()?
                    }
                    "restricted" => model.restricted = flag(v, "model", key)?,
                    other => return Err(usage_error(format!("model has no field `{other}`"))),
                }
            }
            Ok(model)
        })
        .collect()
}

fn limits_from_json(value: &Value) -> Result<PolicyLimits, CallError> {
    let mut limits = PolicyLimits { max_pixels: 0 };
    for (key, v) in object(value, "limits")? {
        match key.replace('_', "-").as_str() {
            "max-pixels" => {
                limits.max_pixels = v.as_u64().ok_or_else(|| {
                    format!("limits.max-pixels: expected a whole number, found {v}")
                })?
            }
            other => return Err(usage_error(format!("limits has no field `{other}`"))),
        }
    }
    Ok(limits)
}

impl From<String> for CallError {
    fn from(message: String) -> Self {
        CallError::Usage(message)
    }
}
