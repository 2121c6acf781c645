//! Stably Discordant's handling of one chat message (compat.md §1.7), for the parser plugins.
//!
//! A message is addressed to the bot when it starts with the wake word (case-sensitive, so
//! `/artsy` counts for `/art`). `--help` anywhere in it asks for the help text. Otherwise every
//! occurrence of the wake word is removed, leading whitespace stripped, and the rest split and
//! parsed ([`shlex_split_non_posix`], [`parse_known_args`]). Errors and warnings are the seed's
//! exact reply strings; unlike the seed, a parse error or an empty prompt queues nothing.

use crate::{OptionSpec, ParseError, Value, parse_known_args, shlex_split_non_posix};

/// The reply to a quote that is never closed.
pub const OPEN_QUOTE: &str =
    "Prompt has open quotation with no closing quotation. Please fix and try again.";
/// The reply when argparse would exit with status 2 (a bad or missing value, an ambiguous
/// abbreviation).
pub const BAD_NUMBER: &str =
    "Prompt has invalid integer input on integer argument. Please fix and try again.";
/// The reply to a message with no prompt.
pub const EMPTY_PROMPT: &str = "Skipping request with empty prompt.";
/// The warning before the unknown args (the request still goes ahead).
pub const UNKNOWN_ARGS: &str = "Skipping unknown args: ";

/// argparse's `format_help()` at 80 columns for the seed's parser ([`crate::seed_options`];
/// the seed's typo "bethe" included).
pub const SEED_HELP: &str = "usage: StableDiscord [--cfg CFG] [--steps STEPS] [prompt ...]

positional arguments:
  prompt         The prompt is a positional argument meaning text not assigned
                 to an argument is presumed to bethe prompt.

options:
  --cfg CFG      A float value for the 'Context Free Guidance' parameter.
                 Sometimes called 'style' in other models. (Defaults to 7.5)
  --steps STEPS  The number of diffusion steps. More will take longer, but
                 usually returns better results. (Defaults to 50)
";

/// argparse's `format_help()` at 80 columns for the extended parser
/// ([`crate::extended_options`]), the seed's help strings for the seed's arguments.
pub const EXTENDED_HELP: &str =
    "usage: StableDiscord [--cfg CFG] [--steps STEPS] [--negative NEGATIVE]
                     [--seed SEED] [--size WxH] [--model MODEL]
                     [--sampler SAMPLER]
                     [prompt ...]

positional arguments:
  prompt               The prompt is a positional argument meaning text not
                       assigned to an argument is presumed to bethe prompt.

options:
  --cfg CFG            A float value for the 'Context Free Guidance'
                       parameter. Sometimes called 'style' in other models.
                       (Defaults to 7.5)
  --steps STEPS        The number of diffusion steps. More will take longer,
                       but usually returns better results. (Defaults to 50)
  --negative NEGATIVE  What to keep out of the picture. (Defaults to nothing)
  --seed SEED          The random seed: the same seed, prompt and options draw
                       the same picture again. (Defaults to -1, a random seed)
  --size WxH           The picture's width and height in pixels, e.g. 512x768.
                       (Defaults to the model's own size)
  --model MODEL        The model (checkpoint) to draw with. (Defaults to the
                       server's default model)
  --sampler SAMPLER    The sampler to use. (Defaults to the server's default
                       sampler)
";

/// What a message amounts to.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    /// Not addressed to the bot.
    Ignore,
    /// Answer with the parser's help text.
    Help,
    /// Answer with `reply`; `detail` is argparse's own message, for the log.
    Error {
        /// One of the seed's reply strings.
        reply: &'static str,
        /// What argparse would have printed, when it was argparse that refused.
        detail: Option<String>,
    },
    /// A request: the prompt, one value per option spec, and remarks for the author.
    Request {
        /// The prompt words joined by single spaces (never empty).
        prompt: String,
        /// One value per option spec, in spec order.
        values: Vec<Value>,
        /// `Skipping unknown args: …` when there were any.
        warnings: Vec<String>,
    },
}

/// Reads `content` the way Stably Discordant did, with the options `specs`.
///
/// An empty wake word addresses nothing.
pub fn read_message(content: &str, wake_word: &str, specs: &[OptionSpec]) -> Reading {
    if wake_word.is_empty() || !content.starts_with(wake_word) {
        return Reading::Ignore;
    }
    if content.contains("--help") {
        return Reading::Help;
    }
    let cleaned = content.replace(wake_word, "");
    let error = |reply, detail| Reading::Error { reply, detail };
    let words = match shlex_split_non_posix(cleaned.trim_start()) {
        Ok(words) => words,
        Err(_) => return error(OPEN_QUOTE, None),
    };
    let parsed = match parse_known_args(&words, specs) {
        Ok(parsed) => parsed,
        Err(ParseError::Usage(message)) => return error(BAD_NUMBER, Some(message)),
        Err(ParseError::NoClosingQuotation) => return error(OPEN_QUOTE, None),
    };
    let prompt = parsed.prompt.join(" ");
    if prompt.is_empty() {
        return error(EMPTY_PROMPT, None);
    }
    let mut warnings = Vec::new();
    if !parsed.unknown.is_empty() {
        warnings.push(format!("{UNKNOWN_ARGS}{}", parsed.unknown.join(" ")));
    }
    Reading::Request {
        prompt,
        values: parsed.values,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{extended_options, seed_options};

    fn read(content: &str) -> Reading {
        read_message(content, "/art", &seed_options())
    }

    fn request(prompt: &str, cfg: f64, steps: i64, warnings: &[&str]) -> Reading {
        Reading::Request {
            prompt: prompt.to_owned(),
            values: vec![Value::Float(cfg), Value::Int(steps)],
            warnings: warnings.iter().map(|w| (*w).to_owned()).collect(),
        }
    }

    #[test]
    fn wake_word_and_help() {
        assert_eq!(read("hello /art a cat"), Reading::Ignore);
        assert_eq!(read("/Art a cat"), Reading::Ignore);
        assert_eq!(read_message("a cat", "", &seed_options()), Reading::Ignore);
        assert_eq!(read("/art a cat --help"), Reading::Help);
        assert_eq!(read("/art \"--help"), Reading::Help);
        assert_eq!(read("/artsy a cat"), request("sy a cat", 7.5, 50, &[]));
        assert_eq!(read("/art a /art cat"), request("a cat", 7.5, 50, &[]));
        assert_eq!(
            read_message("!draw a cat --steps 5", "!draw", &seed_options()),
            request("a cat", 7.5, 5, &[])
        );
    }

    #[test]
    fn seed_replies() {
        assert_eq!(read("/art a cat"), request("a cat", 7.5, 50, &[]));
        assert_eq!(
            read("/art a cat --cfg 5 more words"),
            request("a cat", 5.0, 50, &["Skipping unknown args: more words"])
        );
        let err = |reply| Reading::Error {
            reply,
            detail: None,
        };
        assert_eq!(read("/art a \"cat"), err(OPEN_QUOTE));
        assert_eq!(read("/art"), err(EMPTY_PROMPT));
        assert_eq!(read("/art   --cfg 3"), err(EMPTY_PROMPT));
        assert_eq!(
            read("/art a cat --steps x"),
            Reading::Error {
                reply: BAD_NUMBER,
                detail: Some("argument --steps: invalid int value: 'x'".to_owned())
            }
        );
        assert!(matches!(
            read_message("/art a --s 5", "/art", &extended_options()),
            Reading::Error {
                reply: BAD_NUMBER,
                ..
            }
        ));
    }
}
