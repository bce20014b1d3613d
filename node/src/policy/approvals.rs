//! Held calls (REQUIRE_APPROVAL). The node that would admit the call commits an approval request
//! through Raft, bound to the agent, the server, the capability, a hash of the arguments and the
//! policies' epoch, and holds the call until an operator decides on any node (`joch approvals`),
//! the policy's timeout passes, or the agent goes away. Approved, the node commits that it uses
//! the approval (the state machine lets one call use it), and admission lets that call through.
//! A caller that asks not to wait (`Prefer: respond-async`), or that went away, gets
//! `approval-pending` with the id; the identical call after the approval runs once. A caller
//! that accepts SSE waits on an event stream kept alive with comments (`proxy/held.rs`).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use joch_policy::Kind;
use joch_raft_store::model::approval::{Approval, ApprovalState};
use joch_raft_store::{Command, RegistryHandle};
use serde_json::Value;

use crate::proxy::deny::{Denial, Reason};
use crate::proxy::request::Call;

/// How long a held call waits when its rule sets no `approval_timeout_sec`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Writes commands through the cluster (the proxy holds no cluster handle).
pub trait Proposer: Send + Sync {
    /// Commits `command` (forwarded to the leader); `Err` says why it was not (rejected by the
    /// state machine, or no leader).
    fn propose(&self, command: Command) -> BoxFuture<'static, Result<(), String>>;

    /// Hands servers to discover again to the leader: `Ok(true)` when the leader took them,
    /// `Ok(false)` when this node leads (it discovers them itself).
    fn to_leader(&self, servers: Vec<String>) -> BoxFuture<'static, Result<bool, String>> {
        let _ = servers;
        Box::pin(async { Ok(false) })
    }

    /// Has another member discover a server this node may not run.
    fn discover_elsewhere(
        &self,
        server: String,
    ) -> BoxFuture<'static, Result<joch_raft_store::model::discovery::Discovery, String>> {
        Box::pin(async move { Err(format!("no other member to discover {server}")) })
    }
}

/// What is being held.
pub struct Held {
    /// The server.
    pub server: String,
    /// Its kind.
    pub kind: Kind,
    /// The tool or prompt name, or resource URI.
    pub name: String,
    /// The call's arguments.
    pub args: Value,
    /// The policy requiring approval.
    pub policy: String,
    /// The rule.
    pub rule: String,
    /// How long to wait for a decision.
    pub timeout: Duration,
    /// Answer `approval-pending` at once instead of waiting.
    pub no_wait: bool,
}

/// How long the rule that refused lets a call wait for its approval.
pub fn timeout_of(r: &crate::policy::Refusal) -> Duration {
    r.constraints.as_deref().and_then(|c| c.approval_timeout_sec).map(Duration::from_secs).unwrap_or(DEFAULT_TIMEOUT)
}

/// Whether a request asks not to wait (`Prefer: respond-async`).
pub fn prefers_async(prefer: Option<&str>) -> bool {
    prefer.is_some_and(|p| p.split(',').any(|x| x.trim().eq_ignore_ascii_case("respond-async")))
}

/// SHA-256 of the arguments as canonical JSON (keys sorted: serde_json's maps are ordered).
pub fn args_hash(args: &Value) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, args.to_string().as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The held-call service of one node.
pub struct Approvals {
    node: u64,
    registry: RegistryHandle,
    proposer: Arc<dyn Proposer>,
    /// Where each hold's end is recorded (in the call's execution).
    audit: Option<Arc<joch_audit::Audit>>,
}

impl Approvals {
    /// For node `node`, writing through `proposer`, recording in `audit`.
    pub fn new(
        node: u64,
        registry: RegistryHandle,
        proposer: Arc<dyn Proposer>,
        audit: Option<Arc<joch_audit::Audit>>,
    ) -> Approvals {
        Approvals { node, registry, proposer, audit }
    }

    /// Holds a call until its approval is decided (or answers at once with `no_wait`): the
    /// approval's id once approved and committed as used, or the denial. The hold's end is an
    /// audit record of the call's execution (`joch trace` shows it).
    pub async fn hold(&self, call: &Call, h: Held) -> Result<String, Denial> {
        let started = std::time::Instant::now();
        let (server, name, policy, rule) = (h.server.clone(), h.name.clone(), h.policy.clone(), h.rule.clone());
        let r = self.wait_for(call, h).await;
        if let Some(audit) = &self.audit {
            let (kind, decision, approval, outcome, reason) = match &r {
                Ok(id) => (
                    joch_audit::Kind::ApprovalDecided,
                    "approved",
                    id.clone(),
                    joch_audit::Outcome::Result,
                    String::new(),
                ),
                Err(d) => (
                    if d.reason == Reason::ApprovalPending {
                        joch_audit::Kind::ApprovalRequested
                    } else {
                        joch_audit::Kind::ApprovalDecided
                    },
                    match d.reason {
                        Reason::ApprovalPending => "pending",
                        Reason::ApprovalTimeout => "timed out",
                        _ => "denied",
                    },
                    d.extra
                        .as_ref()
                        .and_then(|e| e.policy.as_ref())
                        .and_then(|p| p["approval"].as_str())
                        .unwrap_or_default()
                        .to_string(),
                    joch_audit::Outcome::Denied,
                    d.message.clone(),
                ),
            };
            audit.record(joch_audit::Record {
                time_us: joch_audit::now_us(),
                kind,
                server,
                target: name,
                decision: decision.into(),
                policy,
                rule,
                approval,
                outcome,
                reason,
                latency_us: started.elapsed().as_micros() as u64,
                ..crate::audit::of_call(call)
            });
        }
        r
    }

    fn find(&self, call: &Call, h: &Held, hash: &[u8; 32], ok: impl Fn(&Approval) -> bool) -> Option<Arc<Approval>> {
        let st = self.registry.load();
        let epoch = st.registry.policy_epoch;
        st.registry
            .approvals
            .values()
            .filter(|a| a.matches(&call.caller.name, &h.server, h.kind.as_str(), &h.name, hash, epoch) && ok(a))
            .max_by_key(|a| a.requested.index)
            .cloned()
    }

    /// Holds `call` until its approval is decided; `Ok(id)` once this call may use it.
    async fn wait_for(&self, call: &Call, h: Held) -> Result<String, Denial> {
        let hash = args_hash(&h.args);
        let now = crate::policy::list::now_ms();
        let deny = |reason, message: String| call.deny(reason, &format!("{}/{}", h.policy, h.rule), message);
        // An approved, unused approval for exactly this call: use it.
        let approved = self.find(call, &h, &hash, |a| matches!(a.state, ApprovalState::Approved { .. }));
        let pending = self.find(call, &h, &hash, |a| a.state == ApprovalState::Pending && a.expires_ms > now);
        let id = match (approved, pending) {
            (Some(a), _) => return self.use_it(call, &h, &a.id).await,
            (None, Some(a)) => a.id.clone(),
            (None, None) => {
                let id = format!("apr-{:016x}", rand::random::<u64>());
                let cmd = Command::RequestApproval {
                    id: id.clone(),
                    agent: call.caller.name.clone(),
                    server: h.server.clone(),
                    kind: h.kind.as_str().to_string(),
                    name: h.name.clone(),
                    args_sha256: hash,
                    policy: h.policy.clone(),
                    rule: h.rule.clone(),
                    node: self.node,
                    timeout_ms: h.timeout.as_millis() as u64,
                };
                self.proposer.propose(cmd).await.map_err(|e| {
                    deny(Reason::ApprovalRequired, format!("the approval request could not be recorded: {e}"))
                })?;
                metrics::counter!("joch_approvals_requested_total").increment(1);
                tracing::info!(target: "joch::policy", approval = %id, agent = %call.caller.name, server = %h.server,
                    name = %h.name, policy = %h.policy, rule = %h.rule, "call held for approval");
                id
            }
        };
        let pending_denial = |id: &str| {
            deny(
                Reason::ApprovalPending,
                format!(
                    "policy {}, rule {} requires an operator's approval: approval {id} is pending (joch approvals approve {id}); call again with the same arguments once it is approved",
                    h.policy, h.rule
                ),
            )
            .with_policy(serde_json::json!({"policy": h.policy, "rule": h.rule, "decision": "REQUIRE_APPROVAL", "approval": id}))
        };
        if h.no_wait {
            return Err(pending_denial(&id));
        }
        let mut changes = self.registry.subscribe();
        loop {
            let st = self.registry.load();
            let Some(a) = st.registry.approvals.get(&id).cloned() else {
                // Not applied here yet: wait for the registry to move.
                if changes.changed().await.is_err() {
                    return Err(pending_denial(&id));
                }
                continue;
            };
            match &a.state {
                ApprovalState::Approved { .. } => return self.use_it(call, &h, &id).await,
                ApprovalState::Denied { reason, by } => {
                    metrics::counter!("joch_approvals_total", "outcome" => "denied").increment(1);
                    return Err(deny(
                        Reason::ApprovalDenied,
                        format!("approval {id} was denied by {}: {reason}", by.actor),
                    )
                    .with_policy(serde_json::json!({"policy": h.policy, "rule": h.rule, "decision": "REQUIRE_APPROVAL", "approval": id})));
                }
                ApprovalState::Used { .. } => {
                    return Err(deny(
                        Reason::ApprovalRequired,
                        format!("approval {id} was used by another call; call again to ask for a new one"),
                    ))
                }
                ApprovalState::Pending => {}
            }
            let left = Duration::from_millis(a.expires_ms.saturating_sub(crate::policy::list::now_ms()));
            if left.is_zero() {
                metrics::counter!("joch_approvals_total", "outcome" => "timeout").increment(1);
                return Err(deny(
                    Reason::ApprovalTimeout,
                    format!("approval {id} was not decided within {} s", h.timeout.as_secs()),
                ));
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return Err(pending_denial(&id)) },
                _ = tokio::time::sleep(left) => {}
            }
        }
    }

    /// Commits that this call uses approval `id` (one call can).
    async fn use_it(&self, call: &Call, h: &Held, id: &str) -> Result<String, Denial> {
        self.proposer.propose(Command::UseApproval { id: id.to_string(), node: self.node }).await.map_err(|e| {
            call.deny(
                Reason::ApprovalRequired,
                &format!("{}/{}", h.policy, h.rule),
                format!("approval {id} cannot be used: {e}"),
            )
        })?;
        metrics::counter!("joch_approvals_total", "outcome" => "approved").increment(1);
        tracing::info!(target: "joch::policy", approval = %id, agent = %call.caller.name, server = %h.server, name = %h.name,
            "approved call runs");
        Ok(id.to_string())
    }
}

/// Whether approval `id` lets `call` through on this node: approved (and used here) for exactly
/// this call under the current policies.
pub fn admits(
    st: &joch_raft_store::PublishedState,
    call: &Call,
    kind: Kind,
    name: &str,
    args: &Value,
    node: u64,
) -> bool {
    let Some(id) = call.approval.as_deref() else { return false };
    let Some(a) = st.registry.approvals.get(id) else { return false };
    let usable = match &a.state {
        ApprovalState::Approved { .. } => true,
        ApprovalState::Used { used, .. } => used.actor == format!("node {node}"),
        _ => false,
    };
    usable
        && a.matches(&call.caller.name, &call.server, kind.as_str(), name, &args_hash(args), st.registry.policy_epoch)
}
