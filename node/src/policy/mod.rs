//! The decision on every call and every list item: the registry's own controls (`exposes`,
//! `toolApproval: manual` with `joch mcp approve-tool`, `--read-only`), then the compiled
//! policies (`joch-policy`), from the published snapshot only. One function, [`Governance::judge`],
//! decides both a call (admission) and whether a list shows an item (the exit), so the two
//! cannot drift apart.
//!
//! What a tool does (`mcp.action`): the registry's `spec.tools.NAME.action` when set; else the
//! `readOnlyHint` the upstream declared in the tool's annotations, as this node last saw them in a
//! `tools/list` answer; else, as the MCP specification's defaults say, a write. Until discovery
//! (issue 17) commits annotations to the registry, a node that has not yet relayed a server's
//! tool list treats its tools as writes: it fails closed, never open.

use std::collections::HashMap;
use std::sync::Arc;

use joch_policy::{Action, Constraints, Decision, Facts, Kind, Match, Verdict};
use joch_raft_store::model::resource::{ToolAction, ToolApproval, Transport};
use joch_raft_store::{PublishedState, ServerRecord};
use parking_lot::RwLock;
use serde_json::{json, Value};

use crate::auth::agent::Caller;

pub mod approvals;
pub mod limits;
pub mod list;

/// Why the registry's own controls or a policy refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Which control.
    pub kind: RefusalKind,
    /// The rule that decided (`mcpserver.spec.exposes.tools`, `POLICY/RULE`).
    pub rule: String,
    /// What the caller is told.
    pub message: String,
    /// The policy's match, when a policy decided.
    pub by: Option<Box<Match>>,
    /// A REQUIRE_APPROVAL's bounds (they hold once approved).
    pub constraints: Option<Box<Constraints>>,
    /// A REQUIRE_APPROVAL's redaction of the arguments (it holds once approved).
    pub redact_args: Option<Box<Match>>,
}

/// The controls that refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// `spec.exposes.{tools,prompts,resources}: false`.
    NotExposed,
    /// `toolApproval: manual` and the tool is not approved.
    NotApproved,
    /// The server is read-only and the tool writes.
    ReadOnly,
    /// A policy's DENY.
    Policy,
    /// A policy's REQUIRE_APPROVAL (the call is held for an approval).
    Approval,
    /// ALLOW_WITH_CONSTRAINTS whose bounds this call cannot meet (the upstream's host).
    Constraint,
}

/// A call the controls let through, with the bounds it runs under.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grant {
    /// Bounds from ALLOW_WITH_CONSTRAINTS.
    pub constraints: Constraints,
    /// The rule that decided, if one did.
    pub by: Option<Match>,
    /// Whether the call reads or writes (capability calls; `None`: not about one capability).
    pub action: Option<Action>,
    /// What audit-only policies would have decided (recorded in the audit trail; seed 003's
    /// "unapproved high-risk writes" gate counts writes they would have stopped).
    pub audited: Vec<Match>,
    /// A rule that redacts the call's arguments (`modify: redact` on `mcpArgs.*` or `args.*`):
    /// admission replaces the secrets and personal data in them before the call leaves.
    pub redact_args: Option<Match>,
}

/// A call's decision, kept for its admission: the held-call check (`proxy/held.rs`) decides
/// before admission does, on a snapshot of the registry, and admission takes that answer when
/// it decides on the same snapshot for the same capability instead of deciding (and parsing the
/// arguments) a second time.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The registry's applied index the decision was made at.
    pub index: u64,
    /// The server.
    pub server: String,
    /// The capability's name.
    pub name: String,
    /// The decision.
    pub result: Result<Grant, Refusal>,
}

/// What one request is about.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Tool, prompt or resource.
    pub kind: Kind,
    /// The method (`tools/call`, or the list's item method).
    pub method: &'a str,
    /// The tool or prompt name, or the resource URI (the server's own, not `server.tool`).
    pub name: &'a str,
    /// The tool's annotations as the upstream declared them (list items).
    pub annotations: Option<&'a Value>,
    /// The call's arguments; `None`: deciding whether a list shows the item (see
    /// `joch_policy::Facts::listing`).
    pub args: Option<&'a Value>,
    /// Now, in Unix milliseconds (time windows).
    pub now_ms: u64,
}

/// The kind and method of a capability call, if `method` is one.
pub fn subject_kind(method: &str) -> Option<Kind> {
    match method {
        "tools/call" => Some(Kind::Tool),
        "prompts/get" => Some(Kind::Prompt),
        "resources/read" | "resources/subscribe" => Some(Kind::Resource),
        _ => None,
    }
}

/// The node's governance: what it learned of tools' annotations, and its rate-limit buckets.
#[derive(Default)]
pub struct Governance {
    /// Tool annotations seen in `tools/list` answers, by server, then tool.
    seen: RwLock<HashMap<String, Arc<HashMap<String, Action>>>>,
    /// This node's share of every rate limit.
    pub limiter: limits::Limiter,
    /// The cluster's members (a rate limit is shared among them); none: a limit is this node's.
    members: Option<Arc<crate::cluster::Members>>,
}

impl Governance {
    /// Governance for a node of a cluster with these members.
    pub fn new(members: Arc<crate::cluster::Members>) -> Governance {
        Governance { members: Some(members), ..Default::default() }
    }

    /// How many members share a rate limit.
    pub fn members(&self) -> usize {
        self.members.as_ref().map(|m| m.len()).unwrap_or(1).max(1)
    }

    /// Records what a server's tool list declares (called by the list filter).
    pub fn learn(&self, server: &str, tools: impl Iterator<Item = (String, Action)>) {
        let mut known: HashMap<String, Action> =
            self.seen.read().get(server).map(|m| (**m).clone()).unwrap_or_default();
        let mut changed = false;
        for (name, action) in tools {
            changed |= known.insert(name, action) != Some(action);
        }
        if changed {
            self.seen.write().insert(server.to_string(), Arc::new(known));
        }
    }

    fn action(&self, rec: &ServerRecord, s: &Subject<'_>) -> Action {
        if s.kind != Kind::Tool {
            return Action::Read;
        }
        if let Some(a) = rec.spec.tools.get(s.name).and_then(|t| t.action) {
            return match a {
                ToolAction::Read => Action::Read,
                ToolAction::Write => Action::Write,
            };
        }
        if s.annotations.is_some() {
            return Action::from_annotations(s.annotations);
        }
        self.seen.read().get(&rec.name).and_then(|m| m.get(s.name).copied()).unwrap_or(Action::Write)
    }

    /// The decision on a call, or (`s.args` of `None`) on whether a list shows the item. With
    /// `trace`, every policy rule that matched is pushed there.
    pub fn judge(
        &self,
        state: &PublishedState,
        caller: &Caller,
        rec: &ServerRecord,
        s: &Subject<'_>,
        trace: Option<&mut Vec<Match>>,
    ) -> Result<Grant, Refusal> {
        let (listing, now_ms) = (s.args.is_none(), s.now_ms);
        let refuse = |kind, rule: &str, message: String| {
            Err(Refusal { kind, rule: rule.into(), message, by: None, constraints: None, redact_args: None })
        };
        let server = rec.name.as_str();
        let exposes = &rec.spec.exposes;
        let (exposed, field) = match s.kind {
            Kind::Tool => (exposes.tools, "tools"),
            Kind::Prompt => (exposes.prompts, "prompts"),
            Kind::Resource => (exposes.resources, "resources"),
        };
        if !exposed {
            return refuse(
                RefusalKind::NotExposed,
                &format!("mcpserver.spec.exposes.{field}"),
                format!("MCP server {server:?} does not expose {field} through joch (spec.exposes.{field}: false)"),
            );
        }
        let action = self.action(rec, s);
        if s.kind == Kind::Tool {
            if rec.spec.security.tool_approval == ToolApproval::Manual && !rec.status.approved_tools.contains(s.name) {
                return refuse(
                    RefusalKind::NotApproved,
                    "mcpserver.spec.security.toolApproval",
                    format!(
                        "tool {server}.{} is not approved (toolApproval: manual; joch mcp approve-tool {server}.{})",
                        s.name, s.name
                    ),
                );
            }
            if rec.status.read_only && action == Action::Write {
                return refuse(
                    RefusalKind::ReadOnly,
                    "mcpserver.status.readOnly",
                    format!(
                        "MCP server {server:?} is read-only and tool {:?} writes (joch mcp policy set {server} --read-write lifts it)",
                        s.name
                    ),
                );
            }
        }
        let set = &state.registry.compiled.set;
        if set.is_empty() {
            return Ok(Grant { action: Some(action), ..Grant::default() });
        }
        // The server's risk tags, and its tool's (copied only when the tool has some).
        let tool_tags = rec.spec.tools.get(s.name).map(|t| &t.risk_tags).filter(|t| !t.is_empty());
        let tags: std::borrow::Cow<'_, [String]> = match tool_tags {
            Some(t) => rec.spec.risk_tags.iter().chain(t).cloned().collect::<Vec<_>>().into(),
            None => rec.spec.risk_tags.as_slice().into(),
        };
        let attached: Vec<&str> = rec.spec.policies.iter().map(|p| p.name.as_str()).collect();
        // What the content guard finds in the arguments, when a rule asks (`mcpArgs.*`).
        let args_scan = match (set.needs_args_scan(), s.args) {
            (true, Some(a)) if !listing => Some(crate::guard::scan_arguments(a)),
            _ => None,
        };
        let facts = Facts {
            agent: &caller.name,
            agent_labels: &caller.labels,
            server,
            server_labels: &rec.labels,
            trust_score: rec.status.trust.as_ref().map(|t| t.score),
            schema_drift: Some(!rec.status.drift.is_empty()),
            kind: s.kind,
            method: s.method,
            name: s.name,
            action,
            risk_tags: &tags,
            args: s.args,
            listing,
            now_ms,
            result: None,
            args_scan: args_scan.as_ref(),
        };
        let v = set.decide(&facts, &attached, trace);
        self.record(&v, server, listing);
        let redact_args = match listing {
            false => set.modification(&facts, &attached).map(|(m, _)| m),
            true => None,
        };
        let Verdict { decision, decided_by, constraints, audited } = v;
        let grant = |constraints, by| Grant {
            constraints,
            by,
            action: Some(action),
            audited: audited.clone(),
            redact_args: redact_args.clone(),
        };
        let rule = |m: &Option<Match>| m.as_ref().map(|m| format!("{}/{}", m.policy, m.rule)).unwrap_or_default();
        match decision {
            Decision::Allow => Ok(grant(Constraints::default(), decided_by)),
            Decision::Deny => {
                let m = decided_by.clone();
                let (policy, r, reason) =
                    m.as_ref().map(|m| (m.policy.as_str(), m.rule.as_str(), m.reason.as_str())).unwrap_or_default();
                Err(Refusal {
                    kind: RefusalKind::Policy,
                    rule: rule(&decided_by),
                    message: format!("denied by policy {policy}, rule {r}: {reason}"),
                    by: m.map(Box::new),
                    constraints: None,
                    redact_args: None,
                })
            }
            Decision::RequireApproval if listing => Ok(grant(constraints, decided_by)),
            Decision::RequireApproval => {
                let (policy, r) = decided_by.as_ref().map(|m| (m.policy.clone(), m.rule.clone())).unwrap_or_default();
                Err(Refusal {
                    kind: RefusalKind::Approval,
                    rule: rule(&decided_by),
                    message: format!("policy {policy}, rule {r} requires an operator's approval for this call"),
                    by: decided_by.map(Box::new),
                    constraints: Some(Box::new(constraints)),
                    redact_args: redact_args.map(Box::new),
                })
            }
            Decision::AllowWithConstraints => {
                if !listing {
                    if let Some(host) = upstream_host(rec) {
                        if !constraints.host_allowed(&host) {
                            return Err(Refusal {
                                kind: RefusalKind::Constraint,
                                rule: rule(&decided_by),
                                message: format!(
                                    "the upstream host {host:?} is not in the network_allowlist of policy rule {} ({})",
                                    rule(&decided_by),
                                    constraints.network_allowlist.as_deref().unwrap_or_default().join(", ")
                                ),
                                by: decided_by.map(Box::new),
                                constraints: None,
                                redact_args: None,
                            });
                        }
                    } else if constraints.network_allowlist.is_some() {
                        return Err(Refusal {
                            kind: RefusalKind::Constraint,
                            rule: rule(&decided_by),
                            message: format!(
                                "policy rule {} limits the network to an allow-list, which joch cannot enforce on the stdio server {server:?}",
                                rule(&decided_by)
                            ),
                            by: decided_by.map(Box::new),
                            constraints: None,
                            redact_args: None,
                        });
                    }
                }
                Ok(grant(constraints, decided_by))
            }
        }
    }

    /// Audit-only policies: counted and logged, never enforced.
    fn record(&self, v: &Verdict, server: &str, listing: bool) {
        if listing {
            return;
        }
        for m in &v.audited {
            metrics::counter!("joch_policy_audit_decisions_total", "policy" => m.policy.clone(), "decision" => m.decision.as_str())
                .increment(1);
            tracing::info!(target: "joch::policy", policy = %m.policy, rule = %m.rule, decision = m.decision.as_str(),
                reason = %m.reason, server, "audit-only policy decision (not enforced)");
        }
        if let Some(m) = &v.decided_by {
            metrics::counter!("joch_policy_decisions_total", "decision" => m.decision.as_str()).increment(1);
        }
    }

    /// `joch policy explain`: the decision for a would-be call, every rule that matched and the
    /// one that decided, as JSON.
    pub fn explain(&self, state: &PublishedState, caller: &Caller, rec: &ServerRecord, s: &Subject<'_>) -> Value {
        let mut trace = Vec::new();
        let r = self.judge(state, caller, rec, s, Some(&mut trace));
        let audited: Vec<&Match> = trace.iter().filter(|m| m.audit).collect();
        let listed = self.judge(state, caller, rec, &Subject { args: None, ..*s }, None).is_ok();
        let (decision, decided_by, reason, constraints) = match &r {
            Ok(g) => (
                g.by.as_ref().map(|m| m.decision.as_str()).unwrap_or("ALLOW"),
                g.by.as_ref().map(|m| format!("{}/{}", m.policy, m.rule)),
                g.by.as_ref().map(|m| m.reason.clone()).unwrap_or_else(|| "no policy rule matched".into()),
                json!(g.constraints),
            ),
            Err(f) => (
                match f.kind {
                    RefusalKind::Approval => "REQUIRE_APPROVAL",
                    _ => "DENY",
                },
                Some(f.rule.clone()),
                f.message.clone(),
                Value::Null,
            ),
        };
        json!({
            "agent": caller.name,
            "agentLabels": caller.labels,
            "server": rec.name,
            "kind": s.kind.as_str(),
            "name": s.name,
            "action": self.action(rec, s).as_str(),
            "decision": decision,
            "decidedBy": decided_by,
            "reason": reason,
            "constraints": constraints,
            "listed": listed,
            "matched": trace,
            "auditOnly": audited,
            "precedence": "deny-overrides: DENY > REQUIRE_APPROVAL > ALLOW_WITH_CONSTRAINTS > ALLOW; ties: first policy by name, first rule in file order",
        })
    }
}

/// The host an HTTP server's endpoint names (`None` for stdio).
fn upstream_host(rec: &ServerRecord) -> Option<String> {
    if rec.spec.transport == Transport::Stdio {
        return None;
    }
    let url = rec.spec.endpoint.as_ref()?.url.as_str();
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    let host = if authority.starts_with('[') {
        authority.split_once(']').map(|(h, _)| format!("{h}]")).unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default().to_string()
    };
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
