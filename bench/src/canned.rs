//! A canned MCP server (both eras, JSON answers) so a benchmark measures joch, not the upstream.
//! Legacy requests need the session it hands out at initialize; modern ones (the envelope in
//! `params._meta`) are stateless, as the SDK server answers them. `echo` answers its `text`
//! argument (so payload sizes count both ways). A GET with a session opens a server stream that
//! stays open (keep-alive comments), for counting what open streams cost. It runs in the
//! benchmark's process (`start`), as a process of its own (`joch-bench canned`: its CPU is then
//! not the load generator's), or on stdio (`joch-bench canned --stdio`).

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
        return modern(id, method, echo(&msg));
    }
    let result = match method {
        "initialize" => json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                               "serverInfo": {"name": "canned", "version": "1.0.0"}}),
        "tools/list" => json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}),
        "tools/call" => json!({"content": [{"type": "text", "text": echo(&msg)}], "isError": false}),
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

/// What `echo` answers: its `text` argument, else "ok".
fn echo(msg: &Value) -> String {
    msg.pointer("/params/arguments/text").and_then(Value::as_str).unwrap_or("ok").to_string()
}

/// A modern-era answer: every result carries serverInfo in `_meta`; lists carry cache hints.
fn modern(id: Value, method: &str, text: String) -> Response {
    let info = json!({"io.modelcontextprotocol/serverInfo": {"name": "canned", "version": "1.0.0"}});
    let result = match method {
        "server/discover" => json!({"supportedVersions": [MODERN], "capabilities": {"tools": {}},
                                    "resultType": "complete", "ttlMs": 0, "cacheScope": "private", "_meta": info}),
        "tools/list" => json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}],
                               "resultType": "complete", "ttlMs": 0, "cacheScope": "private", "_meta": info}),
        "tools/call" => json!({"content": [{"type": "text", "text": text}], "isError": false,
                               "resultType": "complete", "_meta": info}),
        _ => json!({"resultType": "complete", "_meta": info}),
    };
    ([("content-type", "application/json")], json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
        .into_response()
}

/// A server stream: an SSE response that stays open, a keep-alive comment every 15 s.
async fn stream(headers: HeaderMap) -> Response {
    if headers.get("mcp-session-id").is_none() {
        return (StatusCode::BAD_REQUEST, "missing session").into_response();
    }
    let ticks = futures::stream::unfold((), |()| async {
        tokio::time::sleep(std::time::Duration::from_secs(15)).await;
        Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from_static(b": keep-alive\n\n")), ()))
    });
    let first = futures::stream::once(async { Ok(axum::body::Bytes::from_static(b": open\n\n")) });
    use futures::StreamExt;
    ([("content-type", "text/event-stream")], axum::body::Body::from_stream(first.chain(ticks))).into_response()
}

fn router() -> Router {
    Router::new().route("/mcp", post(mcp).get(stream))
}

/// Starts a guardian (an ACS hook endpoint that allows every message) on a free loopback port
/// in this process; returns its address (`http://ADDR/acs`).
pub async fn guardian() -> anyhow::Result<SocketAddr> {
    async fn allow(body: axum::body::Bytes) -> axum::response::Response {
        let id = serde_json::from_slice::<serde_json::Value>(&body).ok().map(|v| v["id"].clone()).unwrap_or_default();
        let answer = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {"decision": "allow"}});
        ([("content-type", "application/json")], answer.to_string()).into_response()
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move { axum::serve(l, Router::new().route("/acs", post(allow))).await });
    Ok(addr)
}

/// Starts the server on a free loopback port in this process; returns its address.
pub async fn start() -> anyhow::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move { axum::serve(l, router()).await });
    Ok(addr)
}

/// Serves on `listen` until killed (`joch-bench canned`); writes the bound address to `addr_file`.
pub async fn serve(listen: SocketAddr, addr_file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let l = tokio::net::TcpListener::bind(listen).await?;
    if let Some(f) = addr_file {
        std::fs::write(f, l.local_addr()?.to_string())?;
    }
    axum::serve(l, router()).await?;
    Ok(())
}

/// Serves MCP on stdin/stdout (legacy era, one JSON-RPC message per line) until stdin closes.
pub async fn stdio() -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else { continue };
        let Some(id) = msg.get("id").cloned() else { continue };
        let result = match msg["method"].as_str().unwrap_or_default() {
            "initialize" => json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                                   "serverInfo": {"name": "canned", "version": "1.0.0"}}),
            "tools/list" => json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}),
            "tools/call" => json!({"content": [{"type": "text", "text": echo(&msg)}], "isError": false}),
            _ => json!({}),
        };
        let mut a = json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string();
        a.push('\n');
        out.write_all(a.as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}
