//! The content guard on the request path (`docs/content-guard.md`): the scanner is the
//! `joch-guard` crate (one rule set, built once per process); `stage.rs` scans what servers send
//! back before it reaches the agent; `poison.rs` reads tools' descriptions and schemas at
//! discovery with the same detectors.

pub mod poison;
pub mod stage;

use std::sync::LazyLock;

/// The built-in rule set, compiled once.
pub static SCANNER: LazyLock<joch_guard::Scanner> = LazyLock::new(joch_guard::Scanner::new);
