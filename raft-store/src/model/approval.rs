//! Approvals of calls a policy holds (REQUIRE_APPROVAL): requested by the node holding the call,
//! decided by an operator on any node, used once by the node that runs the call. Bound to the
//! agent, the server, the capability, a hash of the arguments and the policies' epoch: an
//! approval cannot be reused for other arguments, by another agent, or after a policy changed.

use serde::{Deserialize, Serialize};

use super::registry::Stamp;

/// How long an approved call may be used (retried by the agent) after the approval.
pub const USE_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// Approvals are kept this long after they were requested, then dropped.
pub const KEEP_MS: u64 = 7 * 24 * 3600 * 1000;

/// One approval request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Approval {
    /// Its id (`apr-...`).
    pub id: String,
    /// The agent whose call it is.
    pub agent: String,
    /// The server.
    pub server: String,
    /// `tool`, `prompt` or `resource`.
    pub kind: String,
    /// The tool or prompt name, or resource URI.
    pub name: String,
    /// SHA-256 of the call's arguments (canonical JSON).
    pub args_sha256: [u8; 32],
    /// The policy and rule that asked for it.
    pub policy: String,
    /// The rule.
    pub rule: String,
    /// The policies' epoch when it was requested (a policy change voids it).
    pub policy_epoch: u64,
    /// The node holding the call.
    pub node: u64,
    /// Who asked (the agent, through node N), when, at which index.
    pub requested: Stamp,
    /// A decision after this time is refused (the held call timed out).
    pub expires_ms: u64,
    /// Where it stands.
    pub state: ApprovalState,
}

/// Where an approval stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ApprovalState {
    /// Waiting for an operator.
    Pending,
    /// Approved; not used yet.
    Approved {
        /// Who, when.
        by: Stamp,
        /// Why.
        reason: String,
    },
    /// Denied.
    Denied {
        /// Who, when.
        by: Stamp,
        /// Why.
        reason: String,
    },
    /// Approved and used by one call (it ran once).
    Used {
        /// Who approved, when.
        by: Stamp,
        /// Why.
        reason: String,
        /// The node that ran it, when.
        used: Stamp,
    },
}

impl ApprovalState {
    /// `pending`, `approved`, `denied` or `used`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved { .. } => "approved",
            ApprovalState::Denied { .. } => "denied",
            ApprovalState::Used { .. } => "used",
        }
    }
}

impl Approval {
    /// Whether it is for exactly this call under these policies.
    pub fn matches(&self, agent: &str, server: &str, kind: &str, name: &str, args: &[u8; 32], epoch: u64) -> bool {
        self.agent == agent
            && self.server == server
            && self.kind == kind
            && self.name == name
            && &self.args_sha256 == args
            && self.policy_epoch == epoch
    }
}
