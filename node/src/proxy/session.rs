//! The legacy session path on `/mcp/{server}` (protocol versions 2025-03-26, 2025-06-18,
//! 2025-11-25): initialize (the answer read whole, so the upstream's version is checked against
//! the pin before the session is handed out), requests in the session, the session's server
//! stream (GET) and its end (DELETE). HTTP upstreams here; stdio children in
//! `stdio_bridge.rs`; modern-only upstreams through `modern/`. Sessions are sealed, so any node
//! continues one; a stdio session's requests are relayed to the node that owns it.

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;

use super::admission::{check_pin, Admitted, Call};
use super::exit::{Answer, Event, EventMap, Reply, Stream};
use super::request::Inbound;
use super::upstream::{answer_message, is_type};
use super::{Proxy, MAX_INITIALIZE_ANSWER, MAX_JSON_ANSWER};
use crate::cluster::now_ms;
use crate::mcp::session::{Sealer, SessionToken};
use crate::mcp::version;

/// A new session for this call, owned by this node.
pub(super) fn new_session(call: &Call, protocol_version: String) -> SessionToken {
    SessionToken {
        owner: call.node,
        server: call.server.clone(),
        upstream_session: None,
        upstream_version: None,
        protocol_version,
        caller: call.caller.principal(),
        created_ms: now_ms(),
        members: Vec::new(),
        upstream_modern: false,
    }
}

/// Seals `token` for the answer's `Mcp-Session-Id` and records it on the call.
pub(super) fn hand_out(call: &mut Call, sealer: &Sealer, token: SessionToken, answer: Answer) -> Reply {
    let id = sealer.seal(&token);
    call.session = Some(token);
    Reply { answer, session_id: Some(id) }
}

/// `params.protocolVersion` of an initialize request, if it names a legacy version.
pub(super) fn requested_version(call: &Call) -> Option<String> {
    let v = call.rpc.as_ref()?.value();
    v.get("params")?.get("protocolVersion")?.as_str().filter(|v| version::is_legacy(v)).map(str::to_string)
}

impl Proxy {
    /// initialize on `/mcp/{server}`.
    pub(super) async fn initialize(&self, call: &mut Call, inb: &Inbound) -> Reply {
        let adm = match self.gate.admit(call.clone()) {
            Ok(a) => a,
            Err(d) => return d.into(),
        };
        let sealer = match self.sealer(call) {
            Ok(s) => s,
            Err(d) => return d.into(),
        };
        if adm.is_stdio() {
            return self.stdio_initialize(call, &adm, &sealer).await;
        }
        let exchange = async {
            let resp =
                self.upstream.send(&adm, reqwest::Method::POST, &inb.headers, None, Some(inb.body.clone())).await;
            let resp = resp.map_err(|e| e.deny(&adm))?;
            let status = resp.status();
            let content_type = resp.headers().get("content-type").cloned();
            let sid = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
            let bytes = self.upstream.read(resp, MAX_INITIALIZE_ANSWER).await.map_err(|e| e.deny(&adm))?;
            Ok((status, content_type, sid, bytes))
        };
        let (status, content_type, upstream_session, bytes) = match adm.until_cut(exchange).await {
            Ok(Ok(x)) => x,
            Ok(Err(d)) | Err(d) => return d.into(),
        };
        if !status.is_success() {
            // A modern-only upstream refuses initialize with -32022: joch speaks its era for the caller.
            let refused = answer_message(content_type.as_ref(), &bytes)
                .and_then(|a| a["error"]["code"].as_i64())
                .is_some_and(|c| c == crate::mcp::jsonrpc::UNSUPPORTED_VERSION);
            if refused {
                if let Some(r) = self.initialize_via_modern(call, &adm, &sealer).await {
                    return r;
                }
            }
            return Answer::Upstream { status: status.as_u16(), content_type, body: bytes }.into();
        }
        let message = answer_message(content_type.as_ref(), &bytes);
        let result = message.as_ref().and_then(|m| m.get("result"));
        let upstream_version = result.and_then(|r| r.get("serverInfo")?.get("version")?.as_str()).map(str::to_string);
        let protocol_version =
            result.and_then(|r| r.get("protocolVersion")?.as_str()).unwrap_or(version::LEGACY_DEFAULT).to_string();
        if result.is_some() {
            if let Err(d) = check_pin(&adm, upstream_version.as_deref()) {
                // End the upstream session we will not hand out.
                if let Some(sid) = upstream_session {
                    let (up, adm, h) = (self.upstream.clone(), adm.clone(), inb.headers.clone());
                    tokio::spawn(async move {
                        let _ = up.send(&adm, reqwest::Method::DELETE, &h, Some(&sid), None).await;
                    });
                }
                return d.into();
            }
        }
        let token = SessionToken { upstream_session, upstream_version, ..new_session(call, protocol_version) };
        hand_out(call, &sealer, token, Answer::Upstream { status: status.as_u16(), content_type, body: bytes })
    }

    /// A message in a session of `/mcp/{server}`, up to its admission: relayed to the session's
    /// owner if its stdio child lives there (the owner admits, answers and counts it; a session's
    /// server stream and its buffer live there too), else admitted here.
    async fn admit_in_session(&self, call: &mut Call, inb: &Inbound, token: SessionToken) -> Result<Admitted, Reply> {
        let owner = token.owner;
        call.session = Some(token);
        if owner != self.node.id && self.is_stdio(&call.server) {
            return Err(self.forward_to_owner(call, owner, inb).await.into());
        }
        self.admit_call(call, &inb.headers).await.map_err(Reply::from)
    }

    /// A request in a session of `/mcp/{server}`.
    pub(super) async fn session_request(&self, call: &mut Call, inb: &Inbound, token: SessionToken) -> Reply {
        let upstream_modern = token.upstream_modern;
        let adm = match self.admit_in_session(call, inb, token).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        if upstream_modern {
            return adm.until_cut(self.legacy_to_modern(&adm)).await.unwrap_or_else(Answer::from).into();
        }
        if adm.is_stdio() {
            let key = inb.session_id().unwrap_or_default();
            if self.stdio.streams.ended(key) {
                return self.ended_session(call).into();
            }
            return adm.until_cut(self.stdio_request(&adm, key)).await.unwrap_or_else(Answer::from).into();
        }
        self.http_exchange(&adm, &inb.headers, inb.body.clone()).await.into()
    }

    /// A batch in a session (2025-03-26): only to an HTTP upstream, passed on as it is.
    pub(super) async fn session_batch(&self, call: &mut Call, inb: &Inbound, token: SessionToken) -> Reply {
        let upstream_modern = token.upstream_modern;
        let adm = match self.admit_in_session(call, inb, token).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        let refuse = |what: &str| {
            Answer::bad_request(
                crate::mcp::jsonrpc::INVALID_REQUEST,
                &format!("JSON-RPC batches are not bridged to {what}"),
                None,
            )
        };
        if adm.is_stdio() {
            return refuse("stdio servers").into();
        }
        if upstream_modern {
            return refuse("modern-only servers").into();
        }
        self.http_exchange(&adm, &inb.headers, inb.body.clone()).await.into()
    }

    /// POSTs a message in the session's upstream session and relays the answer, under the cut.
    async fn http_exchange(&self, adm: &Admitted, headers: &HeaderMap, body: Bytes) -> Answer {
        let sid = adm.call().session.as_ref().and_then(|t| t.upstream_session.clone());
        let id = Some(adm.call().id());
        let exchange = async {
            match self.upstream.send(adm, reqwest::Method::POST, headers, sid.as_deref(), Some(body)).await {
                Ok(resp) => self.relay(adm, resp, id).await,
                Err(e) => e.deny(adm).into(),
            }
        };
        adm.until_cut(exchange).await.unwrap_or_else(Answer::from)
    }

    /// GET (the session's server stream) and DELETE (its end) on `/mcp/{server}`.
    pub(super) async fn session_stream_or_delete(&self, call: &mut Call, inb: &Inbound, token: SessionToken) -> Reply {
        let (upstream_modern, upstream_session) = (token.upstream_modern, token.upstream_session.clone());
        let adm = match self.admit_in_session(call, inb, token).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        let get = inb.http_method == "GET";
        if adm.is_stdio() {
            let key = inb.session_id().unwrap_or_default();
            if self.stdio.streams.ended(key) {
                return self.ended_session(call).into();
            }
            if get {
                let events = self
                    .stdio
                    .streams
                    .queue(key, &call.server)
                    .open(inb.header("last-event-id"))
                    .take_while(|r| std::future::ready(r.is_ok()))
                    .filter_map(|r| std::future::ready(r.ok()))
                    .map(|bytes| Event { from: None, bytes });
                return Answer::Stream(Stream::events(events, None, adm.cut())).into();
            }
            let orphaned = self.stdio.streams.remove(key);
            self.stdio.unsubscribe(&adm, orphaned);
            return Answer::Status { status: StatusCode::OK, allow: None, upstream: false }.into();
        }
        if upstream_modern {
            // A modern-only upstream has no sessions: the session's stream is a listen to it,
            // and there is nothing to end but joch's own (stateless) session.
            if get {
                if let Some(a) = self.listen_as_session_stream(&adm).await {
                    return a.into();
                }
                return no_server_stream().into();
            }
            return Answer::Status { status: StatusCode::OK, allow: None, upstream: false }.into();
        }
        let method = if get { reqwest::Method::GET } else { reqwest::Method::DELETE };
        match self.upstream.send(&adm, method, &inb.headers, upstream_session.as_deref(), None).await {
            Ok(resp) => self.relay(&adm, resp, None).await.into(),
            Err(e) => e.deny(&adm).into(),
        }
    }

    /// Passes an upstream answer on: SSE event by event (cut when the call stops being
    /// admissible), JSON read whole.
    pub(super) async fn relay(
        &self,
        adm: &Admitted,
        resp: super::upstream::http::Response,
        request_id: Option<Value>,
    ) -> Answer {
        self.relay_with(adm, resp, request_id, None).await
    }

    /// [`Proxy::relay`], each SSE event rewritten by `transform` on its way.
    pub(super) async fn relay_with(
        &self,
        adm: &Admitted,
        resp: super::upstream::http::Response,
        request_id: Option<Value>,
        transform: Option<EventMap>,
    ) -> Answer {
        let status = resp.status();
        let content_type = resp.headers().get("content-type").cloned();
        if status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT {
            return Answer::Status { status, allow: None, upstream: true };
        }
        if is_type(content_type.as_ref(), "text/event-stream") && status.is_success() {
            let s = Stream::sse(resp.bytes_stream(), request_id, adm.cut());
            return Answer::Stream(match transform {
                Some(t) => s.map(t),
                None => s,
            });
        }
        match self.upstream.read(resp, MAX_JSON_ANSWER).await {
            Ok(body) => Answer::Upstream { status: status.as_u16(), content_type, body },
            Err(e) => e.deny(adm).into(),
        }
    }
}

/// 405 to a GET, as a server without a stream of its own answers.
pub(super) fn no_server_stream() -> Answer {
    Answer::Status { status: StatusCode::METHOD_NOT_ALLOWED, allow: Some("POST, DELETE"), upstream: false }
}
