//! Detectors of hostile text in what servers send: today the tool-poisoning checks discovery
//! runs on tools' descriptions and schemas (`poison.rs`); the content guard's result scanning
//! (issue 18) is meant to share them.

pub mod poison;
