//! Bad configuration stops `easel serve` with exit code 2 and one clear line.

mod common;

use std::process::Command;

/// Runs `easel serve --config <file with text>` with extra env; returns (exit code, stderr).
fn serve_with(text: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let mut command = Command::new(common::easel_bin());
    command
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path());
    for var in [
        "HTTP_API_PORT",
        "RT_API_PORT",
        "IMAGE_PIXEL_LIMIT",
        "DATABASE_URL",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    )
}

fn assert_refused(text: &str, env: &[(&str, &str)], expected: &str) {
    let (code, stderr) = serve_with(text, env);
    assert_eq!(code, Some(2), "exit code for {text:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert_eq!(stderr, expected);
}

#[test]
fn typo_in_key_suggests_the_closest() {
    assert_refused(
        "[api]\nhttp_prot = 3333\n",
        &[],
        "config error: unknown key `api.http_prot` (did you mean `http_port`?)",
    );
    assert_refused(
        "[discord.settings]\nwakeword = \"/art\"\n",
        &[],
        "config error: unknown key `discord.settings.wakeword` (did you mean `wake_word`?)",
    );
}

#[test]
fn unknown_section_is_named() {
    assert_refused(
        "[databse]\nurl = \"sqlite://x.db\"\n",
        &[],
        "config error: unknown section `databse` (did you mean `database`?)",
    );
    let (code, stderr) = serve_with("[zzz]\n", &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with("config error: unknown section `zzz` (known here: "),
        "{stderr}"
    );
}

#[test]
fn wrong_type_names_key_found_and_expected() {
    assert_refused(
        "[api]\nhttp_port = \"3333x\"\n",
        &[],
        "config error: `api.http_port`: found string \"3333x\", expected a port number (0-65535)",
    );
    assert_refused(
        "[api]\nhttp_port = 70000\n",
        &[],
        "config error: `api.http_port`: found integer `70000`, expected a port number (0-65535)",
    );
    assert_refused(
        "[discord.settings]\nlisten_channels = \"Guild:general\"\n",
        &[],
        "config error: `discord.settings.listen_channels`: found string \"Guild:general\", expected a list of strings",
    );
}

#[test]
fn bad_database_url() {
    assert_refused(
        "[database]\nurl = \"redis://localhost\"\n",
        &[],
        "config error: `database.url`: found \"redis://localhost\", expected a URL starting with sqlite://, mysql://, mariadb://, postgres:// or postgresql://",
    );
    // A password in a bad URL is not echoed.
    let (code, stderr) = serve_with("[database]\nurl = \"oracle://u:hunter2@h/db\"\n", &[]);
    assert_eq!(code, Some(2));
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn bad_environment_override() {
    assert_refused(
        "",
        &[("HTTP_API_PORT", "eighty")],
        "config error: `environment variable HTTP_API_PORT`: found \"eighty\", expected a port number (0-65535)",
    );
}

#[test]
fn invalid_toml_and_missing_file() {
    let (code, stderr) = serve_with("[api\nhttp_port = 1\n", &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with("config error: ") && stderr.contains("line 1"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let output = Command::new(common::easel_bin())
        .args(["serve", "--config", "/nonexistent/easel.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/easel.toml"),
        "{stderr}"
    );
}

#[test]
fn placeholder_discord_token_is_not_an_error() {
    // The shipped config.toml is accepted as it is (its port may be busy, so only parse it).
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config.toml")).unwrap();
    let config = easel::config::Config::parse(&shipped, std::path::Path::new("config.toml"))
        .expect("shipped config.toml parses");
    config.validate().unwrap();
    // Every value in the shipped file is the embedded default: the file documents, not changes.
    let untitled = easel::config::Config {
        title: String::new(),
        ..config.clone()
    };
    assert_eq!(untitled, easel::config::Config::default());
    assert!(!config.discord_enabled());
}

#[test]
fn version_names_the_commit() {
    let out = std::process::Command::new(common::easel_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let expected = format!("easel {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&expected), "{text}");
    let commit = text
        .trim()
        .trim_start_matches(&expected)
        .trim_end_matches(')');
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{text}"
    );
}
