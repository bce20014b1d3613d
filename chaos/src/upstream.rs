//! The upstream MCP server every registered server points at (`/u/NAME/mcp`): both eras (a
//! legacy session handed out at initialize; modern stateless requests), one tool, `echo`, and a
//! record of every request it receives, with the time, so the checkers can ask what reached it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::history::{Clock, History, Received};

const MODERN: &str = "2026-07-28";
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

struct Up {
    clock: Arc<Clock>,
    history: Arc<History>,
    sessions: AtomicU64,
}

fn answer(id: Value, result: Value) -> Response {
    ([("content-type", "application/json")], json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
        .into_response()
}

async fn mcp(
    State(up): State<Arc<Up>>,
    Path(server): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad json").into_response();
    };
    let method = msg["method"].as_str().unwrap_or_default().to_string();
    let op = msg.pointer("/params/arguments/op").and_then(Value::as_str).map(str::to_string);
    let session = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    up.history.received.lock().push(Received {
        at: up.clock.now(),
        server,
        method: method.clone(),
        op: op.clone(),
        session: session.clone(),
    });
    let Some(id) = msg.get("id").cloned() else { return StatusCode::ACCEPTED.into_response() };
    let text = op.unwrap_or_else(|| "ok".into());
    let tools = json!([{"name": "echo", "description": "Answers its op argument.",
                        "inputSchema": {"type": "object", "properties": {"op": {"type": "string"}}}}]);
    if msg.pointer("/params/_meta").and_then(|m| m.get(META_VERSION)).is_some() {
        let meta = json!({"io.modelcontextprotocol/serverInfo": {"name": "chaos-upstream", "version": "1.0.0"}});
        let result = match method.as_str() {
            "server/discover" => json!({"supportedVersions": [MODERN], "capabilities": {"tools": {}},
                                        "resultType": "complete", "ttlMs": 0, "cacheScope": "private", "_meta": meta}),
            "tools/list" => {
                json!({"tools": tools, "resultType": "complete", "ttlMs": 0, "cacheScope": "private", "_meta": meta})
            }
            "tools/call" => {
                json!({"content": [{"type": "text", "text": text}], "isError": false, "resultType": "complete", "_meta": meta})
            }
            _ => json!({"resultType": "complete", "_meta": meta}),
        };
        return answer(id, result);
    }
    let result = match method.as_str() {
        "initialize" => json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                               "serverInfo": {"name": "chaos-upstream", "version": "1.0.0"}}),
        "tools/list" => json!({"tools": tools}),
        "tools/call" => json!({"content": [{"type": "text", "text": text}], "isError": false}),
        _ => json!({}),
    };
    let mut r = answer(id, result);
    if method == "initialize" {
        let sid = format!("up-{}", up.sessions.fetch_add(1, Ordering::Relaxed));
        if let Ok(v) = sid.parse() {
            r.headers_mut().insert("mcp-session-id", v);
        }
    } else if session.is_none() {
        return (StatusCode::BAD_REQUEST, "missing session").into_response();
    }
    r
}

/// Starts the upstream on a free loopback port; returns its port.
pub async fn start(clock: Arc<Clock>, history: Arc<History>) -> anyhow::Result<u16> {
    let up = Arc::new(Up { clock, history, sessions: AtomicU64::new(1) });
    let app = Router::new()
        .route(
            "/u/{server}/mcp",
            post(mcp).get(|| async { StatusCode::METHOD_NOT_ALLOWED }).delete(|| async { StatusCode::OK }),
        )
        .with_state(up);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move { axum::serve(l, app).await });
    Ok(port)
}

/// A plain round-robin TCP balancer (what users put in front of the cluster): each new
/// connection goes to the next node. Returns its port.
pub async fn balancer(backends: Vec<u16>) -> anyhow::Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        let mut next = 0usize;
        loop {
            let Ok((mut inbound, _)) = l.accept().await else { continue };
            let backend = backends[next % backends.len()];
            next += 1;
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    Ok(port)
}
