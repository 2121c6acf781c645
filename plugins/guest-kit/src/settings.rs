//! A plugin's settings, read from what `host.config` returns.
//!
//! The host hands a plugin its `[plugins.<name>]` table (plus the seed settings its role reads)
//! as key/value pairs whose values are TOML text, except that strings come without their quotes:
//! `("wake_word", "/art")`, `("max_steps", "150")`, `("listen_channels", "[\"Guild:art\"]")`.
//! A later pair overrides an earlier one with the same key. An accessor given a value that is
//! not of its type reports a [`SettingError`] to the handler set with [`Settings::on_error`]
//! (the guests log it as a warning) and answers the default.

use std::fmt;

/// A setting whose value is not of the type its reader expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingError {
    /// The setting's key.
    pub key: String,
    /// Its value as given.
    pub value: String,
    /// What was expected ("an integer", "a list of strings", ...).
    pub expected: &'static str,
    /// What is wrong with it.
    pub detail: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "setting {} = {:?} is not {}: {}",
            self.key, self.value, self.expected, self.detail
        )
    }
}

impl std::error::Error for SettingError {}

type Handler = Box<dyn Fn(&SettingError)>;

/// A plugin's settings.
pub struct Settings {
    pairs: Vec<(String, String)>,
    on_error: Option<Handler>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("pairs", &self.pairs)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Settings from `host.config`'s pairs.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Self {
            pairs,
            on_error: None,
        }
    }

    /// Calls `handler` for every malformed value an accessor falls back from.
    pub fn on_error(mut self, handler: impl Fn(&SettingError) + 'static) -> Self {
        self.on_error = Some(Box::new(handler));
        self
    }

    /// The value of `key` as given (the last pair with that key), if any.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn read<T>(
        &self,
        key: &str,
        expected: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, SettingError> {
        let Some(value) = self.raw(key) else {
            return Ok(None);
        };
        parse(value.trim_matches(is_toml_space))
            .map(Some)
            .map_err(|detail| SettingError {
                key: key.to_owned(),
                value: value.to_owned(),
                expected,
                detail,
            })
    }

    fn or_default<T>(&self, read: Result<Option<T>, SettingError>, default: T) -> T {
        match read {
            Ok(value) => value.unwrap_or(default),
            Err(err) => {
                if let Some(handler) = &self.on_error {
                    handler(&err);
                }
                default
            }
        }
    }

    /// A string setting (any value reads as its text).
    pub fn string(&self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or(default).to_owned()
    }

    /// A list of strings: a TOML inline array of `"basic"` and `'literal'` strings.
    pub fn try_list(&self, key: &str) -> Result<Option<Vec<String>>, SettingError> {
        self.read(key, "a list of strings", parse_string_array)
    }

    /// [`Settings::try_list`], or `default`.
    pub fn list(&self, key: &str, default: &[&str]) -> Vec<String> {
        let default = default.iter().map(|s| (*s).to_owned()).collect();
        self.or_default(self.try_list(key), default)
    }

    /// A TOML integer that fits in a `u64`.
    pub fn try_u64(&self, key: &str) -> Result<Option<u64>, SettingError> {
        self.read(key, "a non-negative integer", |v| {
            let n = parse_integer(v)?;
            u64::try_from(n).map_err(|_| "out of range".to_owned())
        })
    }

    /// [`Settings::try_u64`], or `default`.
    pub fn u64(&self, key: &str, default: u64) -> u64 {
        self.or_default(self.try_u64(key), default)
    }

    /// A TOML integer that fits in an `i64`.
    pub fn try_i64(&self, key: &str) -> Result<Option<i64>, SettingError> {
        self.read(key, "an integer", |v| {
            let n = parse_integer(v)?;
            i64::try_from(n).map_err(|_| "out of range".to_owned())
        })
    }

    /// [`Settings::try_i64`], or `default`.
    pub fn i64(&self, key: &str, default: i64) -> i64 {
        self.or_default(self.try_i64(key), default)
    }

    /// A TOML float (`7.5`, `1e3`, `inf`, `nan`) or integer.
    pub fn try_f64(&self, key: &str) -> Result<Option<f64>, SettingError> {
        self.read(key, "a number", parse_float)
    }

    /// [`Settings::try_f64`], or `default`.
    pub fn f64(&self, key: &str, default: f64) -> f64 {
        self.or_default(self.try_f64(key), default)
    }

    /// A TOML boolean: `true` or `false`.
    pub fn try_bool(&self, key: &str) -> Result<Option<bool>, SettingError> {
        self.read(key, "a boolean", |v| match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err("expected true or false".to_owned()),
        })
    }

    /// [`Settings::try_bool`], or `default`.
    pub fn bool(&self, key: &str, default: bool) -> bool {
        self.or_default(self.try_bool(key), default)
    }
}

fn is_toml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Digits of `radix` with single underscores between them.
fn digits(s: &str, radix: u32) -> Result<String, String> {
    let ok = !s.is_empty()
        && !s.starts_with('_')
        && !s.ends_with('_')
        && !s.contains("__")
        && s.chars().all(|c| c == '_' || c.is_digit(radix));
    if ok {
        Ok(s.replace('_', ""))
    } else {
        Err(format!("{s:?} is not a number"))
    }
}

/// A TOML integer: decimal (sign, no leading zeros, `_` between digits) or `0x`/`0o`/`0b`.
fn parse_integer(v: &str) -> Result<i128, String> {
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = v.strip_prefix(prefix) {
            return i128::from_str_radix(&digits(rest, radix)?, radix)
                .map_err(|_| "out of range".to_owned());
        }
    }
    let unsigned = v.strip_prefix(['+', '-']).unwrap_or(v);
    let clean = digits(unsigned, 10)?;
    if clean.len() > 1 && clean.starts_with('0') {
        return Err("leading zeros".to_owned());
    }
    let n: i128 = clean.parse().map_err(|_| "out of range".to_owned())?;
    Ok(if v.starts_with('-') { -n } else { n })
}

/// A TOML float or decimal integer.
fn parse_float(v: &str) -> Result<f64, String> {
    let unsigned = v.strip_prefix(['+', '-']).unwrap_or(v);
    let negative = v.starts_with('-');
    let magnitude = match unsigned {
        "inf" => f64::INFINITY,
        "nan" => f64::NAN,
        _ => {
            let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
                Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
                None => (unsigned, None),
            };
            let (int_part, frac_part) = match mantissa.split_once('.') {
                Some((i, f)) => (i, Some(f)),
                None => (mantissa, None),
            };
            let int_clean = digits(int_part, 10)?;
            if int_clean.len() > 1 && int_clean.starts_with('0') {
                return Err("leading zeros".to_owned());
            }
            let mut text = int_clean;
            if let Some(frac) = frac_part {
                text.push('.');
                text.push_str(&digits(frac, 10)?);
            }
            if let Some(exp) = exponent {
                let exp_digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                text.push('e');
                if exp.starts_with('-') {
                    text.push('-');
                }
                text.push_str(&digits(exp_digits, 10)?);
            }
            text.parse::<f64>().map_err(|err| err.to_string())?
        }
    };
    Ok(if negative { -magnitude } else { magnitude })
}

/// A TOML inline array of strings: `[ "basic \"escapes\"", 'literal', ]`, with whitespace,
/// newlines and comments between the items and an optional trailing comma.
fn parse_string_array(v: &str) -> Result<Vec<String>, String> {
    let mut chars = v.chars().peekable();
    if chars.next() != Some('[') {
        return Err("expected an array: [\"...\", ...]".to_owned());
    }
    let mut items = Vec::new();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while let Some(&c) = chars.peek() {
            if is_toml_space(c) {
                chars.next();
            } else if c == '#' {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            } else {
                break;
            }
        }
    };
    loop {
        skip_space(&mut chars);
        match chars.next() {
            Some(']') => break,
            Some('"') => items.push(basic_string(&mut chars)?),
            Some('\'') => items.push(literal_string(&mut chars)?),
            Some(c) => return Err(format!("expected a quoted string, found {c:?}")),
            None => return Err("missing ]".to_owned()),
        }
        skip_space(&mut chars);
        match chars.next() {
            Some(',') => {}
            Some(']') => break,
            Some(c) => return Err(format!("expected , or ], found {c:?}")),
            None => return Err("missing ]".to_owned()),
        }
    }
    skip_space(&mut chars);
    match chars.next() {
        None => Ok(items),
        Some(c) => Err(format!("unexpected {c:?} after ]")),
    }
}

/// Control characters other than tab may not appear raw in a TOML string.
fn check_raw(c: char) -> Result<char, String> {
    if (c.is_ascii_control() && c != '\t') || c == '\u{7f}' {
        Err(format!("control character {c:?} in a string"))
    } else {
        Ok(c)
    }
}

/// The rest of a `"basic"` string, after its opening quote.
fn basic_string(chars: &mut impl Iterator<Item = char>) -> Result<String, String> {
    let mut out = String::new();
    loop {
        match chars.next() {
            None => return Err("unterminated string".to_owned()),
            Some('"') => return Ok(out),
            Some('\\') => {
                let escaped = match chars.next() {
                    Some('"') => '"',
                    Some('\\') => '\\',
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some('r') => '\r',
                    Some('b') => '\u{8}',
                    Some('f') => '\u{c}',
                    Some(u @ ('u' | 'U')) => {
                        let len = if u == 'u' { 4 } else { 8 };
                        let hex: String = chars.by_ref().take(len).collect();
                        let code = (hex.len() == len && hex.chars().all(|c| c.is_ascii_hexdigit()))
                            .then(|| u32::from_str_radix(&hex, 16).ok())
                            .flatten()
                            .and_then(char::from_u32);
                        code.ok_or_else(|| format!("invalid escape \\{u}{hex}"))?
                    }
                    Some(c) => return Err(format!("invalid escape \\{c}")),
                    None => return Err("unterminated string".to_owned()),
                };
                out.push(escaped);
            }
            Some(c) => out.push(check_raw(c)?),
        }
    }
}

/// The rest of a `'literal'` string, after its opening quote.
fn literal_string(chars: &mut impl Iterator<Item = char>) -> Result<String, String> {
    let mut out = String::new();
    loop {
        match chars.next() {
            None => return Err("unterminated string".to_owned()),
            Some('\'') => return Ok(out),
            Some(c) => out.push(check_raw(c)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn strings_come_without_quotes_and_later_keys_win() {
        let s = settings(&[("wake_word", "/art"), ("x", "1"), ("wake_word", "!draw")]);
        assert_eq!(s.string("wake_word", "/art"), "!draw");
        assert_eq!(s.string("missing", "dflt"), "dflt");
        assert_eq!(s.raw("missing"), None);
        assert_eq!(settings(&[("k", "")]).string("k", "d"), "");
    }

    #[test]
    fn lists() {
        let s = settings(&[
            ("a", "[\"Guild:art\", 'x']"),
            ("b", "[]"),
            (
                "c",
                " [ \"q\\\"\\\\\\n\\t\\r\\u00e9\\U0001F44D\" ,\n 'c:\\path' , ] ",
            ),
            ("d", "[ # comment\n 'x', # another\n]"),
        ]);
        assert_eq!(s.list("a", &[]), ["Guild:art", "x"]);
        assert_eq!(s.list("b", &["d"]), Vec::<String>::new());
        assert_eq!(s.list("c", &[]), ["q\"\\\n\t\ré👍", "c:\\path"]);
        assert_eq!(s.list("d", &[]), ["x"]);
        assert_eq!(s.list("missing", &["d"]), ["d"]);
    }

    #[test]
    fn malformed_lists_are_errors_and_read_as_the_default() {
        for bad in [
            "Guild:art",
            "[",
            "['a'",
            "['a' 'b']",
            "[1]",
            "['a',,]",
            "[,]",
            "['a'] x",
            "[\"\\q\"]",
            "[\"\\u12\"]",
            "[\"\\ud800\"]",
            "[\"a]",
            "['a\u{1}']",
            "[['a']]",
        ] {
            let s = settings(&[("k", bad)]);
            let err = s.try_list("k").unwrap_err();
            assert_eq!(err.key, "k");
            assert_eq!(err.value, bad);
            let seen = Rc::new(RefCell::new(Vec::new()));
            let sink = seen.clone();
            let s = s.on_error(move |e| sink.borrow_mut().push(e.to_string()));
            assert_eq!(s.list("k", &["d"]), ["d"], "{bad}");
            assert_eq!(seen.borrow().len(), 1, "{bad}");
            assert!(
                seen.borrow()[0].starts_with("setting k = "),
                "{:?}",
                seen.borrow()
            );
        }
    }

    #[test]
    fn numbers_and_booleans() {
        let s = settings(&[
            ("steps", "150"),
            ("big", "1_000"),
            ("neg", "-5"),
            ("hex", "0xff"),
            ("cfg", "7.5"),
            ("int_cfg", "7"),
            ("exp", "-1e-2"),
            ("inf", "-inf"),
            ("nan", "nan"),
            ("yes", "true"),
            ("no", " false "),
        ]);
        assert_eq!(s.u64("steps", 1), 150);
        assert_eq!(s.u64("big", 1), 1000);
        assert_eq!(s.u64("hex", 1), 255);
        assert_eq!(s.i64("neg", 1), -5);
        assert_eq!(s.try_u64("neg").unwrap_err().detail, "out of range");
        assert_eq!(s.u64("neg", 9), 9);
        assert_eq!(s.f64("cfg", 1.0), 7.5);
        assert_eq!(s.f64("int_cfg", 1.0), 7.0);
        assert_eq!(s.f64("exp", 1.0), -0.01);
        assert_eq!(s.f64("inf", 1.0), f64::NEG_INFINITY);
        assert!(s.f64("nan", 1.0).is_nan());
        assert!(s.bool("yes", false));
        assert!(!s.bool("no", true));
        assert!(s.bool("missing", true));
        assert_eq!(s.u64("missing", 4), 4);
        for bad in [
            "1.5", "abc", "", "01", "1__0", "_1", "1_", "+", "0x", "true", "1e3",
        ] {
            assert!(settings(&[("k", bad)]).try_i64("k").is_err(), "{bad}");
        }
        for bad in [
            "abc", "", "1.", ".5", "1e", "01.5", "1._5", "Infinity", "NaN",
        ] {
            assert!(settings(&[("k", bad)]).try_f64("k").is_err(), "{bad}");
        }
        for bad in ["yes", "True", "1", ""] {
            assert!(settings(&[("k", bad)]).try_bool("k").is_err(), "{bad}");
        }
        assert_eq!(settings(&[("k", "99999999999999999999")]).i64("k", 3), 3);
    }
}
