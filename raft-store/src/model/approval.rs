//! Approvals of calls a policy holds (REQUIRE_APPROVAL): requested by the node holding the call,
//! decided by an operator on any node, used once by the node that runs the call. Bound to the
//! agent, the server, the capability, a hash of the arguments and the policies' epoch: an
//! approval cannot be reused for other arguments, by another agent, or after a policy changed.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::command::{Applied, Command};
use super::registry::{changed, ApplyError, Registry, Stamp, Touched};

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

impl Registry {
    /// The approval commands: requested by the holding node, decided by an operator, used once.
    pub(super) fn apply_approval(
        &mut self,
        command: &Command,
        stamp: &Stamp,
        touched: &mut Touched,
    ) -> Result<(String, Applied), ApplyError> {
        Ok(match command {
            Command::RequestApproval { id, agent, server, kind, name, args_sha256, policy, rule, node, timeout_ms } => {
                if self.approvals.contains_key(id) {
                    return Err(ApplyError::Approval { id: id.clone(), message: "exists already".into() });
                }
                self.approvals.insert(
                    id.clone(),
                    Arc::new(Approval {
                        id: id.clone(),
                        agent: agent.clone(),
                        server: server.clone(),
                        kind: kind.clone(),
                        name: name.clone(),
                        args_sha256: *args_sha256,
                        policy: policy.clone(),
                        rule: rule.clone(),
                        policy_epoch: self.policy_epoch,
                        node: *node,
                        requested: stamp.clone(),
                        expires_ms: stamp.at_ms.saturating_add(*timeout_ms),
                        state: ApprovalState::Pending,
                    }),
                );
                touched.approvals.push(id.clone());
                (
                    format!("approval/{id}"),
                    changed(format!("{agent} asked to run {kind} {server}.{name} (policy {policy}, rule {rule})")),
                )
            }
            Command::DecideApproval { id, approve, reason } => {
                let gone = |m: &str| ApplyError::Approval { id: id.clone(), message: m.into() };
                let a = self.approvals.get(id).ok_or_else(|| gone("does not exist"))?;
                if a.state != ApprovalState::Pending {
                    return Err(gone(&format!("is {} already", a.state.as_str())));
                }
                if stamp.at_ms > a.expires_ms {
                    return Err(gone("timed out before it was decided (the agent must call again)"));
                }
                if a.policy_epoch != self.policy_epoch {
                    return Err(gone("was requested under policies that changed since (the agent must call again)"));
                }
                let mut a = (**a).clone();
                a.state = if *approve {
                    ApprovalState::Approved { by: stamp.clone(), reason: reason.clone() }
                } else {
                    ApprovalState::Denied { by: stamp.clone(), reason: reason.clone() }
                };
                let summary = format!("{} by {}: {reason}", if *approve { "approved" } else { "denied" }, stamp.actor);
                self.approvals.insert(id.clone(), Arc::new(a));
                touched.approvals.push(id.clone());
                (format!("approval/{id}"), changed(summary))
            }
            Command::UseApproval { id, node } => {
                let gone = |m: &str| ApplyError::Approval { id: id.clone(), message: m.into() };
                let a = self.approvals.get(id).ok_or_else(|| gone("does not exist"))?;
                let ApprovalState::Approved { by, reason } = &a.state else {
                    return Err(gone(&format!("is {}, not approved", a.state.as_str())));
                };
                if a.policy_epoch != self.policy_epoch {
                    return Err(gone("was approved under policies that changed since"));
                }
                if stamp.at_ms > by.at_ms.saturating_add(USE_WINDOW_MS) {
                    return Err(gone("was approved more than 24 h ago"));
                }
                let mut a2 = (**a).clone();
                a2.state = ApprovalState::Used {
                    by: by.clone(),
                    reason: reason.clone(),
                    used: Stamp { actor: format!("node {node}"), at_ms: stamp.at_ms, index: stamp.index },
                };
                self.approvals.insert(id.clone(), Arc::new(a2));
                touched.approvals.push(id.clone());
                (format!("approval/{id}"), changed(format!("used by node {node}")))
            }
            other => {
                return Err(ApplyError::Approval {
                    id: String::new(),
                    message: format!("{} is not an approval command", other.kind()),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approval_is_decided_once_used_once_and_void_after_a_policy_change() {
        let mut reg = Registry::default();
        let at = |reg: &mut Registry, i: u64, ms: u64, c: Command| {
            reg.apply(
                i,
                &crate::model::command::Request { actor: "olga".into(), at_ms: ms, command: c },
                &mut Touched::default(),
            )
        };
        let ask = |id: &str| Command::RequestApproval {
            id: id.into(),
            agent: "bot".into(),
            server: "github".into(),
            kind: "tool".into(),
            name: "create_issue".into(),
            args_sha256: [7; 32],
            policy: "p".into(),
            rule: "r".into(),
            node: 2,
            timeout_ms: 1000,
        };
        let decide = |id: &str, approve| Command::DecideApproval { id: id.into(), approve, reason: "ok".into() };
        let use_it = |id: &str| Command::UseApproval { id: id.into(), node: 3 };
        at(&mut reg, 1, 0, ask("a")).unwrap();
        assert!(at(&mut reg, 2, 0, ask("a")).is_err(), "ids are unique");
        assert!(at(&mut reg, 3, 0, use_it("a")).is_err(), "pending: not usable");
        at(&mut reg, 4, 500, decide("a", true)).unwrap();
        assert!(at(&mut reg, 5, 600, decide("a", false)).is_err(), "decided once");
        at(&mut reg, 6, 700, use_it("a")).unwrap();
        let e = at(&mut reg, 7, 800, use_it("a")).unwrap_err();
        assert!(e.to_string().contains("is used, not approved"), "{e}");
        assert!(matches!(&reg.approvals["a"].state, ApprovalState::Used { used, .. } if used.actor == "node 3"));
        // Timed out: a decision after expiry is refused.
        at(&mut reg, 8, 1000, ask("b")).unwrap();
        assert!(at(&mut reg, 9, 2001, decide("b", true)).unwrap_err().to_string().contains("timed out"));
        // A policy change voids what was requested or approved before it.
        at(&mut reg, 10, 2000, ask("c")).unwrap();
        at(&mut reg, 11, 2000, decide("c", true)).unwrap();
        let epoch = reg.policy_epoch;
        at(
            &mut reg,
            12,
            2000,
            Command::ApplyPolicy { name: "p".into(), labels: Default::default(), spec_json: r#"{"rules":[]}"#.into() },
        )
        .unwrap();
        assert_eq!(reg.policy_epoch, epoch + 1);
        assert!(at(&mut reg, 13, 2100, use_it("c")).unwrap_err().to_string().contains("policies that changed"));
        assert!(!reg.approvals["c"].matches("bot", "github", "tool", "create_issue", &[7; 32], reg.policy_epoch));
    }
}
