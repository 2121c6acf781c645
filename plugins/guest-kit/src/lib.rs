//! What easel's default plugins (the Rust guests in `plugins/`) share, apart from the prompt
//! grammar (`seed-args`):
//!
//! - [`Settings`]: a plugin's settings from the key/value pairs `host.config` returns (TOML
//!   values, strings unquoted), with typed accessors that fall back to a default and report
//!   malformed values;
//! - [`py_repr_str`] and [`py_repr_float`]: CPython 3.11's `repr()` of a `str` and a `float`,
//!   for replies that reproduce Stably Discordant's text.
//!
//! No dependencies and no I/O: it builds for the guests' wasm target and is tested natively,
//! against python3 itself for the `repr`s (see `tests/`).

mod printable;
pub mod repr;
pub mod settings;

pub use repr::{py_is_printable, py_repr_float, py_repr_str};
pub use settings::{SettingError, Settings};
