//! joch: a governance gateway for MCP, built as a cluster. Every node is an MCP proxy (the data
//! plane) and a Raft replica of the registry (the control plane).
//!
//! Map: `app` wires a node; `auth` says who an operator or an agent is; `proxy` is the MCP data plane (over `mcp`, the protocol pieces);
//! `cluster` is its Raft handle; `mesh` the QUIC transport between nodes;
//! `admin` the gRPC API; `resource` the manifests operators write; `cli` the operator commands;
//! `policy` the decision on every call and list item; `config` static node config; `demo` the quick start's MCP server; `secrets` sealing upstream secrets; `certs` certificates
//! reloaded from files; `telemetry` logs and metrics; `http` health and metrics endpoints and the MCP listener;
//! `workers` the threads that serve agents' connections.
//! The replicated store itself is the `joch-raft-store` crate.

pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod guard;
pub mod guardian;
pub mod http;
pub mod lifecycle;
pub mod mcp;
pub mod mesh;
pub mod policy;
pub mod proxy;
pub mod resource;
pub mod secrets;
pub mod telemetry;
pub mod workers;
