//! `easel status`: one terminal screen of what a running server is doing — the queue, the
//! backends (Forge machines, the worker pool) and the plugins — read from its admin API
//! (`/api/admin/queue`, `/api/admin/backends`, `/api/admin/plugins`) with the superuser token
//! or an administrator's JWT. Consumes and emits no job events.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

/// A failed look at the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The server did not answer.
    #[error("{url} did not answer: {reason}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server refused the credentials.
    #[error("{url} answered {status}: {body} (is the token an administrator's?)")]
    Refused {
        /// Where.
        url: String,
        /// The status.
        status: u16,
        /// Its body.
        body: String,
    },
    /// The answer was not the admin API's JSON.
    #[error("{url} answered something that is not easel's admin API")]
    BadAnswer {
        /// Where.
        url: String,
    },
}

/// What the three admin routes said.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// `/api/admin/queue`.
    pub queue: Value,
    /// `/api/admin/backends`.
    pub backends: Value,
    /// `/api/admin/plugins`.
    pub plugins: Value,
}

/// Reads the server at `base` (e.g. `http://127.0.0.1:3333`) with `authorization` (the
/// superuser token, or `Bearer <JWT>`).
pub async fn fetch(base: &str, authorization: &str) -> Result<Snapshot, StatusError> {
    let http = crate::forge::http_client();
    let get = |path: &'static str| {
        let http = http.clone();
        let url = format!("{}{path}", base.trim_end_matches('/'));
        async move {
            let answer = http
                .get(&url)
                .header(reqwest::header::AUTHORIZATION, authorization)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map_err(|err| StatusError::Unreachable {
                    url: url.clone(),
                    reason: err.without_url().to_string(),
                })?;
            let status = answer.status().as_u16();
            if status != 200 {
                let body = answer.text().await.unwrap_or_default();
                return Err(StatusError::Refused { url, status, body });
            }
            answer
                .json::<Value>()
                .await
                .map_err(|_| StatusError::BadAnswer { url })
        }
    };
    let (queue, backends, plugins) = tokio::try_join!(
        get("/api/admin/queue"),
        get("/api/admin/backends"),
        get("/api/admin/plugins"),
    )?;
    Ok(Snapshot {
        queue,
        backends,
        plugins,
    })
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// The screen.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let jobs = snapshot.queue["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let running = jobs.iter().filter(|j| j["state"] == "running").count();
    let _ = writeln!(out, "HOST  {}", text(&snapshot.backends["host"]));
    let _ = writeln!(
        out,
        "QUEUE  {} waiting, {running} running",
        text(&snapshot.queue["queued"])
    );
    if !jobs.is_empty() {
        let _ = writeln!(
            out,
            "  {:>4}  {:<10} {:<8} {:<9} {:<20} {:<20} {:>9} {:>7}  backend (host)",
            "pos", "job", "state", "from", "owner", "model", "size", "age"
        );
    }
    for job in jobs.iter().take(30) {
        let position = match job["position"].as_i64() {
            Some(0) | None => "-".to_owned(),
            Some(n) => n.to_string(),
        };
        let _ = writeln!(
            out,
            "  {:>4}  {:<10} {:<8} {:<9} {:<20} {:<20} {:>9} {:>6.0}s  {}{}",
            position,
            text(&job["id"]),
            text(&job["state"]),
            text(&job["front_end"]),
            text(&job["owner_id"]),
            text(&job["model"]),
            format!("{}x{}", text(&job["width"]), text(&job["height"])),
            job["age_s"].as_f64().unwrap_or_default(),
            text(&job["backend"]),
            match job["host"].as_str() {
                Some(host) => format!(" ({host})"),
                None => String::new(),
            },
        );
    }
    if jobs.len() > 30 {
        let _ = writeln!(out, "  … and {} more", jobs.len() - 30);
    }
    let backends: Vec<String> = snapshot.backends["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    let _ = writeln!(out, "\nBACKENDS  {}", backends.join(", "));
    if let Some(workers) = snapshot.backends["workers"].as_object() {
        let _ = writeln!(
            out,
            "  worker pool: {} connected, {} busy; {} dispatched, {} finished, {} requeued, {} failed",
            text(&workers["connected"]),
            text(&workers["busy"]),
            text(&workers["dispatched"]),
            text(&workers["finished"]),
            text(&workers["requeued"]),
            text(&workers["failed"]),
        );
    }
    for machine in snapshot.backends["forge"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  forge {}: {}, model {}, job {}, {} done, {} faults{}",
            text(&machine["name"]),
            if machine["up"] == true { "up" } else { "DOWN" },
            text(&machine["loaded_model"]),
            text(&machine["current_job"]),
            text(&machine["jobs_done"]),
            text(&machine["faults"]),
            match &machine["last_error"] {
                Value::String(e) => format!(" (last error: {e})"),
                _ => String::new(),
            },
        );
    }
    let _ = writeln!(out, "\nPLUGINS");
    for role in snapshot.plugins["roles"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:<13} {:<20} served by {}",
            text(&role["role"]),
            text(&role["plugin"]),
            text(&role["served_by"]),
        );
    }
    for plugin in snapshot.plugins["plugins"].as_array().into_iter().flatten() {
        let sha = text(&plugin["sha256"]);
        let _ = writeln!(
            out,
            "  {:<20} {:<6} wit {:<6} sha256 {:<12} reloads {} failed loads {} failed calls {}{}",
            text(&plugin["name"]),
            text(&plugin["status"]),
            text(&plugin["wit_version"]),
            sha.get(..12).unwrap_or(&sha),
            text(&plugin["reloads"]),
            text(&plugin["failed_loads"]),
            text(&plugin["failed_calls"]),
            match &plugin["last_error"] {
                Value::String(e) => format!("\n    last error: {e}"),
                _ => String::new(),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_screen_names_jobs_backends_and_plugin_errors() {
        let snapshot = Snapshot {
            queue: json!({"queued": 1, "jobs": [
                {"position": 0, "id": "aa11bb22", "state": "running", "front_end": "http", "owner_id": "111",
                 "model": "sdxl", "width": 512, "height": 384, "age_s": 3.2, "backend": "forge-1", "host": "gpu-box-1a2b3c4d", "attempts": 1},
                {"position": 1, "id": "cc33dd44", "state": "queued", "front_end": "discord", "owner_id": "222",
                 "model": "", "width": 64, "height": 64, "age_s": 0.5, "backend": null, "attempts": 0},
            ]}),
            backends: json!({"host": "gpu-box-1a2b3c4d", "backends": ["forge", "workers"], "workers": {"connected": 2, "busy": 1, "dispatched": 5,
                "finished": 4, "requeued": 1, "failed": 0}, "forge": [{"name": "gpu-1", "up": false,
                "loaded_model": null, "current_job": null, "jobs_done": 7, "faults": 2, "last_error": "timed out"}]}),
            plugins: json!({"roles": [{"role": "parser", "plugin": "parser", "served_by": "plugin"}],
                "plugins": [{"name": "access", "status": "stale", "wit_version": "0.1.0", "sha256": "0123456789abcdef",
                "reloads": 2, "failed_loads": 1, "failed_calls": 0, "last_error": "not a component"}]}),
        };
        let screen = render(&snapshot);
        assert!(
            screen.starts_with("HOST  gpu-box-1a2b3c4d\nQUEUE  1 waiting, 1 running\n"),
            "{screen}"
        );
        assert!(screen.contains("aa11bb22   running"), "{screen}");
        assert!(screen.contains("cc33dd44   queued   discord"), "{screen}");
        assert!(screen.contains("512x384"), "{screen}");
        assert!(screen.contains("forge-1 (gpu-box-1a2b3c4d)"), "{screen}");
        assert!(
            screen.contains("worker pool: 2 connected, 1 busy"),
            "{screen}"
        );
        assert!(screen.contains("forge gpu-1: DOWN"), "{screen}");
        assert!(screen.contains("(last error: timed out)"), "{screen}");
        assert!(screen.contains("access               stale"), "{screen}");
        assert!(screen.contains("last error: not a component"), "{screen}");
    }
}
