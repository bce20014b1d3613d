//! Domain ↔ protobuf conversions, in one place.

use joch_proto::admin as pb;
use joch_raft_store::model::registry::Stamp;
use joch_raft_store::{ChangeRecord, PolicyRecord, ServerRecord};

use crate::cluster::{FleetAck, MemberView};

/// A stamp (who, when, log index).
pub fn stamp(s: &Stamp) -> pb::Stamp {
    pb::Stamp { actor: s.actor.clone(), at_ms: s.at_ms, index: s.index }
}

/// An approval as the API shows it.
pub fn approval(a: &joch_raft_store::model::approval::Approval) -> pb::Approval {
    use joch_raft_store::model::approval::ApprovalState;
    let (decided, reason) = match &a.state {
        ApprovalState::Pending => (None, String::new()),
        ApprovalState::Approved { by, reason }
        | ApprovalState::Denied { by, reason }
        | ApprovalState::Used { by, reason, .. } => (Some(stamp(by)), reason.clone()),
    };
    pb::Approval {
        id: a.id.clone(),
        agent: a.agent.clone(),
        server: a.server.clone(),
        kind: a.kind.clone(),
        name: a.name.clone(),
        policy: a.policy.clone(),
        rule: a.rule.clone(),
        state: a.state.as_str().to_string(),
        node: a.node,
        requested: Some(stamp(&a.requested)),
        expires_ms: a.expires_ms,
        decided,
        reason,
        args_sha256: a.args_sha256.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// A server record as the API shows it.
/// A server's discovery status as JSON: the last discovery, its drift from the baseline, when
/// the baseline was taken (empty: never discovered).
pub fn discovery_json(rec: &ServerRecord) -> String {
    let s = &rec.status;
    match &s.discovery {
        None => String::new(),
        Some(d) => serde_json::json!({
            "discovery": d, "drift": s.drift, "baselineAtMs": s.baseline.as_ref().map(|b| b.at_ms),
            "declaredDynamic": rec.spec.discovery.declared_dynamic,
        })
        .to_string(),
    }
}

pub fn server(rec: &ServerRecord, read_index: u64) -> pb::Server {
    let sec = &rec.spec.security;
    let endpoint = match (&rec.spec.endpoint, &rec.spec.stdio) {
        (Some(e), _) if rec.spec.transport == joch_raft_store::model::resource::Transport::StreamableHttp => {
            e.url.clone()
        }
        (_, Some(s)) => {
            std::iter::once(s.command.as_str()).chain(s.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    };
    let q = rec.status.quarantine.as_ref();
    pb::Server {
        name: rec.name.clone(),
        labels: rec.labels.clone().into_iter().collect(),
        phase: rec.phase().into(),
        transport: rec.spec.transport.as_str().into(),
        endpoint,
        pin_server_version: sec.pin_server_version,
        pinned_version: sec.pinned_version.clone().unwrap_or_default(),
        quarantined: q.is_some(),
        quarantine_reason: q.map(|q| q.reason.clone()).unwrap_or_default(),
        quarantined_at: q.map(|q| stamp(&q.at)),
        read_only: rec.status.read_only,
        approved_tools: rec.status.approved_tools.iter().cloned().collect(),
        pending_upgrade: rec.status.pending_upgrade.as_ref().map(|p| p.version.clone()).unwrap_or_default(),
        created: Some(stamp(&rec.created)),
        updated: Some(stamp(&rec.updated)),
        generation: rec.generation,
        spec_json: serde_json::to_string(&rec.spec).unwrap_or_default(),
        discovery_json: discovery_json(rec),
        trust_json: rec.status.trust.as_ref().map(|t| serde_json::json!(t).to_string()).unwrap_or_default(),
        read_index,
        // Filled from the audit trail by GetServer only.
        call_count_7d: None,
        deny_count_7d: None,
    }
}

/// A policy record as the API shows it.
pub fn policy(rec: &PolicyRecord, read_index: u64) -> pb::Policy {
    pb::Policy {
        name: rec.name.clone(),
        labels: rec.labels.clone().into_iter().collect(),
        spec_json: rec.spec_json.clone(),
        created: Some(stamp(&rec.created)),
        updated: Some(stamp(&rec.updated)),
        generation: rec.generation,
        read_index,
    }
}

/// A history line.
pub fn change(c: &ChangeRecord) -> pb::Change {
    pb::Change { target: c.target.clone(), action: c.action.clone(), detail: c.detail.clone(), at: Some(stamp(&c.at)) }
}

impl From<&FleetAck> for pb::FleetAck {
    fn from(f: &FleetAck) -> Self {
        pb::FleetAck {
            complete: f.complete,
            waited_ms: f.waited.as_millis() as u64,
            laggards_stop_by_unix_ms: if f.complete { 0 } else { f.laggards_stop_by_ms },
            members: f
                .members
                .iter()
                .map(|m| pb::MemberAck {
                    id: m.id,
                    mesh: m.mesh.clone(),
                    applied: m.applied,
                    applied_index: m.applied_index,
                    error: m.error.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// A member's status; `leader_last` is the leader's last log index, for the lag.
pub fn member_status(m: &MemberView, leader_last: u64) -> pb::MemberStatus {
    let mut out = pb::MemberStatus {
        id: m.id,
        mesh: m.addr.mesh.clone(),
        admin: m.addr.admin.clone(),
        mcp: m.addr.mcp.clone(),
        voter: m.voter,
        ..Default::default()
    };
    match &m.status {
        Ok(s) => {
            out.reachable = true;
            out.role = s.role.clone();
            out.term = s.term;
            out.last_log_index = s.last_log_index;
            out.applied_index = s.applied_index;
            out.lag = leader_last.saturating_sub(s.applied_index);
            out.leader_contact_ms = s.leader_contact_ms.unwrap_or(0);
            out.vouched = s.leader_contact_ms.is_some();
            out.stale = s.stale.clone().unwrap_or_default();
            out.snapshot_index = s.snapshot_index;
            out.purged_index = s.purged_index;
            out.stdio_refused = s.stdio_refused.clone();
        }
        Err(e) => {
            out.role = "unknown".into();
            out.error = e.clone();
        }
    }
    out
}
