//! The audit RPCs: questions fanned out to every member (`cluster.ask_audit`), merged here.

use std::time::Duration;

use joch_audit::{GroupBy, Kind, Outcome, Query, SummaryQuery};
use joch_proto::admin as pb;
use tonic::Status;

use super::{invalid, AdminApi};
use crate::audit::fleet::{self, AuditAnswer, AuditAsk};

/// Most records one query returns.
pub const MAX_LIMIT: u32 = 10_000;
/// How long members are waited for unless the caller says.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);

fn wait(timeout_ms: u32) -> Duration {
    if timeout_ms == 0 {
        DEFAULT_WAIT
    } else {
        Duration::from_millis(u64::from(timeout_ms).min(60_000))
    }
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The query a request asks for, or which field is wrong.
fn query_of(r: &pb::AuditQueryRequest) -> Result<Query, Status> {
    let outcome = match r.outcome.as_str() {
        "" => None,
        o => Some(Outcome::parse(o).ok_or_else(|| {
            let all: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
            invalid("outcome", format!("{o:?} is not an outcome (one of {})", all.join(", ")))
        })?),
    };
    let kind = match r.kind.as_str() {
        "" => None,
        "request" => Some(Kind::Request),
        "approvalRequested" => Some(Kind::ApprovalRequested),
        "approvalDecided" => Some(Kind::ApprovalDecided),
        "dropped" => Some(Kind::Dropped),
        k => {
            return Err(invalid(
                "kind",
                format!("{k:?} is not a record kind (request, approvalRequested, approvalDecided, dropped)"),
            ))
        }
    };
    if r.limit > MAX_LIMIT {
        return Err(invalid("limit", format!("{} is more than {MAX_LIMIT}", r.limit)));
    }
    if r.until_ms != 0 && r.until_ms <= r.since_ms {
        return Err(invalid("until", "must be later than since"));
    }
    Ok(Query {
        since_us: r.since_ms.saturating_mul(1000),
        until_us: if r.until_ms == 0 { u64::MAX } else { r.until_ms.saturating_mul(1000) },
        server: opt(r.server.clone()),
        agent: opt(r.agent.clone()),
        tool: opt(r.tool.clone()),
        policy: opt(r.policy.clone()),
        exec: opt(r.exec.clone()),
        trace: opt(r.trace.clone()),
        outcome,
        kind,
        limit: if r.limit == 0 { 100 } else { r.limit as usize },
        oldest_first: r.oldest_first,
    })
}

impl AdminApi {
    /// A member asked for by id must be one.
    fn only(&self, node: u64) -> Result<Option<u64>, Status> {
        if node == 0 {
            return Ok(None);
        }
        if self.cluster.members().iter().any(|(id, _, _)| *id == node) {
            Ok(Some(node))
        } else {
            Err(invalid("node", format!("node {node} is not a member of this cluster")))
        }
    }

    /// Records (or counts) from every member.
    pub(super) async fn query_audit_json(&self, r: pb::AuditQueryRequest) -> Result<String, Status> {
        let q = query_of(&r)?;
        let only = self.only(r.node)?;
        let timeout = wait(r.timeout_ms);
        let json = if r.group_by.is_empty() {
            let answers = self.cluster.ask_audit(&AuditAsk::Query(q.clone()), only, timeout).await;
            serde_json::to_string(&fleet::merge_pages(&q, answers))
        } else {
            let by = GroupBy::parse(&r.group_by).ok_or_else(|| {
                invalid("group_by", format!("{:?}: count calls by agent, tool or server", r.group_by))
            })?;
            let ask = AuditAsk::Summary(SummaryQuery {
                since_us: q.since_us,
                server: q.server.clone(),
                agent: q.agent.clone(),
                by,
            });
            let answers = self.cluster.ask_audit(&ask, only, timeout).await;
            serde_json::to_string(&fleet::merge_groups(answers))
        };
        json.map_err(|e| Status::internal(format!("encoding the answer: {e}")))
    }

    /// Every member's chain check.
    pub(super) async fn verify_audit_json(&self, r: pb::AuditVerifyRequest) -> Result<String, Status> {
        let only = self.only(r.node)?;
        let answers = self.cluster.ask_audit(&AuditAsk::Verify, only, wait(r.timeout_ms)).await;
        let (reports, unanswered) = fleet::sort_out(answers, |a| match a {
            AuditAnswer::Verify { report, dropped } => Ok((report, dropped)),
            other => Err(other),
        });
        let nodes: Vec<serde_json::Value> = reports
            .into_iter()
            .map(|(node, (report, dropped))| serde_json::json!({"node": node, "report": report, "dropped": dropped}))
            .collect();
        Ok(serde_json::json!({"nodes": nodes, "unanswered": unanswered}).to_string())
    }

    /// Seed 003's gates from every member's gate counts.
    pub(super) async fn gates_json(&self, r: pb::GatesRequest) -> Result<String, Status> {
        let now_us = joch_audit::now_us();
        let since_us = if r.since_ms == 0 { now_us.saturating_sub(24 * 3600 * 1_000_000) } else { r.since_ms * 1000 };
        // The windows of the other gates reach back 30 minutes.
        let from = since_us.min(now_us.saturating_sub(30 * 60 * 1_000_000));
        let answers = self.cluster.ask_audit(&AuditAsk::Gates { since_us: from }, None, wait(r.timeout_ms)).await;
        let (per_node, unanswered) = fleet::sort_out(answers, |a| match a {
            AuditAnswer::Gates(per_minute) => Ok(per_minute),
            other => Err(other),
        });
        let mut minutes: std::collections::BTreeMap<u64, joch_audit::GateCounts> = Default::default();
        let mut answered = Vec::new();
        for (node, per_minute) in per_node {
            answered.push(node);
            for (m, c) in per_minute {
                minutes.entry(m).or_default().merge(&c);
            }
        }
        let gates = crate::audit::gates::evaluate(&minutes, now_us, since_us);
        Ok(serde_json::json!({"gates": gates, "sinceMs": since_us / 1000, "answered": answered, "unanswered": unanswered})
            .to_string())
    }

    /// Calls to `server` and how many were denied over the last 7 days, fleet-wide (`None` when
    /// no member answered).
    pub(super) async fn counts_7d(&self, server: &str) -> Option<(u64, u64)> {
        let since_us = joch_audit::now_us().saturating_sub(7 * 24 * 3600 * 1_000_000);
        let ask =
            AuditAsk::Summary(SummaryQuery { since_us, server: Some(server.into()), agent: None, by: GroupBy::Server });
        let merged = fleet::merge_groups(self.cluster.ask_audit(&ask, None, Duration::from_secs(2)).await);
        if merged.answered.is_empty() {
            return None;
        }
        let g = merged.groups.iter().find(|g| g.key == server);
        Some(g.map(|g| (g.calls, g.denied)).unwrap_or((0, 0)))
    }
}
