//! The modern (2026-07-28, stateless) era on `/mcp/{server}`.
//!
//! Every request carries its envelope in `params._meta` and the routing headers; joch checks them
//! the way the SDK server does (envelope, then headers, then version), answers removed methods
//! with 404, and then, per upstream:
//! - a modern upstream gets the request as is (joch keeps only an era/version record per node);
//! - a legacy-only upstream is reached through a legacy session this node holds for it: the
//!   envelope is stripped, the answer gets the modern fields (`resultType`, `_meta` serverInfo,
//!   `ttlMs`/`cacheScope` on lists), and `server/discover` is answered from the upstream's
//!   initialize result.
//!
//! List results never leave joch marked `cacheScope: public`: what a caller may see will be
//! filtered per caller (policy), so a shared cache must not keep it.

use std::collections::HashMap;

use futures::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use joch_raft_store::ServerRecord;
use serde_json::{json, Value};

use super::deny::Denial;
use super::deny::{protocol_error, Reason};
use super::pipeline::{check_pin, Call, Outcome};
use super::stdio::Child;
use super::{
    answer_message, bad_request, denied, is_type, read_limited, rejected, Proxy, MAX_INITIALIZE_ANSWER, MAX_JSON_ANSWER,
};
use crate::mcp::jsonrpc::{self, Message};
use crate::mcp::version;

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
/// JSON-RPC code for a routing header that disagrees with the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// How long an upstream's era is remembered before it is probed again.
const ERA_TTL: Duration = Duration::from_secs(60);

/// Methods that exist in the legacy era only.
pub(super) const REMOVED: [&str; 8] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
    "notifications/initialized",
    "notifications/progress",
    "notifications/roots/list_changed",
];

/// Methods whose results carry `ttlMs`/`cacheScope`.
const CACHEABLE: [&str; 5] =
    ["tools/list", "prompts/list", "resources/list", "resources/templates/list", "server/discover"];

/// Which body parameter `Mcp-Name` mirrors.
fn name_key(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// What this node knows of one upstream's era.
#[derive(Clone, Debug)]
pub struct Era {
    modern: bool,
    version: Option<String>,
    /// Legacy upstreams: the session this node holds, and the initialize result.
    legacy: Option<(Option<String>, Value)>,
    at: Instant,
}

/// Per-node record of upstream eras, keyed by server name and endpoint.
#[derive(Default)]
pub struct Eras(Mutex<HashMap<String, Era>>);

impl Eras {
    fn get(&self, key: &str) -> Option<Era> {
        self.0.lock().expect("eras").get(key).filter(|e| e.at.elapsed() < ERA_TTL).cloned()
    }
    fn put(&self, key: String, era: Era) {
        self.0.lock().expect("eras").insert(key, era);
    }
    fn forget(&self, key: &str) {
        self.0.lock().expect("eras").remove(key);
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

fn reject(code: i64, message: &str, data: Option<Value>) -> Box<(Response, Outcome)> {
    Box::new(bad_request(code, message, data))
}

/// The validation ladder: envelope, headers, version. `Ok` carries the envelope version.
pub(super) fn validate(msg: &Value, method: &str, headers: &HeaderMap) -> Result<String, Box<(Response, Outcome)>> {
    let meta = msg.pointer("/params/_meta").and_then(Value::as_object).ok_or_else(|| {
        reject(jsonrpc::INVALID_PARAMS, &format!("params._meta must be an object carrying the required {META_VERSION:?} and {META_CAPABILITIES:?} envelope keys"), None)
    })?;
    let missing: Vec<&str> = [META_VERSION, META_CAPABILITIES].into_iter().filter(|k| !meta.contains_key(*k)).collect();
    if !missing.is_empty() {
        return Err(reject(
            jsonrpc::INVALID_PARAMS,
            &format!("params._meta is missing the required envelope key(s): {}", missing.join(", ")),
            None,
        ));
    }
    let envelope = &meta[META_VERSION];
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if h("mcp-protocol-version") != envelope.as_str() {
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
        if let Some(body_value) = msg["params"][key].as_str() {
            if h("mcp-name").and_then(decode_header).as_deref() != Some(body_value) {
                return Err(reject(
                    HEADER_MISMATCH,
                    &format!("mcp-name header does not match the request body's {key:?} parameter"),
                    None,
                ));
            }
        }
    }
    let Some(v) = envelope.as_str() else {
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

/// Removes the modern envelope from a request bound for a legacy peer (other `_meta` keys, such
/// as the progress token, stay).
fn strip_envelope(msg: &mut Value) {
    if let Some(meta) = msg.pointer_mut("/params/_meta").and_then(Value::as_object_mut) {
        for k in [META_VERSION, META_CAPABILITIES, META_CLIENT_INFO] {
            meta.remove(k);
        }
    }
}

/// Headers of a request joch sends on its own legacy session with an upstream.
fn legacy_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("accept", HeaderValue::from_static("application/json, text/event-stream"));
    h.insert("mcp-protocol-version", HeaderValue::from_static(version::LEGACY[0]));
    h
}

/// Adds the modern fields to a result that came from a legacy upstream.
pub(super) fn modernize(method: &str, mut result: Value, server_info: &Value) -> Value {
    if let Some(obj) = result.as_object_mut() {
        obj.insert("resultType".into(), json!("complete"));
        let meta = obj.entry("_meta").or_insert_with(|| json!({}));
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

/// A list result may be filtered per caller: never let it be cached as public.
fn private_lists(method: &str, msg: &mut Value) {
    if CACHEABLE.contains(&method) && msg.pointer("/result/cacheScope").and_then(Value::as_str) == Some("public") {
        msg["result"]["cacheScope"] = json!("private");
    }
}

pub(super) fn json_answer(msg: &Value) -> (Response, Outcome) {
    (([("content-type", "application/json")], msg.to_string()).into_response(), Outcome::Forwarded { status: 200 })
}

/// The start of every modern-era message: its method (removed methods get 404), its body, and,
/// for requests, the validation ladder.
pub(super) fn preamble(
    m: &Message,
    body: &[u8],
    headers: &HeaderMap,
    id: &Value,
) -> Result<(String, Value), Box<(Response, Outcome)>> {
    let Some(method) = m.method.clone() else {
        return Err(reject(
            jsonrpc::INVALID_REQUEST,
            "the modern era has no client responses to server requests over POST",
            None,
        ));
    };
    if REMOVED.contains(&method.as_str()) {
        return Err(Box::new(rejected(protocol_error(
            StatusCode::NOT_FOUND,
            id.clone(),
            jsonrpc::METHOD_NOT_FOUND,
            "Method not found",
            None,
        ))));
    }
    let msg: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if m.is_request() {
        validate(&msg, &method, headers)?;
    }
    Ok((method, msg))
}

impl Proxy {
    /// A modern-era message on `/mcp/{server}`.
    pub(super) async fn modern(
        &self,
        call: &mut Call,
        headers: &HeaderMap,
        body: Bytes,
        m: &Message,
        id: Value,
    ) -> (Response, Outcome) {
        let (method, msg) = match preamble(m, &body, headers, &id) {
            Ok(x) => x,
            Err(r) => return *r,
        };
        let rec = match self.admit(call) {
            Ok(r) => r,
            Err(d) => return denied(d.with_id(id)),
        };
        let stdio = rec.spec.transport == joch_raft_store::model::resource::Transport::Stdio;
        let (era, child) = match self.resolve_era(&rec).await {
            Ok(x) => x,
            Err((reason, message)) => return denied(self.deny(call, reason, "upstream", message).with_id(id)),
        };
        if let Err(d) = check_pin(call, &rec, era.version.as_deref()) {
            return denied(d.with_id(id));
        }
        if !m.is_request() {
            // notifications/cancelled: a modern upstream gets it; a legacy one has no such request in flight.
            if era.modern && !stdio {
                let _ = self
                    .upstream
                    .send(reqwest::Method::POST, &Self::upstream_url(&rec), headers, None, Some(body))
                    .await;
            }
            return (StatusCode::ACCEPTED.into_response(), Outcome::Forwarded { status: 202 });
        }
        let c: &Call = call;
        let exchange = async {
            if era.modern {
                self.modern_passthrough(c, &rec, headers, body, &method, id.clone()).await
            } else {
                self.translate_to_legacy(c, &rec, child, msg, &method, era, id.clone()).await
            }
        };
        match self.until_cut(c, exchange).await {
            Ok(r) => r,
            Err(d) => denied(d.with_id(id)),
        }
    }

    /// A modern upstream: forwarded as is; the answer's version is checked against the pin.
    async fn modern_passthrough(
        &self,
        call: &Call,
        rec: &ServerRecord,
        headers: &HeaderMap,
        body: Bytes,
        method: &str,
        id: Value,
    ) -> (Response, Outcome) {
        let resp = match self
            .upstream
            .send(reqwest::Method::POST, &Self::upstream_url(rec), headers, None, Some(body))
            .await
        {
            Ok(r) => r,
            Err(e) => return denied(self.deny(call, e.reason, "upstream", e.message).with_id(id)),
        };
        let is_json = is_type(resp.headers().get("content-type"), "application/json");
        if !is_json || !resp.status().is_success() {
            return self.relay(call, resp, Some(id)).await;
        }
        let status = resp.status();
        let bytes = match read_limited(resp, MAX_JSON_ANSWER).await {
            Ok(b) => b,
            Err(e) => return denied(self.deny(call, Reason::UpstreamUnavailable, "upstream", e).with_id(id)),
        };
        let Ok(mut msg) = serde_json::from_slice::<Value>(&bytes) else {
            return (
                super::passthrough(status, Some(HeaderValue::from_static("application/json")), bytes.into()),
                Outcome::Forwarded { status: status.as_u16() },
            );
        };
        if let Some(v) = msg
            .pointer(&format!("/result/_meta/{}", META_SERVER_INFO.replace('/', "~1")))
            .and_then(|i| i["version"].as_str())
        {
            if let Err(d) = check_pin(call, rec, Some(v)) {
                self.eras.forget(&era_key(rec));
                return denied(d.with_id(id));
            }
        }
        private_lists(method, &mut msg);
        json_answer(&msg)
    }

    /// A legacy-only upstream, through the legacy session this node holds for it (over HTTP), or
    /// through this node's stdio child.
    #[allow(clippy::too_many_arguments)]
    async fn translate_to_legacy(
        &self,
        call: &Call,
        rec: &ServerRecord,
        child: Option<Arc<Child>>,
        msg: Value,
        method: &str,
        era: Era,
        id: Value,
    ) -> (Response, Outcome) {
        let Some((_, init)) = era.legacy.clone() else {
            return denied(
                self.deny(call, Reason::UpstreamUnavailable, "upstream", "no legacy session with the upstream")
                    .with_id(id),
            );
        };
        let server_info = init["serverInfo"].clone();
        if method == "server/discover" {
            let result = modernize(
                method,
                json!({"supportedVersions": version::MODERN, "capabilities": init["capabilities"]}),
                &server_info,
            );
            return json_answer(&json!({"jsonrpc": "2.0", "id": id, "result": result}));
        }
        if method == "subscriptions/listen" {
            return match &child {
                Some(c) => self.child_listen(call, c.clone(), &msg, id),
                None => self.http_listen(call, rec, &msg, id).await,
            };
        }
        let wants_progress = msg.pointer("/params/_meta/progressToken").is_some();
        if let (Some(c), true) = (&child, wants_progress) {
            return self.child_stream(call, c, &init, msg, method, id);
        }
        if let (None, true) = (&child, wants_progress) {
            return self.http_legacy_stream(call, rec, &era, &init, msg, method, id).await;
        }
        let mut answer = match self.legacy_answer(rec, child, &era, msg, method).await {
            Ok(a) => a,
            Err((reason, message)) => return denied(self.deny(call, reason, "upstream", message).with_id(id)),
        };
        answer["id"] = id;
        json_answer(&answer)
    }

    /// A modern call that asked for progress, to a legacy-only HTTP upstream: its SSE answer is
    /// relayed event by event (progress as is), the final answer with the modern fields.
    #[allow(clippy::too_many_arguments)]
    async fn http_legacy_stream(
        &self,
        call: &Call,
        rec: &ServerRecord,
        era: &Era,
        init: &Value,
        mut msg: Value,
        method: &str,
        id: Value,
    ) -> (Response, Outcome) {
        let sid = era.legacy.as_ref().and_then(|(sid, _)| sid.clone());
        strip_envelope(&mut msg);
        let h = legacy_headers();
        let resp = match self
            .upstream
            .send(
                reqwest::Method::POST,
                &Self::upstream_url(rec),
                &h,
                sid.as_deref(),
                Some(Bytes::from(msg.to_string())),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return denied(self.deny(call, e.reason, "upstream", e.message).with_id(id)),
        };
        let is_sse = is_type(resp.headers().get("content-type"), "text/event-stream");
        let (server_info, method) = (init["serverInfo"].clone(), method.to_string());
        if !is_sse || !resp.status().is_success() {
            let ct = resp.headers().get("content-type").cloned();
            let bytes = match read_limited(resp, MAX_JSON_ANSWER).await {
                Ok(b) => b,
                Err(e) => return denied(self.deny(call, Reason::UpstreamUnavailable, "upstream", e).with_id(id)),
            };
            let Some(mut answer) = answer_message(ct.as_ref(), &bytes) else {
                return denied(
                    self.deny(call, Reason::UpstreamUnavailable, "upstream", "the legacy upstream gave no answer")
                        .with_id(id),
                );
            };
            if let Some(result) = answer.get_mut("result") {
                *result = modernize(&method, result.take(), &server_info);
            }
            answer["id"] = id;
            return json_answer(&answer);
        }
        let answer_id = id.clone();
        let (up, url) = (self.upstream.clone(), Self::upstream_url(rec));
        let transform: super::EventMap = Box::new(move |ev: Bytes| {
            let Some(mut v) = crate::mcp::sse::json(&ev) else {
                return ev;
            };
            if v.get("method").is_some() && v.get("id").is_some() {
                refuse_upstream_request(&up, &url, sid.clone(), &v);
                return Bytes::new();
            }
            if !v.is_object() || (v.get("result").is_none() && v.get("error").is_none()) {
                return ev;
            }
            if let Some(result) = v.get_mut("result") {
                *result = modernize(&method, result.take(), &server_info);
            }
            v["id"] = answer_id.clone();
            crate::mcp::sse::message_event(&v.to_string())
        });
        (self.stream(call, resp.bytes_stream(), Some(id), Some(transform)), Outcome::Forwarded { status: 200 })
    }

    /// A modern call to this node's stdio child that asked for progress: the child's progress
    /// notifications, then the answer (with the modern fields), as SSE events while they happen.
    fn child_stream(
        &self,
        call: &Call,
        child: &Child,
        init: &Value,
        mut msg: Value,
        method: &str,
        id: Value,
    ) -> (Response, Outcome) {
        strip_envelope(&mut msg);
        let mut rx = match child.call(msg) {
            Ok(rx) => rx,
            Err(e) => return denied(self.deny(call, e.reason, "upstream.stdio", e.message).with_id(id)),
        };
        let (server_info, method) = (init["serverInfo"].clone(), method.to_string());
        let answer_id = id.clone();
        let source = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(move |mut v: Value| {
            if let Some(result) = v.get_mut("result") {
                *result = modernize(&method, result.take(), &server_info);
                v["id"] = answer_id.clone();
            }
            Ok::<_, std::convert::Infallible>(crate::mcp::sse::message_event(&v.to_string()))
        });
        (self.stream(call, source, Some(id), None), Outcome::Forwarded { status: 200 })
    }

    /// `subscriptions/listen` to this node's stdio child: the child's own notifications of the
    /// kinds asked for (and updates of the URIs asked for, if the child supports resource
    /// subscriptions) stream back, each tagged with the listen request's id, after the
    /// acknowledgement. The subscriptions end with the stream.
    fn child_listen(&self, call: &Call, child: Arc<Child>, msg: &Value, id: Value) -> (Response, Outcome) {
        let can_subscribe = child.init["capabilities"]["resources"]["subscribe"].as_bool().unwrap_or(false);
        let listen = Listen::new(msg, can_subscribe, &id);
        let streams = self.stdio.streams.clone();
        let (key, queue, new) = streams.listen(&call.server, listen.kinds, &listen.uris);
        child.subscriptions("resources/subscribe", new);
        let ack = listen.ack();
        let guard = ListenGuard { streams, key, child };
        let events = queue.open(None).map(move |ev| {
            let _held_until_the_stream_ends = &guard;
            ev.map(|ev| listen.tag(ev))
        });
        let first = futures::stream::once(std::future::ready(Ok(ack)));
        (self.stream(call, first.chain(events), Some(id), None), Outcome::Forwarded { status: 200 })
    }

    /// `subscriptions/listen` to a legacy-only HTTP upstream: joch opens a legacy session of the
    /// listener's own with the upstream (the node's shared one may have only one stream),
    /// subscribes the URIs asked for, and relays the session's server stream: the kinds asked
    /// for, tagged with the listen request's id; anything else on it is dropped. The session is
    /// ended (DELETE) when the listen stream ends.
    async fn http_listen(&self, call: &Call, rec: &ServerRecord, msg: &Value, id: Value) -> (Response, Outcome) {
        let url = Self::upstream_url(rec);
        let fail = |(reason, message): (Reason, String)| {
            denied(self.deny(call, reason, "upstream", message).with_id(id.clone()))
        };
        let (sid, init) = match self.open_legacy_session(&url).await {
            Ok(x) => x,
            Err(e) => return fail(e),
        };
        let session = UpstreamSession { upstream: self.upstream.clone(), url: url.clone(), sid: sid.clone() };
        if let Err(d) = check_pin(call, rec, init["serverInfo"]["version"].as_str()) {
            return denied(d.with_id(id.clone()));
        }
        let can_subscribe = init["capabilities"]["resources"]["subscribe"].as_bool().unwrap_or(false);
        let listen = Listen::new(msg, can_subscribe, &id);
        let h = legacy_headers();
        for uri in &listen.uris {
            let sub = json!({"jsonrpc": "2.0", "id": 1, "method": "resources/subscribe", "params": {"uri": uri}});
            if let Err(e) = self
                .upstream
                .send(reqwest::Method::POST, &url, &h, sid.as_deref(), Some(Bytes::from(sub.to_string())))
                .await
            {
                return fail((e.reason, e.message));
            }
        }
        let resp = match self.upstream.send(reqwest::Method::GET, &url, &h, sid.as_deref(), None).await {
            Ok(r) => r,
            Err(e) => return fail((e.reason, e.message)),
        };
        if !resp.status().is_success() || !is_type(resp.headers().get("content-type"), "text/event-stream") {
            return json_answer(&jsonrpc::error(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                &format!(
                    "subscriptions/listen is not available: the upstream offers no server stream (GET: {})",
                    resp.status()
                ),
                None,
            ));
        }
        let ack = listen.ack();
        let upstream_events = resp.bytes_stream().map(move |chunk| {
            let _ended_when_the_stream_ends = &session;
            chunk
        });
        let first = futures::stream::once(std::future::ready(Ok::<_, reqwest::Error>(ack)));
        let transform: super::EventMap = Box::new(move |ev: Bytes| {
            let wanted = crate::mcp::sse::json(&ev).is_some_and(|v| listen.wants(&v));
            if wanted {
                listen.tag(ev)
            } else {
                Bytes::new()
            }
        });
        (self.stream(call, first.chain(upstream_events), Some(id), Some(transform)), Outcome::Forwarded { status: 200 })
    }

    /// The upstream's era and version, probed once per node (and again after a minute).
    async fn era(&self, rec: &ServerRecord) -> Result<Era, (Reason, String)> {
        let key = era_key(rec);
        if let Some(e) = self.eras.get(&key) {
            return Ok(e);
        }
        let url = Self::upstream_url(rec);
        let v = version::MODERN[0];
        let discover = json!({"jsonrpc": "2.0", "id": 0, "method": "server/discover", "params": {"_meta": {
            META_VERSION: v, META_CAPABILITIES: {}, META_CLIENT_INFO: {"name": "joch", "version": env!("CARGO_PKG_VERSION")}}}});
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("accept", HeaderValue::from_static("application/json, text/event-stream"));
        h.insert("mcp-protocol-version", HeaderValue::from_static(version::MODERN[0]));
        h.insert("mcp-method", HeaderValue::from_static("server/discover"));
        let probe = self
            .upstream
            .send(reqwest::Method::POST, &url, &h, None, Some(Bytes::from(discover.to_string())))
            .await
            .map_err(|e| (e.reason, e.message))?;
        let ct = probe.headers().get("content-type").cloned();
        let bytes = read_limited(probe, MAX_INITIALIZE_ANSWER).await.map_err(|e| (Reason::UpstreamUnavailable, e))?;
        let answer = answer_message(ct.as_ref(), &bytes);
        let modern_result = answer.as_ref().and_then(|a| a.get("result")).filter(|r| {
            r["supportedVersions"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x.as_str().is_some_and(version::is_modern)))
        });
        let era = if let Some(r) = modern_result {
            let version = r
                .pointer(&format!("/_meta/{}", META_SERVER_INFO.replace('/', "~1")))
                .and_then(|i| i["version"].as_str())
                .map(str::to_string);
            Era { modern: true, version, legacy: None, at: Instant::now() }
        } else {
            // Legacy: open the session this node will use for modern callers.
            let (sid, result) = self.open_legacy_session(&url).await?;
            let version = result["serverInfo"]["version"].as_str().map(str::to_string);
            Era { modern: false, version, legacy: Some((sid, result)), at: Instant::now() }
        };
        self.eras.put(key, era.clone());
        Ok(era)
    }

    /// Opens a legacy session of joch's own with an upstream: initialize, then initialized.
    /// Returns the upstream's session id and its initialize result.
    async fn open_legacy_session(&self, url: &str) -> Result<(Option<String>, Value), (Reason, String)> {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": version::LEGACY[0],
            "capabilities": {}, "clientInfo": {"name": "joch", "version": env!("CARGO_PKG_VERSION")}}});
        let mut lh = HeaderMap::new();
        lh.insert("content-type", HeaderValue::from_static("application/json"));
        lh.insert("accept", HeaderValue::from_static("application/json, text/event-stream"));
        let resp = self
            .upstream
            .send(reqwest::Method::POST, url, &lh, None, Some(Bytes::from(init.to_string())))
            .await
            .map_err(|e| (e.reason, e.message))?;
        let sid = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        let ct = resp.headers().get("content-type").cloned();
        let bytes = read_limited(resp, MAX_INITIALIZE_ANSWER).await.map_err(|e| (Reason::UpstreamUnavailable, e))?;
        let result = answer_message(ct.as_ref(), &bytes).and_then(|a| a.get("result").cloned()).ok_or((
            Reason::UpstreamUnavailable,
            "the upstream answered neither server/discover nor initialize".to_string(),
        ))?;
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let _ = self
            .upstream
            .send(reqwest::Method::POST, url, &legacy_headers(), sid.as_deref(), Some(Bytes::from(note.to_string())))
            .await;
        Ok((sid, result))
    }
}

impl Proxy {
    /// A modern request to one server, answered in the modern shape whatever the server's era:
    /// passed through to a modern upstream (routing headers set for this server), translated for
    /// a legacy-only or stdio one. The pin is checked against the version this node knows.
    pub(super) async fn member_answer(
        &self,
        call: &Call,
        rec: &ServerRecord,
        msg: Value,
        method: &str,
    ) -> Result<Value, Denial> {
        let fail = |(reason, message): (Reason, String)| self.deny(call, reason, "upstream", message);
        let (era, child) = self.resolve_era(rec).await.map_err(fail)?;
        check_pin(call, rec, era.version.as_deref())?;
        if era.modern {
            let resp = self.send_modern(call, rec, &msg, method).await?;
            let ct = resp.headers().get("content-type").cloned();
            let bytes =
                read_limited(resp, MAX_JSON_ANSWER).await.map_err(|e| fail((Reason::UpstreamUnavailable, e)))?;
            return answer_message(ct.as_ref(), &bytes)
                .ok_or_else(|| fail((Reason::UpstreamUnavailable, "no JSON-RPC answer".into())));
        }
        self.legacy_answer(rec, child, &era, msg, method).await.map_err(fail)
    }

    /// A modern request to one server that asked for progress: the answer streams (SSE) in the
    /// modern shape whatever the server's era, cut if the server stops being admissible. For a
    /// `legacy_caller` (a legacy session of a modern-only server) an `input_required` answer
    /// becomes an error that says why.
    pub(super) async fn member_stream(
        &self,
        call: &Call,
        rec: &ServerRecord,
        msg: Value,
        method: &str,
        id: Value,
        legacy_caller: bool,
    ) -> (Response, Outcome) {
        let (era, child) = match self.resolve_era(rec).await {
            Ok(x) => x,
            Err((reason, message)) => return denied(self.deny(call, reason, "upstream", message).with_id(id)),
        };
        if let Err(d) = check_pin(call, rec, era.version.as_deref()) {
            return denied(d.with_id(id));
        }
        let exchange = async {
            if era.modern {
                match self.send_modern(call, rec, &msg, method).await {
                    Ok(resp) if legacy_caller => {
                        let transform: super::EventMap = Box::new(|ev: Bytes| {
                            let parsed = crate::mcp::sse::json(&ev);
                            match parsed {
                                Some(mut v) if v["result"]["resultType"] == "input_required" => {
                                    input_required_for_legacy(&mut v);
                                    crate::mcp::sse::message_event(&v.to_string())
                                }
                                _ => ev,
                            }
                        });
                        self.relay_with(call, resp, Some(id.clone()), Some(transform)).await
                    }
                    Ok(resp) => self.relay(call, resp, Some(id.clone())).await,
                    Err(d) => denied(d.with_id(id.clone())),
                }
            } else {
                self.translate_to_legacy(call, rec, child, msg, method, era, id.clone()).await
            }
        };
        match self.until_cut(call, exchange).await {
            Ok(r) => r,
            Err(d) => denied(d.with_id(id)),
        }
    }

    /// The server stream (GET) of a legacy session whose upstream speaks only the modern era:
    /// a `subscriptions/listen` for every list change, relayed as the plain notifications the
    /// legacy era sends (the acknowledgement dropped, the subscription id taken out). `None` if
    /// the upstream offers no listen stream (the caller then gets 405, as from a server without
    /// a stream).
    pub(super) async fn listen_as_session_stream(
        &self,
        call: &Call,
        rec: &ServerRecord,
    ) -> Option<(Response, Outcome)> {
        let listen_id = format!("joch-listen-{:x}", rand::random::<u64>());
        let mut msg = json!({"jsonrpc": "2.0", "id": listen_id, "method": "subscriptions/listen", "params": {
            "notifications": {"toolsListChanged": true, "promptsListChanged": true, "resourcesListChanged": true}}});
        msg["params"]["_meta"] = envelope();
        let resp = match self.send_modern(call, rec, &msg, "subscriptions/listen").await {
            Ok(r) => r,
            Err(d) => return Some(denied(d)),
        };
        if !resp.status().is_success() || !is_type(resp.headers().get("content-type"), "text/event-stream") {
            return None;
        }
        let transform: super::EventMap = Box::new(|ev: Bytes| {
            let Some(mut v) = crate::mcp::sse::json(&ev) else {
                return Bytes::new();
            };
            let method = v["method"].as_str().unwrap_or_default();
            // The acknowledgement, and the listen's own answer (its end): not for a legacy client.
            if v.get("id").is_some() || method.is_empty() || method == "notifications/subscriptions/acknowledged" {
                return Bytes::new();
            }
            if let Some(meta) = v.pointer_mut("/params/_meta").and_then(Value::as_object_mut) {
                meta.remove(META_SUBSCRIPTION_ID);
                if meta.is_empty() {
                    v["params"].as_object_mut().map(|p| p.remove("_meta"));
                }
            }
            crate::mcp::sse::message_event(&v.to_string())
        });
        Some((self.stream(call, resp.bytes_stream(), None, Some(transform)), Outcome::Forwarded { status: 200 }))
    }

    /// Sends a modern request to a modern upstream, with the routing headers for this server.
    async fn send_modern(
        &self,
        call: &Call,
        rec: &ServerRecord,
        msg: &Value,
        method: &str,
    ) -> Result<reqwest::Response, Denial> {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("accept", HeaderValue::from_static("application/json, text/event-stream"));
        h.insert("mcp-protocol-version", HeaderValue::from_static(version::MODERN[0]));
        if let Ok(v) = HeaderValue::from_str(method) {
            h.insert("mcp-method", v);
        }
        if let Some(name) = name_key(method).and_then(|k| msg["params"][k].as_str()) {
            if let Ok(v) = HeaderValue::from_str(name) {
                h.insert("mcp-name", v);
            }
        }
        self.upstream
            .send(reqwest::Method::POST, &Self::upstream_url(rec), &h, None, Some(Bytes::from(msg.to_string())))
            .await
            .map_err(|e| self.deny(call, e.reason, "upstream", e.message))
    }

    /// This node's era record for a server: its stdio child's (always a legacy session held by
    /// joch), or the HTTP upstream's, probed once and remembered.
    async fn resolve_era(&self, rec: &ServerRecord) -> Result<(Era, Option<Arc<Child>>), (Reason, String)> {
        if rec.spec.transport == joch_raft_store::model::resource::Transport::Stdio {
            let c = self.stdio.child(rec).await.map_err(|e| (e.reason, e.message))?;
            let era = Era {
                modern: false,
                version: c.version().map(str::to_string),
                legacy: Some((None, c.init.clone())),
                at: Instant::now(),
            };
            return Ok((era, Some(c)));
        }
        Ok((self.era(rec).await?, None))
    }

    /// A modern request to a legacy peer (an HTTP upstream through this node's session, or the
    /// stdio child): the envelope is stripped, the answer gets the modern fields.
    async fn legacy_answer(
        &self,
        rec: &ServerRecord,
        child: Option<Arc<Child>>,
        era: &Era,
        mut msg: Value,
        method: &str,
    ) -> Result<Value, (Reason, String)> {
        let (sid, init) = era
            .legacy
            .clone()
            .ok_or((Reason::UpstreamUnavailable, "no legacy session with the upstream".to_string()))?;
        strip_envelope(&mut msg);
        let mut answer = match child {
            Some(c) => self.child_answer(&c, msg).await,
            None => self.http_legacy_answer(rec, sid.as_deref(), msg).await,
        }?;
        if let Some(result) = answer.get_mut("result") {
            *result = modernize(method, result.take(), &init["serverInfo"]);
        }
        Ok(answer)
    }

    /// One request to a legacy-only HTTP upstream on this node's session with it.
    async fn http_legacy_answer(
        &self,
        rec: &ServerRecord,
        sid: Option<&str>,
        msg: Value,
    ) -> Result<Value, (Reason, String)> {
        let h = legacy_headers();
        let resp = self
            .upstream
            .send(reqwest::Method::POST, &Self::upstream_url(rec), &h, sid, Some(Bytes::from(msg.to_string())))
            .await
            .map_err(|e| (e.reason, e.message))?;
        if resp.status() == StatusCode::NOT_FOUND {
            // The upstream ended our session (restarted?): the next request starts a new one.
            self.eras.forget(&era_key(rec));
        }
        let ct = resp.headers().get("content-type").cloned();
        if is_type(ct.as_ref(), "text/event-stream") && resp.status().is_success() {
            // Event by event: a server-to-client request on the way is refused (the caller
            // cannot receive it), so the upstream is not left waiting for an answer.
            let url = Self::upstream_url(rec);
            let mut events = std::pin::pin!(crate::mcp::sse::events(resp.bytes_stream()));
            while let Some(ev) = events.next().await {
                let Some(v) = crate::mcp::sse::json(&ev) else {
                    continue;
                };
                if v.get("result").is_some() || v.get("error").is_some() {
                    return Ok(v);
                }
                if v.get("method").is_some() && v.get("id").is_some() {
                    refuse_upstream_request(&self.upstream, &url, sid.map(str::to_string), &v);
                }
            }
            return Err((Reason::UpstreamUnavailable, "the legacy upstream gave no answer".into()));
        }
        let bytes = read_limited(resp, MAX_JSON_ANSWER).await.map_err(|e| (Reason::UpstreamUnavailable, e))?;
        answer_message(ct.as_ref(), &bytes)
            .ok_or((Reason::UpstreamUnavailable, "the legacy upstream gave no answer".into()))
    }

    /// One request to this node's stdio child (progress notifications are not bridged here).
    async fn child_answer(&self, child: &super::stdio::Child, msg: Value) -> Result<Value, (Reason, String)> {
        let mut rx = child.call(msg).map_err(|e| (e.reason, e.message))?;
        while let Some(v) = rx.recv().await {
            if v.get("result").is_some() || v.get("error").is_some() {
                return Ok(v);
            }
        }
        Err((Reason::UpstreamUnavailable, "the stdio server ended the call without an answer".into()))
    }
}

impl Proxy {
    /// initialize for a modern-only upstream: answered by joch from the upstream's discover
    /// result (pin checked); the session is marked so its requests are translated. `None` when
    /// the upstream turns out not to be modern after all.
    pub(super) async fn initialize_via_modern(
        &self,
        call: &mut Call,
        rec: &ServerRecord,
        sealer: &crate::mcp::session::Sealer,
        agent_body: &[u8],
        id: Value,
    ) -> Option<(Response, Outcome)> {
        self.eras.forget(&era_key(rec));
        let (era, _) = self.resolve_era(rec).await.ok()?;
        if !era.modern {
            return None;
        }
        let discover = json!({"jsonrpc": "2.0", "id": 0, "method": "server/discover", "params": {"_meta": envelope()}});
        let answer = match self.member_answer(call, rec, discover, "server/discover").await {
            Ok(a) => a,
            Err(d) => return Some(denied(d.with_id(id))),
        };
        let found = &answer["result"];
        let server_info =
            found.pointer(&format!("/_meta/{}", META_SERVER_INFO.replace('/', "~1"))).cloned().unwrap_or(json!({}));
        let requested = serde_json::from_slice::<Value>(agent_body)
            .ok()
            .and_then(|v| v["params"]["protocolVersion"].as_str().map(str::to_string))
            .filter(|v| version::is_legacy(v))
            .unwrap_or_else(|| version::LEGACY[0].to_string());
        let token = crate::mcp::session::SessionToken {
            upstream_version: server_info["version"].as_str().map(str::to_string),
            upstream_modern: true,
            ..super::new_session(call, requested.clone())
        };
        let result =
            json!({"protocolVersion": requested, "capabilities": found["capabilities"], "serverInfo": server_info});
        let (mut resp, outcome) = json_answer(&json!({"jsonrpc": "2.0", "id": id, "result": result}));
        super::hand_out(call, sealer, token, &mut resp);
        Some((resp, outcome))
    }

    /// A request of a legacy session whose upstream speaks only the modern era: the envelope is
    /// added and the routing headers set; the answer goes back whole.
    pub(super) async fn legacy_to_modern(
        &self,
        call: &Call,
        rec: &ServerRecord,
        parsed: &super::RpcBody,
        body: &[u8],
        id: Value,
    ) -> (Response, Outcome) {
        let super::RpcBody::Single(m) = parsed else {
            return bad_request(
                jsonrpc::INVALID_REQUEST,
                "JSON-RPC batches are not bridged to modern-only servers",
                None,
            );
        };
        let Some(method) = m.method.clone() else {
            return (StatusCode::ACCEPTED.into_response(), Outcome::Forwarded { status: 202 });
        };
        if !m.is_request() {
            // initialized (joch already spoke for the caller), progress, roots, cancellations.
            return (StatusCode::ACCEPTED.into_response(), Outcome::Forwarded { status: 202 });
        }
        if method == "ping" {
            return json_answer(&json!({"jsonrpc": "2.0", "id": id, "result": {}}));
        }
        if REMOVED.contains(&method.as_str()) {
            return json_answer(&jsonrpc::error(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                &format!("{method} does not exist for this server (it speaks only the modern era)"),
                None,
            ));
        }
        let mut msg: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if !msg["params"].is_object() {
            msg["params"] = json!({});
        }
        let meta = msg["params"].as_object_mut().map(|p| p.entry("_meta").or_insert_with(|| json!({})));
        if let Some(obj) = meta.and_then(Value::as_object_mut) {
            if let Value::Object(env) = envelope() {
                obj.extend(env);
            }
        }
        if msg.pointer("/params/_meta/progressToken").is_some() {
            // Asked for progress: the upstream's SSE answer is relayed event by event (the
            // caller's id and token are the ones in the request, so events pass as they are).
            return self.member_stream(call, rec, msg, &method, id, true).await;
        }
        match self.member_answer(call, rec, msg, &method).await {
            Ok(mut answer) => {
                answer["id"] = id;
                input_required_for_legacy(&mut answer);
                json_answer(&answer)
            }
            Err(d) => denied(d.with_id(id)),
        }
    }
}

/// Answers a legacy upstream's server-to-client request (elicitation, sampling, roots) that
/// arrived during a modern caller's call: the caller's era has no such requests (it has
/// `input_required` results, which joch does not translate them into yet), so the upstream gets
/// a clear error instead of waiting for an answer that cannot come.
fn refuse_upstream_request(up: &super::upstream::Upstream, url: &str, sid: Option<String>, request: &Value) {
    let method = request["method"].as_str().unwrap_or_default();
    let answer = jsonrpc::error(
        request["id"].clone(),
        jsonrpc::METHOD_NOT_FOUND,
        &format!(
            "{method} cannot reach this caller through joch: it speaks the {} era, and joch does not translate \
             server-to-client requests into input_required results yet",
            version::MODERN[0]
        ),
        None,
    );
    let (up, url) = (up.clone(), url.to_string());
    tokio::spawn(async move {
        let _ = up
            .send(reqwest::Method::POST, &url, &legacy_headers(), sid.as_deref(), Some(Bytes::from(answer.to_string())))
            .await;
    });
}

/// An `input_required` result (2026-07-28) a legacy caller cannot act on: turned into an error
/// that says so (joch does not yet translate it into server-to-client requests).
fn input_required_for_legacy(answer: &mut Value) {
    if answer["result"]["resultType"] != "input_required" {
        return;
    }
    let asks: Vec<String> = answer["result"]["inputRequests"]
        .as_object()
        .map(|m| m.values().filter_map(|r| r["method"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    *answer = jsonrpc::error(
        answer["id"].clone(),
        jsonrpc::INTERNAL_ERROR,
        &format!(
            "the server needs input from the caller ({}) in the {} era, which joch does not translate for callers of \
             the legacy era yet",
            if asks.is_empty() { "input_required".to_string() } else { asks.join(", ") },
            version::MODERN[0]
        ),
        Some(json!({"reason": "input-required-not-translated"})),
    );
}

/// A `subscriptions/listen` request: what it asked for (what joch can deliver of it).
pub(super) struct Listen {
    pub(super) kinds: super::streams::Kinds,
    pub(super) uris: Vec<String>,
    pub(super) id: Value,
}

impl Listen {
    pub(super) fn new(msg: &Value, can_subscribe: bool, id: &Value) -> Listen {
        let f = &msg["params"]["notifications"];
        let flag = |k: &str| f[k].as_bool().unwrap_or(false);
        let kinds = super::streams::Kinds {
            tools: flag("toolsListChanged"),
            prompts: flag("promptsListChanged"),
            resources: flag("resourcesListChanged"),
        };
        let uris = match f["resourceSubscriptions"].as_array() {
            Some(a) if can_subscribe => a.iter().filter_map(|u| u.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        Listen { kinds, uris, id: id.clone() }
    }

    /// The acknowledgement (the stream's first event): the kinds and URIs joch will deliver.
    pub(super) fn ack(&self) -> Bytes {
        let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
            "params": {"notifications": self.honored(), "_meta": {META_SUBSCRIPTION_ID: self.id}}});
        crate::mcp::sse::message_event(&ack.to_string())
    }

    /// The filter as the wire spells it: the kinds set, and the URIs if any.
    pub(super) fn honored(&self) -> serde_json::Map<String, Value> {
        let mut honored = serde_json::Map::new();
        let k = &self.kinds;
        for (key, on) in
            [("toolsListChanged", k.tools), ("promptsListChanged", k.prompts), ("resourcesListChanged", k.resources)]
        {
            if on {
                honored.insert(key.into(), json!(true));
            }
        }
        if !self.uris.is_empty() {
            honored.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        honored
    }

    /// Whether a message on the listen stream is one this listener asked for (or joch's own
    /// acknowledgement, which comes first).
    fn wants(&self, v: &Value) -> bool {
        let method = v["method"].as_str().unwrap_or_default();
        if v.get("id").is_some() {
            return false;
        }
        match method {
            "notifications/subscriptions/acknowledged" => v["params"]["_meta"][META_SUBSCRIPTION_ID] == self.id,
            "notifications/resources/updated" => {
                v["params"]["uri"].as_str().is_some_and(|u| self.uris.iter().any(|x| x == u))
            }
            m => self.kinds.wants(m),
        }
    }

    /// The event, tagged with the listen request's id.
    fn tag(&self, ev: Bytes) -> Bytes {
        let Some(mut v) = crate::mcp::sse::json(&ev) else {
            return ev;
        };
        if !v["params"].is_object() {
            v["params"] = json!({});
        }
        v["params"]["_meta"][META_SUBSCRIPTION_ID] = self.id.clone();
        crate::mcp::sse::message_event(&v.to_string())
    }
}

/// joch's own session with an upstream, ended (DELETE) when dropped.
struct UpstreamSession {
    upstream: super::upstream::Upstream,
    url: String,
    sid: Option<String>,
}

impl Drop for UpstreamSession {
    fn drop(&mut self) {
        let Some(sid) = self.sid.take() else { return };
        let (up, url) = (self.upstream.clone(), std::mem::take(&mut self.url));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = up.send(reqwest::Method::DELETE, &url, &legacy_headers(), Some(&sid), None).await;
            });
        }
    }
}

/// Ends a listen stream's subscriptions when the stream ends (the agent went away, or the
/// server was quarantined): the child hears unsubscribe for URIs nobody else on this node wants.
struct ListenGuard {
    streams: Arc<super::streams::Streams>,
    key: String,
    child: Arc<Child>,
}

impl Drop for ListenGuard {
    fn drop(&mut self) {
        self.child.subscriptions("resources/unsubscribe", self.streams.forget(&self.key));
    }
}

/// joch's own modern-era envelope, for requests it makes for a caller.
fn envelope() -> Value {
    json!({META_VERSION: version::MODERN[0], META_CAPABILITIES: {},
           META_CLIENT_INFO: {"name": "joch", "version": env!("CARGO_PKG_VERSION")}})
}

/// The era cache key: the server and where it is (a re-pointed server is probed again).
fn era_key(rec: &ServerRecord) -> String {
    format!("{}\u{0}{}", rec.name, Proxy::upstream_url(rec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn code(r: Result<String, Box<(Response, Outcome)>>) -> Option<u16> {
        r.err().map(|b| b.0.status().as_u16())
    }

    #[test]
    fn the_validation_ladder() {
        let ok = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","_meta":{META_VERSION:"2026-07-28",META_CAPABILITIES:{}}}});
        let good =
            headers(&[("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"), ("mcp-name", "add")]);
        assert_eq!(validate(&ok, "tools/call", &good).ok().as_deref(), Some("2026-07-28"));
        let no_meta = json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}});
        assert_eq!(code(validate(&no_meta, "tools/list", &good)), Some(400));
        let wrong_method =
            headers(&[("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/list"), ("mcp-name", "add")]);
        assert_eq!(code(validate(&ok, "tools/call", &wrong_method)), Some(400));
        let wrong_name =
            headers(&[("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"), ("mcp-name", "sub")]);
        assert_eq!(code(validate(&ok, "tools/call", &wrong_name)), Some(400));
        let b64 = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?YWRk?="),
        ]);
        assert!(validate(&ok, "tools/call", &b64).is_ok(), "base64-encoded names decode");
        let future = json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{META_VERSION:"2027-01-01",META_CAPABILITIES:{}}}});
        let fh = headers(&[("mcp-protocol-version", "2027-01-01"), ("mcp-method", "tools/list")]);
        assert_eq!(code(validate(&future, "tools/list", &fh)), Some(400));
    }

    #[test]
    fn legacy_results_get_modern_fields() {
        let r = modernize("tools/list", json!({"tools": []}), &json!({"name": "s", "version": "1"}));
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["cacheScope"], "private");
        assert_eq!(r["ttlMs"], 0);
        assert_eq!(r["_meta"][META_SERVER_INFO]["version"], "1");
        let mut req =
            json!({"params": {"_meta": {META_VERSION: "2026-07-28", META_CAPABILITIES: {}, "progressToken": 7}}});
        strip_envelope(&mut req);
        assert_eq!(req["params"]["_meta"], json!({"progressToken": 7}), "only the envelope goes");
        let c = modernize("tools/call", json!({"content": []}), &json!({}));
        assert!(c.get("cacheScope").is_none());
        let mut public = json!({"result": {"cacheScope": "public", "tools": []}});
        private_lists("tools/list", &mut public);
        assert_eq!(public["result"]["cacheScope"], "private");
    }
}
