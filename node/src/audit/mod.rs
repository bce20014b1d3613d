//! The audit trail on the request path and across the fleet.
//!
//! - `exec.rs`: one execution's ids (the agent's W3C trace, joch's `exec-` id) and what the path
//!   learns about it; the record is queued when the request is done.
//! - [`AuditStage`]: the stage that shows the agent its execution id (`_meta` of a tools/call
//!   result, and every denial), classifies the answer (result or error), counts the bytes, and
//!   finishes the record.
//! - `fleet.rs`: queries fanned out to every member over the mesh and merged by time, naming
//!   the members that did not answer.
//! - `traffic.rs`: the leader's count of every server's calls for the trust score.
//!
//! The store itself (its own RocksDB, the writer thread, group commit, the hash chain) is the
//! `joch-audit` crate.

pub mod exec;
pub mod fleet;
pub mod gates;
pub mod otlp;
pub mod traffic;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use joch_audit::{Outcome as AuditOutcome, Record};
use serde_json::value::RawValue;

use crate::mcp::sse;
use crate::proxy::deny::Reason;
use crate::proxy::request::Call;
use crate::proxy::stages::{Outcome, Stage};

/// Where joch puts the execution id in a result's `_meta`.
pub const META_KEY: &str = "joch/execId";

/// The audit stage (always on: it also stamps execution ids; records are written only when the
/// node keeps an audit trail).
pub struct AuditStage;

impl Stage for AuditStage {
    fn on_message(&self, call: &Call, _server: &str, message: &mut Bytes) {
        let exec = &call.exec;
        if call.method() != Some("tools/call") {
            exec.note(|n| n.bytes_out += message.len() as u64);
            return;
        }
        // A JSON body is read in place (no copy on the request path); an event's data is taken out.
        let stamped = if sse::is_event(message) {
            let Some(data) = sse::data(message) else { return };
            stamp(&data, &exec.id).map(|(json, error)| (sse::with_data(message, &json), error))
        } else {
            std::str::from_utf8(message).ok().and_then(|t| stamp(t, &exec.id)).map(|(j, e)| (Bytes::from(j), e))
        };
        if let Some((out, error)) = stamped {
            if error {
                exec.note(|n| n.outcome = Some(AuditOutcome::Error));
            }
            *message = out;
        }
        exec.note(|n| n.bytes_out += message.len() as u64);
    }

    fn on_finish(&self, call: &Call, outcome: &Outcome, _elapsed: Duration) {
        if !call.exec.recording() {
            return;
        }
        let (ended, status) = match outcome {
            Outcome::Forwarded { status } if *status >= 500 => (AuditOutcome::Error, *status),
            Outcome::Forwarded { status } => (AuditOutcome::Result, *status),
            Outcome::Denied(d) => (
                match d.reason {
                    Reason::UpstreamTimeout => AuditOutcome::TimedOut,
                    Reason::UpstreamUnavailable => AuditOutcome::Error,
                    _ => AuditOutcome::Denied,
                },
                d.reason.status().as_u16(),
            ),
            Outcome::Rejected { status } => (AuditOutcome::Rejected, *status),
            Outcome::Answered => (AuditOutcome::Answered, 200),
            Outcome::Relayed { status, .. } => (AuditOutcome::Relayed, *status),
        };
        let mut r = Record {
            outcome: ended,
            status,
            bytes_in: call.rpc.as_ref().map(|r| r.body.len() as u64).unwrap_or(0),
            request: call.rpc.as_ref().filter(|r| r.msg.params.name.is_some()).map(|r| r.body.clone()),
            decision: "allow".into(),
            ..of_call(call)
        };
        if let Outcome::Denied(d) = outcome {
            denied(&mut r, d);
        }
        if matches!(r.outcome, AuditOutcome::Rejected | AuditOutcome::Answered | AuditOutcome::Relayed) {
            // Nothing was decided about a capability (or another node decided).
            r.decision.clear();
        }
        call.exec.note(|n| n.record = Some(r));
    }
}

/// What every record of a call says about it: who called (agent, labels, how it proved it,
/// session), in which execution and trace, what (server or endpoint, methods, tool), on which
/// node, with which approval. The request's record and an approval's both start from it.
pub fn of_call(call: &Call) -> Record {
    let c = &call.caller;
    Record {
        node: call.node,
        exec: call.exec.id.to_string(),
        trace: call.exec.trace.to_string(),
        parent_span: call.exec.parent.to_string(),
        agent: if c.source == crate::auth::agent::Source::Unauthenticated { String::new() } else { c.name.clone() },
        agent_labels: c.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        subject: exec::subject(c),
        session: call.session.as_ref().map(|s| format!("{}-{:x}", s.owner, s.created_ms)).unwrap_or_default(),
        server: if call.server.is_empty() || call.view().is_some() { String::new() } else { call.server.clone() },
        endpoint: match call.view() {
            Some(_) => call.server.clone(),
            None if call.server.is_empty() => "/mcp".into(),
            None => String::new(),
        },
        http: call.http_method.into(),
        method: call.method().unwrap_or_default().into(),
        target: call.target().unwrap_or_default().into(),
        approval: call.approval.as_deref().unwrap_or_default().into(),
        ..Record::default()
    }
}

/// What a denial says, in the record: the decision, code, rule, policy and reason.
pub fn denied(r: &mut Record, d: &crate::proxy::deny::Denial) {
    r.decision = if d.reason == Reason::ApprovalRequired || d.reason == Reason::ApprovalPending {
        "require_approval".into()
    } else {
        "deny".into()
    };
    r.code = d.reason.code();
    r.rule = d.rule.to_string();
    r.reason = d.message.clone();
    if let Some(p) = d.extra.as_ref().and_then(|e| e.policy.as_ref()) {
        r.policy = p["policy"].as_str().unwrap_or_default().into();
        r.rule = p["rule"].as_str().unwrap_or(&r.rule).into();
    }
}

/// Puts the execution id into a tools/call result's `_meta`; says whether the answer is an error
/// (a JSON-RPC error, or a result with `isError: true`). `None`: not a response, or not JSON.
fn stamp(json: &str, exec: &str) -> Option<(String, bool)> {
    let mut top: BTreeMap<&str, &RawValue> = serde_json::from_str(json).ok()?;
    if top.contains_key("error") {
        return Some((json.to_string(), true));
    }
    let result = *top.get("result")?;
    let mut fields: BTreeMap<&str, &RawValue> = serde_json::from_str(result.get()).ok()?;
    let error = fields.get("isError").is_some_and(|v| v.get() == "true");
    let mut meta: serde_json::Map<String, serde_json::Value> =
        fields.get("_meta").and_then(|m| serde_json::from_str(m.get()).ok()).unwrap_or_default();
    meta.insert(META_KEY.into(), exec.into());
    let meta = serde_json::to_string(&meta).ok()?;
    let meta = RawValue::from_string(meta).ok()?;
    fields.insert("_meta", &meta);
    let result = serde_json::to_string(&fields).ok()?;
    let result = RawValue::from_string(result).ok()?;
    top.insert("result", &result);
    Some((serde_json::to_string(&top).ok()?, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_gets_the_exec_id_in_its_meta_and_keeps_the_rest() {
        let (out, error) = stamp(
            r#"{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"hi"}],"_meta":{"a":1}}}"#,
            "exec-00000000000000ab",
        )
        .unwrap();
        assert!(!error);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["id"], 3);
        assert_eq!(v["result"]["content"][0]["text"], "hi");
        assert_eq!(v["result"]["_meta"]["a"], 1);
        assert_eq!(v["result"]["_meta"][META_KEY], "exec-00000000000000ab");
        let (_, error) = stamp(r#"{"jsonrpc":"2.0","id":3,"result":{"content":[],"isError":true}}"#, "e").unwrap();
        assert!(error);
        let (same, error) = stamp(r#"{"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"x"}}"#, "e").unwrap();
        assert!(error);
        assert!(!same.contains("_meta"));
        assert!(stamp(r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#, "e").is_none());
    }
}
