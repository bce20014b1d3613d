//! Admission: the only way to an upstream.
//!
//! [`Gate::admit`] decides whether a [`Call`] may reach its server, from the in-memory snapshot
//! only (no disk, no Raft round trip, no lock), in the order of DESIGN.md's request path: this
//! node's lease, registered, quarantined, pinned version, transport allowed; then, for a
//! capability call (`tools/call`, `prompts/get`, `resources/read`), the registry's controls and
//! the policies (`crate::policy`: exposes, tool approval, read-only, the compiled policies); then
//! every [`Stage`]'s `on_request`. A registry change re-runs all of them on what is in flight, so
//! a policy that now denies a running call cuts it, as a quarantine does. It returns an [`Admitted`], which
//! only this module can make, and which the upstream clients (HTTP and stdio) and the aggregate's
//! member calls require: skipping admission does not compile.
//!
//! An `Admitted` also carries the cut: watches of the registry and of the lease, subscribed
//! *before* the checks ran, so a change applied at any moment after them is seen. Exchanges run
//! under [`Admitted::until_cut`] (a biased select: a cut wins over an answer that is ready at the
//! same moment), streams end with [`Admitted::cut`], and every send re-validates cheaply (an
//! unchanged watch means the admission still holds).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use joch_raft_store::model::resource::{DriftAction, Transport};
use joch_raft_store::{PublishedState, RegistryHandle, ServerRecord};
use tokio::sync::watch;

use super::deny::{Denial, Reason};
pub use super::request::{Call, Rpc};
use super::stages::Stage;
use crate::cluster::fence::{Fenced, Fences, Target};
use crate::cluster::lease::{Lease, Stale};
use crate::policy::{list::now_ms, subject_kind, Governance, Grant, Refusal, RefusalKind, Subject};

/// The denial of a node whose control plane is stale (see `cluster/lease.rs`).
pub fn stale(call: &Call, why: &Stale) -> Denial {
    call.deny(
        Reason::ControlPlaneStale,
        "node.lease",
        format!("node {} cannot vouch for the registry ({why}); try another node", call.node),
    )
}

/// Decides admission.
#[derive(Clone)]
pub struct Gate {
    registry: RegistryHandle,
    lease: Arc<Lease>,
    fences: Arc<Fences>,
    gov: Arc<Governance>,
    stages: Arc<[Arc<dyn Stage>]>,
}

impl Gate {
    /// A gate over this node's registry, lease and fences, deciding with `gov`, running these
    /// stages.
    pub fn new(
        registry: RegistryHandle,
        lease: Arc<Lease>,
        fences: Arc<Fences>,
        gov: Arc<Governance>,
        stages: Arc<[Arc<dyn Stage>]>,
    ) -> Gate {
        Gate { registry, lease, fences, gov, stages }
    }

    /// The published registry (for what joch answers itself: aggregate lists of members).
    pub fn state(&self) -> Arc<PublishedState> {
        self.registry.load()
    }

    /// Whether this node may serve governed traffic now.
    pub fn fresh(&self, call: &Call) -> Result<(), Denial> {
        self.lease.check(Instant::now()).map_err(|why| stale(call, &why))
    }

    /// Admits `call` to its server, or denies it.
    pub fn admit(&self, call: Call) -> Result<Admitted, Denial> {
        // Subscribe first, then check: a change applied from here on is seen by the cut.
        let changes = self.registry.subscribe();
        let stale_rx = self.lease.subscribe();
        let state = self.registry.load();
        self.lease.check(Instant::now()).map_err(|why| stale(&call, &why))?;
        let deciding = Instant::now();
        let checked = checks(self, &call, &state);
        // Refused or not, the decision took its time; what it allowed, under which rule, is noted too.
        call.exec.note(|n| {
            n.decide_us = deciding.elapsed().as_micros().max(1) as u64;
            if let Ok((server, grant)) = &checked {
                n.server = Some(server.name.clone());
                n.decided = grant.by.as_ref().map(|m| (m.policy.clone(), m.rule.clone(), m.decision.as_str()));
                n.action = grant.action;
                n.keep_args = server.spec.audit.record_arguments;
                n.audited = grant.audited.clone();
            }
        });
        let (server, grant) = checked?;
        // Repeats of one call (max_retries), then rate limits: admissions only count (a re-check
        // of what is in flight takes nothing).
        if let (Some(n), Some(by)) = (grant.constraints.max_retries, grant.by.as_ref()) {
            let rule = format!("{}/{}", by.policy, by.rule);
            let hash = crate::policy::approvals::args_hash(&call_args(&call));
            let hex: String = hash.iter().take(12).map(|b| format!("{b:02x}")).collect();
            let key = format!("{}|{}.{}|{hex}", call.caller.name, server.name, call.target().unwrap_or_default());
            if let Err(wait) = self.gov.limiter.take_repeat(&rule, key, n, Instant::now()) {
                metrics::counter!("joch_policy_rate_limited_total").increment(1);
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                return Err(call
                    .deny(
                        Reason::RateLimited,
                        &rule,
                        format!(
                            "the same call (same tool and arguments) was made {} times within {} minutes on this node; policy rule {rule} allows max_retries {n}; try again in {secs} s",
                            n + 1,
                            crate::policy::limits::REPEAT_WINDOW.as_secs() / 60
                        ),
                    )
                    .with_retry_after(secs));
            }
        }
        if !grant.constraints.rate_limits.is_empty() {
            let name = call.target().unwrap_or_default();
            let took = self.gov.limiter.take(
                &grant.constraints.rate_limits,
                &call.caller.name,
                &server.name,
                name,
                self.gov.members(),
                Instant::now(),
            );
            if let Err(l) = took {
                metrics::counter!("joch_policy_rate_limited_total").increment(1);
                let per = match l.per {
                    joch_policy::RatePer::Agent => "agent",
                    joch_policy::RatePer::Tool => "tool",
                    joch_policy::RatePer::Server => "server",
                };
                let secs = l.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                return Err(call
                    .deny(
                        Reason::RateLimited,
                        &l.rule,
                        format!(
                            "rate limit of policy rule {}: {} calls per minute per {per}, fleet-wide; try again in {secs} s",
                            l.rule, l.per_minute
                        ),
                    )
                    .with_retry_after(secs));
            }
        }
        let call = match &grant.redact_args {
            Some(by) => redact_arguments(call, by),
            None => call,
        };
        for s in self.stages.iter() {
            s.on_request(&call, &server)?;
        }
        let deadline =
            grant.constraints.max_runtime_sec.map(|s| tokio::time::Instant::now() + std::time::Duration::from_secs(s));
        Ok(Admitted(Arc::new(Inner {
            call,
            server,
            grant,
            deadline,
            index: state.applied_index,
            changes,
            stale: stale_rx,
            gate: self.clone(),
        })))
    }

    /// Resolves with the denial once this node turns stale: the cut of what joch serves itself
    /// across servers (the aggregate endpoint's own streams). Owns what it needs.
    pub fn stale_cut(&self, call: &Call) -> impl Future<Output = Denial> + Send + 'static {
        let mut rx = self.lease.subscribe();
        let lease = self.lease.clone();
        let call = call.clone();
        async move {
            loop {
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
                if *rx.borrow_and_update() {
                    if let Err(why) = lease.check(Instant::now()) {
                        metrics::counter!("joch_mcp_streams_cut_total", "reason" => "control-plane-stale").increment(1);
                        return stale(&call, &why);
                    }
                }
            }
        }
    }
}

struct Inner {
    call: Call,
    server: Arc<ServerRecord>,
    /// What the controls and policies granted (bounds included).
    grant: Grant,
    /// ALLOW_WITH_CONSTRAINTS's runtime limit: the call is cut then.
    deadline: Option<tokio::time::Instant>,
    index: u64,
    changes: watch::Receiver<u64>,
    stale: watch::Receiver<bool>,
    gate: Gate,
}

/// A call admitted to its server: the proof the upstream clients require. Cheap to clone.
#[derive(Clone)]
pub struct Admitted(Arc<Inner>);

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted").field("server", &self.0.call.server).field("index", &self.0.index).finish()
    }
}

impl Admitted {
    /// The call.
    pub fn call(&self) -> &Call {
        &self.0.call
    }

    /// The server's record, as admitted.
    pub fn server(&self) -> &ServerRecord {
        &self.0.server
    }

    /// What the controls and policies granted.
    pub fn grant(&self) -> &Grant {
        &self.0.grant
    }

    /// The registry index the decision was made at.
    pub fn index(&self) -> u64 {
        self.0.index
    }

    /// The gate that admitted it (to admit related calls, such as joch's own session cleanup).
    pub fn gate(&self) -> &Gate {
        &self.0.gate
    }

    /// Who may do what, as of now (secrets the upstream credentials come from).
    pub fn access(&self) -> Arc<joch_raft_store::model::access::Access> {
        self.0.gate.registry.load().registry.access.clone()
    }

    /// The server's streamable-HTTP endpoint ("" for a stdio server).
    pub fn endpoint(&self) -> &str {
        self.0.server.spec.endpoint.as_ref().map(|e| e.url.as_str()).unwrap_or_default()
    }

    /// Whether the server runs as a stdio child.
    pub fn is_stdio(&self) -> bool {
        self.0.server.spec.transport == Transport::Stdio
    }

    /// A denial of this call.
    pub fn deny(&self, reason: Reason, rule: &str, message: impl Into<String>) -> Denial {
        self.0.call.deny(reason, rule, message)
    }

    /// Whether the admission still holds; cheap when nothing changed since (two atomic loads).
    pub fn revalidate(&self) -> Result<(), Denial> {
        let i = &self.0;
        let changed = i.changes.has_changed().unwrap_or(true) || i.stale.has_changed().unwrap_or(true);
        if !changed {
            return Ok(());
        }
        i.gate.lease.check(Instant::now()).map_err(|why| stale(&i.call, &why))?;
        checks(&i.gate, &i.call, &i.gate.registry.load()).map(|_| ())
    }

    /// Resolves (with the denial) when the call stops being admissible: its server quarantined,
    /// deleted, re-pinned away from the session's version, no longer allowed stdio; or this node
    /// turned stale. Counts from the admission, not from the call of this method.
    pub fn cut(&self) -> impl Future<Output = Denial> + Send + 'static {
        let me = self.clone();
        async move { me.first_denial().await }
    }

    async fn first_denial(&self) -> Denial {
        let i = &self.0;
        // Clones keep the version seen at admission: a change since then fires at once.
        let (mut changes, mut stale_rx) = (i.changes.clone(), i.stale.clone());
        let mut registry_open = true;
        let deadline = i.deadline;
        loop {
            tokio::select! {
                biased;
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                    metrics::counter!("joch_mcp_streams_cut_total", "reason" => "constraint-violated").increment(1);
                    let secs = i.grant.constraints.max_runtime_sec.unwrap_or_default();
                    let rule = i.grant.by.as_ref().map(|m| format!("{}/{}", m.policy, m.rule)).unwrap_or_default();
                    return i.call.deny(
                        Reason::ConstraintViolated,
                        &rule,
                        format!("the call ran into its runtime limit of {secs} s (max_runtime_sec of policy rule {rule}); the upstream call was cancelled"),
                    );
                }
                r = changes.changed(), if registry_open => {
                    if r.is_err() {
                        registry_open = false;
                        continue;
                    }
                    if let Err(d) = checks(&i.gate, &i.call, &i.gate.registry.load()) {
                        metrics::counter!("joch_mcp_streams_cut_total", "reason" => d.reason.as_str()).increment(1);
                        return d;
                    }
                }
                r = stale_rx.changed() => {
                    if r.is_err() {
                        return std::future::pending().await;
                    }
                    if *stale_rx.borrow_and_update() {
                        if let Err(why) = i.gate.lease.check(Instant::now()) {
                            metrics::counter!("joch_mcp_streams_cut_total", "reason" => "control-plane-stale").increment(1);
                            return stale(&i.call, &why);
                        }
                    }
                }
            }
        }
    }

    /// Runs an exchange unless the call stops being admissible first; then the exchange is
    /// dropped (which closes the upstream request) and the denial is the answer. Biased: a cut
    /// that is ready wins over an answer that is ready.
    pub async fn until_cut<T>(&self, exchange: impl Future<Output = T>) -> Result<T, Denial> {
        tokio::select! {
            biased;
            d = self.first_denial() => Err(d),
            r = exchange => Ok(r),
        }
    }
}

/// The fences, the registry checks, then the controls and policies.
fn checks(gate: &Gate, call: &Call, state: &PublishedState) -> Result<(Arc<ServerRecord>, Grant), Denial> {
    fence_check(&gate.fences, call)?;
    let rec = registry_checks(call, state)?;
    let grant = decide(&gate.gov, call, &rec, state)?;
    Ok((rec, grant))
}

/// A write taking the call's server or agent out of service is committing (`cluster/fence.rs`):
/// denied as the registry will deny it once applied.
fn fence_check(fences: &Fences, call: &Call) -> Result<(), Denial> {
    let denial = fences.denies(&call.caller.name, &call.server, Instant::now(), |f: Fenced<'_>| {
        let by = format!("a write received by node {}, committing", f.from);
        match f.target {
            Target::Quarantine { reason, .. } => call.deny(
                Reason::ServerQuarantined,
                "registry.quarantine",
                format!("MCP server {:?} is being quarantined ({by}): {reason}", call.server),
            ),
            Target::Delete { .. } => call.deny(
                Reason::ServerNotRegistered,
                "registry.registered",
                format!("MCP server {:?} is being deleted ({by})", call.server),
            ),
            Target::Revoke { agent } => {
                call.deny(Reason::AgentRevoked, "agent.revoked", format!("agent {agent:?} is being revoked ({by})"))
            }
        }
    });
    denial.map_or(Ok(()), Err)
}

/// A capability call's decision on `state` (kind, method, name), the arguments parsed only when
/// some rule reads them; they are returned too, if parsed. Admission and the held-call check
/// (`held.rs`) both decide with it.
pub(super) fn judge(
    gov: &Governance,
    call: &Call,
    rec: &ServerRecord,
    state: &PublishedState,
    (kind, method, name): (joch_policy::Kind, &str, &str),
) -> (Result<Grant, Refusal>, Option<serde_json::Value>) {
    let args = state.registry.compiled.set.needs_args().then(|| call_args(call));
    let subject = Subject {
        kind,
        method,
        name,
        annotations: None,
        args: Some(args.as_ref().unwrap_or(&serde_json::Value::Null)),
        now_ms: now_ms(),
    };
    (gov.judge(state, &call.caller, rec, &subject, None), args)
}

/// The controls and policies, for a capability call (other methods pass: sessions, lists, pings
/// are not about one capability; lists are filtered on their way back by the same decision).
pub fn decide(gov: &Governance, call: &Call, rec: &ServerRecord, state: &PublishedState) -> Result<Grant, Denial> {
    let Some((method, kind)) = call.method().and_then(|m| Some((m, subject_kind(m)?))) else {
        return Ok(Grant::default());
    };
    let name = call.target().unwrap_or_default();
    // The held-call check may have decided this already, on this snapshot (taken: a later
    // re-check decides afresh).
    let judged = call
        .exec
        .judged
        .lock()
        .take()
        .filter(|j| j.index == state.applied_index && j.server == rec.name && j.name == name);
    let judged = match judged {
        Some(j) => j.result,
        None => judge(gov, call, rec, state, (kind, method, name)).0,
    };
    match judged {
        Ok(g) => Ok(g),
        // Held and approved: this call runs, within the rule's bounds.
        Err(r)
            if r.kind == RefusalKind::Approval && call.approval.is_some() && {
                let args = call_args(call);
                crate::policy::approvals::admits(state, call, kind, name, &args, call.node)
            } =>
        {
            Ok(Grant {
                constraints: r.constraints.map(|c| *c).unwrap_or_default(),
                by: r.by.map(|m| *m),
                redact_args: r.redact_args.map(|m| *m),
                ..Grant::default()
            })
        }
        Err(r) => Err(refusal(call, r)),
    }
}

/// The call with the secrets and personal data in its arguments redacted (a policy rule's
/// `modify: redact` on `mcpArgs.*` or `args.*`): what leaves is the redacted message; the audit
/// record names the rule and what was replaced where.
fn redact_arguments(mut call: Call, by: &joch_policy::Match) -> Call {
    let Some(rpc) = call.rpc.as_ref() else { return call };
    let mut v = rpc.value();
    let Some(args) = v.pointer_mut("/params/arguments") else { return call };
    let replaced = crate::guard::redact_strings(args);
    if replaced.is_empty() {
        return call;
    }
    let rule = format!("{}/{}", by.policy, by.rule);
    metrics::counter!("joch_guard_arguments_redacted_total").increment(1);
    tracing::info!(target: "joch::guard", agent = %call.caller.name, server = %call.server, exec = %call.exec.id,
        rule = %rule, replaced = %replaced.join(","), "secrets redacted from a call's arguments");
    call.exec.note(|n| {
        n.verdict(joch_audit::Verdict {
            by: format!("policy:{rule}"),
            verdict: "modify".into(),
            rule: format!("redact arguments {}", replaced.join(",")),
            micros: 0,
        })
    });
    let body = bytes::Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
    call.rpc = Some(std::sync::Arc::new(super::request::Rpc { msg: rpc.msg.clone(), body }));
    call
}

/// A call's arguments (`null` when it has none).
pub fn call_args(call: &Call) -> serde_json::Value {
    // Only `params.arguments` is built; the rest of the message is skipped, not copied.
    #[derive(serde::Deserialize)]
    struct Msg {
        #[serde(default)]
        params: Option<Params>,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(default)]
        arguments: Option<serde_json::Value>,
    }
    call.rpc
        .as_ref()
        .and_then(|r| serde_json::from_slice::<Msg>(&r.body).ok()?.params?.arguments)
        .unwrap_or(serde_json::Value::Null)
}

/// The denial of a refusal.
pub fn refusal(call: &Call, r: Refusal) -> Denial {
    let reason = match r.kind {
        RefusalKind::NotExposed => Reason::CapabilityNotExposed,
        RefusalKind::NotApproved => Reason::ToolNotApproved,
        RefusalKind::ReadOnly => Reason::ServerReadOnly,
        RefusalKind::Policy => Reason::PolicyDenied,
        RefusalKind::Approval => Reason::ApprovalRequired,
        RefusalKind::Constraint => Reason::ConstraintViolated,
    };
    let d = call.deny(reason, &r.rule, r.message);
    match r.by {
        Some(m) => d.with_policy(serde_json::json!({
            "policy": m.policy, "rule": m.rule, "decision": m.decision.as_str(), "reason": m.reason,
        })),
        None => d,
    }
}

/// The registry checks, in order: the caller still stands (not revoked), registered,
/// quarantined, pinned version (of the session's upstream, when it has one), transport allowed. Pure: the same snapshot and call give the same
/// answer.
pub fn registry_checks(call: &Call, state: &PublishedState) -> Result<Arc<ServerRecord>, Denial> {
    let deny = |reason, rule: &str, message: String| Err(call.deny(reason, rule, message));
    if !call.caller.stands(&state.registry.access) {
        return deny(
            Reason::AgentRevoked,
            "agent.revoked",
            format!("agent {:?} was revoked (or its identity provider removed)", call.caller.name),
        );
    }
    let Some(rec) = state.registry.servers.get(&call.server) else {
        return deny(
            Reason::ServerNotRegistered,
            "registry.registered",
            format!("MCP server {:?} is not registered", call.server),
        );
    };
    if let Some(q) = &rec.status.quarantine {
        return deny(
            Reason::ServerQuarantined,
            "registry.quarantine",
            format!("MCP server {:?} is quarantined: {}", call.server, q.reason),
        );
    }
    if rec.spec.discovery.on_schema_drift == DriftAction::Deny
        && !rec.status.drift.is_empty()
        && !call.caller.is_discovery()
    {
        let what: Vec<String> = rec.status.drift.iter().map(ToString::to_string).collect();
        return deny(
            Reason::SchemaDrift,
            "mcpserver.spec.discovery.onSchemaDrift",
            format!(
                "MCP server {:?} drifted from its baseline ({}); onSchemaDrift: deny: review with joch mcp diff {}, then joch mcp pin",
                call.server,
                what.join("; "),
                call.server
            ),
        );
    }
    let sec = &rec.spec.security;
    if let (Some(min), false) = (sec.min_trust_score, call.caller.is_discovery()) {
        let score = rec.status.trust.as_ref().map(|t| t.score).unwrap_or(0.0);
        if score < min {
            let why = rec.status.trust.as_ref().map(|t| t.summary()).unwrap_or_else(|| "not scored yet".into());
            return deny(
                Reason::TrustScoreTooLow,
                "mcpserver.spec.security.minTrustScore",
                format!(
                    "MCP server {:?} has trust score {score:.2}, below its minTrustScore {min:.2} ({why}); see joch mcp trust {}",
                    call.server, call.server
                ),
            );
        }
    }
    if let (true, Some(pinned), Some(actual)) = (
        sec.pin_server_version,
        sec.pinned_version.as_deref(),
        call.session.as_ref().and_then(|s| s.upstream_version.as_deref()),
    ) {
        if pinned != actual {
            return deny(
                Reason::VersionPinMismatch,
                "mcpserver.spec.security.pinnedVersion",
                format!("MCP server {:?} is pinned to {pinned} but runs {actual}", call.server),
            );
        }
    }
    if rec.spec.transport == Transport::Stdio && !sec.allow_stdio {
        return deny(
            Reason::StdioNotAllowed,
            "mcpserver.spec.security.allowStdio",
            format!("MCP server {:?} uses stdio, which its record does not allow", call.server),
        );
    }
    Ok(rec.clone())
}

/// Checks the version an upstream reports (at initialize, in a discover result, in any modern
/// answer) against the pin.
pub fn check_pin(adm: &Admitted, actual: Option<&str>) -> Result<(), Denial> {
    let sec = &adm.server().spec.security;
    match (sec.pin_server_version, sec.pinned_version.as_deref()) {
        (true, Some(pinned)) if actual != Some(pinned) => Err(adm.deny(
            Reason::VersionPinMismatch,
            "mcpserver.spec.security.pinnedVersion",
            format!(
                "MCP server {:?} is pinned to {pinned} but runs {}",
                adm.call().server,
                actual.unwrap_or("an unknown version")
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::lease::{Role, Standing};
    use crate::mcp::session::SessionToken;
    use joch_raft_store::model::registry::Touched;
    use joch_raft_store::model::resource::{Endpoint, McpServerSpec, StdioSpec};
    use joch_raft_store::{Command, Registry, Request};

    fn state(cmds: Vec<Command>) -> PublishedState {
        let mut reg = Registry::default();
        for (i, c) in cmds.into_iter().enumerate() {
            reg.apply(i as u64 + 1, &Request { actor: "t".into(), at_ms: 0, command: c }, &mut Touched::default())
                .unwrap();
        }
        PublishedState { registry: reg, applied_index: 9 }
    }

    fn call(server: &str, version: Option<&str>) -> Call {
        Call {
            node: 1,
            server: server.into(),
            caller: crate::auth::agent::Caller::anonymous(),
            http_method: "POST",
            rpc: None,
            session: version.map(|v| SessionToken {
                owner: 1,
                server: server.into(),
                upstream_session: None,
                upstream_version: Some(v.into()),
                protocol_version: "2025-11-25".into(),
                caller: "anonymous".into(),
                created_ms: 0,
                members: Vec::new(),
                upstream_modern: false,
            }),
            approval: None,
            exec: crate::audit::exec::Exec::detached(),
        }
    }

    fn http(name: &str) -> Command {
        Command::CreateServer {
            name: name.into(),
            labels: Default::default(),
            spec: McpServerSpec {
                endpoint: Some(Endpoint { url: "http://127.0.0.1:1/mcp".into() }),
                ..Default::default()
            },
        }
    }

    fn reason(r: Result<Arc<ServerRecord>, Denial>) -> Option<&'static str> {
        r.err().map(|d| d.reason.as_str())
    }

    #[test]
    fn checks_run_in_order() {
        let st = state(vec![
            http("a"),
            http("q"),
            Command::Quarantine { name: "q".into(), reason: "drift".into() },
            http("p"),
            Command::Pin { name: "p".into(), version: "1.4.2".into() },
            Command::CreateServer {
                name: "s".into(),
                labels: Default::default(),
                spec: McpServerSpec {
                    transport: Transport::Stdio,
                    stdio: Some(StdioSpec { command: "x".into(), ..Default::default() }),
                    ..Default::default()
                },
            },
        ]);
        assert_eq!(reason(registry_checks(&call("nope", None), &st)), Some("server-not-registered"));
        assert_eq!(reason(registry_checks(&call("q", None), &st)), Some("server-quarantined"));
        assert_eq!(reason(registry_checks(&call("p", Some("1.5.0")), &st)), Some("version-pin-mismatch"));
        assert_eq!(reason(registry_checks(&call("p", Some("1.4.2")), &st)), None);
        assert_eq!(reason(registry_checks(&call("p", None), &st)), None, "initialize: checked on the answer");
        assert_eq!(reason(registry_checks(&call("s", None), &st)), Some("stdio-not-allowed"));
        assert_eq!(reason(registry_checks(&call("a", None), &st)), None);
    }

    fn no_fences() -> Arc<Fences> {
        Arc::new(Fences::new(RegistryHandle::default()))
    }

    fn fresh_lease() -> Arc<Lease> {
        let lease = Arc::new(Lease::new(1, std::time::Duration::from_secs(6)));
        let now = Instant::now();
        lease.set_standing(&Standing { role: Role::Leader, term: 1, voters: vec![vec![1]], commit: 0 }, 0, now);
        let _ = lease.publish(now);
        lease
    }

    #[tokio::test]
    async fn admission_sees_the_lease_first_and_the_cut_sees_what_changed_after_it() {
        let registry = RegistryHandle::default();
        let lease = Arc::new(Lease::new(1, std::time::Duration::from_secs(6)));
        let gate = Gate::new(registry.clone(), lease, no_fences(), Default::default(), Arc::new([]));
        assert_eq!(gate.admit(call("a", None)).unwrap_err().reason, Reason::ControlPlaneStale);
        let gate = Gate::new(registry.clone(), fresh_lease(), no_fences(), Default::default(), Arc::new([]));
        assert_eq!(gate.admit(call("a", None)).unwrap_err().reason, Reason::ServerNotRegistered);
    }

    #[tokio::test]
    async fn a_fence_denies_admission_and_cuts_what_it_admitted_before() {
        let registry = RegistryHandle::fixed(state(vec![http("a"), http("b")]));
        let fences = Arc::new(Fences::new(registry.clone()));
        let gate = Gate::new(registry, fresh_lease(), fences.clone(), Default::default(), Arc::new([]));
        let before = gate.admit(call("a", None)).expect("nothing fenced yet");
        let fence = |id, target| crate::cluster::fence::Fence { id, from: 3, target, ttl_ms: 60_000 };
        fences.raise(fence(1, Target::Quarantine { server: "a".into(), reason: "leak".into() }), Instant::now());
        let d = gate.admit(call("a", None)).unwrap_err();
        assert_eq!((d.reason, &*d.rule), (Reason::ServerQuarantined, "registry.quarantine"));
        assert!(
            d.message.contains("being quarantined (a write received by node 3, committing): leak"),
            "{}",
            d.message
        );
        assert!(gate.admit(call("b", None)).is_ok(), "another server passes");
        // Admitted before the fence: cut at once (the raise woke it), with the same denial.
        let cut = before.until_cut(std::future::pending::<()>()).await.unwrap_err();
        assert_eq!(cut.reason, Reason::ServerQuarantined);
        fences.raise(fence(2, Target::Revoke { agent: "anonymous".into() }), Instant::now());
        assert_eq!(gate.admit(call("b", None)).unwrap_err().reason, Reason::AgentRevoked);
        fences.lower(1);
        fences.lower(2);
        assert!(gate.admit(call("a", None)).is_ok(), "lowered: the registry decides again");
    }

    #[test]
    fn pins_are_checked_on_what_the_upstream_reports() {
        let st = state(vec![http("p"), Command::Pin { name: "p".into(), version: "1.4.2".into() }]);
        let rec = st.registry.servers["p"].clone();
        let adm = Admitted(Arc::new(Inner {
            call: call("p", None),
            server: rec,
            index: 1,
            grant: Grant::default(),
            deadline: None,
            changes: watch::channel(0).1,
            stale: watch::channel(false).1,
            gate: Gate::new(RegistryHandle::default(), fresh_lease(), no_fences(), Default::default(), Arc::new([])),
        }));
        assert!(check_pin(&adm, Some("1.4.2")).is_ok());
        assert_eq!(check_pin(&adm, Some("2.0.0")).unwrap_err().reason, Reason::VersionPinMismatch);
        assert_eq!(check_pin(&adm, None).unwrap_err().reason, Reason::VersionPinMismatch);
    }

    #[tokio::test]
    async fn a_runtime_limit_cuts_the_call_and_names_the_rule() {
        let st = state(vec![
            http("a"),
            Command::ApplyPolicy {
                name: "bounded".into(),
                labels: Default::default(),
                spec_json: r#"{"rules":[{"id":"short","decision":"ALLOW_WITH_CONSTRAINTS","constraints":{"max_runtime_sec":1}}]}"#
                    .into(),
            },
        ]);
        let gate = Gate::new(RegistryHandle::fixed(st), fresh_lease(), no_fences(), Default::default(), Arc::new([]));
        let body = bytes::Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"t","arguments":{}}}"#,
        );
        let crate::mcp::jsonrpc::Body::Single(msg) = crate::mcp::jsonrpc::parse(&body, 64).unwrap() else { panic!() };
        let mut c = call("a", None);
        c.rpc = Some(Arc::new(Rpc { msg, body }));
        let adm = gate.admit(c.clone()).unwrap();
        assert_eq!(adm.grant().constraints.max_runtime_sec, Some(1));
        let d = adm.until_cut(std::future::pending::<()>()).await.unwrap_err();
        assert_eq!((d.reason, &*d.rule), (Reason::ConstraintViolated, "bounded/short"));
        assert!(d.message.contains("runtime limit of 1 s"), "{}", d.message);
        // A call of another method is not a capability call: no bounds.
        c.rpc = None;
        assert!(gate.admit(c).unwrap().grant().constraints.is_empty());
    }

    #[test]
    fn max_retries_admits_the_same_call_n_plus_one_times() {
        let st = state(vec![
            http("a"),
            Command::ApplyPolicy {
                name: "loops".into(),
                labels: Default::default(),
                spec_json: r#"{"rules":[{"id":"once-more","decision":"ALLOW_WITH_CONSTRAINTS","constraints":{"max_retries":1}}]}"#.into(),
            },
        ]);
        let gate = Gate::new(RegistryHandle::fixed(st), fresh_lease(), no_fences(), Default::default(), Arc::new([]));
        let with_args = |args: &str| {
            let body = bytes::Bytes::from(format!(
                r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"t","arguments":{args}}}}}"#
            ));
            let crate::mcp::jsonrpc::Body::Single(msg) = crate::mcp::jsonrpc::parse(&body, 64).unwrap() else {
                panic!()
            };
            let mut c = call("a", None);
            c.rpc = Some(Arc::new(Rpc { msg, body }));
            c
        };
        assert!(gate.admit(with_args(r#"{"x":1}"#)).is_ok());
        assert!(gate.admit(with_args(r#"{"x":1}"#)).is_ok());
        let d = gate.admit(with_args(r#"{"x":1}"#)).unwrap_err();
        assert_eq!((d.reason, &*d.rule), (Reason::RateLimited, "loops/once-more"));
        assert!(gate.admit(with_args(r#"{"x":2}"#)).is_ok(), "other arguments: another call");
    }
}
