//! easel's default parser: Stably Discordant's message handling, exactly (compat.md §1.7).
//!
//! A message addressed to the bot starts with the wake word (case-sensitive, `/art` unless
//! `wake_word` is configured). `--help` anywhere answers with the help text. Otherwise every
//! occurrence of the wake word is removed, the rest is split like Python's non-POSIX shlex and
//! read like argparse's `parse_known_args` (`--cfg` float 7.5, `--steps` int 50, abbreviations,
//! `--opt=value`, negative values). Errors and warnings use the seed's exact reply strings; unlike
//! the seed, a parse error or an empty prompt queues nothing. The flow is `seed_args`'s
//! `read_message`, shared with `plugins/parser-extended`; this crate only maps its answer.

wit_bindgen::generate!({
    path: "../../wit",
    world: "parser-plugin",
});

use easel::plugin::host;
use easel::plugin::types::{Caller, JobRequest};
use exports::easel::plugin::parser::{Guest, Outcome, Parsed};
use guest_kit::Settings;
use seed_args::{Reading, SEED_HELP, Value, read_message, seed_options};

struct Parser;

impl Guest for Parser {
    fn parse(content: String, _caller: Caller) -> Outcome {
        let wake = Settings::new(host::config()).string("wake_word", "/art");
        match read_message(&content, &wake, &seed_options()) {
            Reading::Ignore => Outcome::Ignore,
            Reading::Help => Outcome::Help(SEED_HELP.to_owned()),
            Reading::Error { reply, detail } => {
                if let Some(detail) = detail {
                    host::log(host::Level::Debug, &format!("argparse error: {detail}"));
                }
                Outcome::Error(reply.to_owned())
            }
            Reading::Request {
                prompt,
                values,
                warnings,
            } => {
                let [Value::Float(cfg), Value::Int(steps)] = values[..] else {
                    unreachable!("the seed's options are a float and an int");
                };
                Outcome::Request(Parsed {
                    request: JobRequest {
                        prompt,
                        negative_prompt: String::new(),
                        cfg,
                        steps: u32::try_from(steps).unwrap_or(0),
                        width: 0,
                        height: 0,
                        seed: -1,
                        model: String::new(),
                        sampler: String::new(),
                        extra: Vec::new(),
                    },
                    warnings,
                })
            }
        }
    }
}

export!(Parser);
