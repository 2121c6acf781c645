//! `py_repr_str` and `py_repr_float` agree with python3's `repr()`: on every code point, on
//! thousands of generated strings, and on thousands of floats (random bit patterns and the
//! values people type). The reference script is `tests/reference.py`.

use std::io::Write;
use std::process::{Command, Stdio};

use guest_kit::{py_repr_float, py_repr_str};

/// Runs `tests/reference.py MODE` on `input`; its output lines.
fn python(mode: &str, input: String) -> Vec<String> {
    let mut child = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference.py"))
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the reference");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success(), "reference.py {mode} failed");
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    assert_eq!(
        lines.pop().as_deref(),
        Some(""),
        "output ends with a newline"
    );
    lines
}

/// Fails with the first few differences, if any.
fn compare(what: &str, inputs: &[String], expected: &[String], ours: impl Fn(usize) -> String) {
    assert_eq!(expected.len(), inputs.len(), "{what}: one line per input");
    let mismatches: Vec<String> = (0..inputs.len())
        .filter_map(|i| {
            let got = ours(i);
            (got != expected[i])
                .then(|| format!("{}\n  python: {}\n  ours:   {got}", inputs[i], expected[i]))
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{what}: {} of {} differ, e.g.:\n{}",
        mismatches.len(),
        inputs.len(),
        mismatches[..mismatches.len().min(10)].join("\n")
    );
}

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

#[test]
fn every_code_point_reprs_like_python() {
    let chars: Vec<char> = (0..0x11_0000u32).filter_map(char::from_u32).collect();
    let expected = python("chars", String::new());
    let inputs: Vec<String> = chars
        .iter()
        .map(|c| format!("U+{:04X}", *c as u32))
        .collect();
    compare("chars", &inputs, &expected, |i| {
        py_repr_str(&chars[i].to_string())
    });
}

/// Characters that matter to `repr`: quotes, backslash, escapes, controls, Latin-1, spaces,
/// format characters, emoji, astral and private-use.
const INTERESTING: &[char] = &[
    'a',
    'Z',
    ' ',
    '\'',
    '"',
    '\\',
    '\n',
    '\r',
    '\t',
    '\0',
    '\x1b',
    '\x7f',
    '\u{80}',
    '\u{a0}',
    '\u{ad}',
    'é',
    'ÿ',
    '\u{100}',
    '\u{2028}',
    '\u{2029}',
    '\u{200b}',
    '\u{200d}',
    '\u{3000}',
    '\u{fe0f}',
    '\u{feff}',
    '\u{fffd}',
    '\u{ffff}',
    '👍',
    '⏱',
    '💯',
    '❌',
    '\u{1f1fa}',
    '\u{e0001}',
    '\u{f0000}',
    '\u{10ffff}',
    '漢',
    'ß',
    '\u{378}',
];

#[test]
fn generated_strings_repr_like_python() {
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    let strings: Vec<String> = (0..20_000)
        .map(|_| {
            let len = next() % 9;
            (0..len)
                .map(|_| match next() % 4 {
                    0 => char::from_u32((next() % 0x11_0000) as u32).unwrap_or('x'),
                    1 => char::from_u32((next() % 0x3000) as u32).unwrap_or('y'),
                    _ => INTERESTING[(next() % INTERESTING.len() as u64) as usize],
                })
                .collect()
        })
        .collect();
    let input: String = strings
        .iter()
        .map(|s| {
            let cps: Vec<String> = s.chars().map(|c| format!("{:x}", c as u32)).collect();
            format!("{}\n", cps.join(" "))
        })
        .collect();
    let expected = python("str", input);
    let inputs: Vec<String> = strings.iter().map(|s| format!("{s:?}")).collect();
    compare("strings", &inputs, &expected, |i| py_repr_str(&strings[i]));
}

#[test]
fn floats_repr_like_python() {
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let mut floats: Vec<f64> = vec![
        0.0,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::MIN,
        f64::EPSILON,
        5e-324,
        7.5,
        0.1,
        0.2 + 0.1,
        1e16,
        1e15,
        9_999_999_999_999_998.0,
        123_456_789_012_345.6,
        1.5e-5,
        0.0001,
        0.00001,
    ];
    for _ in 0..20_000 {
        floats.push(f64::from_bits(next()));
    }
    for _ in 0..10_000 {
        // What people type: a few digits, scaled by a power of ten around the switch points.
        let digits = (next() % 100_000) as f64;
        let scale = (next() % 40) as i32 - 20;
        let sign = if next() & 1 == 0 { 1.0 } else { -1.0 };
        floats.push(sign * digits * 10f64.powi(scale));
    }
    for _ in 0..10_000 {
        // Large numbers with a binary fraction, where two shortest candidates can tie.
        let whole = (next() % (1 << 56)) as f64;
        floats.push(whole / f64::from(1u32 << (next() % 6)));
    }
    for exp in -330..=310 {
        floats.push(10f64.powi(exp));
        floats.push(1.5 * 10f64.powi(exp));
    }
    let input: String = floats
        .iter()
        .map(|x| format!("{:016x}\n", x.to_bits()))
        .collect();
    let expected = python("float", input);
    let inputs: Vec<String> = floats
        .iter()
        .map(|x| format!("{x:e} (bits {:016x})", x.to_bits()))
        .collect();
    compare("floats", &inputs, &expected, |i| py_repr_float(floats[i]));
}
