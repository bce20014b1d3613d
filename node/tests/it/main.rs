//! joch's integration tests: one binary, real processes on loopback.

mod harness;

mod cli;
mod cluster;
mod lease;
mod mcp;
mod mesh;
