//! joch's integration tests: one binary, real processes on loopback.

mod harness;

mod access;
mod audit;
mod catalog;
mod cli;
mod cluster;
mod discovery;
mod guard;
mod guardian;
mod lease;
mod limits;
mod mcp;
mod mesh;
mod policy;
mod quickstart;
mod secrets;
mod trust;
