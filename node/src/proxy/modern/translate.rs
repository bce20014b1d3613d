//! Era translation, both ways:
//! - a modern caller of a legacy-only HTTP upstream (through the legacy session this node holds
//!   with it) or of a stdio child: the envelope stripped, answers given the modern fields,
//!   progress relayed live; an upstream's server-to-client request during such a call is answered
//!   to the upstream with a reason (the caller's era has no such requests);
//! - a legacy caller (a session) of a modern-only upstream: joch answers initialize from the
//!   upstream's discover result, adds the envelope and headers to every request, and turns an
//!   `input_required` result it cannot translate into an error that says so.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};

use super::{era_key, legacy_headers, Era};
use crate::mcp::envelope;
use crate::mcp::jsonrpc;
use crate::mcp::session::{Sealer, SessionToken};
use crate::mcp::{sse, version};
use crate::proxy::admission::{check_pin, Admitted, Call};
use crate::proxy::deny::{Denial, Reason};
use crate::proxy::exit::{Answer, Event, EventMap, Reply, Stream};
use crate::proxy::session::{hand_out, new_session, requested_version};
use crate::proxy::upstream::http::Upstream;
use crate::proxy::upstream::stdio::Child;
use crate::proxy::upstream::{answer_message, is_type, Failure, UpstreamError};
use crate::proxy::{Proxy, MAX_JSON_ANSWER};

/// Sets a message's id (an answer is always an object here; anything else is left alone).
fn set_id(msg: &mut Value, id: Value) {
    if let Some(o) = msg.as_object_mut() {
        o.insert("id".into(), id);
    }
}

/// Gives a legacy answer's result the modern fields.
fn modernize_answer(answer: &mut Value, method: &str, server_info: &Value) {
    if let Some(result) = answer.get_mut("result") {
        *result = envelope::modernize(method, result.take(), server_info);
    }
}

impl Proxy {
    /// A modern request to a legacy peer: the HTTP upstream through this node's session with
    /// it, or this node's stdio child.
    pub(super) async fn translate_to_legacy(
        &self,
        adm: &Admitted,
        child: Option<Arc<Child>>,
        msg: Value,
        method: &str,
        era: Era,
    ) -> Answer {
        let id = adm.call().id();
        let Some((_, init)) = era.legacy.clone() else {
            return adm.deny(Reason::UpstreamUnavailable, "upstream", "no legacy session with the upstream").into();
        };
        let server_info = init.get("serverInfo").cloned().unwrap_or_else(|| json!({}));
        if method == "server/discover" {
            let result = envelope::modernize(
                method,
                json!({"supportedVersions": version::MODERN, "capabilities": init.get("capabilities").cloned().unwrap_or_else(|| json!({}))}),
                &server_info,
            );
            return Answer::Message(jsonrpc::result(id, result));
        }
        if method == "subscriptions/listen" {
            let events = match &child {
                Some(c) => Ok(self.child_listen_events(c.clone(), &msg, &id)),
                None => self.http_listen_events(adm, &msg, &id).await,
            };
            return match events {
                Ok(events) => {
                    let events = events.map(|bytes| Event { from: None, bytes });
                    Answer::Stream(Stream::events(events, Some(id), adm.cut()))
                }
                Err(a) => a,
            };
        }
        let wants_progress = adm.call().rpc.as_ref().is_some_and(|r| r.msg.params.meta.progress_token.is_some());
        if let (Some(c), true) = (&child, wants_progress) {
            return self.child_stream(adm, c, &init, msg, method);
        }
        if let (None, true) = (&child, wants_progress) {
            return self.http_legacy_stream(adm, &era, &init, msg, method).await;
        }
        match self.legacy_answer(adm, child, &era, msg, method).await {
            Ok(mut answer) => {
                set_id(&mut answer, id);
                Answer::Message(answer)
            }
            Err(f) => f.deny(adm).into(),
        }
    }

    /// A modern call that asked for progress, to a legacy-only HTTP upstream: its SSE answer is
    /// relayed event by event (progress as is), the final answer with the modern fields.
    async fn http_legacy_stream(
        &self,
        adm: &Admitted,
        era: &Era,
        init: &Value,
        mut msg: Value,
        method: &str,
    ) -> Answer {
        let sid = era.legacy.as_ref().and_then(|(sid, _)| sid.clone());
        envelope::strip(&mut msg);
        let id = adm.call().id();
        let resp = match self
            .upstream
            .send(adm, reqwest::Method::POST, &legacy_headers(), sid.as_deref(), Some(Bytes::from(msg.to_string())))
            .await
        {
            Ok(r) => r,
            Err(e) => return e.deny(adm).into(),
        };
        let is_sse = is_type(resp.headers().get("content-type"), "text/event-stream");
        let server_info = init.get("serverInfo").cloned().unwrap_or_else(|| json!({}));
        let method = method.to_string();
        if !is_sse || !resp.status().is_success() {
            let ct = resp.headers().get("content-type").cloned();
            let bytes = match self.upstream.read(resp, MAX_JSON_ANSWER).await {
                Ok(b) => b,
                Err(e) => return e.deny(adm).into(),
            };
            let Some(mut answer) = answer_message(ct.as_ref(), &bytes) else {
                return adm.deny(Reason::UpstreamUnavailable, "upstream", "the legacy upstream gave no answer").into();
            };
            modernize_answer(&mut answer, &method, &server_info);
            set_id(&mut answer, id);
            return Answer::Message(answer);
        }
        let answer_id = id.clone();
        let (up, upstream_adm) = (self.upstream.clone(), adm.clone());
        let transform: EventMap = Box::new(move |ev: Bytes| {
            let Some(mut v) = sse::json(&ev) else {
                return ev;
            };
            if v.get("method").is_some() && v.get("id").is_some() {
                refuse_upstream_request(&up, &upstream_adm, sid.clone(), &v);
                return Bytes::new();
            }
            if !v.is_object() || (v.get("result").is_none() && v.get("error").is_none()) {
                return ev;
            }
            modernize_answer(&mut v, &method, &server_info);
            set_id(&mut v, answer_id.clone());
            sse::message_event(&v.to_string())
        });
        Answer::Stream(Stream::sse(resp.bytes_stream(), Some(id), adm.cut()).map(transform))
    }

    /// A modern call to this node's stdio child that asked for progress: the child's progress
    /// notifications, then the answer (with the modern fields), as SSE events while they happen.
    fn child_stream(&self, adm: &Admitted, child: &Arc<Child>, init: &Value, mut msg: Value, method: &str) -> Answer {
        envelope::strip(&mut msg);
        let pending = match child.call(msg, &adm.call().exec.traceparent()) {
            Ok(p) => p,
            Err(e) => return e.deny(adm).into(),
        };
        let server_info = init.get("serverInfo").cloned().unwrap_or_else(|| json!({}));
        let method = method.to_string();
        let id = adm.call().id();
        let answer_id = id.clone();
        let events = pending.into_stream().map(move |mut v: Value| {
            if v.get("result").is_some() {
                modernize_answer(&mut v, &method, &server_info);
                set_id(&mut v, answer_id.clone());
            }
            Event { from: None, bytes: sse::message_event(&v.to_string()) }
        });
        Answer::Stream(Stream::events(events, Some(id), adm.cut()))
    }

    /// A modern request to a legacy peer (an HTTP upstream through this node's session, or the
    /// stdio child): the envelope is stripped, the answer gets the modern fields.
    pub(super) async fn legacy_answer(
        &self,
        adm: &Admitted,
        child: Option<Arc<Child>>,
        era: &Era,
        mut msg: Value,
        method: &str,
    ) -> Result<Value, Failure> {
        let (sid, init) =
            era.legacy.clone().ok_or_else(|| UpstreamError::unavailable("no legacy session with the upstream"))?;
        envelope::strip(&mut msg);
        let mut answer = match child {
            Some(c) => child_answer(&c, msg, &adm.call().exec.traceparent()).await?,
            None => self.http_legacy_answer(adm, sid.as_deref(), msg).await?,
        };
        modernize_answer(&mut answer, method, init.get("serverInfo").unwrap_or(&Value::Null));
        Ok(answer)
    }

    /// One request to a legacy-only HTTP upstream on this node's session with it.
    async fn http_legacy_answer(&self, adm: &Admitted, sid: Option<&str>, msg: Value) -> Result<Value, Failure> {
        let resp = self
            .upstream
            .send(adm, reqwest::Method::POST, &legacy_headers(), sid, Some(Bytes::from(msg.to_string())))
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            // The upstream ended our session (restarted?): the next request starts a new one.
            self.eras.forget(&era_key(adm));
        }
        let ct = resp.headers().get("content-type").cloned();
        if is_type(ct.as_ref(), "text/event-stream") && resp.status().is_success() {
            // Event by event: a server-to-client request on the way is refused (the caller
            // cannot receive it), so the upstream is not left waiting for an answer.
            let mut events = std::pin::pin!(sse::events(resp.bytes_stream()));
            while let Some(ev) = events.next().await {
                let Some(v) = sse::json(&ev) else {
                    continue;
                };
                if v.is_object() && (v.get("result").is_some() || v.get("error").is_some()) {
                    return Ok(v);
                }
                if v.get("method").is_some() && v.get("id").is_some() {
                    refuse_upstream_request(&self.upstream, adm, sid.map(str::to_string), &v);
                }
            }
            return Err(UpstreamError::unavailable("the legacy upstream gave no answer").into());
        }
        let bytes = self.upstream.read(resp, MAX_JSON_ANSWER).await?;
        Ok(answer_message(ct.as_ref(), &bytes)
            .ok_or_else(|| UpstreamError::unavailable("the legacy upstream gave no answer"))?)
    }

    /// A modern request to one server, answered in the modern shape whatever the server's era:
    /// passed through to a modern upstream (routing headers set for this server), translated for
    /// a legacy-only or stdio one. The pin is checked against the version this node knows.
    pub(crate) async fn member_answer(&self, adm: &Admitted, msg: Value, method: &str) -> Result<Value, Denial> {
        let (era, child) = self.resolve_era(adm).await.map_err(|e| e.deny(adm))?;
        check_pin(adm, era.version.as_deref())?;
        if era.modern {
            let resp = self.send_modern(adm, &msg, method).await?;
            let ct = resp.headers().get("content-type").cloned();
            let bytes = self.upstream.read(resp, MAX_JSON_ANSWER).await.map_err(|e| e.deny(adm))?;
            return answer_message(ct.as_ref(), &bytes)
                .ok_or_else(|| adm.deny(Reason::UpstreamUnavailable, "upstream", "no JSON-RPC answer"));
        }
        self.legacy_answer(adm, child, &era, msg, method).await.map_err(|e| e.deny(adm))
    }

    /// A modern request to one server that asked for progress: the answer streams (SSE) in the
    /// modern shape whatever the server's era, cut if the server stops being admissible. For a
    /// `legacy_caller` (a legacy session of a modern-only server) an `input_required` answer
    /// becomes an error that says why.
    pub(crate) async fn member_stream(&self, adm: &Admitted, msg: Value, method: &str, legacy_caller: bool) -> Answer {
        let id = adm.call().id();
        let exchange = async {
            let (era, child) = self.resolve_era(adm).await.map_err(|e| e.deny(adm))?;
            check_pin(adm, era.version.as_deref())?;
            if !era.modern {
                return Ok(self.translate_to_legacy(adm, child, msg, method, era).await);
            }
            let resp = self.send_modern(adm, &msg, method).await?;
            if !legacy_caller {
                return Ok(self.relay(adm, resp, Some(id.clone())).await);
            }
            let transform: EventMap = Box::new(|ev: Bytes| match sse::json(&ev) {
                Some(mut v) if v["result"]["resultType"] == "input_required" => {
                    input_required_for_legacy(&mut v);
                    sse::message_event(&v.to_string())
                }
                _ => ev,
            });
            Ok::<_, Denial>(self.relay_with(adm, resp, Some(id.clone()), Some(transform)).await)
        };
        match adm.until_cut(exchange).await {
            Ok(Ok(a)) => a,
            Ok(Err(d)) | Err(d) => d.into(),
        }
    }

    /// initialize for a modern-only upstream: answered by joch from the upstream's discover
    /// result (pin checked); the session is marked so its requests are translated. `None` when
    /// the upstream turns out not to be modern after all.
    pub(crate) async fn initialize_via_modern(
        &self,
        call: &mut Call,
        adm: &Admitted,
        sealer: &Sealer,
    ) -> Option<Reply> {
        self.eras.forget(&era_key(adm));
        let (era, _) = self.resolve_era(adm).await.ok()?;
        if !era.modern {
            return None;
        }
        let discover = json!({"jsonrpc": "2.0", "id": 0, "method": "server/discover", "params": {"_meta": envelope::joch_envelope()}});
        let answer = match self.member_answer(adm, discover, "server/discover").await {
            Ok(a) => a,
            Err(d) => return Some(d.into()),
        };
        let found = answer.get("result").cloned().unwrap_or(Value::Null);
        let server_info = envelope::server_info(&found);
        let requested = requested_version(call).unwrap_or_else(|| version::LEGACY[0].to_string());
        let token = SessionToken {
            upstream_version: server_info.get("version").and_then(Value::as_str).map(str::to_string),
            upstream_modern: true,
            ..new_session(call, requested.clone())
        };
        let capabilities = found.get("capabilities").cloned().unwrap_or_else(|| json!({}));
        let result = json!({"protocolVersion": requested, "capabilities": capabilities, "serverInfo": server_info});
        Some(hand_out(call, sealer, token, Answer::Message(jsonrpc::result(call.id(), result))))
    }

    /// A request of a legacy session whose upstream speaks only the modern era: the envelope is
    /// added and the routing headers set; the answer goes back whole (or as it streams, when the
    /// caller asked for progress).
    pub(crate) async fn legacy_to_modern(&self, adm: &Admitted) -> Answer {
        let call = adm.call();
        let Some(rpc) = call.rpc.clone() else {
            return Answer::bad_request(
                jsonrpc::INVALID_REQUEST,
                "JSON-RPC batches are not bridged to modern-only servers",
                None,
            );
        };
        let Some(method) = rpc.msg.method.clone() else {
            return Answer::accepted(false);
        };
        let id = call.id();
        if !rpc.msg.is_request() {
            // initialized (joch already spoke for the caller), progress, roots, cancellations.
            return Answer::accepted(false);
        }
        if method == "ping" {
            return Answer::Own(jsonrpc::result(id, json!({})));
        }
        if super::validate::REMOVED.contains(&method.as_str()) {
            return Answer::Own(jsonrpc::error(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                &format!("{method} does not exist for this server (it speaks only the modern era)"),
                None,
            ));
        }
        let mut msg = rpc.value();
        envelope::add(&mut msg);
        if rpc.msg.params.meta.progress_token.is_some() {
            // Asked for progress: the upstream's SSE answer is relayed event by event (the
            // caller's id and token are the ones in the request, so events pass as they are).
            return self.member_stream(adm, msg, &method, true).await;
        }
        match self.member_answer(adm, msg, &method).await {
            Ok(mut answer) => {
                set_id(&mut answer, id);
                input_required_for_legacy(&mut answer);
                Answer::Message(answer)
            }
            Err(d) => d.into(),
        }
    }
}

/// One request to this node's stdio child (progress notifications are not bridged here).
async fn child_answer(child: &Arc<Child>, msg: Value, traceparent: &str) -> Result<Value, Failure> {
    let pending = child.call(msg, traceparent)?;
    Ok(pending
        .answer()
        .await
        .ok_or_else(|| UpstreamError::unavailable("the stdio server ended the call without an answer"))?)
}

/// Answers a legacy upstream's server-to-client request (elicitation, sampling, roots) that
/// arrived during a modern caller's call: the caller's era has no such requests (it has
/// `input_required` results, which joch does not translate them into yet), so the upstream gets
/// a clear error instead of waiting for an answer that cannot come.
fn refuse_upstream_request(up: &Upstream, adm: &Admitted, sid: Option<String>, request: &Value) {
    let method = request.get("method").and_then(Value::as_str).unwrap_or_default();
    let answer = jsonrpc::error(
        request.get("id").cloned().unwrap_or(Value::Null),
        jsonrpc::METHOD_NOT_FOUND,
        &format!(
            "{method} cannot reach this caller through joch: it speaks the {} era, and joch does not translate \
             server-to-client requests into input_required results yet",
            version::MODERN[0]
        ),
        None,
    );
    let (up, adm) = (up.clone(), adm.clone());
    tokio::spawn(async move {
        let _ = up
            .send(&adm, reqwest::Method::POST, &legacy_headers(), sid.as_deref(), Some(Bytes::from(answer.to_string())))
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

/// joch's own session with an upstream (a listen's), ended (DELETE) when dropped, if the server
/// is still admissible then.
pub(super) struct UpstreamSession {
    pub(super) adm: Admitted,
    pub(super) upstream: Upstream,
    pub(super) sid: Option<String>,
}

impl Drop for UpstreamSession {
    fn drop(&mut self) {
        let Some(sid) = self.sid.take() else { return };
        let (up, adm) = (self.upstream.clone(), self.adm.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                // `send` re-validates: a server quarantined meanwhile hears nothing more from us.
                let _ = up.send(&adm, reqwest::Method::DELETE, &legacy_headers(), Some(&sid), None).await;
            });
        }
    }
}
