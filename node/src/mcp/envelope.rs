//! The modern era's (2026-07-28) per-request envelope in `params._meta`, and the fields a result
//! carries in that era: joch adds them to answers of legacy servers and removes the envelope
//! from requests bound for them. No I/O.

use serde_json::{json, Map, Value};

use super::version;

/// `_meta` key of the protocol version.
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// `_meta` key of the client capabilities.
pub const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// `_meta` key of the client info.
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
/// `_meta` key of the server info in results.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// `_meta` key on every frame of a `subscriptions/listen` stream: the listen request's id.
pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// Methods whose results carry `ttlMs`/`cacheScope`.
pub const CACHEABLE: [&str; 5] =
    ["tools/list", "prompts/list", "resources/list", "resources/templates/list", "server/discover"];

/// joch's own envelope, for requests it makes for a caller.
pub fn joch_envelope() -> Value {
    json!({META_VERSION: version::MODERN[0], META_CAPABILITIES: {},
           META_CLIENT_INFO: {"name": "joch", "version": env!("CARGO_PKG_VERSION")}})
}

/// `params._meta` of a message as an object, created (and `params` too) if missing or not an
/// object. Never panics, whatever the message is.
pub fn meta_mut(msg: &mut Value) -> Option<&mut Map<String, Value>> {
    let obj = msg.as_object_mut()?;
    let params = obj.entry("params").or_insert_with(|| json!({}));
    if !params.is_object() {
        *params = json!({});
    }
    let meta = params.as_object_mut()?.entry("_meta").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut()
}

/// Adds joch's envelope to a request bound for a modern peer (keys already there are replaced).
pub fn add(msg: &mut Value) {
    if let (Some(meta), Value::Object(env)) = (meta_mut(msg), joch_envelope()) {
        meta.extend(env);
    }
}

/// Removes the modern envelope from a request bound for a legacy peer (other `_meta` keys, such
/// as the progress token, stay).
pub fn strip(msg: &mut Value) {
    if let Some(meta) = msg.pointer_mut("/params/_meta").and_then(Value::as_object_mut) {
        for k in [META_VERSION, META_CAPABILITIES, META_CLIENT_INFO] {
            meta.remove(k);
        }
    }
}

/// Adds the modern fields to a result that came from a legacy server (a non-object result is
/// left as it is).
pub fn modernize(method: &str, mut result: Value, server_info: &Value) -> Value {
    if let Some(obj) = result.as_object_mut() {
        obj.insert("resultType".into(), json!("complete"));
        let meta = obj.entry("_meta").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        if let Some(m) = meta.as_object_mut() {
            m.insert(META_SERVER_INFO.into(), server_info.clone());
        }
        if CACHEABLE.contains(&method) {
            obj.insert("ttlMs".into(), json!(0));
            obj.insert("cacheScope".into(), json!("private"));
        }
    }
    result
}

/// The server version a modern result names in `_meta`, if any.
pub fn server_version(result: &Value) -> Option<&str> {
    result.get("_meta")?.get(META_SERVER_INFO)?.get("version")?.as_str()
}

/// The server info a modern result names in `_meta` (`{}` if none).
pub fn server_info(result: &Value) -> Value {
    result.get("_meta").and_then(|m| m.get(META_SERVER_INFO)).cloned().unwrap_or_else(|| json!({}))
}

/// A list result may be filtered per caller: never let it be cached as public.
pub fn private_lists(method: &str, msg: &mut Value) {
    if !CACHEABLE.contains(&method) {
        return;
    }
    if let Some(r) = msg.get_mut("result").and_then(Value::as_object_mut) {
        if r.get("cacheScope").and_then(Value::as_str) == Some("public") {
            r.insert("cacheScope".into(), json!("private"));
        }
    }
}

/// Sets `params._meta[key]` (creating what is missing), whatever shape the message had.
pub fn set_meta(msg: &mut Value, key: &str, value: Value) {
    if let Some(meta) = meta_mut(msg) {
        meta.insert(key.into(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_results_get_modern_fields() {
        let r = modernize("tools/list", json!({"tools": []}), &json!({"name": "s", "version": "1"}));
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["cacheScope"], "private");
        assert_eq!(r["ttlMs"], 0);
        assert_eq!(server_version(&r), Some("1"));
        let mut req =
            json!({"params": {"_meta": {META_VERSION: "2026-07-28", META_CAPABILITIES: {}, "progressToken": 7}}});
        strip(&mut req);
        assert_eq!(req["params"]["_meta"], json!({"progressToken": 7}), "only the envelope goes");
        let c = modernize("tools/call", json!({"content": []}), &json!({}));
        assert!(c.get("cacheScope").is_none());
        let mut public = json!({"result": {"cacheScope": "public", "tools": []}});
        private_lists("tools/list", &mut public);
        assert_eq!(public["result"]["cacheScope"], "private");
    }

    #[test]
    fn odd_shapes_never_panic() {
        for mut odd in [json!(null), json!(7), json!([1]), json!({"params": 3}), json!({"params": {"_meta": "x"}})] {
            add(&mut odd);
            strip(&mut odd);
            set_meta(&mut odd, "k", json!(1));
            private_lists("tools/list", &mut odd);
        }
        assert_eq!(modernize("tools/list", json!("text"), &json!({})), json!("text"));
        let mut m = json!({"params": {"_meta": 5}});
        set_meta(&mut m, META_SUBSCRIPTION_ID, json!(1));
        assert_eq!(m["params"]["_meta"][META_SUBSCRIPTION_ID], 1);
        let r = modernize("tools/call", json!({"_meta": 1}), &json!({"version": "2"}));
        assert_eq!(server_version(&r), Some("2"));
    }
}
