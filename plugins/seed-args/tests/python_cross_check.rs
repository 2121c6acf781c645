//! The grammar agrees with Python's own shlex + argparse on thousands of generated messages.
//! Needs python3 (the seed's language); the reference script is `tests/reference.py`.

use std::io::Write;
use std::process::{Command, Stdio};

use seed_args::{ParseError, Value, parse_known_args, seed_options, shlex_split_non_posix};
use serde_json::{Value as Json, json};

/// Words users (and fuzzers) type: options, abbreviations, `=` forms, numbers of every shape,
/// quotes, dashes.
const PIECES: &[&str] = &[
    "a",
    "red",
    "fox",
    "cat",
    "--cfg",
    "--steps",
    "--st",
    "--s",
    "--c",
    "--c=3",
    "--cfg=2.5",
    "--steps=",
    "--st=7",
    "--",
    "-",
    "-h",
    "-1",
    "-2.5",
    "-.5",
    "-x",
    "--foo",
    "--foo=bar",
    "5",
    "20",
    "2.5",
    "1e3",
    "1_000",
    "_1",
    "inf",
    "nan",
    "x",
    "\"",
    "'",
    "\"a",
    "b\"",
    "\"a b\"",
    "don't",
    "'q'",
    "--cfg=-1",
    "+3",
    "0",
    "--steps=1_0",
    "-1e2",
    "--=x",
    "---cfg",
    "--cf",
];

fn generate(count: usize) -> Vec<String> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let n = next() % 7;
            let words: Vec<&str> = (0..n)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            let sep = if next() % 5 == 0 { "\t" } else { " " };
            words.join(sep)
        })
        .collect()
}

/// NaN → null, infinities → Python's repr, else the number.
fn cfg_json(cfg: f64) -> Json {
    if cfg.is_nan() {
        Json::Null
    } else if cfg.is_infinite() {
        json!(if cfg > 0.0 { "inf" } else { "-inf" })
    } else {
        json!(cfg)
    }
}

fn ours(text: &str) -> Json {
    let words = match shlex_split_non_posix(text) {
        Ok(words) => words,
        Err(ParseError::NoClosingQuotation) => return json!({"error": "quote"}),
        Err(err) => panic!("{err}"),
    };
    match parse_known_args(&words, &seed_options()) {
        Ok(parsed) => {
            let (Value::Float(cfg), Value::Int(steps)) = (&parsed.values[0], &parsed.values[1])
            else {
                unreachable!()
            };
            json!({"prompt": parsed.prompt, "cfg": cfg_json(*cfg),
                   "steps": steps, "unknown": parsed.unknown})
        }
        Err(ParseError::Usage(_)) => json!({"error": "usage"}),
        Err(err) => panic!("{err}"),
    }
}

#[test]
fn agrees_with_python_argparse_and_shlex() {
    let inputs = generate(20_000);
    let mut child = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the reference");
    let mut stdin = child.stdin.take().unwrap();
    let payload: String = inputs.iter().map(|i| format!("{}\n", json!(i))).collect();
    let writer = std::thread::spawn(move || stdin.write_all(payload.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success());
    let expected: Vec<Json> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(expected.len(), inputs.len());
    let mut mismatches = Vec::new();
    for (input, want) in inputs.iter().zip(&expected) {
        let mut want = want.clone();
        if let Some(obj) = want.as_object_mut() {
            obj.remove("code");
        }
        let got = ours(input);
        if got != want {
            mismatches.push(format!("{input:?}\n  python: {want}\n  easel:  {got}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} inputs differ, e.g.:\n{}",
        mismatches.len(),
        inputs.len(),
        mismatches
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
