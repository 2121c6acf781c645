//! easel's default parser: Stably Discordant's message handling, exactly (compat.md §1.7).
//!
//! A message addressed to the bot starts with the wake word (case-sensitive, `/art` unless
//! `wake_word` is configured). `--help` anywhere answers with the help text. Otherwise every
//! occurrence of the wake word is removed, the rest is split like Python's non-POSIX shlex and
//! read like argparse's `parse_known_args` (`--cfg` float 7.5, `--steps` int 50, abbreviations,
//! `--opt=value`, negative values). Errors and warnings use the seed's exact reply strings; unlike
//! the seed, a parse error or an empty prompt queues nothing.

wit_bindgen::generate!({
    path: "../../wit",
    world: "parser-plugin",
});

use easel::plugin::host;
use easel::plugin::types::{Caller, JobRequest};
use exports::easel::plugin::parser::{Guest, Outcome, Parsed};
use seed_args::{ParseError, Value, parse_known_args, seed_options, shlex_split_non_posix};

/// argparse's `format_help()` for the seed's parser at 80 columns (the seed's typo included).
pub const HELP: &str = "usage: StableDiscord [--cfg CFG] [--steps STEPS] [prompt ...]

positional arguments:
  prompt         The prompt is a positional argument meaning text not assigned
                 to an argument is presumed to bethe prompt.

options:
  --cfg CFG      A float value for the 'Context Free Guidance' parameter.
                 Sometimes called 'style' in other models. (Defaults to 7.5)
  --steps STEPS  The number of diffusion steps. More will take longer, but
                 usually returns better results. (Defaults to 50)
";

const OPEN_QUOTE: &str =
    "Prompt has open quotation with no closing quotation. Please fix and try again.";
const BAD_NUMBER: &str =
    "Prompt has invalid integer input on integer argument. Please fix and try again.";
const EMPTY: &str = "Skipping request with empty prompt.";

struct Parser;

fn wake_word() -> String {
    host::config()
        .into_iter()
        .find(|(key, _)| key == "wake_word")
        .map(|(_, value)| value)
        .unwrap_or_else(|| "/art".to_owned())
}

impl Guest for Parser {
    fn parse(content: String, _caller: Caller) -> Outcome {
        let wake = wake_word();
        if wake.is_empty() || !content.starts_with(&wake) {
            return Outcome::Ignore;
        }
        if content.contains("--help") {
            return Outcome::Help(HELP.to_owned());
        }
        let cleaned = content.replace(&wake, "");
        let words = match shlex_split_non_posix(cleaned.trim_start()) {
            Ok(words) => words,
            Err(_) => return Outcome::Error(OPEN_QUOTE.to_owned()),
        };
        let parsed = match parse_known_args(&words, &seed_options()) {
            Ok(parsed) => parsed,
            Err(ParseError::Usage(message)) => {
                host::log(host::Level::Debug, &format!("argparse error: {message}"));
                return Outcome::Error(BAD_NUMBER.to_owned());
            }
            Err(ParseError::NoClosingQuotation) => return Outcome::Error(OPEN_QUOTE.to_owned()),
        };
        let prompt = parsed.prompt.join(" ");
        if prompt.is_empty() {
            return Outcome::Error(EMPTY.to_owned());
        }
        let (Value::Float(cfg), Value::Int(steps)) = (&parsed.values[0], &parsed.values[1]) else {
            unreachable!("the seed's options are a float and an int");
        };
        let mut warnings = Vec::new();
        if !parsed.unknown.is_empty() {
            warnings.push(format!("Skipping unknown args: {}", parsed.unknown.join(" ")));
        }
        Outcome::Request(Parsed {
            request: JobRequest {
                prompt,
                negative_prompt: String::new(),
                cfg: *cfg,
                steps: u32::try_from(*steps).unwrap_or(0),
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

export!(Parser);
