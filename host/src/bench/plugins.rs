//! `easel bench plugins`: per-call cost of each default plugin and of the whole pipeline
//! against a trivial component measured in the same run, and reload latency.

use std::time::{Duration, Instant};

use super::{BenchError, percentile};

/// A copy of a component with a custom section appended: the same code under a new hash, so
/// the runtime has to compile it afresh.
fn tagged(component: &[u8], tag: usize) -> Vec<u8> {
    let name = format!("easel-bench-{tag}");
    let mut payload = vec![u8::try_from(name.len()).expect("short name")];
    payload.extend_from_slice(name.as_bytes());
    let mut out = component.to_vec();
    out.push(0); // custom section
    let mut size = payload.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&payload);
    out
}

/// Call times (sorted) and the times of the baseline calls paired with them.
struct Measured {
    times: Vec<Duration>,
    baseline: Vec<Duration>,
}

impl Measured {
    /// p50 over the p50 of the paired baseline calls.
    fn ratio(&self) -> f64 {
        percentile(&self.times, 50.0).as_secs_f64() / percentile(&self.baseline, 50.0).as_secs_f64()
    }
}

/// `easel bench plugins`: per-call cost of each default plugin and of the whole pipeline
/// against a trivial component in the same runtime, and reload latency (file written → new
/// version answering), cold (new code) and from the precompiled cache.
pub fn plugins(dir: &std::path::Path, calls: usize) -> Result<(), BenchError> {
    use crate::plugins::{
        Decision, Limits, Outcome, PluginSettings, PolicyLimits, Registry, Role, Runtime, Stage,
        Verdict, example_caller,
    };
    let io = |e: crate::plugins::PluginError| BenchError::Io(std::io::Error::other(e.to_string()));
    let other = |message: String| BenchError::Io(std::io::Error::other(message));
    let runtime = Runtime::new(Limits::default()).map_err(io)?;
    let trivial = runtime
        .load(&dir.join("fixtures/hostile.wasm"))
        .map_err(io)?;
    let settings = PluginSettings::from_config(&crate::config::Config::default());
    let load = |role: Role| runtime.load(&dir.join(format!("{role}.wasm"))).map_err(io);
    let (access, parser, policy, reactions) = (
        load(Role::Access)?,
        load(Role::Parser)?,
        load(Role::ModelPolicy)?,
        load(Role::Reactions)?,
    );
    let config = |role: Role| settings.config_for(role.as_str());
    let caller = example_caller();
    let message = "/art a red fox --steps 20 --cfg 6";
    let limits = PolicyLimits {
        max_pixels: 3_686_400,
    };
    let request = crate::plugins::JobRequest {
        cfg: 6.0,
        steps: 20,
        ..crate::plugins::example_request()
    };
    let baseline_call = || {
        trivial
            .parse(&config(Role::Parser), "x", &caller)
            .map(drop)
            .map_err(io)
    };
    // Each call measured is paired with a baseline call just before it, so a ratio compares
    // calls made under the same conditions (this machine's speed drifts over a run).
    let measure = |f: &dyn Fn() -> Result<(), BenchError>| -> Result<Measured, BenchError> {
        for _ in 0..calls.min(500) {
            baseline_call()?;
            f()?;
        }
        let mut measured = Measured {
            times: Vec::with_capacity(calls),
            baseline: Vec::with_capacity(calls),
        };
        for _ in 0..calls {
            let started = Instant::now();
            baseline_call()?;
            measured.baseline.push(started.elapsed());
            let started = Instant::now();
            f()?;
            measured.times.push(started.elapsed());
        }
        measured.times.sort();
        measured.baseline.sort();
        Ok(measured)
    };
    let p50 = |times: &[Duration]| percentile(times, 50.0);
    let base = measure(&baseline_call)?;
    println!("easel bench plugins: {calls} calls each, fresh instance per call, pooling allocator");
    println!("(each call is paired with a baseline call made just before it; ratios are to those)");
    println!(
        "{:<58} p50 {:>9.2?}  p99 {:>9.2?}",
        "baseline: trivial component, instantiate + one call",
        p50(&base.times),
        percentile(&base.times, 99.0)
    );
    let row = |label: &str, measured: &Measured| {
        println!(
            "{label:<58} p50 {:>9.2?}  p99 {:>9.2?}  {:>5.2}x baseline",
            p50(&measured.times),
            percentile(&measured.times, 99.0),
            measured.ratio()
        );
    };
    row(
        "access.check",
        &measure(&|| {
            access
                .check(&config(Role::Access), &caller)
                .map(drop)
                .map_err(io)
        })?,
    );
    row(
        "parser.parse",
        &measure(&|| {
            parser
                .parse(&config(Role::Parser), message, &caller)
                .map(drop)
                .map_err(io)
        })?,
    );
    row(
        "model-policy.decide",
        &measure(&|| {
            policy
                .decide(&config(Role::ModelPolicy), &request, &caller, &[], limits)
                .map(drop)
                .map_err(io)
        })?,
    );
    row(
        "reactions.on-stage (finished)",
        &measure(&|| {
            reactions
                .on_stage(
                    &config(Role::Reactions),
                    Stage::Finished,
                    &caller,
                    Some(&request),
                    "gpu-box",
                )
                .map(drop)
                .map_err(io)
        })?,
    );

    // The whole pipeline of a chat message, through the registry (role lookup, settings,
    // failure policy) as the front ends call it: four fresh instances.
    let registry = Registry::open(runtime.clone(), dir, settings.clone());
    let pipeline = measure(&|| {
        if registry.check_blocking(&caller) != Decision::Allow {
            return Err(other("access refused the example caller".into()));
        }
        let Outcome::Request(parsed) = registry.parse_blocking(message, &caller) else {
            return Err(other("the parser did not make a request".into()));
        };
        let Verdict::Allow(request) =
            registry.decide_blocking(&parsed.request, &caller, &[], limits)
        else {
            return Err(other("the model policy refused the request".into()));
        };
        registry.on_stage_blocking(Stage::Accepted, &caller, Some(&request), "");
        Ok(())
    })?;
    row(
        "pipeline: access + parser + model-policy + reactions",
        &pipeline,
    );
    // No pipeline of four fresh instances can beat four instances of the trivial component.
    let floor = measure(&|| {
        for _ in 0..4 {
            baseline_call()?;
        }
        Ok(())
    })?;
    row("floor: four trivial calls in a row", &floor);
    println!(
        "targets: pipeline p50 <= 25 us: {}; <= 8x baseline: {}",
        if p50(&pipeline.times) <= Duration::from_micros(25) {
            "met".to_owned()
        } else if p50(&floor.times) > Duration::from_micros(25) {
            format!(
                "NOT met (below this machine's floor of {:.2?})",
                p50(&floor.times)
            )
        } else {
            "NOT met".to_owned()
        },
        if pipeline.ratio() <= 8.0 {
            "met"
        } else {
            "NOT met"
        },
    );

    // Reload latency: replace the file under one name, time until the new version answers.
    let tmp = std::env::temp_dir().join(format!("easel-bench-plugins-{}", std::process::id()));
    let cache = tmp.join("cache");
    let watched = tmp.join("plugins");
    std::fs::create_dir_all(&watched)?;
    let sources = [
        std::fs::read(dir.join("parser.wasm"))?,
        std::fs::read(dir.join("fixtures/hostile.wasm"))?,
    ];
    let cached_runtime = Runtime::with_cache(Limits::default(), Some(&cache)).map_err(io)?;
    std::fs::write(watched.join("parser.wasm"), &sources[0])?;
    let registry = Registry::open(cached_runtime, &watched, settings.clone());
    let _watcher = registry.watch().map_err(|e| other(e.to_string()))?;
    let reload = |version: &[u8], parser_version: bool| -> Result<Duration, BenchError> {
        let staged = watched.join(".parser.tmp");
        std::fs::write(&staged, version)?;
        let written = Instant::now();
        std::fs::rename(&staged, watched.join("parser.wasm"))?;
        let deadline = written + Duration::from_secs(10);
        loop {
            // The parser answers with a request; the trivial component with help.
            let answer = registry
                .plugin("parser")
                .map(|p| p.parse(&config(Role::Parser), "/art x", &caller));
            let is_new = match answer {
                Some(Ok(Outcome::Request(_))) => parser_version,
                Some(Ok(Outcome::Help(_))) => !parser_version,
                _ => false,
            };
            if is_new {
                return Ok(written.elapsed());
            }
            if Instant::now() > deadline {
                return Err(other("reload not seen in 10 s".into()));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for i in 1..=10 {
        // New bytes each time: compiled afresh.
        cold.push(reload(&tagged(&sources[i % 2], i), i % 2 == 0)?);
    }
    for i in 1..=10 {
        // The two plain files, alternately: the second time on, read from the cache.
        warm.push(reload(&sources[i % 2], i % 2 == 0)?);
    }
    drop(_watcher);
    let _ = std::fs::remove_dir_all(&tmp);
    cold.sort();
    warm.sort();
    let reload_row = |label: &str, times: &[Duration]| {
        println!(
            "{label:<58} p50 {:>9.2?}  max {:>9.2?}",
            p50(times),
            times.last().copied().unwrap_or_default()
        );
    };
    reload_row(
        "reload, new code (file renamed in -> new version answers)",
        &cold,
    );
    reload_row("reload, version seen before (precompiled cache)", &warm);
    // What a reload of new code cannot go below: compiling it.
    let mut compiles = Vec::new();
    for i in 11..=20 {
        let bytes = tagged(&sources[0], i);
        let started = Instant::now();
        runtime.from_bytes("parser", &bytes).map_err(io)?;
        compiles.push(started.elapsed());
    }
    compiles.sort();
    reload_row("compile alone (new code, no watcher, no cache)", &compiles);
    println!(
        "target: reload <= 100 ms: {}",
        if p50(&cold) <= Duration::from_millis(100) {
            "met"
        } else {
            "NOT met"
        },
    );

    // The deadline: an endless loop in a plugin, stopped by epoch interruption.
    let deadline = Limits::default().deadline;
    let mut stops = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        if trivial
            .parse(&config(Role::Parser), "loop", &caller)
            .is_ok()
        {
            return Err(other("the endless loop answered".into()));
        }
        stops.push(started.elapsed());
    }
    stops.sort();
    println!(
        "{:<58} p50 {:>9.2?}  max {:>9.2?}  (deadline {deadline:?}; target: within deadline + 20 ms: {})",
        "endless loop stopped after",
        p50(&stops),
        stops.last().copied().unwrap_or_default(),
        if stops.last().copied().unwrap_or_default() <= deadline + Duration::from_millis(20) {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
