//! The stages of the request path: policy, content guard and audit plug in here. Admission runs
//! every stage's `on_request` after the registry checks (`admission.rs`); the exit runs
//! `on_message` on every message that leaves for the agent, a JSON answer or each SSE event, in
//! every era and on every endpoint (`exit.rs`); the routing layer runs `on_finish` once per
//! request, allowed or not. The stages: the list filter (`policy/list.rs`), telemetry (below),
//! the watch for servers announcing new tools (`discover.rs`), the content guard
//! (`guard/stage.rs`), and the audit stage (`audit/mod.rs`). Guardian hooks (`guardian/`) are not a stage: they are asynchronous and run
//! at the front (before admission) and in the exit (before the stages).

use std::time::Duration;

use bytes::Bytes;
use joch_raft_store::ServerRecord;

use super::deny::Denial;
use super::request::Call;

/// How a request ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Forwarded; the upstream answered with this HTTP status (joch may have translated it).
    Forwarded {
        /// Upstream status.
        status: u16,
    },
    /// joch answered instead (the denial as sent, for the audit record).
    Denied(Box<Denial>),
    /// Refused before admission (bad framing, unsupported version, a removed method).
    Rejected {
        /// HTTP status.
        status: u16,
    },
    /// Answered by joch itself (a ping, the aggregate's discover, a notification kept here).
    Answered,
    /// Relayed to the node that owns the session, which admitted, counted and logged it.
    Relayed {
        /// The owner.
        owner: u64,
        /// Its status.
        status: u16,
    },
}

/// A stage of the request path.
pub trait Stage: Send + Sync + 'static {
    /// After the registry checks, before anything is sent upstream: may deny.
    fn on_request(&self, _call: &Call, _server: &ServerRecord) -> Result<(), Denial> {
        Ok(())
    }
    /// Each message on its way back to the agent: a JSON answer, or one SSE event. `server` is
    /// the server it came from (on the aggregate endpoint: the member).
    fn on_message(&self, _call: &Call, _server: &str, _message: &mut Bytes) {}
    /// Once per request, allowed or not.
    fn on_finish(&self, _call: &Call, _outcome: &Outcome, _elapsed: Duration) {}
}

/// Metrics and one structured log line per request (the audit record's precursor).
pub struct Telemetry;

impl Stage for Telemetry {
    fn on_finish(&self, call: &Call, outcome: &Outcome, elapsed: Duration) {
        let (label, status): (&str, u16) = match outcome {
            Outcome::Forwarded { status } => ("forwarded", *status),
            Outcome::Denied(d) => (d.reason.as_str(), d.reason.status().as_u16()),
            Outcome::Rejected { status } => ("rejected", *status),
            Outcome::Answered => ("answered", 200),
            Outcome::Relayed { owner, status } => {
                // Counted by the owner; here only the hop.
                metrics::counter!("joch_mcp_relayed_total").increment(1);
                tracing::debug!(target: "joch::mcp", node = call.node, server = %call.server, owner, status,
                    "request relayed to the session's owner");
                return;
            }
        };
        metrics::counter!("joch_mcp_requests_total", "outcome" => label).increment(1);
        metrics::histogram!("joch_mcp_request_seconds", "outcome" => label).record(elapsed.as_secs_f64());
        // A decision against the request is worth a line at info; a request that went through
        // only at debug (`log.level: info,joch::mcp=debug` gives an access log): one line per
        // forwarded request cost a tenth of a node's maximum rate. Metrics count them all.
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "joch::mcp",
                    node = call.node, server = %call.server, caller = %call.caller.name, http = call.http_method,
                    method = call.method().unwrap_or("-"), target = call.target().unwrap_or("-"),
                    outcome = label, status, micros = elapsed.as_micros() as u64,
                    "mcp request"
                )
            };
        }
        match outcome {
            Outcome::Denied(_) | Outcome::Rejected { .. } => line!(info),
            _ => line!(debug),
        }
    }
}
