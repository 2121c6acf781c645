//! easel's extended parser: the default parser (`plugins/parser`) with more options.
//!
//! The same wake word handling, `--help` anywhere, non-POSIX shlex, argparse
//! `parse_known_args` with abbreviations and the seed's exact reply strings (all from
//! `seed_args::read_message`), with the options `--cfg` (float, 7.5), `--steps` (int, 50),
//! `--negative` (text), `--seed` (int, -1), `--size` (`WxH`), `--model` and `--sampler` (text).
//! An ambiguous abbreviation (`--s`) is argparse's usage error, answered like a bad number.

wit_bindgen::generate!({
    path: "../../wit",
    world: "parser-plugin",
});

use easel::plugin::host;
use easel::plugin::types::{Caller, JobRequest};
use exports::easel::plugin::parser::{Guest, Outcome, Parsed};
use guest_kit::Settings;
use seed_args::{EXTENDED_HELP, Reading, Value, extended_options, read_message};

struct Parser;

impl Guest for Parser {
    fn parse(content: String, _caller: Caller) -> Outcome {
        let wake = Settings::new(host::config()).string("wake_word", "/art");
        match read_message(&content, &wake, &extended_options()) {
            Reading::Ignore => Outcome::Ignore,
            Reading::Help => Outcome::Help(EXTENDED_HELP.to_owned()),
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
                let [
                    Value::Float(cfg),
                    Value::Int(steps),
                    Value::Text(negative_prompt),
                    Value::Int(seed),
                    Value::Size(width, height),
                    Value::Text(model),
                    Value::Text(sampler),
                ] = <[Value; 7]>::try_from(values).expect("seven options")
                else {
                    unreachable!("the extended options' kinds");
                };
                Outcome::Request(Parsed {
                    request: JobRequest {
                        prompt,
                        negative_prompt,
                        cfg,
                        steps: u32::try_from(steps).unwrap_or(0),
                        width,
                        height,
                        seed,
                        model,
                        sampler,
                        extra: Vec::new(),
                    },
                    warnings,
                })
            }
        }
    }
}

export!(Parser);
