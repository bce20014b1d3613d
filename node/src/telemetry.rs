//! Logs (tracing, text or JSON) and metrics (Prometheus).

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterNode;

/// Installs the tracing subscriber: lines go to stderr from a writer thread of their own (a
/// request's task never waits on the write), in colour only when stderr is a terminal (a log
/// file gets plain text). Keep the guard for the life of the process: dropping it flushes.
pub fn init_tracing(level: &str, json: bool) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Not lossy: under a burst the writer applies back-pressure rather than drop lines.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("joch-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
    guard
}

/// Installs the Prometheus recorder for this process.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new().install_recorder().map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))
}

/// Keeps Raft gauges current.
pub async fn watch_raft(cluster: Arc<ClusterNode>, prom: PrometheusHandle, stop: CancellationToken) {
    let mut rx = cluster.raft.metrics();
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    loop {
        let m = rx.borrow_and_update().clone();
        metrics::gauge!("joch_raft_term").set(m.current_term as f64);
        metrics::gauge!("joch_raft_leader_id").set(m.current_leader.unwrap_or(0) as f64);
        metrics::gauge!("joch_raft_is_leader").set(if m.state == ServerState::Leader { 1.0 } else { 0.0 });
        metrics::gauge!("joch_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
        metrics::gauge!("joch_raft_applied_index").set(m.last_applied.map(|l| l.index).unwrap_or(0) as f64);
        metrics::gauge!("joch_raft_commit_index").set(cluster.commit_index() as f64);
        metrics::gauge!("joch_raft_snapshot_index").set(m.snapshot.map(|l| l.index).unwrap_or(0) as f64);
        metrics::gauge!("joch_raft_purged_index").set(m.purged.map(|l| l.index).unwrap_or(0) as f64);
        tokio::select! {
            _ = stop.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
            _ = upkeep.tick() => prom.run_upkeep(),
        }
    }
}
