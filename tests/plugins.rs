//! The default parser plugin, as built and committed (`plugins/parser.wasm`), run through the
//! host's plugin runtime: compat.md §1.7.1 row by row, with the seed's reply strings.

use std::path::Path;
use std::sync::Arc;

use easel::plugins::{Limits, Outcome, ParserPlugin, Runtime, example_caller};

const PARSER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/parser.wasm");

fn parser(config: Vec<(String, String)>) -> ParserPlugin {
    let runtime = Runtime::new(Limits::default()).unwrap();
    runtime
        .load_parser("parser", Path::new(PARSER), config)
        .unwrap()
}

/// (prompt, cfg, steps, warnings) of a request, or the text of help/error, or "ignore".
fn run(plugin: &ParserPlugin, content: &str) -> String {
    match plugin.parse(content, &example_caller()).unwrap() {
        Outcome::Ignore => "ignore".into(),
        Outcome::Help(text) => format!("help:{}", text.lines().next().unwrap_or("")),
        Outcome::Error(text) => format!("error:{text}"),
        Outcome::Request(parsed) => format!(
            "prompt={:?} cfg={} steps={} warnings={:?}",
            parsed.request.prompt, parsed.request.cfg, parsed.request.steps, parsed.warnings
        ),
    }
}

#[test]
fn seed_parse_table_through_the_plugin() {
    let p = parser(Vec::new());
    let rows: &[(&str, &str)] = &[
        (
            "/art a cat",
            r#"prompt="a cat" cfg=7.5 steps=50 warnings=[]"#,
        ),
        (
            "/art a cat --cfg 5",
            r#"prompt="a cat" cfg=5 steps=50 warnings=[]"#,
        ),
        (
            "/art a cat --cfg 5 more words",
            r#"prompt="a cat" cfg=5 steps=50 warnings=["Skipping unknown args: more words"]"#,
        ),
        (
            "/art a \"cat dog\" --steps 10",
            r#"prompt="a \"cat dog\"" cfg=7.5 steps=10 warnings=[]"#,
        ),
        (
            "/art a cat --foo bar",
            r#"prompt="a cat" cfg=7.5 steps=50 warnings=["Skipping unknown args: --foo bar"]"#,
        ),
        (
            "/art a cat -h",
            r#"prompt="a cat" cfg=7.5 steps=50 warnings=["Skipping unknown args: -h"]"#,
        ),
        (
            "/art a \"cat",
            "error:Prompt has open quotation with no closing quotation. Please fix and try again.",
        ),
        (
            "/art a cat --steps x",
            "error:Prompt has invalid integer input on integer argument. Please fix and try again.",
        ),
        (
            "/art a cat --steps 2.5",
            "error:Prompt has invalid integer input on integer argument. Please fix and try again.",
        ),
        (
            "/art a cat --cfg",
            "error:Prompt has invalid integer input on integer argument. Please fix and try again.",
        ),
        (
            "/art --steps 20 a cat",
            r#"prompt="a cat" cfg=7.5 steps=20 warnings=[]"#,
        ),
        (
            "/art a red fox --st 20",
            r#"prompt="a red fox" cfg=7.5 steps=20 warnings=[]"#,
        ),
        (
            "/art a cat --c=3",
            r#"prompt="a cat" cfg=3 steps=50 warnings=[]"#,
        ),
        (
            "/art a cat --cfg -1",
            r#"prompt="a cat" cfg=-1 steps=50 warnings=[]"#,
        ),
        ("/art", "error:Skipping request with empty prompt."),
        (
            "/art --steps 5",
            "error:Skipping request with empty prompt.",
        ),
        // The wake word is case-sensitive, a prefix match, and removed everywhere.
        ("/ART a cat", "ignore"),
        ("hello /art a cat", "ignore"),
        (
            "/artsy fox",
            r#"prompt="sy fox" cfg=7.5 steps=50 warnings=[]"#,
        ),
        (
            "/art a /art cat",
            r#"prompt="a cat" cfg=7.5 steps=50 warnings=[]"#,
        ),
        (
            "/art a cat --help",
            "help:usage: StableDiscord [--cfg CFG] [--steps STEPS] [prompt ...]",
        ),
        (
            "/art --helpme",
            "help:usage: StableDiscord [--cfg CFG] [--steps STEPS] [prompt ...]",
        ),
    ];
    for (input, expected) in rows {
        assert_eq!(run(&p, input), *expected, "input {input:?}");
    }
}

#[test]
fn help_text_is_the_seeds() {
    let p = parser(Vec::new());
    let Outcome::Help(text) = p.parse("/art --help", &example_caller()).unwrap() else {
        panic!("help expected");
    };
    assert!(
        text.contains("to an argument is presumed to bethe prompt."),
        "{text}"
    );
    assert!(text.contains("(Defaults to 50)"));
}

#[test]
fn wake_word_comes_from_the_plugin_config() {
    let p = parser(vec![("wake_word".into(), "!paint".into())]);
    assert_eq!(run(&p, "/art a cat"), "ignore");
    assert_eq!(
        run(&p, "!paint a cat --steps 3"),
        r#"prompt="a cat" cfg=7.5 steps=3 warnings=[]"#
    );
}

#[test]
fn not_a_component_is_a_clear_error() {
    let runtime = Runtime::new(Limits::default()).unwrap();
    let err = runtime
        .parser_from_bytes("junk", b"\0asm\x01\0\0\0", Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("junk is not a valid plugin"), "{err}");
    let err = runtime
        .load_parser("missing", Path::new("/nonexistent.wasm"), Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read /nonexistent.wasm"), "{err}");
}

#[test]
fn calls_run_concurrently_in_fresh_instances() {
    let p = Arc::new(parser(Vec::new()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let out = run(&p, &format!("/art fox {t} {i} --steps {}", i % 50 + 1));
                    assert_eq!(
                        out,
                        format!(
                            r#"prompt="fox {t} {i}" cfg=7.5 steps={} warnings=[]"#,
                            i % 50 + 1
                        )
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

const HOSTILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../plugins/fixtures/hostile.wasm"
);

fn hostile(limits: Limits) -> ParserPlugin {
    let runtime = Runtime::new(limits).unwrap();
    runtime
        .load_parser("hostile", Path::new(HOSTILE), Vec::new())
        .unwrap()
}

fn answers(plugin: &ParserPlugin, content: &str) -> bool {
    matches!(
        plugin.parse(content, &example_caller()),
        Ok(Outcome::Help(text)) if text == format!("ok: {content}")
    )
}

#[test]
fn an_endless_loop_is_stopped_at_the_deadline() {
    let limits = Limits {
        deadline: std::time::Duration::from_millis(50),
        ..Limits::default()
    };
    let plugin = hostile(limits);
    let started = std::time::Instant::now();
    let err = plugin
        .parse("loop", &example_caller())
        .unwrap_err()
        .to_string();
    let took = started.elapsed();
    assert!(err.contains("deadline of 50ms exceeded"), "{err}");
    // Stopped at the deadline, not long after (a loose bound: tests share 2 cores; the tight
    // number is for a benchmark to measure).
    assert!(
        took >= std::time::Duration::from_millis(50)
            && took <= std::time::Duration::from_millis(300),
        "stopped after {took:?}"
    );
    // The next call gets a fresh instance and answers.
    assert!(answers(&plugin, "still here"));
}

#[test]
fn unbounded_memory_is_trapped_at_the_cap() {
    let plugin = hostile(Limits {
        memory: 8 << 20,
        deadline: std::time::Duration::from_secs(5),
        ..Limits::default()
    });
    let err = plugin
        .parse("grow", &example_caller())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("plugin hostile failed"), "{err}");
    assert!(answers(&plugin, "after the hog"));
}

#[test]
fn a_panic_and_a_huge_answer_are_contained() {
    let plugin = hostile(Limits {
        memory: 16 << 20,
        ..Limits::default()
    });
    let err = plugin
        .parse("panic", &example_caller())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unreachable") || err.contains("wasm trap"),
        "{err}"
    );
    // 64 MiB does not fit under a 16 MiB cap: the guest fails to allocate and traps.
    assert!(plugin.parse("huge", &example_caller()).is_err());
    assert!(answers(&plugin, "fine"));
    // And the real parser, on the same kind of runtime, is unaffected.
    let real = parser(Vec::new());
    assert_eq!(
        run(&real, "/art a cat"),
        r#"prompt="a cat" cfg=7.5 steps=50 warnings=[]"#
    );
}

fn easel(args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_easel"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    )
}

#[test]
fn operator_cli_check_and_call() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins");
    let (ok, out, _) = easel(&[
        "plugin",
        "call",
        "parser",
        "parse",
        "\"/art a red fox --steps 20\"",
        "--dir",
        dir,
    ]);
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["request"]["request"]["prompt"], "a red fox");
    assert_eq!(json["request"]["request"]["steps"], 20);
    assert_eq!(json["request"]["warnings"], serde_json::json!([]));

    let (ok, out, _) = easel(&[
        "plugin",
        "call",
        "parser",
        "parse",
        "\"hello\"",
        "--dir",
        dir,
    ]);
    assert!(ok);
    assert_eq!(out, r#"{"ignore":null}"#);

    let (ok, _, err) = easel(&[
        "plugin",
        "call",
        "parser",
        "parse",
        "\"/art x\"",
        r#"{"is-dm": "yes"}"#,
        "--dir",
        dir,
    ]);
    assert!(!ok);
    assert_eq!(
        err,
        "error: caller.is-dm: expected true or false, found \"yes\""
    );

    let (ok, out, _) = easel(&["plugin", "list", "--dir", dir]);
    assert!(ok);
    let row = out
        .lines()
        .find(|l| l.starts_with("parser "))
        .expect("parser listed");
    assert!(
        row.split_whitespace().collect::<Vec<_>>()[1..3] == ["ok", "parser"],
        "{row}"
    );

    let (ok, out, _) = easel(&["plugin", "check", PARSER]);
    assert!(
        ok && out.contains("ok, exports easel:plugin/parser@0.1.0"),
        "{out}"
    );
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let (ok, _, err) = easel(&["plugin", "check", manifest]);
    assert!(!ok);
    assert!(
        err.contains("is not a valid plugin") && err.lines().count() == 1,
        "{err}"
    );
}

mod hot_reload {
    use super::*;
    use easel::plugins::{PluginConfigs, Registry};
    use std::time::{Duration, Instant};

    fn sha256_hex(bytes: &[u8]) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn list_shows_good_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(PARSER, dir.path().join("parser.wasm")).unwrap();
        std::fs::write(dir.path().join("broken.wasm"), b"not wasm").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
        let runtime = Runtime::new(Limits::default()).unwrap();
        let registry = Registry::open(runtime, dir.path(), PluginConfigs::new()).unwrap();
        let list = registry.list();
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].name.as_str(), list[0].state), ("broken", "failed"));
        assert!(
            list[0]
                .last_error
                .as_deref()
                .unwrap()
                .contains("not a valid plugin")
        );
        assert_eq!((list[1].name.as_str(), list[1].state), ("parser", "ok"));
        assert_eq!(list[1].exports, ["parser"]);
        assert!(registry.parser("broken").is_none());
        assert!(registry.parser("parser").is_some());
    }

    /// 8 threads call the plugin in a loop while its file is replaced 100 times (rename into
    /// place, write in place, now and then garbage): no call fails, each is answered by one
    /// of the two versions, and the last good version ends up serving.
    #[test]
    fn replaced_under_concurrent_calls() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("p.wasm");
        let versions = [
            std::fs::read(PARSER).unwrap(),
            std::fs::read(HOSTILE).unwrap(),
        ];
        std::fs::write(&target, &versions[0]).unwrap();
        // This test is about reloading: a deadline far above what a call takes even when the
        // 8 callers and the compiler share 2 busy cores.
        let runtime = Runtime::new(Limits {
            deadline: Duration::from_secs(5),
            ..Limits::default()
        })
        .unwrap();
        let registry = Registry::open(runtime, dir.path(), PluginConfigs::new()).unwrap();
        let _watcher = registry.watch().unwrap();

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let callers: Vec<_> = (0..8)
            .map(|t| {
                let registry = registry.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut old, mut new) = (0u64, 0u64);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let plugin = registry.parser("p").expect("always a version serving");
                        let content = format!("/art fox {t}");
                        match plugin.parse(&content, &example_caller()) {
                            Ok(Outcome::Request(parsed))
                                if parsed.request.prompt == format!("fox {t}") =>
                            {
                                old += 1
                            }
                            Ok(Outcome::Help(text)) if text == format!("ok: {content}") => new += 1,
                            other => panic!("call answered by neither version: {other:?}"),
                        }
                    }
                    (old, new)
                })
            })
            .collect();

        for i in 0..100 {
            let bytes = &versions[(i + 1) % 2];
            if i % 10 == 9 {
                // A broken file must not replace the working version.
                std::fs::write(&target, b"\0asm garbage").unwrap();
                std::thread::sleep(Duration::from_millis(40));
            }
            if i % 2 == 0 {
                let tmp = dir.path().join(".p.wasm.tmp");
                std::fs::write(&tmp, bytes).unwrap();
                std::fs::rename(&tmp, &target).unwrap();
            } else {
                std::fs::write(&target, bytes).unwrap();
            }
            std::thread::sleep(Duration::from_millis(40));
        }
        // The last write was versions[100 % 2] = the parser.
        let last = sha256_hex(&versions[0]);
        // A write in place may be read half-written (state "stale" for a moment); the event of
        // its completion loads it whole.
        wait_for("the last version to serve", || {
            registry.parser("p").is_some_and(|p| p.sha256() == last)
                && registry
                    .list()
                    .iter()
                    .any(|s| s.name == "p" && s.state == "ok")
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut answered = (0, 0);
        for caller in callers {
            let (old, new) = caller.join().expect("no call failed");
            answered.0 += old;
            answered.1 += new;
        }
        assert!(
            answered.0 > 0 && answered.1 > 0,
            "both versions answered: {answered:?}"
        );
        let status = registry.list().into_iter().find(|s| s.name == "p").unwrap();
        // Writes closer together than a compile coalesce, so fewer reloads than writes.
        assert!(status.reloads >= 2, "only {} reloads seen", status.reloads);
        assert_eq!(status.state, "ok");
    }

    #[test]
    fn a_deleted_file_keeps_its_last_version_serving() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("p.wasm");
        std::fs::copy(PARSER, &target).unwrap();
        let runtime = Runtime::new(Limits::default()).unwrap();
        let registry = Registry::open(runtime, dir.path(), PluginConfigs::new()).unwrap();
        let _watcher = registry.watch().unwrap();
        std::fs::remove_file(&target).unwrap();
        wait_for("the deletion to be noticed", || {
            registry
                .list()
                .iter()
                .any(|s| s.name == "p" && s.state == "stale")
        });
        let plugin = registry.parser("p").unwrap();
        assert!(matches!(
            plugin.parse("/art a cat", &example_caller()),
            Ok(Outcome::Request(_))
        ));
    }
}
