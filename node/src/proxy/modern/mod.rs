//! The modern (2026-07-28, stateless) era on `/mcp/{server}`.
//!
//! Every request carries its envelope in `params._meta` and the routing headers; joch checks them
//! the way the SDK server does (`validate.rs`), and then, per upstream:
//! - a modern upstream gets the request as is (joch keeps only an era/version record per node);
//! - a legacy-only upstream is reached through a legacy session this node holds for it, or
//!   through this node's stdio child (`translate.rs`): the envelope is stripped, the answer gets
//!   the modern fields (`resultType`, `_meta` serverInfo, `ttlMs`/`cacheScope` on lists), and
//!   `server/discover` is answered from the upstream's initialize result;
//! - `subscriptions/listen` to a legacy peer is served by joch (`listen.rs`).
//!
//! The other direction lives here too: a legacy session with a modern-only upstream
//! (`translate.rs`). List results never leave joch marked `cacheScope: public`: what a caller may
//! see will be filtered per caller (policy), so a shared cache must not keep it.

mod listen;
mod translate;
pub mod validate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};

pub(super) use listen::Listen;

use super::admission::{check_pin, Admitted, Call};
use super::exit::{Answer, Reply};
use super::request::Inbound;
use super::upstream::stdio::Child;
use super::upstream::{answer_message, is_type, Failure, UpstreamError};
use super::{Proxy, MAX_INITIALIZE_ANSWER, MAX_JSON_ANSWER};
use crate::mcp::envelope::{self, META_CAPABILITIES, META_CLIENT_INFO, META_VERSION};
use crate::mcp::version;

/// How long an upstream's era is remembered before it is probed again.
const ERA_TTL: Duration = Duration::from_secs(60);

/// What this node knows of one upstream's era.
#[derive(Clone, Debug)]
pub struct Era {
    modern: bool,
    version: Option<String>,
    /// Legacy upstreams: the session this node holds, and the initialize result (an object).
    legacy: Option<(Option<String>, Value)>,
    at: Instant,
}

/// Per-node record of upstream eras, keyed by server name and endpoint.
#[derive(Default)]
pub struct Eras(Mutex<HashMap<String, Era>>);

impl Eras {
    fn get(&self, key: &str) -> Option<Era> {
        self.0.lock().get(key).filter(|e| e.at.elapsed() < ERA_TTL).cloned()
    }
    fn put(&self, key: String, era: Era) {
        self.0.lock().insert(key, era);
    }
    fn forget(&self, key: &str) {
        self.0.lock().remove(key);
    }
}

/// The era cache key: the server and where it is (a re-pointed server is probed again).
fn era_key(adm: &Admitted) -> String {
    format!("{}\u{0}{}", adm.server().name, adm.endpoint())
}

/// Headers of a request joch sends on its own legacy session with an upstream.
fn legacy_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("accept", HeaderValue::from_static("application/json, text/event-stream"));
    h.insert("mcp-protocol-version", HeaderValue::from_static(version::LEGACY[0]));
    h
}

impl Proxy {
    /// A modern-era message on `/mcp/{server}`.
    pub(super) async fn modern(&self, call: &mut Call, inb: &Inbound) -> Reply {
        let Some(rpc) = call.rpc.clone() else {
            return Answer::bad_request(crate::mcp::jsonrpc::INVALID_REQUEST, "an empty request", None).into();
        };
        let method = match validate::preamble(&rpc.msg, &inb.headers) {
            Ok(m) => m,
            Err(a) => return a.into(),
        };
        let adm = match self.admit_call(call, &inb.headers).await {
            Ok(a) => a,
            Err(d) => return d.into(),
        };
        let exchange = async {
            let (era, child) = self.resolve_era(&adm).await.map_err(|e| e.deny(&adm))?;
            check_pin(&adm, era.version.as_deref())?;
            let upstream_modern = era.modern && !adm.is_stdio();
            if !rpc.msg.is_request() {
                // notifications/cancelled: a modern upstream gets it; a legacy one has no such
                // request in flight.
                if upstream_modern {
                    let _ = self
                        .upstream
                        .send(&adm, reqwest::Method::POST, &inb.headers, None, Some(rpc.body.clone()))
                        .await;
                }
                return Ok(Answer::accepted(upstream_modern));
            }
            Ok(if era.modern {
                self.modern_passthrough(&adm, &inb.headers, &method).await
            } else {
                self.translate_to_legacy(&adm, child, rpc.value(), &method, era).await
            })
        };
        match adm.until_cut(exchange).await {
            Ok(Ok(a)) => a.into(),
            Ok(Err(d)) | Err(d) => d.into(),
        }
    }

    /// A modern upstream: forwarded as is; the answer's version is checked against the pin.
    async fn modern_passthrough(&self, adm: &Admitted, headers: &HeaderMap, method: &str) -> Answer {
        let body = adm.call().rpc.as_ref().map(|r| r.body.clone());
        let resp = match self.upstream.send(adm, reqwest::Method::POST, headers, None, body).await {
            Ok(r) => r,
            Err(e) => return e.deny(adm).into(),
        };
        let id = adm.call().id();
        if !is_type(resp.headers().get("content-type"), "application/json") || !resp.status().is_success() {
            return self.relay(adm, resp, Some(id)).await;
        }
        let status = resp.status();
        let bytes = match self.upstream.read(resp, MAX_JSON_ANSWER).await {
            Ok(b) => b,
            Err(e) => return e.deny(adm).into(),
        };
        let Ok(mut msg) = serde_json::from_slice::<Value>(&bytes) else {
            return Answer::Upstream {
                status: status.as_u16(),
                content_type: Some(HeaderValue::from_static("application/json")),
                body: bytes,
            };
        };
        if let Some(v) = msg.get("result").and_then(envelope::server_version) {
            if let Err(d) = check_pin(adm, Some(v)) {
                self.eras.forget(&era_key(adm));
                return d.into();
            }
        }
        envelope::private_lists(method, &mut msg);
        Answer::Message(msg)
    }

    /// This node's era record for a server: its stdio child's (always a legacy session held by
    /// joch), or the HTTP upstream's, probed once and remembered.
    async fn resolve_era(&self, adm: &Admitted) -> Result<(Era, Option<Arc<Child>>), Failure> {
        if adm.is_stdio() {
            let c = self.stdio.child(adm).await?;
            let era = Era {
                modern: false,
                version: c.version().map(str::to_string),
                legacy: Some((None, c.init.clone())),
                at: Instant::now(),
            };
            return Ok((era, Some(c)));
        }
        Ok((self.era(adm).await?, None))
    }

    /// The upstream's era and version, probed once per node (and again after a minute).
    async fn era(&self, adm: &Admitted) -> Result<Era, Failure> {
        let key = era_key(adm);
        if let Some(e) = self.eras.get(&key) {
            return Ok(e);
        }
        let v = version::MODERN[0];
        let discover = json!({"jsonrpc": "2.0", "id": 0, "method": "server/discover", "params": {"_meta": {
            META_VERSION: v, META_CAPABILITIES: {}, META_CLIENT_INFO: {"name": "joch", "version": env!("CARGO_PKG_VERSION")}}}});
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("accept", HeaderValue::from_static("application/json, text/event-stream"));
        h.insert("mcp-protocol-version", HeaderValue::from_static(version::MODERN[0]));
        h.insert("mcp-method", HeaderValue::from_static("server/discover"));
        let probe =
            self.upstream.send(adm, reqwest::Method::POST, &h, None, Some(Bytes::from(discover.to_string()))).await?;
        let ct = probe.headers().get("content-type").cloned();
        let bytes = self.upstream.read(probe, MAX_INITIALIZE_ANSWER).await?;
        let answer = answer_message(ct.as_ref(), &bytes);
        let modern_result = answer.as_ref().and_then(|a| a.get("result")).filter(|r| {
            r.get("supportedVersions")
                .and_then(Value::as_array)
                .is_some_and(|s| s.iter().any(|x| x.as_str().is_some_and(version::is_modern)))
        });
        let era = if let Some(r) = modern_result {
            let version = envelope::server_version(r).map(str::to_string);
            Era { modern: true, version, legacy: None, at: Instant::now() }
        } else {
            // Legacy: open the session this node will use for modern callers.
            let (sid, result) = self.open_legacy_session(adm).await?;
            let version = result.get("serverInfo").and_then(|i| i.get("version")?.as_str()).map(str::to_string);
            Era { modern: false, version, legacy: Some((sid, result)), at: Instant::now() }
        };
        self.eras.put(key, era.clone());
        Ok(era)
    }

    /// Opens a legacy session of joch's own with an upstream: initialize, then initialized.
    /// Returns the upstream's session id and its initialize result (an object).
    async fn open_legacy_session(&self, adm: &Admitted) -> Result<(Option<String>, Value), Failure> {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": version::LEGACY[0],
            "capabilities": {}, "clientInfo": {"name": "joch", "version": env!("CARGO_PKG_VERSION")}}});
        let mut lh = HeaderMap::new();
        lh.insert("content-type", HeaderValue::from_static("application/json"));
        lh.insert("accept", HeaderValue::from_static("application/json, text/event-stream"));
        let resp =
            self.upstream.send(adm, reqwest::Method::POST, &lh, None, Some(Bytes::from(init.to_string()))).await?;
        let sid = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        let ct = resp.headers().get("content-type").cloned();
        let bytes = self.upstream.read(resp, MAX_INITIALIZE_ANSWER).await?;
        let result = answer_message(ct.as_ref(), &bytes)
            .and_then(|a| a.get("result").cloned())
            .filter(Value::is_object)
            .ok_or_else(|| {
                UpstreamError::unavailable("the upstream answered neither server/discover nor initialize")
            })?;
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let _ = self
            .upstream
            .send(adm, reqwest::Method::POST, &legacy_headers(), sid.as_deref(), Some(Bytes::from(note.to_string())))
            .await;
        Ok((sid, result))
    }

    /// Sends a modern request to a modern upstream, with the routing headers for this server.
    pub(crate) async fn send_modern(
        &self,
        adm: &Admitted,
        msg: &Value,
        method: &str,
    ) -> Result<crate::proxy::upstream::http::Response, super::deny::Denial> {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("accept", HeaderValue::from_static("application/json, text/event-stream"));
        h.insert("mcp-protocol-version", HeaderValue::from_static(version::MODERN[0]));
        if let Ok(v) = HeaderValue::from_str(method) {
            h.insert("mcp-method", v);
        }
        let name = validate::name_key(method).and_then(|k| msg.get("params")?.get(k)?.as_str());
        if let Some(v) = name.and_then(|n| HeaderValue::from_str(n).ok()) {
            h.insert("mcp-name", v);
        }
        self.upstream
            .send(adm, reqwest::Method::POST, &h, None, Some(Bytes::from(msg.to_string())))
            .await
            .map_err(|e| e.deny(adm))
    }
}
