//! HTTP endpoints besides MCP: `/healthz` and `/readyz` on the MCP listener, `/metrics` on the
//! metrics listener; and the server loop of the MCP listener, with a header read timeout.

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

/// Serves `app` on `listener` (HTTP/1.1 and h2) until `stop`, then lets open connections finish
/// (bounded by the caller's drain). A client that has not sent its request headers within
/// `header_timeout` is disconnected (slow clients cannot hold connections open).
pub async fn serve_mcp(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "MCP listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "MCP connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}
