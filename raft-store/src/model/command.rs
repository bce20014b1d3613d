//! Commands in the Raft log. Every registry or policy change is one of these; the state machine
//! applies them deterministically on every replica.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::registry::ApplyError;
use super::resource::McpServerSpec;

/// One entry of application data in the Raft log: who asked, when, and what.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Request {
    /// The operator (or component) that issued the command.
    pub actor: String,
    /// Wall-clock time of the request on the node that received it, in Unix milliseconds.
    /// Applied as recorded, so every replica stores the same time.
    pub at_ms: u64,
    /// What to do.
    pub command: Command,
}

/// A change to the replicated registry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Command {
    /// Register a server; fails if the name is taken.
    CreateServer { name: String, labels: BTreeMap<String, String>, spec: McpServerSpec },
    /// Create or replace a server's spec and labels (`joch apply`); status is kept.
    UpsertServer { name: String, labels: BTreeMap<String, String>, spec: McpServerSpec },
    /// Remove a server from the registry (its history stays).
    DeleteServer { name: String },
    /// Pin a server to a version (turns `pinServerVersion` on).
    Pin { name: String, version: String },
    /// Move a pinned server to a new version; with `review` the upgrade is staged, not applied.
    Upgrade { name: String, version: String, review: bool },
    /// Take a server out of rotation fleet-wide. Idempotent.
    Quarantine { name: String, reason: String },
    /// Return a quarantined server to rotation. Idempotent.
    Unquarantine { name: String },
    /// Mark one tool of a server as approved (`server.tool`).
    ApproveTool { server: String, tool: String },
    /// Per-server policy flags (`joch mcp policy set`).
    SetServerPolicy { name: String, read_only: bool },
    /// Create or replace a Policy manifest, stored as a canonical JSON document.
    ApplyPolicy { name: String, labels: BTreeMap<String, String>, spec_json: String },
    /// Remove a Policy.
    DeletePolicy { name: String },
    /// Set the cluster's 256-bit key (session sealing) once; later attempts are no-ops.
    InitClusterKey { key: [u8; 32] },
    /// How much change history every replica keeps.
    SetRetention { history_per_target: u32, history_max_age_ms: u64 },
}

impl Command {
    /// Whether the admin API waits for every member to apply this command before it answers
    /// (and reports the members that did not): every change that can make a node deny what it
    /// allowed, or allow what it denied. Registering a new server is not one: a node that has
    /// not applied it yet answers "not registered", which fails closed.
    pub fn fleet_acknowledged(&self) -> bool {
        match self {
            Command::CreateServer { .. } | Command::InitClusterKey { .. } | Command::SetRetention { .. } => false,
            Command::Upgrade { review, .. } => !review,
            Command::UpsertServer { .. }
            | Command::DeleteServer { .. }
            | Command::Pin { .. }
            | Command::Quarantine { .. }
            | Command::Unquarantine { .. }
            | Command::ApproveTool { .. }
            | Command::SetServerPolicy { .. }
            | Command::ApplyPolicy { .. }
            | Command::DeletePolicy { .. } => true,
        }
    }

    /// Short name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateServer { .. } => "create_server",
            Command::UpsertServer { .. } => "upsert_server",
            Command::DeleteServer { .. } => "delete_server",
            Command::Pin { .. } => "pin",
            Command::Upgrade { .. } => "upgrade",
            Command::Quarantine { .. } => "quarantine",
            Command::Unquarantine { .. } => "unquarantine",
            Command::ApproveTool { .. } => "approve_tool",
            Command::SetServerPolicy { .. } => "set_server_policy",
            Command::ApplyPolicy { .. } => "apply_policy",
            Command::DeletePolicy { .. } => "delete_policy",
            Command::InitClusterKey { .. } => "init_cluster_key",
            Command::SetRetention { .. } => "set_retention",
        }
    }
}

/// What applying one entry did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Response {
    /// `Ok(applied)` or the reason the command was rejected (nothing changed).
    pub result: Option<Result<Applied, ApplyError>>,
}

/// A command that was accepted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Applied {
    /// False when the command changed nothing (a repeated quarantine, say).
    pub changed: bool,
    /// One line saying what happened, as recorded in the history.
    pub summary: String,
}
