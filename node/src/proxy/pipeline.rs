//! The seam every data-plane request passes through, allowed or denied.
//!
//! `admit` runs the registry checks in the order of DESIGN.md's request path, from the in-memory
//! snapshot only (no disk, no Raft round trip, no lock): control plane fresh, registered,
//! quarantined, pinned version, transport allowed. Then every [`Stage`] sees the request (policy
//! and RBAC will be one), every event of the answer (the content guard will be one), and the
//! outcome (audit will be one). Today one stage exists: telemetry.

use std::sync::Arc;
use std::time::Duration;

use joch_raft_store::model::resource::Transport;
use joch_raft_store::{PublishedState, ServerRecord};

use super::deny::{Denial, Reason};
use crate::mcp::session::SessionToken;

/// A data-plane request, as the seam sees it.
#[derive(Debug, Clone)]
pub struct Call {
    /// Node handling it.
    pub node: u64,
    /// Server asked for.
    pub server: String,
    /// Caller identity.
    pub caller: String,
    /// HTTP method (POST, GET, DELETE).
    pub http_method: &'static str,
    /// JSON-RPC method, if a single request or notification.
    pub method: Option<String>,
    /// `params.name` / `params.uri` (tool, prompt, resource).
    pub target: Option<String>,
    /// The session, when continuing one.
    pub session: Option<SessionToken>,
}

/// How a request ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Forwarded; the upstream answered with this HTTP status.
    Forwarded {
        /// Upstream status.
        status: u16,
    },
    /// joch answered instead.
    Denied(Reason),
    /// Refused before admission (bad framing, unsupported version).
    Rejected {
        /// HTTP status.
        status: u16,
    },
    /// Admitted and answered by joch for the upstream (nothing to forward).
    Answered,
}

/// A stage of the request path: policy, content guard, audit plug in here.
pub trait Stage: Send + Sync + 'static {
    /// Before forwarding: may deny.
    fn on_request(&self, _call: &Call, _server: &ServerRecord) -> Result<(), Denial> {
        Ok(())
    }
    /// Each event (SSE) or whole body (JSON) on its way back to the agent.
    fn on_event(&self, _call: &Call, _event: &mut bytes::Bytes) {}
    /// Once per request, allowed or not.
    fn on_finish(&self, _call: &Call, _outcome: &Outcome, _elapsed: Duration) {}
}

/// Metrics and one structured log line per request (the audit record's precursor).
pub struct Telemetry;

impl Stage for Telemetry {
    fn on_finish(&self, call: &Call, outcome: &Outcome, elapsed: Duration) {
        let (label, status): (&str, u16) = match outcome {
            Outcome::Forwarded { status } => ("forwarded", *status),
            Outcome::Denied(r) => (r.as_str(), r.status().as_u16()),
            Outcome::Rejected { status } => ("rejected", *status),
            Outcome::Answered => ("answered", 200),
        };
        metrics::counter!("joch_mcp_requests_total", "outcome" => label).increment(1);
        metrics::histogram!("joch_mcp_request_seconds", "outcome" => label).record(elapsed.as_secs_f64());
        tracing::info!(
            target: "joch::mcp",
            node = call.node, server = %call.server, caller = %call.caller, http = call.http_method,
            method = call.method.as_deref().unwrap_or("-"), target = call.target.as_deref().unwrap_or("-"),
            outcome = label, status, micros = elapsed.as_micros() as u64,
            "mcp request"
        );
    }
}

/// The denial of a node whose control plane is stale (no leader contact within the lease).
pub fn stale(call: &Call, why: &str) -> Denial {
    Denial::new(
        Reason::ControlPlaneStale,
        &call.server,
        call.node,
        "node.lease",
        format!("node {} cannot vouch for the registry ({why}); try another node", call.node),
    )
}

/// Checks a request against the registry snapshot. `lease` is this node's control-plane
/// freshness (Err with the reason when stale).
pub fn admit(call: &Call, state: &PublishedState, lease: Result<(), String>) -> Result<Arc<ServerRecord>, Denial> {
    let deny = |reason, rule: &str, message: String| Err(Denial::new(reason, &call.server, call.node, rule, message));
    if let Err(why) = lease {
        return Err(stale(call, &why));
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
    let sec = &rec.spec.security;
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

/// Checks the version an upstream reported at initialize against the pin.
pub fn check_pin(call: &Call, rec: &ServerRecord, actual: Option<&str>) -> Result<(), Denial> {
    let sec = &rec.spec.security;
    match (sec.pin_server_version, sec.pinned_version.as_deref()) {
        (true, Some(pinned)) if actual != Some(pinned) => Err(Denial::new(
            Reason::VersionPinMismatch,
            &call.server,
            call.node,
            "mcpserver.spec.security.pinnedVersion",
            format!(
                "MCP server {:?} is pinned to {pinned} but runs {}",
                call.server,
                actual.unwrap_or("an unknown version")
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            caller: "anonymous".into(),
            http_method: "POST",
            method: Some("tools/call".into()),
            target: Some("add".into()),
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
        assert_eq!(reason(admit(&call("a", None), &st, Err("no leader".into()))), Some("control-plane-stale"));
        assert_eq!(reason(admit(&call("nope", None), &st, Ok(()))), Some("server-not-registered"));
        assert_eq!(reason(admit(&call("q", None), &st, Ok(()))), Some("server-quarantined"));
        assert_eq!(reason(admit(&call("p", Some("1.5.0")), &st, Ok(()))), Some("version-pin-mismatch"));
        assert_eq!(reason(admit(&call("p", Some("1.4.2")), &st, Ok(()))), None);
        assert_eq!(reason(admit(&call("p", None), &st, Ok(()))), None, "initialize: checked on the answer");
        assert_eq!(reason(admit(&call("s", None), &st, Ok(()))), Some("stdio-not-allowed"));
        let allowed = state(vec![Command::CreateServer {
            name: "s".into(),
            labels: Default::default(),
            spec: McpServerSpec {
                transport: Transport::Stdio,
                stdio: Some(StdioSpec { command: "x".into(), ..Default::default() }),
                security: joch_raft_store::model::resource::Security { allow_stdio: true, ..Default::default() },
                ..Default::default()
            },
        }]);
        assert_eq!(reason(admit(&call("s", None), &allowed, Ok(()))), None);
        assert_eq!(reason(admit(&call("a", None), &st, Ok(()))), None);
        let p = st.registry.servers["p"].clone();
        assert!(check_pin(&call("p", None), &p, Some("1.4.2")).is_ok());
        assert_eq!(check_pin(&call("p", None), &p, Some("2.0.0")).unwrap_err().reason, Reason::VersionPinMismatch);
        assert_eq!(check_pin(&call("p", None), &p, None).unwrap_err().reason, Reason::VersionPinMismatch);
    }
}
