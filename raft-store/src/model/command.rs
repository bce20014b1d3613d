//! Commands in the Raft log. Every registry or policy change is one of these; the state machine
//! applies them deterministically on every replica.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::access::{Role, Sealed};
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
    /// A discovery of a server's capabilities (boxed: the largest command by far); drift from the
    /// baseline is computed on apply, and quarantines the server there when its
    /// `discovery.onSchemaDrift` says so.
    RecordDiscovery { name: String, discovery: Box<super::discovery::Discovery> },
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
    /// A change of the trust settings (publishers, allow-list, weights); every score is
    /// recomputed.
    SetTrust(super::trust::TrustChange),
    /// Loads (or replaces) a content-guard feed.
    SetGuardFeed { name: String, source: String, version: String, patterns: Vec<joch_guard::FeedPattern> },
    /// Removes a content-guard feed.
    DeleteGuardFeed { name: String },
    /// What the content guard saw that operators must see (a node reports it).
    RaiseIncident(super::incident::IncidentReport),
    /// An operator acknowledges an incident (a tool-poisoning one stops counting against the
    /// server's trust score).
    AckIncident { id: u64 },
    /// The leader's count of calls per server over the last `window_ms`, fleet-wide.
    RecordTraffic { window_ms: u64, counts: BTreeMap<String, super::trust::Traffic> },
    /// Set the cluster's 256-bit key (session sealing) once; later attempts are no-ops.
    InitClusterKey { key: [u8; 32] },
    /// How much change history every replica keeps.
    SetRetention { history_per_target: u32, history_max_age_ms: u64 },
    /// An operator token (its hash); fails if the name is taken.
    CreateAdminToken { name: String, role: Role, token_sha256: [u8; 32] },
    /// Revokes an operator token.
    RevokeAdminToken { name: String },
    /// An agent with a token (its hash); fails if the name is taken.
    CreateAgent { name: String, labels: BTreeMap<String, String>, token_sha256: [u8; 32] },
    /// Revokes an agent: its token stops working, its sessions and streams are cut.
    RevokeAgent { name: String },
    /// Creates or replaces an identity provider.
    SetIdp {
        name: String,
        issuer: String,
        audience: String,
        jwks_json: String,
        name_claim: String,
        label_claims: BTreeMap<String, String>,
    },
    /// Removes an identity provider (its tokens stop working).
    DeleteIdp { name: String },
    /// Creates or replaces a secret (sealed by the node that received it).
    SetSecret { name: String, data: BTreeMap<String, Sealed> },
    /// Removes a secret.
    DeleteSecret { name: String },
    /// Re-seals secrets under a new key-encryption key; a secret changed since its `version`
    /// was read is left as it is (re-run the rotation).
    ResealSecrets { secrets: BTreeMap<String, (u64, BTreeMap<String, Sealed>)> },
    /// Adds a session-sealing key: new ids are sealed with it; ids sealed with older keys still open
    /// until they expire.
    AddSessionKey { key: [u8; 32] },
    /// Create or replace a VirtualServer.
    ApplyVirtualServer { name: String, labels: BTreeMap<String, String>, spec: super::resource::VirtualServerSpec },
    /// Remove a VirtualServer.
    DeleteVirtualServer { name: String },
    /// A node holds a call a policy requires approval for.
    RequestApproval {
        id: String,
        agent: String,
        server: String,
        kind: String,
        name: String,
        args_sha256: [u8; 32],
        policy: String,
        rule: String,
        node: u64,
        timeout_ms: u64,
    },
    /// An operator approves or denies a held call.
    DecideApproval { id: String, approve: bool, reason: String },
    /// The node running an approved call uses the approval (once).
    UseApproval { id: String, node: u64 },
    /// A write with an id shared by every attempt to send it: applied once (see `once`).
    Once { id: u128, command: Box<Command> },
}

impl Command {
    /// Whether the admin API waits for every member to apply this command before it answers
    /// (and reports the members that did not): every change that can make a node deny what it
    /// allowed, or allow what it denied. Registering a new server is not one: a node that has
    /// not applied it yet answers "not registered", which fails closed.
    pub fn fleet_acknowledged(&self) -> bool {
        match self {
            Command::Once { command, .. } => command.fleet_acknowledged(),
            Command::RequestApproval { .. } | Command::UseApproval { .. } => false,
            Command::ApplyVirtualServer { .. } | Command::DeleteVirtualServer { .. } => true,
            // The holding node learns the decision by applying it.
            Command::DecideApproval { .. } => true,
            // Drift that quarantines must be enforced everywhere when the answer says so.
            Command::RecordDiscovery { .. } => true,
            // A score that falls under a server's minTrustScore is enforced everywhere.
            Command::SetTrust(_) => true,
            // Every node scans with the same patterns once the write returns.
            Command::SetGuardFeed { .. } | Command::DeleteGuardFeed { .. } => true,
            Command::RecordTraffic { .. } => false,
            // A tool-poisoning incident can lower a score under a server's minTrustScore.
            Command::RaiseIncident(_) | Command::AckIncident { .. } => true,
            Command::CreateServer { .. }
            | Command::InitClusterKey { .. }
            | Command::SetRetention { .. }
            | Command::CreateAdminToken { .. }
            | Command::CreateAgent { .. } => false,
            // Every node must have a new session key before the ids it seals reach them.
            Command::AddSessionKey { .. }
            | Command::RevokeAdminToken { .. }
            | Command::RevokeAgent { .. }
            | Command::SetIdp { .. }
            | Command::DeleteIdp { .. }
            | Command::SetSecret { .. }
            | Command::DeleteSecret { .. }
            | Command::ResealSecrets { .. } => true,
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
            Command::Once { command, .. } => command.kind(),
            Command::CreateServer { .. } => "create_server",
            Command::UpsertServer { .. } => "upsert_server",
            Command::RecordDiscovery { .. } => "record_discovery",
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
            Command::SetTrust(_) => "set_trust",
            Command::SetGuardFeed { .. } => "set_guard_feed",
            Command::DeleteGuardFeed { .. } => "delete_guard_feed",
            Command::RecordTraffic { .. } => "record_traffic",
            Command::RaiseIncident(_) => "raise_incident",
            Command::AckIncident { .. } => "ack_incident",
            Command::CreateAdminToken { .. } => "create_admin_token",
            Command::RevokeAdminToken { .. } => "revoke_admin_token",
            Command::CreateAgent { .. } => "create_agent",
            Command::RevokeAgent { .. } => "revoke_agent",
            Command::SetIdp { .. } => "set_idp",
            Command::DeleteIdp { .. } => "delete_idp",
            Command::SetSecret { .. } => "set_secret",
            Command::DeleteSecret { .. } => "delete_secret",
            Command::ResealSecrets { .. } => "reseal_secrets",
            Command::AddSessionKey { .. } => "add_session_key",
            Command::ApplyVirtualServer { .. } => "apply_virtual_server",
            Command::DeleteVirtualServer { .. } => "delete_virtual_server",
            Command::RequestApproval { .. } => "request_approval",
            Command::DecideApproval { .. } => "decide_approval",
            Command::UseApproval { .. } => "use_approval",
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
