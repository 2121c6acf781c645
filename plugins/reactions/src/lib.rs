//! easel's default reactions plugin: how the bot shows a request's progress (compat.md §1.8).
//!
//! Stably Discordant's emoji and replies, with the README's intent that the seed left commented
//! out (⏱️ while a backend works, 💯 when done) carried out:
//! - accepted: `ack_emoji` (👍);
//! - help: the help text, then `done_emoji` (💯);
//! - rejected: the error text;
//! - queued: one reply per warning of the parser ("Skipping unknown args: …");
//! - dispatched: `in_prog_emoji` (⏱️);
//! - finished: ⏱️ off, 💯 on, and the seed's reply `Parsed args: {…} processed by hostname: …`
//!   with the Python `repr` of the args dict;
//! - failed: ⏱️ off, `fail_emoji` (❌) on, and "Sorry, this request failed: …".
//!
//! An emoji setting set to "" turns that reaction off.

wit_bindgen::generate!({
    path: "../../wit",
    world: "reactions-plugin",
});

use easel::plugin::host;
use easel::plugin::types::{Caller, JobRequest, Stage};
use exports::easel::plugin::reactions::{Action, Guest};
use guest_kit::{Settings, py_repr_float, py_repr_str};

struct Reactions;

/// The Python `repr` of the args dict Stably Discordant printed: prompt, cfg and steps, then
/// what the request sets beyond the seed's defaults.
fn args_repr(request: Option<&JobRequest>) -> String {
    let Some(r) = request else {
        return "{}".to_owned();
    };
    let mut items = vec![
        format!("'prompt': {}", py_repr_str(&r.prompt)),
        format!("'cfg': {}", py_repr_float(r.cfg)),
        format!("'steps': {}", r.steps),
    ];
    if !r.negative_prompt.is_empty() {
        items.push(format!("'negative': {}", py_repr_str(&r.negative_prompt)));
    }
    if r.seed != -1 {
        items.push(format!("'seed': {}", r.seed));
    }
    if r.width != 0 && r.height != 0 {
        let size = format!("{}x{}", r.width, r.height);
        items.push(format!("'size': {}", py_repr_str(&size)));
    }
    if !r.model.is_empty() {
        items.push(format!("'model': {}", py_repr_str(&r.model)));
    }
    if !r.sampler.is_empty() {
        items.push(format!("'sampler': {}", py_repr_str(&r.sampler)));
    }
    for (key, value) in &r.extra {
        items.push(format!("{}: {}", py_repr_str(key), py_repr_str(value)));
    }
    format!("{{{}}}", items.join(", "))
}

impl Guest for Reactions {
    fn on_stage(
        stage: Stage,
        _caller: Caller,
        request: Option<JobRequest>,
        info: String,
    ) -> Vec<Action> {
        let settings = Settings::new(host::config());
        let emoji = |key: &str, default: &str| settings.string(key, default);
        let add = |key: &str, default: &str| Action::AddEmoji(emoji(key, default));
        let remove = |key: &str, default: &str| Action::RemoveEmoji(emoji(key, default));
        let actions = match stage {
            Stage::Accepted => vec![add("ack_emoji", "👍")],
            Stage::Help => vec![Action::Reply(info), add("done_emoji", "💯")],
            Stage::Rejected if info.is_empty() => Vec::new(),
            Stage::Rejected => vec![Action::Reply(info)],
            Stage::Queued => info
                .lines()
                .filter(|line| !line.trim().is_empty())
                .map(|line| Action::Reply(line.to_owned()))
                .collect(),
            Stage::Dispatched => vec![add("in_prog_emoji", "⏱️")],
            Stage::Progress => Vec::new(),
            Stage::Finished => vec![
                remove("in_prog_emoji", "⏱️"),
                add("done_emoji", "💯"),
                Action::Reply(format!(
                    "Parsed args: {} processed by hostname: {info}",
                    args_repr(request.as_ref())
                )),
            ],
            Stage::Failed => vec![
                remove("in_prog_emoji", "⏱️"),
                add("fail_emoji", "❌"),
                Action::Reply(format!("Sorry, this request failed: {info}")),
            ],
        };
        actions
            .into_iter()
            .filter(|action| match action {
                Action::AddEmoji(e) | Action::RemoveEmoji(e) => !e.is_empty(),
                Action::Reply(_) => true,
            })
            .collect()
    }
}

export!(Reactions);
