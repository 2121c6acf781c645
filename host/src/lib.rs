//! easel: turns art requests into images; its policy lives in WebAssembly plugins.
//!
//! This crate is the `easel` binary's library. Each subsystem is one module that owns its
//! data; they meet in the job service ([`jobs`]) and its events:
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | `config.toml`, environment overrides, validation |
//! | [`store`] | SQLite / MariaDB / PostgreSQL storage and migrations |
//! | [`jobs`] | the job model, durable queue, event stream and backend contract |
//! | [`intake`] | the one way a request becomes a job (access, policy, limits, enqueue) |
//! | [`accounts`] | users' roles and categories |
//! | [`catalog`] | the model catalog |
//! | [`civitai`] | CivitAI: LoRA metadata, model downloads, the API proxy |
//! | [`sim`] | the simulated backend (draws a real PNG without a GPU) |
//! | [`plugins`] | the wasmtime runtime for the policy plugins of `wit/` |
//! | [`workers`] | the ZeroMQ worker pool and the `easel worker` client |
//! | [`api`] | the Navigator-compatible HTTP API |
//! | [`discord`] | the Discord front end |
//! | [`server`] | starting and stopping all of the above together |
//! | [`bench`] | `easel bench`: measurements against a same-run baseline |
//!
//! Front ends (Discord, HTTP) submit through the [`intake`] and follow jobs through the
//! job service's read handle; backends (simulated, ZeroMQ) take jobs through the backend
//! contract ([`jobs::Backend`]); neither reaches into the other or into the store.

pub mod accounts;
pub mod api;
pub mod bench;
pub mod catalog;
pub mod civitai;
pub mod config;
pub mod discord;
pub mod forge;
pub mod grpc;
pub mod intake;
pub mod jobs;
pub mod metrics;
pub mod plugins;
pub mod server;
pub mod sim;
pub mod status;
pub mod store;
pub mod workers;

/// An error with its causes, `: `-separated (HTTP clients' own text is only the outermost).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
