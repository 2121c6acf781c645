//! The pool of volunteer GPU workers over ZeroMQ, wire-compatible with Stably Discordant.
//!
//! The host binds a ROUTER ([`pool`]); workers connect DEALERs: the seed's Python workers as
//! they are, or `easel worker` ([`client`]), which adds heartbeats, a token and extended jobs.
//! Jobs come from and go back to the job service: a worker that misses its deadline or
//! disappears gives its job back to the queue, and after `max_faults` faults the job fails.

pub mod client;
pub mod pool;
pub mod protocol;

pub use pool::{PoolSnapshot, PoolStats, WorkerPool, WorkerView};
