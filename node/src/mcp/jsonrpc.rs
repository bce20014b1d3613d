//! JSON-RPC 2.0 framing: parsing a request body under limits, and building error answers.
//!
//! A body is read in one serde pass into a light view: the id, the method, and from `params`
//! only what joch routes and checks on (the tool or prompt `name`, the resource `uri`, and in
//! `_meta` the modern envelope's protocol version, whether client capabilities are there, and
//! the progress token). Arguments and results are skipped, never built as a tree: the body is
//! forwarded as received, and a full `Value` is built only where joch rewrites a message.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Value};

use super::envelope::{META_CAPABILITIES, META_VERSION};

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
#[derive(Deserialize, Debug, Clone, Default)]
pub struct Message {
    /// Must be "2.0".
    pub jsonrpc: Option<String>,
    /// Request or response id (absent or null for notifications).
    #[serde(default)]
    pub id: Option<Value>,
    /// Method (requests and notifications).
    #[serde(default)]
    pub method: Option<String>,
    /// What joch reads of the parameters.
    #[serde(default)]
    pub params: Params,
    /// Present on a response (to a server-to-client request).
    #[serde(default, rename = "result")]
    result: Option<IgnoredAny>,
    /// Present on an error response.
    #[serde(default, rename = "error")]
    error: Option<IgnoredAny>,
}

/// What joch reads of `params`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    /// `params.name` when it is a string (tools/call, prompts/get).
    pub name: Option<String>,
    /// `params.uri` when it is a string (resources/read, subscribe).
    pub uri: Option<String>,
    /// `params._meta`.
    pub meta: Meta,
}

/// What `params._meta` holds, as far as joch cares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    /// Absent, an object, or something else (a modern request with a non-object `_meta` is
    /// refused by the validation ladder).
    pub shape: MetaShape,
    /// The modern envelope's protocol version, as sent (it may not be a string).
    pub protocol_version: Option<Value>,
    /// Whether the envelope's client capabilities key is there.
    pub has_capabilities: bool,
    /// The progress token, if the caller asked for progress.
    pub progress_token: Option<Value>,
}

/// The shape of `params._meta`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MetaShape {
    /// No `_meta`.
    #[default]
    Absent,
    /// An object.
    Object,
    /// Present but not an object.
    NotObject,
}

/// The visitor methods for every JSON value that is not an object (arrays are read through and
/// dropped): each gives `$value`.
macro_rules! not_an_object {
    ($t:ty, $value:expr) => {
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<$t, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($value)
        }
        fn visit_unit<E>(self) -> Result<$t, E> {
            Ok($value)
        }
        fn visit_bool<E>(self, _: bool) -> Result<$t, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<$t, E> {
            Ok($value)
        }
        fn visit_u64<E>(self, _: u64) -> Result<$t, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<$t, E> {
            Ok($value)
        }
        fn visit_str<E>(self, _: &str) -> Result<$t, E> {
            Ok($value)
        }
    };
}

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Params;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("JSON-RPC params")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params, A::Error> {
                let mut p = Params::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "name" => p.name = map.next_value::<Lenient>()?.0,
                        "uri" => p.uri = map.next_value::<Lenient>()?.0,
                        "_meta" => p.meta = map.next_value::<Meta>()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(p)
            }
            // Positional (array) or scalar params: nothing joch reads.
            not_an_object!(Params, Params::default());
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Meta;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("params._meta")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Meta, A::Error> {
                let mut m = Meta { shape: MetaShape::Object, ..Meta::default() };
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        META_VERSION => m.protocol_version = Some(map.next_value()?),
                        META_CAPABILITIES => {
                            map.next_value::<IgnoredAny>()?;
                            m.has_capabilities = true;
                        }
                        "progressToken" => m.progress_token = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(m)
            }
            not_an_object!(Meta, Meta { shape: MetaShape::NotObject, ..Meta::default() });
        }
        d.deserialize_any(V)
    }
}

/// A string if it is one; anything else is read and dropped.
struct Lenient(Option<String>);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Lenient(Some(s))),
            _ => Ok(Lenient(None)),
        }
    }
}

impl Message {
    /// A request: has a method and a (non-null) id.
    pub fn is_request(&self) -> bool {
        self.method.is_some() && self.id.is_some()
    }

    /// A response to a server-to-client request: a result or an error, no method.
    pub fn is_response(&self) -> bool {
        self.method.is_none() && (self.result.is_some() || self.error.is_some())
    }

    /// The id as JSON (`null` if absent).
    pub fn id_value(&self) -> Value {
        self.id.clone().unwrap_or(Value::Null)
    }

    /// Whether `params._meta` carries the modern envelope's protocol version. Only the envelope
    /// counts: the same text inside arguments does not.
    pub fn is_modern(&self) -> bool {
        self.params.meta.protocol_version.is_some()
    }

    /// `params.name` (tools/call, prompts/get) or `params.uri` (resources/read).
    pub fn target_name(&self) -> Option<&str> {
        self.params.name.as_deref().or(self.params.uri.as_deref())
    }
}

/// A parsed body: one message or a batch.
#[derive(Debug, Clone)]
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
        Some(_) => match serde_json::from_slice::<IgnoredAny>(body) {
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

/// A JSON-RPC result response.
pub fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
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
        let Ok(Body::Single(r)) = parse(br#"{"jsonrpc":"2.0","id":3,"result":{"x":1}}"#, 64) else { panic!() };
        assert!(r.is_response() && !r.is_request());
    }

    #[test]
    fn the_envelope_is_found_only_in_meta() {
        let with = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"progressToken":"p"}}}"#;
        let inside_args = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"io.modelcontextprotocol/protocolVersion","_meta":{"io.modelcontextprotocol/protocolVersion":"x"}}}}"#;
        let Ok(Body::Single(a)) = parse(with, 64) else { panic!() };
        let Ok(Body::Single(b)) = parse(inside_args, 64) else { panic!() };
        assert!(a.is_modern() && a.params.meta.has_capabilities);
        assert_eq!(a.params.meta.progress_token, Some(json!("p")));
        assert!(!b.is_modern());
        assert_eq!(b.params.meta.shape, MetaShape::Absent);
    }

    #[test]
    fn target_names_and_odd_shapes() {
        let Ok(Body::Single(m)) = parse(
            br#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"add","arguments":{"a":1}}}"#,
            64,
        ) else {
            panic!()
        };
        assert_eq!(m.target_name(), Some("add"));
        assert_eq!(m.id_value(), json!("a"));
        for odd in [
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1,2]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":7}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"name":5,"uri":null}}"#,
        ] {
            let Ok(Body::Single(m)) = parse(odd.as_bytes(), 64) else { panic!("{odd}") };
            assert_eq!(m.target_name(), None, "{odd}");
        }
        let Ok(Body::Single(m)) = parse(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":[1]}}"#, 64) else {
            panic!()
        };
        assert_eq!(m.params.meta.shape, MetaShape::NotObject);
        let Ok(Body::Single(n)) = parse(br#"{"jsonrpc":"2.0","id":null,"method":"x"}"#, 64) else { panic!() };
        assert!(!n.is_request(), "a null id is a notification's");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        /// Arbitrary JSON values, a few levels deep.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                "[a-z_/.:]{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                    prop::collection::btree_map("[a-z_/.]{0,10}|_meta|name|uri|params|id|method|jsonrpc", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_bytes_give_a_body_or_a_specific_error(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = parse(&bytes, 16);
            }

            #[test]
            fn any_json_gives_a_body_or_a_specific_error(v in json_value()) {
                match parse(v.to_string().as_bytes(), 64) {
                    Ok(Body::Single(m)) => {
                        prop_assert_eq!(m.jsonrpc.as_deref(), Some("2.0"));
                        let _ = (m.is_request(), m.is_response(), m.target_name(), m.id_value(), m.is_modern());
                    }
                    Ok(Body::Batch(v)) => prop_assert!(!v.is_empty()),
                    Err(e) => prop_assert!(e.code() == PARSE_ERROR || e.code() == INVALID_REQUEST),
                }
            }

            #[test]
            fn what_is_read_matches_the_tree(
                name in proptest::option::of("[a-z.]{1,8}"),
                token in proptest::option::of(any::<u32>()),
                version in proptest::option::of("2026-07-28|2025-11-25"),
                args in json_value(),
            ) {
                let mut meta = serde_json::Map::new();
                if let Some(t) = token { meta.insert("progressToken".into(), json!(t)); }
                if let Some(v) = &version { meta.insert(META_VERSION.into(), json!(v)); }
                let mut params = json!({"arguments": args, "_meta": meta});
                if let Some(n) = &name { params["name"] = json!(n); }
                let msg = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params});
                let Ok(Body::Single(m)) = parse(msg.to_string().as_bytes(), 64) else { panic!("{msg}") };
                prop_assert_eq!(m.params.name.as_deref(), name.as_deref());
                prop_assert_eq!(m.params.meta.progress_token.clone(), token.map(|t| json!(t)));
                prop_assert_eq!(m.is_modern(), version.is_some());
            }
        }
    }
}
