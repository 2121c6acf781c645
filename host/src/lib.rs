//! easel: turns art requests into images; its policy lives in WebAssembly plugins.
//!
//! This crate is the `easel` binary's library. Each subsystem is one module that owns its
//! data; they meet in the job service ([`jobs`]) and its events:
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | `config.toml`, environment overrides, validation |
//! | [`store`] | SQLite / MariaDB / PostgreSQL storage and migrations |
//! | [`jobs`] | the job model, durable queue and event stream |
//! | [`sim`] | the simulated backend (draws a real PNG without a GPU) |
//! | [`plugins`] | the wasmtime runtime for the policy plugins of `wit/` |
//! | [`workers`] | the ZeroMQ worker pool and the `easel worker` client |
//! | [`api`] | the Navigator-compatible HTTP API |
//! | [`server`] | starting and stopping all of the above together |
//! | [`bench`] | `easel bench`: measurements against a same-run baseline |

pub mod api;
pub mod bench;
pub mod config;
pub mod discord;
pub mod jobs;
pub mod plugins;
pub mod server;
pub mod sim;
pub mod store;
pub mod workers;
