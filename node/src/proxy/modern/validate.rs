//! The modern era's validation ladder, as the SDK server runs it: the envelope in
//! `params._meta`, then the routing headers, then the version; removed methods get 404.

use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::mcp::envelope::{META_CAPABILITIES, META_VERSION};
use crate::mcp::jsonrpc::{self, Message, MetaShape};
use crate::mcp::version;
use crate::proxy::exit::Answer;

/// JSON-RPC code for a routing header that disagrees with the body.
pub const HEADER_MISMATCH: i64 = -32020;

/// Methods that exist in the legacy era only.
pub const REMOVED: [&str; 8] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
    "notifications/initialized",
    "notifications/progress",
    "notifications/roots/list_changed",
];

/// Which body parameter `Mcp-Name` mirrors.
pub fn name_key(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// `=?base64?...?=` header values, as the SDK encodes non-ASCII names.
fn decode_header(v: &str) -> Option<String> {
    use base64::Engine;
    match v.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")) {
        None => Some(v.to_string()),
        Some(p) => String::from_utf8(base64::engine::general_purpose::STANDARD.decode(p).ok()?).ok(),
    }
}

fn reject(code: i64, message: &str, data: Option<Value>) -> Answer {
    Answer::bad_request(code, message, data)
}

/// The validation ladder: envelope, headers, version. `Ok` carries the envelope version.
pub fn validate(m: &Message, method: &str, headers: &HeaderMap) -> Result<String, Answer> {
    let meta = &m.params.meta;
    if meta.shape != MetaShape::Object {
        return Err(reject(
            jsonrpc::INVALID_PARAMS,
            &format!(
                "params._meta must be an object carrying the required {META_VERSION:?} and {META_CAPABILITIES:?} envelope keys"
            ),
            None,
        ));
    }
    let missing: Vec<&str> =
        [(META_VERSION, meta.protocol_version.is_some()), (META_CAPABILITIES, meta.has_capabilities)]
            .into_iter()
            .filter(|(_, there)| !there)
            .map(|(k, _)| k)
            .collect();
    if !missing.is_empty() {
        return Err(reject(
            jsonrpc::INVALID_PARAMS,
            &format!("params._meta is missing the required envelope key(s): {}", missing.join(", ")),
            None,
        ));
    }
    let envelope = meta.protocol_version.as_ref().and_then(Value::as_str);
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if h("mcp-protocol-version") != envelope {
        return Err(reject(
            HEADER_MISMATCH,
            "mcp-protocol-version header does not match the request envelope's protocol version",
            None,
        ));
    }
    if h("mcp-method") != Some(method) {
        return Err(reject(HEADER_MISMATCH, "mcp-method header does not match the request body's method", None));
    }
    if let Some(key) = name_key(method) {
        let body_value = if key == "name" { m.params.name.as_deref() } else { m.params.uri.as_deref() };
        if let Some(body_value) = body_value {
            if h("mcp-name").and_then(decode_header).as_deref() != Some(body_value) {
                return Err(reject(
                    HEADER_MISMATCH,
                    &format!("mcp-name header does not match the request body's {key:?} parameter"),
                    None,
                ));
            }
        }
    }
    let Some(v) = envelope else {
        return Err(reject(jsonrpc::INVALID_PARAMS, "the envelope's protocol version must be a string", None));
    };
    if !version::is_modern(v) {
        return Err(reject(
            jsonrpc::UNSUPPORTED_VERSION,
            "Unsupported protocol version",
            Some(json!({"supported": version::MODERN, "requested": v})),
        ));
    }
    Ok(v.to_string())
}

/// The start of every modern-era message: its method (removed methods get 404) and, for
/// requests, the validation ladder.
pub fn preamble(m: &Message, headers: &HeaderMap) -> Result<String, Answer> {
    let Some(method) = m.method.clone() else {
        return Err(reject(
            jsonrpc::INVALID_REQUEST,
            "the modern era has no client responses to server requests over POST",
            None,
        ));
    };
    if REMOVED.contains(&method.as_str()) {
        return Err(Answer::reject(
            StatusCode::NOT_FOUND,
            m.id_value(),
            jsonrpc::METHOD_NOT_FOUND,
            "Method not found",
            None,
        ));
    }
    if m.is_request() {
        validate(m, &method, headers)?;
    }
    Ok(method)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn msg(v: Value) -> Message {
        match jsonrpc::parse(v.to_string().as_bytes(), 64).unwrap() {
            jsonrpc::Body::Single(m) => m,
            jsonrpc::Body::Batch(_) => unreachable!(),
        }
    }

    fn status(r: Result<String, Answer>) -> Option<u16> {
        match r {
            Ok(_) => None,
            Err(Answer::Rejected { status, .. }) => Some(status.as_u16()),
            Err(_) => Some(0),
        }
    }

    #[test]
    fn the_validation_ladder() {
        let ok = msg(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","_meta":{META_VERSION:"2026-07-28",META_CAPABILITIES:{}}}}),
        );
        let good =
            headers(&[("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"), ("mcp-name", "add")]);
        assert_eq!(validate(&ok, "tools/call", &good).ok().as_deref(), Some("2026-07-28"));
        let no_meta = msg(json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}));
        assert_eq!(status(validate(&no_meta, "tools/list", &good)), Some(400));
        let odd_meta = msg(json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":"x"}}));
        assert_eq!(status(validate(&odd_meta, "tools/list", &good)), Some(400));
        let wrong_method =
            headers(&[("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/list"), ("mcp-name", "add")]);
        assert_eq!(status(validate(&ok, "tools/call", &wrong_method)), Some(400));
        let wrong_name =
            headers(&[("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"), ("mcp-name", "sub")]);
        assert_eq!(status(validate(&ok, "tools/call", &wrong_name)), Some(400));
        let b64 = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?YWRk?="),
        ]);
        assert!(validate(&ok, "tools/call", &b64).is_ok(), "base64-encoded names decode");
        let future = msg(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{META_VERSION:"2027-01-01",META_CAPABILITIES:{}}}}),
        );
        let fh = headers(&[("mcp-protocol-version", "2027-01-01"), ("mcp-method", "tools/list")]);
        assert_eq!(status(validate(&future, "tools/list", &fh)), Some(400));
        let ping = msg(json!({"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{META_VERSION:"2026-07-28"}}}));
        assert_eq!(status(preamble(&ping, &good)), Some(404));
    }
}
