//! A canned MCP server (both eras, JSON answers) so a benchmark measures joch, not the upstream.
//! Legacy requests need the session it hands out at initialize; modern ones (the envelope in
//! `params._meta`) are stateless, as the SDK server answers them.

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

const MODERN: &str = "2026-07-28";
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

async fn mcp(headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad json").into_response();
    };
    let id = msg.get("id").cloned();
    let method = msg["method"].as_str().unwrap_or_default();
    let Some(id) = id else { return StatusCode::ACCEPTED.into_response() };
    if msg.pointer("/params/_meta").and_then(|m| m.get(META_VERSION)).is_some() {
        return modern(id, method);
    }
    let result = match method {
        "initialize" => json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                               "serverInfo": {"name": "canned", "version": "1.0.0"}}),
        "tools/list" => json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}),
        "tools/call" => json!({"content": [{"type": "text", "text": "ok"}], "isError": false}),
        _ => json!({}),
    };
    let mut r =
        ([("content-type", "application/json")], json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
            .into_response();
    if method == "initialize" {
        r.headers_mut().insert("mcp-session-id", "canned-session".parse().unwrap());
    } else if headers.get("mcp-session-id").is_none() {
        return (StatusCode::BAD_REQUEST, "missing session").into_response();
    }
    r
}

/// A modern-era answer: every result carries serverInfo in `_meta`; lists carry cache hints.
fn modern(id: Value, method: &str) -> Response {
    let info = json!({"io.modelcontextprotocol/serverInfo": {"name": "canned", "version": "1.0.0"}});
    let result = match method {
        "server/discover" => json!({"supportedVersions": [MODERN], "capabilities": {"tools": {}},
                                    "resultType": "complete", "ttlMs": 0, "cacheScope": "private", "_meta": info}),
        "tools/list" => json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}],
                               "resultType": "complete", "ttlMs": 0, "cacheScope": "private", "_meta": info}),
        "tools/call" => json!({"content": [{"type": "text", "text": "ok"}], "isError": false,
                               "resultType": "complete", "_meta": info}),
        _ => json!({"resultType": "complete", "_meta": info}),
    };
    ([("content-type", "application/json")], json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
        .into_response()
}

/// Starts the server on a free loopback port; returns its address.
pub async fn start() -> anyhow::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move { axum::serve(l, Router::new().route("/mcp", post(mcp))).await });
    Ok(addr)
}
