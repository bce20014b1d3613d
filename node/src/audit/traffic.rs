//! The trust score's traffic component: the leader counts every server's calls over the last
//! day from every member's audit trail (the rollups, fanned out over the mesh) and commits the
//! counts when they changed, so every replica scores from the same numbers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use joch_audit::{GroupBy, SummaryQuery};
use joch_raft_store::model::trust::Traffic;
use joch_raft_store::Command;

use super::fleet::{merge_groups, AuditAsk};
use crate::cluster::ClusterNode;
use crate::policy::approvals::Proposer;

/// How far back calls are counted.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);
/// How long members are waited for.
const WAIT: Duration = Duration::from_secs(5);

/// Every `every`, on the leader only: count, compare, commit.
pub async fn count(cluster: Arc<ClusterNode>, proposer: Arc<dyn Proposer>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if cluster.raft.metrics().borrow().current_leader != Some(cluster.id) {
            continue;
        }
        let window_ms = WINDOW.as_millis() as u64;
        let since_us = joch_audit::now_us().saturating_sub(window_ms * 1000);
        let ask = AuditAsk::Summary(SummaryQuery { since_us, server: None, agent: None, by: GroupBy::Server });
        let merged = merge_groups(cluster.ask_audit(&ask, None, WAIT).await);
        if merged.answered.is_empty() {
            continue;
        }
        for u in &merged.unanswered {
            tracing::debug!(node = u.node, error = %u.error, "traffic count without this member");
        }
        let state = cluster.registry.load();
        let counts: BTreeMap<String, Traffic> = merged
            .groups
            .iter()
            .filter(|g| state.registry.servers.contains_key(&g.key))
            .map(|g| {
                let mean_latency_ms = g.upstream_us.checked_div(g.timed).unwrap_or(0) / 1000;
                (
                    g.key.clone(),
                    Traffic { calls: g.calls, denied: g.denied, errors: g.errors, window_ms, mean_latency_ms },
                )
            })
            .collect();
        let same = state.registry.servers.iter().all(|(name, rec)| {
            let now = counts.get(name).copied().unwrap_or(Traffic { window_ms, ..Traffic::default() });
            rec.status.traffic == Some(now)
        });
        if same {
            continue;
        }
        if let Err(e) = proposer.propose(Command::RecordTraffic { window_ms, counts }).await {
            tracing::warn!(error = %e, "committing the traffic counts failed");
        }
    }
}
