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
}
