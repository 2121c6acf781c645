//! npm packages for test peers, installed from the registry on first use under
//! `CARGO_TARGET_TMPDIR/<name>-<version>` (once per process, under an exclusive file lock on
//! `<name>-<version>.lock` across test processes; skipped when already there).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

/// The `node_modules` folder holding `name@version` (`version` is a prefix such as `"4.8"`).
pub fn node_modules(name: &str, version: &str) -> PathBuf {
    static DIRS: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let spec = format!("{name}@{version}");
    let mut dirs = DIRS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = dirs.get(&spec) {
        return dir.clone();
    }
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let prefix = tmp.join(format!("{name}-{version}"));
    let lock_path = tmp.join(format!("{name}-{version}.lock"));
    std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("creating {}: {e}", tmp.display()));
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
    let wanted = |v: Option<String>| v.is_some_and(|v| v.starts_with(version));
    if !wanted(installed_version(&prefix, name)) {
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&prefix)
            .arg(&spec)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running npm to install {spec} (is npm on PATH?): {e}"));
        let installed = installed_version(&prefix, name);
        if !out.status.success() || !wanted(installed.clone()) {
            panic!(
                "`npm install --prefix {} {spec}` failed ({}; installed version {installed:?})\n\
                 stdout:\n{}\nstderr:\n{}",
                prefix.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
        }
    }
    drop(lock);
    let dir = prefix.join("node_modules");
    dirs.insert(spec, dir.clone());
    dir
}

/// The `version` in `<prefix>/node_modules/<name>/package.json`, if readable.
fn installed_version(prefix: &Path, name: &str) -> Option<String> {
    let path = prefix.join("node_modules").join(name).join("package.json");
    let json: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(json.get("version")?.as_str()?.to_owned())
}
