//! HTTP endpoints besides MCP: `/healthz` and `/readyz` on the MCP listener, `/metrics` on the
//! metrics listener.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::cluster::ClusterNode;

/// Routes served on the MCP listener (the MCP proxy adds its own).
pub fn mcp_router(cluster: Arc<ClusterNode>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(readyz)).with_state(cluster)
}

async fn readyz(State(cluster): State<Arc<ClusterNode>>) -> impl IntoResponse {
    match cluster.is_ready() {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"ready": true, "node": cluster.id}))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "node": cluster.id, "reason": reason})),
        ),
    }
}

/// The metrics listener.
pub fn metrics_router(prom: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let prom = prom.clone();
            async move { ([("content-type", "text/plain; version=0.0.4")], prom.render()) }
        }),
    )
}
