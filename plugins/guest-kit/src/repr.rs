//! Python's `repr()` of a `str` and of a `float`, as CPython 3.11 writes them.
//!
//! Stably Discordant answered a finished job with the `repr` of its args dict
//! (`{'prompt': 'a red fox', 'cfg': 7.5, 'steps': 50}`); the reactions plugin rebuilds that text
//! from these pieces. Both agree with python3 itself (see `tests/python_cross_check.rs`).

use std::fmt::Write;

use crate::printable::NON_PRINTABLE;

/// `str.isprintable()` for one character (Python 3.11, Unicode 14.0).
pub fn py_is_printable(c: char) -> bool {
    let c = u32::from(c);
    if c < 0x80 {
        return (0x20..0x7f).contains(&c);
    }
    NON_PRINTABLE
        .binary_search_by(|&(start, end)| {
            if end < c {
                std::cmp::Ordering::Less
            } else if start > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_err()
}

/// `repr(s)` for a Python `str`: single quotes unless `s` has a `'` and no `"`; backslash,
/// the quote, `\t`, `\n`, `\r` escaped; other non-printable characters as `\xNN`, `\uNNNN` or
/// `\UNNNNNNNN`.
pub fn py_repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        let code = u32::from(c);
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            _ if c == quote => {
                out.push('\\');
                out.push(c);
            }
            _ if py_is_printable(c) => out.push(c),
            _ if code <= 0xff => {
                let _ = write!(out, "\\x{code:02x}");
            }
            _ if code <= 0xffff => {
                let _ = write!(out, "\\u{code:04x}");
            }
            _ => {
                let _ = write!(out, "\\U{code:08x}");
            }
        }
    }
    out.push(quote);
    out
}

/// The shortest digits that read back as `x` (finite, positive), as `d[.ddd]e[-]N`; of two
/// equally short candidates the one nearer `x`, and on a tie the even one, like CPython's
/// `dtoa` (Rust's `{:e}` rounds such a tie up).
fn shortest(x: f64) -> String {
    let sci = format!("{x:e}");
    let len = sci
        .split_once('e')
        .map_or(1, |(m, _)| m.replace('.', "").len());
    // `{:.N$e}` rounds exactly, half to even.
    let nearest = format!("{x:.*e}", len - 1);
    if nearest.parse::<f64>() == Ok(x) {
        nearest
    } else {
        sci
    }
}

/// `repr(x)` for a Python `float`: the shortest digits that read back as `x`, positional
/// (always with a `.`) when the decimal exponent is in -4..16, else scientific with a signed,
/// at least two-digit exponent (`1e+16`, `1.5e-05`); `inf`, `-inf`, `nan`.
pub fn py_repr_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    let sci = shortest(x.abs());
    let (mantissa, exponent) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    if !(-4..16).contains(&exponent) {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        return format!(
            "{sign}{first}{dot}{rest}e{exp_sign}{:02}",
            exponent.unsigned_abs()
        );
    }
    // Digits before the point: exponent + 1 (0 or less: leading zeros after "0.").
    let point = exponent + 1;
    let mut out = String::from(sign);
    if point <= 0 {
        out.push_str("0.");
        for _ in 0..-point {
            out.push('0');
        }
        out.push_str(digits);
    } else {
        let point = point as usize;
        if digits.len() <= point {
            out.push_str(digits);
            for _ in digits.len()..point {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings() {
        assert_eq!(py_repr_str("a red fox"), "'a red fox'");
        assert_eq!(py_repr_str(""), "''");
        assert_eq!(py_repr_str("don't"), "\"don't\"");
        assert_eq!(py_repr_str("'\""), "'\\'\"'");
        assert_eq!(py_repr_str("a\\b\n\t\r"), "'a\\\\b\\n\\t\\r'");
        assert_eq!(py_repr_str("\0\x1b\x7f"), "'\\x00\\x1b\\x7f'");
        assert_eq!(py_repr_str("\u{a0}\u{ad}é"), "'\\xa0\\xadé'");
        assert_eq!(
            py_repr_str("\u{2028}\u{200b}\u{3000}"),
            "'\\u2028\\u200b\\u3000'"
        );
        assert_eq!(py_repr_str("👍⏱️"), "'👍⏱️'");
        assert_eq!(
            py_repr_str("\u{e0001}\u{10ffff}"),
            "'\\U000e0001\\U0010ffff'"
        );
    }

    #[test]
    fn floats() {
        let cases = [
            (7.5, "7.5"),
            (5.0, "5.0"),
            (-1.0, "-1.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789012345.6, "123456789012345.6"),
            (0.1, "0.1"),
            (1e100, "1e+100"),
            (1.2345e-300, "1.2345e-300"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ];
        for (x, want) in cases {
            assert_eq!(py_repr_float(x), want, "{x:e}");
        }
    }
}
