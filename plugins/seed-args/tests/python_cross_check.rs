//! The grammar agrees with Python's own shlex + argparse on thousands of generated messages,
//! with the seed's options and with the extended parser's, and the help texts are argparse's.
//! Needs python3 (the seed's language); the reference script is `tests/reference.py`.

use std::io::Write;
use std::process::{Command, Stdio};

use seed_args::{
    EXTENDED_HELP, OptionSpec, ParseError, SEED_HELP, Value, extended_options, parse_known_args,
    seed_options, shlex_split_non_posix,
};
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

/// More words for the extended options: every abbreviation of them, sizes good and bad, seeds.
const EXTENDED_PIECES: &[&str] = &[
    "--negative",
    "--seed",
    "--size",
    "--model",
    "--sampler",
    "--s",
    "--se",
    "--see",
    "--si",
    "--sa",
    "--sam",
    "--m",
    "--n",
    "--ne",
    "--s=5",
    "--se=5",
    "--si=5x5",
    "--size=512x768",
    "--size=0x5",
    "--model=sd15",
    "--negative=",
    "512x512",
    "5X7",
    "0512x64",
    "5x",
    "x5",
    "5x5x5",
    "-5x5",
    "4294967295x1",
    "4294967296x1",
    "9223372036854775807",
    "-9223372036854775807",
    "9223372036854775808",
    "euler_a",
    "\"blurry ugly\"",
    "--help-me",
];

fn generate(count: usize, pieces: &[&str], seed: u64) -> Vec<String> {
    let mut state = seed;
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
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
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

fn value_json(value: &Value) -> Json {
    match value {
        Value::Int(n) => json!(n),
        Value::Float(x) => cfg_json(*x),
        Value::Text(s) => json!(s),
        Value::Size(w, h) => json!([w, h]),
    }
}

/// What we make of `text`, as `reference.py` writes it (keys named after the options).
fn ours(text: &str, specs: &[OptionSpec]) -> Json {
    let words = match shlex_split_non_posix(text) {
        Ok(words) => words,
        Err(ParseError::NoClosingQuotation) => return json!({"error": "quote"}),
        Err(err) => panic!("{err}"),
    };
    match parse_known_args(&words, specs) {
        Ok(parsed) => {
            let mut answer = json!({"prompt": parsed.prompt, "unknown": parsed.unknown});
            for (spec, value) in specs.iter().zip(&parsed.values) {
                answer[spec.flag.trim_start_matches('-')] = value_json(value);
            }
            answer
        }
        Err(ParseError::Usage(_)) => json!({"error": "usage"}),
        Err(err) => panic!("{err}"),
    }
}

/// Runs `reference.py` with `args`, feeding it `stdin`.
fn reference(args: &[&str], stdin_text: String) -> String {
    let mut child = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference.py"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the reference");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(stdin_text.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success(), "reference.py {args:?} failed");
    String::from_utf8(output.stdout).unwrap()
}

/// Our answers and Python's to `inputs` agree, with `specs` and `reference.py MODE`.
fn agree(mode: &str, specs: &[OptionSpec], inputs: &[String]) {
    let payload: String = inputs.iter().map(|i| format!("{}\n", json!(i))).collect();
    let expected: Vec<Json> = reference(&[mode], payload)
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
        let got = ours(input, specs);
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

#[test]
fn agrees_with_python_argparse_and_shlex() {
    agree(
        "seed",
        &seed_options(),
        &generate(20_000, PIECES, 0x9e37_79b9_7f4a_7c15),
    );
}

#[test]
fn extended_options_agree_with_python_argparse() {
    let pieces: Vec<&str> = PIECES.iter().chain(EXTENDED_PIECES).copied().collect();
    agree(
        "extended",
        &extended_options(),
        &generate(30_000, &pieces, 0x2545_f491_4f6c_dd1d),
    );
}

#[test]
fn help_texts_are_argparse_format_help_at_80_columns() {
    assert_eq!(reference(&["seed", "--help"], String::new()), SEED_HELP);
    assert_eq!(
        reference(&["extended", "--help"], String::new()),
        EXTENDED_HELP
    );
}
