//! The content guard's feeds over the admin API.

use joch_proto::admin as pb;
use joch_raft_store::Command;
use tonic::Status;

use super::{invalid, AdminApi};

impl AdminApi {
    /// Loads or replaces a feed (checked again by the state machine; a bad pattern is named).
    pub(super) async fn write_guard_feed(
        &self,
        actor: &str,
        r: pb::GuardFeedRequest,
    ) -> Result<pb::WriteReply, Status> {
        let patterns: Vec<joch_guard::FeedPattern> = serde_json::from_str(&r.patterns_json)
            .map_err(|e| invalid("patterns", format!("not a list of patterns: {e}")))?;
        self.write(actor, Command::SetGuardFeed { name: r.name, source: r.source, version: r.version, patterns }).await
    }

    /// The feeds, as JSON.
    pub(super) async fn guard_feeds_json(&self, stale: bool) -> Result<pb::TrustReply, Status> {
        let st = self.read(stale).await?;
        let feeds: Vec<serde_json::Value> = st
            .registry
            .guard
            .feeds
            .values()
            .map(|f| {
                serde_json::json!({"name": f.name, "source": f.source, "version": f.version, "patterns": f.patterns,
                    "loadedBy": f.at.actor, "loadedAtMs": f.at.at_ms})
            })
            .collect();
        Ok(pb::TrustReply {
            json: serde_json::json!({"feeds": feeds, "ruleset": joch_guard::RULESET_VERSION}).to_string(),
            read_index: st.applied_index,
        })
    }

    /// The incidents, newest first, as JSON.
    pub(super) async fn incidents_json(&self, stale: bool) -> Result<pb::TrustReply, Status> {
        let st = self.read(stale).await?;
        let list: Vec<serde_json::Value> = st
            .registry
            .incidents
            .list
            .iter()
            .rev()
            .map(|i| {
                let r = &i.report;
                serde_json::json!({"id": i.id, "kind": r.kind.as_str(), "server": r.server, "agent": r.agent,
                    "node": r.node, "rules": r.rules, "verdict": r.verdict, "evidence": r.evidence, "exec": r.exec,
                    "findings": r.findings, "firstMs": r.at_ms, "lastMs": i.last_ms, "count": i.count,
                    "acknowledgedBy": i.acknowledged.as_ref().map(|a| a.actor.clone()),
                    "acknowledgedAtMs": i.acknowledged.as_ref().map(|a| a.at_ms)})
            })
            .collect();
        Ok(pb::TrustReply { json: serde_json::json!({"incidents": list}).to_string(), read_index: st.applied_index })
    }
}
