//! HTTP endpoints besides MCP: `/healthz` and `/readyz` on the MCP listener, `/metrics` on the
//! metrics listener; and the server loop of the MCP listener, with a header read timeout.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::cluster::NodeView;

/// Routes served on the MCP listener (the MCP proxy adds its own).
pub fn mcp_router(node: NodeView) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(readyz)).with_state(Arc::new(node))
}

async fn readyz(State(node): State<Arc<NodeView>>) -> impl IntoResponse {
    match node.lease.check(std::time::Instant::now()) {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"ready": true, "node": node.id}))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "node": node.id, "reason": reason.to_string()})),
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
/// (bounded by the caller's drain). Bounded: a client that has not sent a request's headers
/// within `client_timeout` is disconnected (HTTP/1.1, idle keep-alive included); h2 connections
/// are pinged and dropped when a ping goes unanswered, with a cap on streams and header size;
/// beyond `max_connections` a new connection is answered 503 with `Retry-After` and closed.
///
/// With `tls`, every connection is TLS (its handshake bounded by `client_timeout` too). Each
/// accepted connection is served by one of `workers` (`crate::workers`), from its TLS handshake
/// to its close.
pub async fn serve_mcp(
    listener: tokio::net::TcpListener,
    workers: Arc<crate::workers::Workers>,
    app: Router,
    limits: crate::config::ProxyLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: tokio_util::sync::CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    use tokio::io::AsyncWriteExt;

    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.client_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.client_timeout)
        .keep_alive_timeout(limits.client_timeout)
        .max_concurrent_streams(limits.max_h2_streams)
        .max_header_list_size(64 << 10)
        .max_pending_accept_reset_streams(64);
    let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (mut stream, _) = tokio::select! {
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
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!("joch_mcp_connections_refused_total").increment(1);
            tokio::spawn(async move {
                let body = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32030,"message":"the node is at its connection limit; retry shortly or on another node","data":{"reason":"node-overloaded","rule":"proxy.max_connections"}}}"#;
                let head = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                    let _ = stream.shutdown().await;
                })
                .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Handed to a worker: the socket is registered with the worker's own runtime there.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "MCP listener: cannot hand the connection to a worker");
                continue;
            }
        };
        let svc = TowerToHyperService::new(app.clone());
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        let handshake = limits.client_timeout;
        workers.next().spawn(async move {
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "MCP worker: cannot take the connection");
                    return;
                }
            };
            metrics::gauge!("joch_mcp_connections").increment(1.0);
            let served = match tls {
                None => {
                    watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned()).await
                }
                Some(acceptor) => match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(tls), svc).into_owned()).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "MCP listener: TLS handshake failed");
                        metrics::counter!("joch_mcp_tls_handshake_failures_total").increment(1);
                        Ok(())
                    }
                    Err(_) => Ok(()),
                },
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "MCP connection ended with an error");
            }
            metrics::gauge!("joch_mcp_connections").decrement(1.0);
            drop(permit);
        });
    }
    graceful.shutdown().await;
}

/// A TLS server configuration serving `pair` (reloaded as its files change), ALPN `alpn`.
pub fn tls_acceptor(pair: Arc<crate::certs::CertStore>, alpn: &[&[u8]]) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(pair);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// TLS connections accepted on `listener`, for a tonic server: each handshake runs on its own
/// (bounded by `handshake`), so a slow client does not hold up the others.
pub fn tls_incoming(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshake: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) -> impl futures::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin listener: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "admin listener: TLS handshake failed"),
                    Err(_) => tracing::debug!("admin listener: TLS handshake timed out"),
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|s| (s, rx)) })
}
