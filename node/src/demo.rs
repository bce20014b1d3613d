//! A small MCP server shipped with joch, for the quick start: `joch dev up` runs one and registers
//! it as `demo`, so a newcomer sees a governed tool call (and a quarantine) without writing a
//! server or reaching the network. Streamable HTTP, legacy era (2025-11-25 and earlier; joch
//! serves modern-era callers by translating), stateless, plain JSON answers. Three tools:
//! `echo`, `add`, `utc_now`.

use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// Protocol versions it speaks (newest first).
const VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];

/// Its version (`serverInfo.version`): pin it with `joch mcp pin demo --to 1.0.0`.
pub const VERSION: &str = "1.0.0";

fn tools() -> Value {
    json!([
        {"name": "echo", "description": "Echo a text back.",
         "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
        {"name": "add", "description": "Add two numbers.",
         "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                         "required": ["a", "b"]}},
        {"name": "utc_now", "description": "The current time (UTC, RFC 3339).",
         "inputSchema": {"type": "object", "properties": {}}},
    ])
}

fn text(t: String) -> Value {
    json!({"content": [{"type": "text", "text": t}], "isError": false})
}

fn tool_error(t: String) -> Value {
    json!({"content": [{"type": "text", "text": t}], "isError": true})
}

/// The answer to one JSON-RPC request (`None` for a notification).
fn answer(msg: &Value) -> Option<Value> {
    let id = msg.get("id")?.clone();
    let method = msg.get("method").and_then(Value::as_str).unwrap_or_default();
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" => {
            let asked = params.get("protocolVersion").and_then(Value::as_str).unwrap_or(VERSIONS[0]);
            let version = VERSIONS.iter().find(|v| **v == asked).copied().unwrap_or(VERSIONS[0]);
            json!({"protocolVersion": version, "capabilities": {"tools": {"listChanged": false}},
                   "serverInfo": {"name": "joch-demo", "version": VERSION}})
        }
        "ping" => json!({}),
        "tools/list" => json!({"tools": tools()}),
        "tools/call" => {
            let args = params.get("arguments").cloned().unwrap_or(Value::Null);
            match params.get("name").and_then(Value::as_str).unwrap_or_default() {
                "echo" => match args.get("text").and_then(Value::as_str) {
                    Some(t) => text(t.to_string()),
                    None => tool_error("echo needs a text argument".into()),
                },
                "add" => match (args.get("a").and_then(Value::as_f64), args.get("b").and_then(Value::as_f64)) {
                    (Some(a), Some(b)) => text((a + b).to_string()),
                    _ => tool_error("add needs numbers a and b".into()),
                },
                "utc_now" => text(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()),
                other => {
                    return Some(json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32602, "message": format!("unknown tool {other:?}")}}))
                }
            }
        }
        other => {
            return Some(json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": format!("Method not found: {other}")}}))
        }
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

async fn mcp(body: axum::body::Bytes) -> Response {
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        let e = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error"}});
        return (StatusCode::BAD_REQUEST, Json(e)).into_response();
    };
    match answer(&msg) {
        Some(a) => Json(a).into_response(),
        None => StatusCode::ACCEPTED.into_response(),
    }
}

/// The demo server's routes (`POST /mcp`; a GET gets 405: it has no stream of its own).
pub fn router() -> Router {
    Router::new().route("/mcp", post(mcp))
}

/// Serves the demo on `listen`; writes the bound address to `addr_file`, if given.
pub async fn serve(listen: SocketAddr, addr_file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let l = tokio::net::TcpListener::bind(listen).await?;
    let bound = l.local_addr()?;
    if let Some(f) = addr_file {
        std::fs::write(&f, bound.to_string())?;
    }
    tracing::info!(%bound, "demo MCP server listening on /mcp");
    axum::serve(l, router()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_a_legacy_server() {
        let init =
            answer(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}));
        assert_eq!(init.unwrap()["result"]["protocolVersion"], "2025-06-18");
        let newer =
            answer(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2099-01-01"}}));
        assert_eq!(newer.unwrap()["result"]["protocolVersion"], "2025-11-25");
        assert!(answer(&json!({"jsonrpc":"2.0","method":"notifications/initialized"})).is_none());
        let add = answer(
            &json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}}),
        );
        assert_eq!(add.unwrap()["result"]["content"][0]["text"], "3");
        let discover = answer(&json!({"jsonrpc":"2.0","id":3,"method":"server/discover"}));
        assert_eq!(discover.unwrap()["error"]["code"], -32601, "legacy only: joch translates for modern callers");
    }
}
