//! The plugins as built and committed (`plugins/*.wasm`), run through the host's plugin
//! runtime: the parser on compat.md §1.7.1 row by row with the seed's reply strings, hostile
//! components contained, hot reload under load, the operator CLI.

use std::path::Path;
use std::sync::Arc;

use easel::plugins::{Limits, Outcome, Plugin, Runtime, example_caller};

const PARSER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/parser.wasm");

fn parser(config: Vec<(String, String)>) -> (Plugin, Arc<Vec<(String, String)>>) {
    let runtime = Runtime::new(Limits::default()).unwrap();
    (runtime.load(Path::new(PARSER)).unwrap(), Arc::new(config))
}

fn no_config() -> Arc<Vec<(String, String)>> {
    Arc::new(Vec::new())
}

/// (prompt, cfg, steps, warnings) of a request, or the text of help/error, or "ignore".
fn run((plugin, config): &(Plugin, Arc<Vec<(String, String)>>), content: &str) -> String {
    match plugin.parse(config, content, &example_caller()).unwrap() {
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
    let (p, config) = parser(Vec::new());
    let Outcome::Help(text) = p.parse(&config, "/art --help", &example_caller()).unwrap() else {
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
        .from_bytes("junk", b"\0asm\x01\0\0\0")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("junk is not a valid plugin"), "{err}");
    // A well-formed component that exports nothing of easel's.
    let err = runtime
        .from_bytes("empty", b"\0asm\x0d\0\x01\0")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "empty is not a valid plugin: it exports nothing, none of easel's interfaces; a plugin \
         exports at least one of easel:plugin/access@0.1.0, easel:plugin/parser@0.1.0, \
         easel:plugin/model-policy@0.1.0, easel:plugin/reactions@0.1.0"
    );
    let err = runtime
        .load(Path::new("/nonexistent.wasm"))
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

fn hostile(limits: Limits) -> Plugin {
    let runtime = Runtime::new(limits).unwrap();
    runtime.load(Path::new(HOSTILE)).unwrap()
}

fn answers(plugin: &Plugin, content: &str) -> bool {
    matches!(
        plugin.parse(&no_config(), content, &example_caller()),
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
        .parse(&no_config(), "loop", &example_caller())
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
        .parse(&no_config(), "grow", &example_caller())
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
        .parse(&no_config(), "panic", &example_caller())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unreachable") || err.contains("wasm trap"),
        "{err}"
    );
    // 64 MiB does not fit under a 16 MiB cap: the guest fails to allocate and traps.
    assert!(
        plugin
            .parse(&no_config(), "huge", &example_caller())
            .is_err()
    );
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

    // The other roles' functions, with the JSON mapping of the README.
    let (ok, out, _) = easel(&[
        "plugin",
        "call",
        "reactions",
        "on-stage",
        "\"finished\"",
        "{}",
        r#"{"prompt": "a red fox"}"#,
        "\"gpu-box\"",
        "--dir",
        dir,
    ]);
    assert!(ok);
    assert_eq!(
        out,
        r#"[{"remove-emoji":"⏱️"},{"add-emoji":"💯"},{"reply":"Parsed args: {'prompt': 'a red fox', 'cfg': 7.5, 'steps': 50} processed by hostname: gpu-box"}]"#
    );
    let (ok, out, _) = easel(&["plugin", "call", "access", "check", "--dir", dir]);
    assert!(ok);
    assert_eq!(out, r#"{"allow":null}"#);
    let (ok, out, _) = easel(&[
        "plugin",
        "call",
        "access",
        "check",
        r#"{"is_self": true}"#,
        "--dir",
        dir,
    ]);
    assert!(ok);
    assert_eq!(out, r#"{"deny":"the bot's own message"}"#);
    let (ok, out, _) = easel(&[
        "plugin",
        "call",
        "model-policy",
        "decide",
        r#"{"width": 4096, "height": 4096}"#,
        "--dir",
        dir,
    ]);
    assert!(ok);
    assert_eq!(
        out,
        r#"{"deny":"The total value of (Width * Height) must not exceed 3686400"}"#
    );
    let (ok, _, err) = easel(&["plugin", "call", "access", "parse", "\"x\"", "--dir", dir]);
    assert!(!ok);
    assert_eq!(
        err,
        "error: plugin access does not export the parser interface"
    );

    let (ok, out, _) = easel(&["plugin", "list", "--dir", dir]);
    assert!(ok);
    let row = out
        .lines()
        .find(|l| l.starts_with("parser "))
        .expect("parser listed");
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>()[1..4],
        ["parser", "ok", "0.1.0"],
        "{row}"
    );
    let row = out
        .lines()
        .find(|l| l.starts_with("parser-extended "))
        .expect("parser-extended listed");
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>()[1..3],
        ["-", "ok"],
        "a plugin no role names serves none: {row}"
    );
    assert!(
        out.contains(
            "role parser        plugin parser             served by plugin   on_failure builtin"
        ),
        "{out}"
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
    use easel::plugins::{PluginSettings, Registry};
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

    /// The parser as `p.wasm` in a directory of its own, served by a registry that watches it
    /// (until the last value is dropped).
    fn watched_parser() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        Arc<Registry>,
        impl Sized,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("p.wasm");
        std::fs::copy(PARSER, &target).unwrap();
        let runtime = Runtime::new(Limits::default()).unwrap();
        let registry = Registry::open(runtime, dir.path(), PluginSettings::default());
        let watcher = registry.watch().unwrap();
        (dir, target, registry, watcher)
    }

    #[test]
    fn list_shows_good_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(PARSER, dir.path().join("parser.wasm")).unwrap();
        std::fs::write(dir.path().join("broken.wasm"), b"not wasm").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
        let runtime = Runtime::new(Limits::default()).unwrap();
        let registry = Registry::open(runtime, dir.path(), PluginSettings::default());
        let list = registry.list();
        assert_eq!(list.len(), 2);
        assert_eq!(
            (list[0].name.as_str(), list[0].status),
            ("broken", "failed")
        );
        assert!(
            list[0]
                .last_error
                .as_deref()
                .unwrap()
                .contains("not a valid plugin")
        );
        assert_eq!((list[1].name.as_str(), list[1].status), ("parser", "ok"));
        assert_eq!(list[1].exports, ["easel:plugin/parser@0.1.0"]);
        assert_eq!(list[1].roles, ["parser"]);
        assert_eq!(list[1].wit_version, Some("0.1.0"));
        assert!(registry.plugin("broken").is_none());
        assert!(registry.plugin("parser").is_some());
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
        let registry = Registry::open(runtime, dir.path(), PluginSettings::default());
        let _watcher = registry.watch().unwrap();

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let callers: Vec<_> = (0..8)
            .map(|t| {
                let registry = registry.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut old, mut new) = (0u64, 0u64);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let plugin = registry.plugin("p").expect("always a version serving");
                        let content = format!("/art fox {t}");
                        match plugin.parse(&no_config(), &content, &example_caller()) {
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
            registry.plugin("p").is_some_and(|p| p.sha256() == last)
                && registry
                    .list()
                    .iter()
                    .any(|s| s.name == "p" && s.status == "ok")
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
        assert_eq!(status.status, "ok");
    }

    /// Loading a file opens and reads it; that must not count as a change, or every reload
    /// would set off the next one. One write in place, then one rename into place: one reload
    /// each, and none after.
    #[test]
    fn one_change_is_one_reload() {
        let (dir, target, registry, _watcher) = watched_parser();
        let reloads = || {
            registry
                .list()
                .into_iter()
                .find(|s| s.name == "p")
                .map(|s| s.reloads)
                .unwrap()
        };

        std::fs::write(&target, std::fs::read(HOSTILE).unwrap()).unwrap();
        wait_for("the write to be loaded", || reloads() == 1);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(reloads(), 1, "reloads after one write in place");

        let tmp = dir.path().join(".p.tmp");
        std::fs::copy(PARSER, &tmp).unwrap();
        std::fs::rename(&tmp, &target).unwrap();
        wait_for("the rename to be loaded", || reloads() == 2);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(reloads(), 2, "reloads after one rename into place");

        // The same holds for any watched file whose handler reads it (config.toml).
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "").unwrap();
        let counter = seen.clone();
        let file = config.clone();
        let _config_watcher = easel::plugins::watch_file(&config, move || {
            std::fs::read_to_string(&file).unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            true
        })
        .unwrap();
        let changes = || seen.load(std::sync::atomic::Ordering::SeqCst);
        std::fs::write(&config, "[plugins]\n").unwrap();
        wait_for("the config change", || changes() == 1);
        // Writes of other files beside it (a busy SQLite database) wake nothing.
        for i in 0..20 {
            std::fs::write(dir.path().join("easel.db-wal"), format!("{i}")).unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(changes(), 1);
        // Saved by a rename into place, as editors do: one change, and the new file is
        // watched from then on.
        let tmp = dir.path().join(".config.toml.swp");
        std::fs::write(&tmp, "[plugins]\ndeadline_ms = 40\n").unwrap();
        std::fs::rename(&tmp, &config).unwrap();
        wait_for("the replaced config", || changes() == 2);
        std::fs::write(&config, "[plugins]\ndeadline_ms = 30\n").unwrap();
        wait_for("a write to the new file", || changes() == 3);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(changes(), 3);
    }

    #[test]
    fn a_deleted_file_keeps_its_last_version_serving() {
        let (_dir, target, registry, _watcher) = watched_parser();
        std::fs::remove_file(&target).unwrap();
        wait_for("the deletion to be noticed", || {
            registry
                .list()
                .iter()
                .any(|s| s.name == "p" && s.status == "stale")
        });
        let plugin = registry.plugin("p").unwrap();
        assert!(matches!(
            plugin.parse(&no_config(), "/art a cat", &example_caller()),
            Ok(Outcome::Request(_))
        ));
    }
}

/// The other default plugins, and the C plugin, called directly.
mod default_plugins {
    use super::*;
    use easel::plugins::{
        Action, Decision, FrontEnd, JobRequest, Model, PolicyLimits, Stage, Verdict,
    };

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins");

    fn load(file: &str) -> Plugin {
        Runtime::new(Limits::default())
            .unwrap()
            .load(&Path::new(DIR).join(file))
            .unwrap()
    }

    fn config(pairs: &[(&str, &str)]) -> Arc<Vec<(String, String)>> {
        Arc::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn caller(edit: impl FnOnce(&mut easel::plugins::Caller)) -> easel::plugins::Caller {
        let mut caller = example_caller();
        edit(&mut caller);
        caller
    }

    #[test]
    fn access_follows_the_seed_lists() {
        let access = load("access.wasm");
        let check = |config: &Arc<Vec<(String, String)>>, c: &easel::plugins::Caller| match access
            .check(config, c)
            .unwrap()
        {
            Decision::Allow => "allow".to_owned(),
            Decision::Deny(reason) => format!("deny: {reason}"),
        };
        let open = config(&[]);
        assert_eq!(check(&open, &example_caller()), "allow");
        assert!(check(&open, &caller(|c| c.is_self = true)).starts_with("deny"));
        // DMs are off unless allowed.
        assert!(check(&open, &caller(|c| c.is_dm = true)).starts_with("deny"));
        assert_eq!(
            check(
                &config(&[("allow_dms", "true")]),
                &caller(|c| c.is_dm = true)
            ),
            "allow"
        );
        let listen = config(&[("listen_channels", r#"["Guild:art", 'Guild:more']"#)]);
        assert_eq!(check(&listen, &example_caller()), "allow");
        assert!(check(&listen, &caller(|c| c.channel = "general".into())).starts_with("deny"));
        // listen_channels wins over ignore_channels.
        let both = config(&[
            ("listen_channels", r#"["Guild:art"]"#),
            ("ignore_channels", r#"["Guild:art"]"#),
        ]);
        assert_eq!(check(&both, &example_caller()), "allow");
        let ignore = config(&[("ignore_channels", r#"["Guild:art"]"#)]);
        assert!(check(&ignore, &example_caller()).starts_with("deny"));
        assert_eq!(
            check(&ignore, &caller(|c| c.channel = "other".into())),
            "allow"
        );
        // Users are `name#discriminator`, case-sensitive.
        let users = config(&[("listen_users", r#"["artist#0"]"#)]);
        assert_eq!(check(&users, &example_caller()), "allow");
        assert!(check(&users, &caller(|c| c.user_tag = "Artist#0".into())).starts_with("deny"));
        let banned = config(&[("ignore_users", r#"["artist#0"]"#)]);
        assert!(check(&banned, &example_caller()).starts_with("deny"));
        // HTTP callers: by role.
        let http = |role| {
            caller(|c| {
                c.front_end = FrontEnd::Http;
                c.role = role;
            })
        };
        assert!(check(&open, &http(0)).starts_with("deny"));
        assert_eq!(check(&open, &http(1)), "allow");
    }

    fn request() -> JobRequest {
        easel::plugins::example_request()
    }

    #[test]
    fn reactions_follow_the_stages() {
        let reactions = load("reactions.wasm");
        let on = |stage, request: Option<&JobRequest>, info: &str| {
            reactions
                .on_stage(&config(&[]), stage, &example_caller(), request, info)
                .unwrap()
        };
        let r = request();
        assert_eq!(
            on(Stage::Accepted, None, ""),
            [Action::AddEmoji("👍".into())]
        );
        assert_eq!(
            on(Stage::Help, None, "usage: x"),
            [
                Action::Reply("usage: x".into()),
                Action::AddEmoji("💯".into())
            ]
        );
        assert_eq!(
            on(Stage::Dispatched, Some(&r), "gpu-box"),
            [Action::AddEmoji("⏱️".into())]
        );
        assert_eq!(
            on(Stage::Finished, Some(&r), "gpu-box"),
            [
                Action::RemoveEmoji("⏱️".into()),
                Action::AddEmoji("💯".into()),
                Action::Reply(
                    "Parsed args: {'prompt': 'a red fox', 'cfg': 7.5, 'steps': 50} processed by hostname: gpu-box"
                        .into()
                ),
            ]
        );
        let quoted = JobRequest {
            prompt: "it's \"x\"".into(),
            cfg: 5.0,
            ..r.clone()
        };
        assert_eq!(
            on(Stage::Finished, Some(&quoted), "h").last().unwrap(),
            &Action::Reply(
                r#"Parsed args: {'prompt': 'it\'s "x"', 'cfg': 5.0, 'steps': 50} processed by hostname: h"#
                    .into()
            )
        );
        let failed = on(Stage::Failed, Some(&r), "worker lost");
        assert_eq!(failed[1], Action::AddEmoji("❌".into()));
        assert_eq!(
            failed[2],
            Action::Reply("Sorry, this request failed: worker lost".into())
        );
        assert_eq!(
            on(Stage::Queued, Some(&r), "Skipping unknown args: --foo"),
            [Action::Reply("Skipping unknown args: --foo".into())]
        );
        // Emoji come from the seed's [discord.style] keys.
        let styled = reactions
            .on_stage(
                &config(&[("ack_emoji", "🦊")]),
                Stage::Accepted,
                &example_caller(),
                None,
                "",
            )
            .unwrap();
        assert_eq!(styled, [Action::AddEmoji("🦊".into())]);
    }

    #[test]
    fn model_policy_applies_defaults_caps_and_restrictions() {
        let policy = load("model-policy.wasm");
        let catalog = [
            Model {
                name: "sdxl_base".into(),
                friendly_name: Some("SDXL".into()),
                restricted: false,
            },
            Model {
                name: "secret".into(),
                friendly_name: None,
                restricted: true,
            },
        ];
        let limits = PolicyLimits {
            max_pixels: 1024 * 1024,
        };
        let decide = |config: &Arc<Vec<(String, String)>>, r: JobRequest, role: u8| {
            policy
                .decide(config, &r, &caller(|c| c.role = role), &catalog, limits)
                .unwrap()
        };
        let base = request();
        let capped = decide(
            &config(&[("max_steps", "30"), ("default_model", "sdxl_base")]),
            JobRequest {
                steps: 100,
                ..base.clone()
            },
            1,
        );
        let Verdict::Allow(r) = capped else {
            panic!("{capped:?}")
        };
        assert_eq!((r.steps, r.model.as_str()), (30, "sdxl_base"));
        let Verdict::Allow(r) = decide(
            &config(&[]),
            JobRequest {
                model: "SDXL".into(),
                ..base.clone()
            },
            1,
        ) else {
            panic!()
        };
        assert_eq!(r.model, "sdxl_base");
        assert_eq!(
            decide(
                &config(&[]),
                JobRequest {
                    width: 2048,
                    height: 2048,
                    ..base.clone()
                },
                4
            ),
            Verdict::Deny("The total value of (Width * Height) must not exceed 1048576".into())
        );
        let secret = JobRequest {
            model: "secret".into(),
            ..base.clone()
        };
        assert_eq!(
            decide(&config(&[]), secret.clone(), 2),
            Verdict::Deny("The model secret is restricted.".into())
        );
        assert!(matches!(decide(&config(&[]), secret, 3), Verdict::Allow(_)));
    }

    #[test]
    fn parser_extended_adds_options() {
        let parser = load("parser-extended.wasm");
        let parse = |content: &str| {
            parser
                .parse(&config(&[]), content, &example_caller())
                .unwrap()
        };
        let Outcome::Request(parsed) = parse(
            "/art a red fox --negative \"blurry\" --seed 42 --size 640x480 --model sdxl --sampler Euler --st 20",
        ) else {
            panic!()
        };
        let r = parsed.request;
        assert_eq!(
            (
                r.prompt.as_str(),
                r.negative_prompt.as_str(),
                r.seed,
                r.width,
                r.height
            ),
            ("a red fox", "\"blurry\"", 42, 640, 480)
        );
        assert_eq!(
            (r.model.as_str(), r.sampler.as_str(), r.steps, r.cfg),
            ("sdxl", "Euler", 20, 7.5)
        );
        assert_eq!(
            parse("/art a fox --size big"),
            Outcome::Error(
                "Prompt has invalid integer input on integer argument. Please fix and try again."
                    .into()
            )
        );
        let Outcome::Help(help) = parse("/art --help") else {
            panic!()
        };
        assert!(help.contains("--size"), "{help}");
    }

    #[test]
    fn a_c_plugin_runs_with_wasi_denied() {
        let plugin = load("fixtures/access-c.wasm");
        assert_eq!(plugin.roles(), [easel::plugins::Role::Access]);
        let none = config(&[]);
        assert_eq!(
            plugin.check(&none, &caller(|c| c.role = 1)).unwrap(),
            Decision::Deny("role 1 is below min_role 2 (C plugin)".into())
        );
        assert_eq!(
            plugin.check(&none, &caller(|c| c.role = 2)).unwrap(),
            Decision::Allow
        );
        assert_eq!(
            plugin
                .check(&config(&[("min_role", "4")]), &caller(|c| c.role = 3))
                .unwrap(),
            Decision::Deny("role 3 is below min_role 4 (C plugin)".into())
        );
        // What the sandbox lets it see: no environment, no files.
        let Decision::Deny(probe) = plugin
            .check(&config(&[("probe", "true")]), &example_caller())
            .unwrap()
        else {
            panic!("probe mode denies")
        };
        assert!(
            probe.starts_with("probe: env HOME=(unset), open /etc/hostname: "),
            "{probe}"
        );
        assert!(!probe.ends_with(": ok"), "{probe}");
    }
}

/// Roles, settings and failure policies, through the registry as the front ends call it.
mod roles {
    use super::*;
    use easel::config::Config;
    use easel::plugins::{Decision, PARSER_UNAVAILABLE, PluginSettings, Registry};

    fn settings(toml: &str) -> PluginSettings {
        PluginSettings::from_config(&Config::parse(toml, Path::new("config.toml")).unwrap())
    }

    fn registry(toml: &str) -> (tempfile::TempDir, Arc<Registry>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(PARSER, dir.path().join("parser.wasm")).unwrap();
        std::fs::copy(HOSTILE, dir.path().join("hostile.wasm")).unwrap();
        let runtime = Runtime::new(Limits {
            deadline: std::time::Duration::from_secs(5),
            ..Limits::default()
        })
        .unwrap();
        let registry = Registry::open(runtime, dir.path(), settings(toml));
        (dir, registry)
    }

    const HOSTILE_PARSER: &str = "[discord.settings]\nwake_word = \"panic\"\n\
                                  [plugins.roles]\nparser = \"hostile\"\n";

    #[test]
    fn failure_policies() {
        // builtin (the default): the embedded parser answers, with the seed settings.
        let (_dir, r) = registry(HOSTILE_PARSER);
        assert_eq!(
            r.parse_blocking("panic", &example_caller()),
            Outcome::Error("Skipping request with empty prompt.".into())
        );
        let hostile = r.list().into_iter().find(|p| p.name == "hostile").unwrap();
        assert_eq!(
            (hostile.failed_calls, hostile.roles.clone()),
            (1, vec!["parser".to_owned()])
        );
        // A call that works is the plugin's own answer.
        assert_eq!(
            r.parse_blocking("hi", &example_caller()),
            Outcome::Help("ok: hi".into())
        );
        let closed = format!("{HOSTILE_PARSER}[plugins.hostile]\non_failure = \"fail-closed\"\n");
        let (_dir, r) = registry(&closed);
        assert_eq!(
            r.parse_blocking("panic", &example_caller()),
            Outcome::Error(PARSER_UNAVAILABLE.into())
        );
        let open = format!("{HOSTILE_PARSER}[plugins.hostile]\non_failure = \"fail-open\"\n");
        let (_dir, r) = registry(&open);
        assert_eq!(
            r.parse_blocking("panic", &example_caller()),
            Outcome::Ignore
        );
    }

    #[test]
    fn roles_switch_with_the_settings() {
        let (_dir, r) = registry("");
        assert!(matches!(
            r.parse_blocking("/art a cat", &example_caller()),
            Outcome::Request(_)
        ));
        // Nothing in the directory serves access: the built-in does (allowing this caller).
        assert_eq!(r.check_blocking(&example_caller()), Decision::Allow);
        r.set_settings(settings("[plugins.roles]\nparser = \"hostile\"\n"));
        assert_eq!(
            r.parse_blocking("/art a cat", &example_caller()),
            Outcome::Help("ok: /art a cat".into())
        );
        // A plugin named for a role it does not export fails like any call: here, closed.
        r.set_settings(settings(
            "[plugins.roles]\naccess = \"parser\"\n[plugins.parser]\non_failure = \"fail-closed\"\n",
        ));
        assert!(matches!(
            r.check_blocking(&example_caller()),
            Decision::Deny(_)
        ));
        // "" names the built-in explicitly.
        r.set_settings(settings("[plugins.roles]\nparser = \"\"\n"));
        assert!(matches!(
            r.parse_blocking("/art a cat", &example_caller()),
            Outcome::Request(_)
        ));
        let roles = r.roles();
        let parser = roles
            .iter()
            .find(|(role, ..)| role.as_str() == "parser")
            .unwrap();
        assert_eq!(parser.2, "builtin");
    }

    #[test]
    fn the_precompiled_cache_is_used_and_survives_damage() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let runtime = Runtime::with_cache(Limits::default(), Some(&cache)).unwrap();
        let first = runtime.load(Path::new(PARSER)).unwrap();
        let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
        assert_eq!(entries.len(), 1);
        let entry = entries[0].as_ref().unwrap().path();
        assert!(
            entry
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(first.sha256())
        );
        // Read back: answers the same.
        let again = runtime.load(Path::new(PARSER)).unwrap();
        assert!(matches!(
            again.parse(&no_config(), "/art a cat", &example_caller()),
            Ok(Outcome::Request(_))
        ));
        // A damaged entry is compiled again and replaced.
        std::fs::write(&entry, b"garbage").unwrap();
        let healed = runtime.load(Path::new(PARSER)).unwrap();
        assert!(matches!(
            healed.parse(&no_config(), "/art a cat", &example_caller()),
            Ok(Outcome::Request(_))
        ));
        assert!(std::fs::read(&entry).unwrap().len() > 1000);
    }
}
