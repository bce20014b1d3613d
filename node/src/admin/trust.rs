//! The trust and AgBOM RPCs: a server's trust score, the trust settings, and an agent's bill of
//! materials (the servers it called, from every member's audit trail, with what the registry
//! knows of them, and the changes to them from the registry's history).

use std::time::Duration;

use joch_audit::{GroupBy, SummaryQuery};
use joch_proto::admin as pb;
use joch_raft_store::model::registry::ServerRecord;
use joch_raft_store::model::trust::{publisher_of, TrustChange};
use joch_raft_store::Command;
use serde_json::{json, Value};
use tonic::Status;

use super::{invalid, AdminApi};
use crate::audit::fleet::{self, AuditAsk};

impl AdminApi {
    /// A server's trust report, or the trust settings when `name` is empty.
    pub(super) async fn trust_json(&self, r: pb::GetRequest) -> Result<pb::TrustReply, Status> {
        let st = self.read(r.stale).await?;
        let reg = &st.registry;
        let json = if r.name.is_empty() {
            let t = &reg.trust;
            let publishers: Vec<Value> = t
                .publishers
                .values()
                .map(|p| {
                    json!({
                        "name": p.name,
                        "keys": p.keys.iter().map(|k| json!({"id": joch_raft_store::model::trust::key_id(k), "key": public_key_text(k)})).collect::<Vec<_>>(),
                        "addedBy": p.at.actor, "addedAtMs": p.at.at_ms,
                    })
                })
                .collect();
            json!({"publishers": publishers, "allowlist": t.allowlist, "weights": t.weights})
        } else {
            let rec = reg
                .servers
                .get(&r.name)
                .ok_or_else(|| Status::not_found(format!("MCP server {:?} is not registered", r.name)))?;
            json!({
                "server": rec.name,
                "publisher": publisher_of(&rec.spec),
                "minTrustScore": rec.spec.security.min_trust_score,
                "trust": rec.status.trust,
            })
        };
        Ok(pb::TrustReply { json: json.to_string(), read_index: st.applied_index })
    }

    /// Changes the trust settings.
    pub(super) async fn write_trust(&self, actor: &str, r: pb::TrustRequest) -> Result<pb::WriteReply, Status> {
        let change: TrustChange = serde_json::from_str(&r.change_json)
            .map_err(|e| invalid("change_json", format!("not a trust change: {e}")))?;
        self.write(actor, Command::SetTrust(change)).await
    }

    /// An agent's AgBOM.
    pub(super) async fn agbom_json(&self, r: pb::AgbomRequest) -> Result<pb::TrustReply, Status> {
        if r.agent.is_empty() {
            return Err(invalid("agent", "name the agent"));
        }
        let timeout =
            Duration::from_millis(if r.timeout_ms == 0 { 5_000 } else { u64::from(r.timeout_ms).min(60_000) });
        let ask = AuditAsk::Summary(SummaryQuery {
            since_us: 0,
            server: None,
            agent: Some(r.agent.clone()),
            by: GroupBy::Server,
        });
        let used = fleet::merge_groups(self.cluster.ask_audit(&ask, None, timeout).await);
        let st = self.read(false).await?;
        let reg = &st.registry;
        let mut servers = Vec::new();
        let mut changes = Vec::new();
        for g in used.groups.iter().filter(|g| !g.key.is_empty() && !g.key.starts_with("v/")) {
            let rec = reg.servers.get(&g.key);
            let mut entry = rec.map(|r| component(r)).unwrap_or_else(|| json!({"name": g.key, "registered": false}));
            entry["calls"] = json!(g.calls);
            entry["denied"] = json!(g.denied);
            entry["errors"] = json!(g.errors);
            entry["firstUsedMs"] = json!(g.first_us / 1000);
            entry["lastUsedMs"] = json!(g.last_us / 1000);
            servers.push(entry);
            if r.since_ms == 0 {
                continue;
            }
            if g.first_us / 1000 >= r.since_ms {
                changes.push(json!({"server": g.key, "atMs": g.first_us / 1000, "actor": r.agent,
                    "action": "FirstUsed", "detail": format!("{} first called {}", r.agent, g.key)}));
            }
            let target = format!("mcpserver/{}", g.key);
            for line in reg.history.get(&target).into_iter().flat_map(|h| h.iter()).filter(|l| l.at.at_ms >= r.since_ms)
            {
                changes.push(json!({"server": g.key, "atMs": line.at.at_ms, "actor": line.at.actor,
                    "action": line.action, "detail": line.detail, "index": line.at.index}));
            }
        }
        changes.sort_by_key(|c| c["atMs"].as_u64().unwrap_or(0));
        let mut out = json!({
            "agent": r.agent,
            "agentLabels": reg.access.agents.get(&r.agent).map(|a| a.labels.clone()),
            "generatedAtMs": crate::cluster::now_ms(),
            "servers": servers,
            "answered": used.answered,
            "unanswered": used.unanswered,
        });
        if r.since_ms != 0 {
            out["sinceMs"] = json!(r.since_ms);
            out["changes"] = json!(changes);
        }
        Ok(pb::TrustReply { json: out.to_string(), read_index: st.applied_index })
    }
}

/// `ed25519:` and the base64 of a public key, as `joch mcp keygen` prints it.
pub fn public_key_text(k: &[u8; 32]) -> String {
    use base64::Engine;
    format!("ed25519:{}", base64::engine::general_purpose::STANDARD.encode(k))
}

/// What the AgBOM says of one registered server.
fn component(rec: &ServerRecord) -> Value {
    let d = rec.status.discovery.as_ref();
    let sec = &rec.spec.security;
    let endpoint = match (&rec.spec.endpoint, &rec.spec.stdio) {
        (Some(e), _) => e.url.clone(),
        (_, Some(s)) => s.command.clone(),
        _ => String::new(),
    };
    json!({
        "name": rec.name,
        "registered": true,
        "phase": rec.phase(),
        "transport": rec.spec.transport.as_str(),
        "endpoint": endpoint,
        "description": rec.spec.description,
        "publisher": publisher_of(&rec.spec),
        "pinnedVersion": if sec.pin_server_version { sec.pinned_version.clone() } else { None },
        "serverName": d.map(|d| d.server_name.clone()),
        "serverVersion": d.map(|d| d.server_version.clone()),
        "protocolVersion": d.map(|d| d.protocol_version.clone()),
        "tools": d.map(|d| d.tools.iter().map(|t| json!({"name": t.name, "hash": t.hash})).collect::<Vec<_>>()).unwrap_or_default(),
        "resources": d.map(|d| d.resources.iter().chain(&d.resource_templates).cloned().collect::<Vec<_>>()).unwrap_or_default(),
        "prompts": d.map(|d| d.prompts.clone()).unwrap_or_default(),
        "lastDiscoveryMs": d.map(|d| d.at_ms),
        "schemaDrift": !rec.status.drift.is_empty(),
        "trustScore": rec.status.trust.as_ref().map(|t| t.score),
        "signed": rec.status.trust.as_ref().and_then(|t| t.components.iter().find(|c| c.name == "signature")).map(|c| c.value == 1.0),
        "quarantine": rec.status.quarantine.as_ref().map(|q| q.reason.clone()),
        "registeredMs": rec.created.at_ms,
    })
}
