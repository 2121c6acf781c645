//! Stably Discordant's prompt grammar, reproduced exactly for the default parser plugins.
//!
//! The seed split a message with Python's `shlex.split(text, posix=False)` and parsed the words
//! with `argparse.ArgumentParser.parse_known_args` (a `*` positional `prompt`, `--cfg` float,
//! `--steps` int, help disabled). Users learned its quirks, so easel keeps them: quotes stay
//! inside words, a quote that opens a word must close, options may be abbreviated (`--st 20`),
//! `--opt=value` works, negative numbers are values, and words after an option are not part of
//! the prompt but "unknown args".
//!
//! [`read_message`] is the whole of the seed's message handling on top of that (wake word,
//! `--help`, the exact reply strings), shared by the default parser plugins: `plugins/parser`
//! with the seed's options ([`seed_options`]) and `plugins/parser-extended` with more
//! ([`extended_options`]).
//!
//! This crate has no dependencies and no I/O, so it builds for the plugins' wasm target and is
//! tested natively against Python itself (see `tests/`).

use std::fmt;

mod message;

pub use message::{
    BAD_NUMBER, EMPTY_PROMPT, EXTENDED_HELP, OPEN_QUOTE, Reading, SEED_HELP, UNKNOWN_ARGS,
    read_message,
};

/// Why a message could not be split or parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// A quote that opens a word is never closed (`shlex`: "No closing quotation").
    NoClosingQuotation,
    /// argparse would exit with status 2: a missing, non-numeric or ambiguous option value.
    Usage(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoClosingQuotation => f.write_str("No closing quotation"),
            Self::Usage(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ParseError {}

/// `shlex.split(text, posix=False)`: words split on ASCII whitespace (space, tab, CR, LF).
///
/// A word that starts with `"` or `'` runs to the same quote, quotes included, and ends there
/// (`"a b"c` is two words); a quote inside a word is an ordinary character (`don't`).
pub fn shlex_split_non_posix(text: &str) -> Result<Vec<String>, ParseError> {
    #[derive(PartialEq)]
    enum State {
        Space,
        Word,
        Quote(char),
    }
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\r' | '\n');
    let is_quote = |c: char| matches!(c, '"' | '\'');
    let mut words = Vec::new();
    let mut token = String::new();
    let mut state = State::Space;
    for c in text.chars() {
        match state {
            State::Space => {
                if is_space(c) {
                    continue;
                }
                token.push(c);
                state = if is_quote(c) {
                    State::Quote(c)
                } else {
                    State::Word
                };
            }
            State::Word => {
                if is_space(c) {
                    words.push(std::mem::take(&mut token));
                    state = State::Space;
                } else {
                    token.push(c);
                }
            }
            State::Quote(quote) => {
                token.push(c);
                if c == quote {
                    words.push(std::mem::take(&mut token));
                    state = State::Space;
                }
            }
        }
    }
    match state {
        State::Quote(_) => Err(ParseError::NoClosingQuotation),
        State::Word => {
            words.push(token);
            Ok(words)
        }
        State::Space => Ok(words),
    }
}

/// The value type of an option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Python `int(...)`.
    Int,
    /// Python `float(...)`.
    Float,
    /// The string as given.
    Text,
    /// `WxH` (or `WXH`): two ASCII-digit integers from 1 to 2³²-1 ([`parse_size`]).
    Size,
}

/// A value after conversion.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// An int.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Text(String),
    /// A size, width then height; `(0, 0)` for "not given".
    Size(u32, u32),
}

/// One `--name VALUE` option.
#[derive(Clone, Debug, PartialEq)]
pub struct OptionSpec {
    /// The long name, with its dashes (`--steps`).
    pub flag: &'static str,
    /// Its value type.
    pub kind: Kind,
    /// The value when absent.
    pub default: Value,
}

/// What `parse_known_args` returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// The words of the `*` positional.
    pub prompt: Vec<String>,
    /// One value per option spec, in spec order.
    pub values: Vec<Value>,
    /// The words argparse did not recognise.
    pub unknown: Vec<String>,
}

/// Python's `int(s)` for the inputs users type: surrounding whitespace, a sign, ASCII digits
/// with single underscores between them.
pub fn python_int(s: &str) -> Option<i64> {
    let t = s.trim_matches(|c: char| c.is_whitespace());
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if !valid_digits(digits) {
        return None;
    }
    let magnitude: i64 = digits.replace('_', "").parse().ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

/// Digits with single underscores between them (Python's numeric literal rule).
fn valid_digits(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('_')
        && !s.ends_with('_')
        && !s.contains("__")
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'_')
}

/// Python's `float(s)`: decimal and exponent forms with underscores between digits,
/// `inf`/`infinity`/`nan` in any case, surrounding whitespace.
pub fn python_float(s: &str) -> Option<f64> {
    let t = s.trim_matches(|c: char| c.is_whitespace());
    let (sign, body) = match t.as_bytes().first() {
        Some(b'-') => (-1.0, &t[1..]),
        Some(b'+') => (1.0, &t[1..]),
        _ => (1.0, t),
    };
    match body.to_ascii_lowercase().as_str() {
        "inf" | "infinity" => return Some(sign * f64::INFINITY),
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let int_ok = int_part.is_empty() || valid_digits(int_part);
    let frac_ok = frac_part.is_none_or(|f| f.is_empty() || valid_digits(f));
    let has_digits = !int_part.is_empty() || frac_part.is_some_and(|f| !f.is_empty());
    if !(int_ok && frac_ok && has_digits) {
        return None;
    }
    if let Some(exp) = exponent {
        let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
        if !valid_digits(digits) {
            return None;
        }
    }
    let clean: String = body.chars().filter(|c| *c != '_').collect();
    clean.parse::<f64>().ok().map(|v| sign * v)
}

/// `WxH`: a width and a height, ASCII digits (leading zeros allowed), each from 1 to 2³²-1,
/// separated by `x` or `X`.
pub fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (width, height) = s.split_once(['x', 'X'])?;
    let side = |t: &str| {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse::<u32>().ok())
            .flatten()
            .filter(|n| *n > 0)
    };
    Some((side(width)?, side(height)?))
}

/// Is `arg` what argparse's `_negative_number_matcher` calls a negative number?
fn looks_negative_number(arg: &str) -> bool {
    let Some(rest) = arg.strip_prefix('-') else {
        return false;
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    // '^-\d+$|^-\d*\.\d+$' (\d: ASCII here)
    (!rest.is_empty() && all_digits(rest))
        || rest
            .split_once('.')
            .is_some_and(|(i, f)| all_digits(i) && !f.is_empty() && all_digits(f))
}

/// How argparse classifies one word.
enum Classified {
    /// A positional word ('A').
    Positional,
    /// `--` ('-'): everything after it is positional.
    DoubleDash,
    /// A known option, with the value given after `=`.
    Known(usize, Option<String>),
    /// An unknown optional ('O' without an action).
    Unknown,
}

fn classify(
    arg: &str,
    specs: &[OptionSpec],
    after_double_dash: bool,
) -> Result<Classified, ParseError> {
    if after_double_dash {
        return Ok(Classified::Positional);
    }
    if arg == "--" {
        return Ok(Classified::DoubleDash);
    }
    if !arg.starts_with('-') {
        return Ok(Classified::Positional);
    }
    if let Some(i) = specs.iter().position(|s| s.flag == arg) {
        return Ok(Classified::Known(i, None));
    }
    if arg.len() == 1 {
        return Ok(Classified::Positional);
    }
    if let Some((flag, value)) = arg.split_once('=')
        && let Some(i) = specs.iter().position(|s| s.flag == flag)
    {
        return Ok(Classified::Known(i, Some(value.to_owned())));
    }
    // Abbreviations: only `--` words can abbreviate the (all long) options.
    if arg.starts_with("--") {
        let (prefix, value) = match arg.split_once('=') {
            Some((p, v)) => (p, Some(v.to_owned())),
            None => (arg, None),
        };
        let matches: Vec<usize> = specs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.flag.starts_with(prefix))
            .map(|(i, _)| i)
            .collect();
        match matches.as_slice() {
            [i] => return Ok(Classified::Known(*i, value)),
            [] => {}
            many => {
                let names: Vec<&str> = many.iter().map(|i| specs[*i].flag).collect();
                return Err(ParseError::Usage(format!(
                    "ambiguous option: {prefix} could match {}",
                    names.join(", ")
                )));
            }
        }
    }
    if looks_negative_number(arg) || arg.contains(' ') {
        return Ok(Classified::Positional);
    }
    Ok(Classified::Unknown)
}

fn convert(spec: &OptionSpec, raw: &str) -> Result<Value, ParseError> {
    let bad = |what: &str| {
        ParseError::Usage(format!(
            "argument {}: invalid {what} value: '{raw}'",
            spec.flag
        ))
    };
    match spec.kind {
        Kind::Int => python_int(raw).map(Value::Int).ok_or_else(|| bad("int")),
        Kind::Float => python_float(raw)
            .map(Value::Float)
            .ok_or_else(|| bad("float")),
        Kind::Text => Ok(Value::Text(raw.to_owned())),
        Kind::Size => parse_size(raw)
            .map(|(w, h)| Value::Size(w, h))
            .ok_or_else(|| bad("size")),
    }
}

/// `ArgumentParser.parse_known_args` for a parser with one `*` positional and the given
/// single-value long options (help disabled), on already split words.
pub fn parse_known_args(words: &[String], specs: &[OptionSpec]) -> Result<Parsed, ParseError> {
    let mut classes = Vec::with_capacity(words.len());
    let mut after_double_dash = false;
    for word in words {
        let class = classify(word, specs, after_double_dash)?;
        if matches!(class, Classified::DoubleDash) {
            after_double_dash = true;
        }
        classes.push(class);
    }
    let is_option = |c: &Classified| matches!(c, Classified::Known(..) | Classified::Unknown);
    let is_arg = |c: &Classified| matches!(c, Classified::Positional | Classified::DoubleDash);
    let option_indices: Vec<usize> = (0..words.len())
        .filter(|&i| is_option(&classes[i]))
        .collect();

    let mut values: Vec<Value> = specs.iter().map(|s| s.default.clone()).collect();
    let mut unknown = Vec::new();
    let mut prompt: Option<Vec<String>> = None;

    // The `*` positional takes the run of positional words at `start` (argparse removes the
    // first `--` from it); it is consumed once, even when that run is empty.
    let consume_positionals = |start: usize, prompt: &mut Option<Vec<String>>| -> usize {
        if prompt.is_some() {
            return start;
        }
        let mut end = start;
        while end < words.len() && is_arg(&classes[end]) {
            end += 1;
        }
        let mut taken: Vec<String> = words[start..end].to_vec();
        if let Some(i) = taken.iter().position(|w| w == "--") {
            taken.remove(i);
        }
        *prompt = Some(taken);
        end
    };

    let mut start = 0;
    let max_option = option_indices.last().copied();
    while max_option.is_some_and(|max| start <= max) {
        let next_option = *option_indices
            .iter()
            .find(|&&i| i >= start)
            .expect("an option at or after start");
        if start != next_option {
            let end = consume_positionals(start, &mut prompt);
            if end > start {
                start = end;
                continue;
            }
        }
        if start != next_option {
            unknown.extend(words[start..next_option].iter().cloned());
            start = next_option;
        }
        // consume_optional
        match &classes[start] {
            Classified::Known(i, explicit) => {
                let spec = &specs[*i];
                let raw = match explicit {
                    Some(value) => {
                        start += 1;
                        value.clone()
                    }
                    None => {
                        // One argument: the next word, if it is neither an option nor `--`
                        // (argparse drops '-' from the patterns of optionals).
                        let j = start + 1;
                        if j < words.len() && matches!(classes[j], Classified::Positional) {
                            start = j + 1;
                            words[j].clone()
                        } else {
                            return Err(ParseError::Usage(format!(
                                "argument {}: expected one argument",
                                spec.flag
                            )));
                        }
                    }
                };
                values[*i] = convert(spec, &raw)?;
            }
            Classified::Unknown => {
                unknown.push(words[start].clone());
                start += 1;
            }
            _ => unreachable!("option index holds an option"),
        }
    }
    let stop = consume_positionals(start, &mut prompt);
    unknown.extend(words[stop..].iter().cloned());
    Ok(Parsed {
        prompt: prompt.unwrap_or_default(),
        values,
        unknown,
    })
}

/// Stably Discordant's two options: `--cfg` (float, 7.5) and `--steps` (int, 50).
pub fn seed_options() -> Vec<OptionSpec> {
    vec![
        OptionSpec {
            flag: "--cfg",
            kind: Kind::Float,
            default: Value::Float(7.5),
        },
        OptionSpec {
            flag: "--steps",
            kind: Kind::Int,
            default: Value::Int(50),
        },
    ]
}

/// The seed's options, then `--negative` (text, ""), `--seed` (int, -1), `--size` (`WxH`,
/// none), `--model` (text, "") and `--sampler` (text, ""): the extended parser's.
pub fn extended_options() -> Vec<OptionSpec> {
    let mut specs = seed_options();
    specs.extend([
        OptionSpec {
            flag: "--negative",
            kind: Kind::Text,
            default: Value::Text(String::new()),
        },
        OptionSpec {
            flag: "--seed",
            kind: Kind::Int,
            default: Value::Int(-1),
        },
        OptionSpec {
            flag: "--size",
            kind: Kind::Size,
            default: Value::Size(0, 0),
        },
        OptionSpec {
            flag: "--model",
            kind: Kind::Text,
            default: Value::Text(String::new()),
        },
        OptionSpec {
            flag: "--sampler",
            kind: Kind::Text,
            default: Value::Text(String::new()),
        },
    ]);
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(String, f64, i64, String), ParseError> {
        let words = shlex_split_non_posix(text)?;
        let parsed = parse_known_args(&words, &seed_options())?;
        let (Value::Float(cfg), Value::Int(steps)) = (&parsed.values[0], &parsed.values[1]) else {
            panic!("types")
        };
        Ok((
            parsed.prompt.join(" "),
            *cfg,
            *steps,
            parsed.unknown.join(" "),
        ))
    }

    fn ok(
        prompt: &str,
        cfg: f64,
        steps: i64,
        unknown: &str,
    ) -> Result<(String, f64, i64, String), ParseError> {
        Ok((prompt.into(), cfg, steps, unknown.into()))
    }

    /// The table of compat.md §1.7.1, verified on Python 3.11.
    #[test]
    fn seed_table() {
        assert_eq!(parse("a cat"), ok("a cat", 7.5, 50, ""));
        assert_eq!(parse("a cat --cfg 5"), ok("a cat", 5.0, 50, ""));
        assert_eq!(
            parse("a cat --cfg 5 more words"),
            ok("a cat", 5.0, 50, "more words")
        );
        assert_eq!(
            parse("a \"cat dog\" --steps 10"),
            ok("a \"cat dog\"", 7.5, 10, "")
        );
        assert_eq!(parse("a cat --foo bar"), ok("a cat", 7.5, 50, "--foo bar"));
        assert_eq!(parse("a cat -h"), ok("a cat", 7.5, 50, "-h"));
        assert_eq!(parse("a \"cat"), Err(ParseError::NoClosingQuotation));
        for bad in ["a cat --steps x", "a cat --steps 2.5", "a cat --cfg"] {
            assert!(matches!(parse(bad), Err(ParseError::Usage(_))), "{bad}");
        }
        assert_eq!(parse("--steps 20 a cat"), ok("a cat", 7.5, 20, ""));
        assert_eq!(parse("a cat --st 20"), ok("a cat", 7.5, 20, ""));
        assert_eq!(parse("a cat --c=3"), ok("a cat", 3.0, 50, ""));
        assert_eq!(parse("a cat --cfg -1"), ok("a cat", -1.0, 50, ""));
    }

    #[test]
    fn extended_abbreviations_and_sizes() {
        let parse = |text: &str| {
            let words = shlex_split_non_posix(text).unwrap();
            parse_known_args(&words, &extended_options())
        };
        let value = |text: &str, i: usize| parse(text).unwrap().values[i].clone();
        assert_eq!(value("a --st 20", 1), Value::Int(20));
        assert_eq!(value("a --see 7", 3), Value::Int(7));
        assert_eq!(value("a --se 7", 3), Value::Int(7));
        assert_eq!(value("a --si 512x768", 4), Value::Size(512, 768));
        assert_eq!(value("a --sa euler", 6), Value::Text("euler".into()));
        assert_eq!(value("a --m sd15", 5), Value::Text("sd15".into()));
        assert_eq!(value("a --n blurry", 2), Value::Text("blurry".into()));
        assert_eq!(value("a --negative -1", 2), Value::Text("-1".into()));
        assert_eq!(value("a --size 0512X64", 4), Value::Size(512, 64));
        for bad in [
            "a --s 5",
            "a --s=5",
            "a --size 0x5",
            "a --size 5x",
            "a --size 5x5x5",
            "a --size 4294967296x1",
            "a --size -5x5",
            "a --model",
        ] {
            assert!(matches!(parse(bad), Err(ParseError::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn shlex_quirks() {
        assert_eq!(
            shlex_split_non_posix("don't stop").unwrap(),
            ["don't", "stop"]
        );
        assert_eq!(shlex_split_non_posix("\"a b\"c").unwrap(), ["\"a b\"", "c"]);
        assert_eq!(shlex_split_non_posix("  x\t y\n").unwrap(), ["x", "y"]);
        assert_eq!(shlex_split_non_posix("''").unwrap(), ["''"]);
    }

    #[test]
    fn python_numbers() {
        assert_eq!(python_int(" 20 "), Some(20));
        assert_eq!(python_int("1_000"), Some(1000));
        assert_eq!(python_int("2.5"), None);
        assert_eq!(python_int("_1"), None);
        assert_eq!(python_float("1e3"), Some(1000.0));
        assert_eq!(python_float(".5"), Some(0.5));
        assert_eq!(python_float("5."), Some(5.0));
        assert_eq!(python_float("-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(python_float("e3"), None);
        assert_eq!(python_float("."), None);
    }
}
