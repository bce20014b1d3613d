//! JSON-RPC 2.0 framing: parsing a request body under limits, and building error answers.
//!
//! Bodies are parsed into a light envelope (`params` and `result` stay raw) so a large tool call
//! is never rebuilt as a tree on the request path.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// Standard JSON-RPC codes.
pub const PARSE_ERROR: i64 = -32700;
/// Invalid request.
pub const INVALID_REQUEST: i64 = -32600;
/// Method not found.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid params.
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC: internal error.
pub const INTERNAL_ERROR: i64 = -32603;
/// MCP: unsupported protocol version.
pub const UNSUPPORTED_VERSION: i64 = -32022;

/// One JSON-RPC message as joch needs to see it.
#[derive(Deserialize, Debug)]
pub struct Message {
    /// Must be "2.0".
    pub jsonrpc: Option<String>,
    /// Request or response id (absent for notifications).
    #[serde(default)]
    pub id: Option<Box<RawValue>>,
    /// Method (requests and notifications).
    #[serde(default)]
    pub method: Option<String>,
    /// Parameters, untouched.
    #[serde(default)]
    pub params: Option<Box<RawValue>>,
    /// Result (responses from the client to server-initiated requests).
    #[serde(default)]
    pub result: Option<Box<RawValue>>,
    /// Error (likewise).
    #[serde(default)]
    pub error: Option<Box<RawValue>>,
}

impl Message {
    /// A request: has a method and an id.
    pub fn is_request(&self) -> bool {
        self.method.is_some() && self.id.is_some()
    }

    /// The id as JSON (`null` if absent).
    pub fn id_value(&self) -> Value {
        self.id.as_ref().and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or(Value::Null)
    }

    /// Whether `params._meta` carries this key (the modern era's per-request envelope). Only the
    /// envelope counts: the same text inside arguments does not.
    pub fn has_envelope(&self, key: &str) -> bool {
        #[derive(Deserialize)]
        struct P {
            #[serde(rename = "_meta")]
            meta: Option<serde_json::Map<String, Value>>,
        }
        self.params
            .as_ref()
            .and_then(|p| serde_json::from_str::<P>(p.get()).ok())
            .and_then(|p| p.meta)
            .is_some_and(|m| m.contains_key(key))
    }

    /// `params.name` (tools/call, prompts/get) or `params.uri` (resources/read).
    pub fn target_name(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct P {
            name: Option<String>,
            uri: Option<String>,
        }
        let p: P = serde_json::from_str(self.params.as_ref()?.get()).ok()?;
        p.name.or(p.uri)
    }
}

/// A parsed body: one message or a batch.
#[derive(Debug)]
pub enum Body {
    /// A single message.
    Single(Message),
    /// A batch (only where the version allows it).
    Batch(Vec<Message>),
}

/// Why a body was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    /// Not JSON.
    #[error("parse error: {0}")]
    Parse(String),
    /// Nested deeper than the limit.
    #[error("JSON nesting deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// JSON, but not a JSON-RPC 2.0 message.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl FrameError {
    /// The JSON-RPC code for this error.
    pub fn code(&self) -> i64 {
        match self {
            FrameError::Parse(_) => PARSE_ERROR,
            FrameError::TooDeep { .. } | FrameError::Invalid(_) => INVALID_REQUEST,
        }
    }
}

/// Depth of the deepest array/object nesting, scanning bytes (strings respected). Stops early
/// once past `limit`, so hostile input costs at most one pass.
pub fn depth_exceeds(body: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for &b in body {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses a request body under a nesting limit.
pub fn parse(body: &[u8], max_depth: usize) -> Result<Body, FrameError> {
    if depth_exceeds(body, max_depth) {
        return Err(FrameError::TooDeep { limit: max_depth });
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let check = |m: &Message| -> Result<(), FrameError> {
        if m.jsonrpc.as_deref() != Some("2.0") {
            return Err(FrameError::Invalid("\"jsonrpc\" must be \"2.0\"".into()));
        }
        if m.method.is_none() && m.result.is_none() && m.error.is_none() {
            return Err(FrameError::Invalid("a message needs \"method\", \"result\" or \"error\"".into()));
        }
        Ok(())
    };
    match first {
        Some(b'[') => {
            let v: Vec<Message> = serde_json::from_slice(body).map_err(|e| classify(&e))?;
            if v.is_empty() {
                return Err(FrameError::Invalid("empty batch".into()));
            }
            v.iter().try_for_each(check)?;
            Ok(Body::Batch(v))
        }
        Some(b'{') => {
            let m: Message = serde_json::from_slice(body).map_err(|e| classify(&e))?;
            check(&m)?;
            Ok(Body::Single(m))
        }
        Some(_) => match serde_json::from_slice::<Value>(body) {
            Ok(_) => Err(FrameError::Invalid("a JSON-RPC message is an object (or a batch array)".into())),
            Err(e) => Err(FrameError::Parse(e.to_string())),
        },
        None => Err(FrameError::Parse("empty body".into())),
    }
}

fn classify(e: &serde_json::Error) -> FrameError {
    if e.is_syntax() || e.is_eof() {
        FrameError::Parse(e.to_string())
    } else {
        FrameError::Invalid(e.to_string())
    }
}

/// A JSON-RPC error response.
pub fn error(id: Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut err = json!({"code": code, "message": message});
    if let Some(d) = data {
        err["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": err})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_scan_respects_strings() {
        assert!(!depth_exceeds(br#"{"a":"[[[[[[[[[[[["}"#, 3));
        assert!(depth_exceeds(b"[[[[1]]]]", 3));
        assert!(!depth_exceeds(b"[[[1]]]", 3));
        assert!(!depth_exceeds(br#"{"a":"\"[[[["}"#, 2));
    }

    #[test]
    fn classifies_bodies() {
        assert!(
            matches!(parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, 64), Ok(Body::Single(m)) if m.is_request())
        );
        assert!(
            matches!(parse(br#"[{"jsonrpc":"2.0","method":"notifications/initialized"}]"#, 64), Ok(Body::Batch(v)) if v.len() == 1)
        );
        assert!(matches!(parse(b"{not json", 64), Err(FrameError::Parse(_))));
        assert!(matches!(parse(b"", 64), Err(FrameError::Parse(_))));
        assert!(matches!(parse(b"42", 64), Err(FrameError::Invalid(_))));
        assert!(matches!(parse(b"[]", 64), Err(FrameError::Invalid(_))));
        assert!(matches!(parse(br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#, 64), Err(FrameError::Invalid(_))));
        assert!(matches!(parse(br#"{"jsonrpc":"2.0","id":1}"#, 64), Err(FrameError::Invalid(_))));
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(parse(deep.as_bytes(), 64).unwrap_err(), FrameError::TooDeep { limit: 64 });
    }

    #[test]
    fn envelope_is_found_only_in_meta() {
        let key = "io.modelcontextprotocol/protocolVersion";
        let with = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
        let inside_args = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"io.modelcontextprotocol/protocolVersion"}}}"#;
        let Ok(Body::Single(a)) = parse(with, 64) else { panic!() };
        let Ok(Body::Single(b)) = parse(inside_args, 64) else { panic!() };
        assert!(a.has_envelope(key));
        assert!(!b.has_envelope(key));
    }

    #[test]
    fn target_names() {
        let Ok(Body::Single(m)) = parse(
            br#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"add","arguments":{"a":1}}}"#,
            64,
        ) else {
            panic!()
        };
        assert_eq!(m.target_name().as_deref(), Some("add"));
        assert_eq!(m.id_value(), json!("a"));
    }
}
