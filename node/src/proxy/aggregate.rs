//! The aggregate endpoint `/mcp`: every server the caller may use, behind one session. Tools and
//! prompts are named `server.name`, resources `joch+server:URI` (and `server.name`), stable and
//! never rewritten when servers come and go. Lists fan out to every member and merge; a member
//! that fails or is quarantined drops out alone. Calls are routed back by the prefix.

use std::time::Duration;

use futures::StreamExt;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use joch_raft_store::model::resource::Transport;
use joch_raft_store::ServerRecord;
use serde_json::{json, Value};

use super::deny::{protocol_error, Reason};
use super::modern;
use super::pipeline::{admit, check_pin, stale, Call, Outcome};
use super::{
    answer_message, bad_request, denied, hand_out, header, is_type, new_session, read_limited, rejected, Proxy,
    MAX_INITIALIZE_ANSWER, MAX_JSON_ANSWER,
};
use crate::mcp::jsonrpc::{self, Body as RpcBody};
use crate::mcp::session::{Member, SessionToken};
use crate::mcp::sse;
use crate::mcp::version;

/// Longest a member may take to answer initialize or a list.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(10);
/// Resource URIs are wrapped as `joch+SERVER:URI`.
const URI_PREFIX: &str = "joch+";
/// Ids of members' server-to-client requests are wrapped as `joch:SERVER:ID`.
const REQUEST_ID_PREFIX: &str = "joch:";

/// The list methods and the key of their items.
fn list_key(method: &str) -> Option<&'static str> {
    match method {
        "tools/list" => Some("tools"),
        "prompts/list" => Some("prompts"),
        "resources/list" => Some("resources"),
        "resources/templates/list" => Some("resourceTemplates"),
        _ => None,
    }
}

fn ok(id: Value, result: Value) -> (Response, Outcome) {
    let body = json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string();
    (([("content-type", "application/json")], body).into_response(), Outcome::Forwarded { status: 200 })
}

/// Splits `server.name` (prompts, tools) or `joch+server:uri` (resources).
fn route(method: &str, params: &Value) -> Option<(String, &'static str, String)> {
    match method {
        "tools/call" | "prompts/get" => {
            let (s, n) = params["name"].as_str()?.split_once('.')?;
            Some((s.to_string(), "/name", n.to_string()))
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            let (s, u) = params["uri"].as_str()?.strip_prefix(URI_PREFIX)?.split_once(':')?;
            Some((s.to_string(), "/uri", u.to_string()))
        }
        _ => None,
    }
}

/// The key of an aggregate session's stdio member in its owner's server streams.
fn member_key(session_id: &str, server: &str) -> String {
    format!("{session_id}#{server}")
}

/// A member's server-to-client request carries its id as `joch:SERVER:ID` (ID as JSON) on the
/// aggregate session, so the agent's answer is routed back to the member that asked.
fn wrap_request_id(server: &str, id: &Value) -> Value {
    json!(format!("{REQUEST_ID_PREFIX}{server}:{id}"))
}

/// The member and its own id, from an answer the agent sent on the aggregate session.
fn unwrap_request_id(id: &Value) -> Option<(String, Value)> {
    let (server, inner) = id.as_str()?.strip_prefix(REQUEST_ID_PREFIX)?.split_once(':')?;
    Some((server.to_string(), serde_json::from_str(inner).ok()?))
}

/// A member's message as the aggregate session sees it: the id of a server-to-client request
/// wrapped, resource URIs in updates wrapped. Answers (a POST stream's own) pass unchanged.
fn member_event(server: &str, ev: &[u8]) -> Option<Bytes> {
    member_message(server, sse::json(ev)?)
}

/// [`member_event`] for a message already parsed.
fn member_message(server: &str, mut v: Value) -> Option<Bytes> {
    if !v.is_object() {
        return None;
    }
    if v.get("method").is_some() {
        if let Some(id) = v.get("id").filter(|id| !id.is_null()) {
            v["id"] = wrap_request_id(server, id);
        }
    }
    if v["method"] == "notifications/resources/updated" {
        if let Some(u) = v["params"]["uri"].as_str() {
            v["params"]["uri"] = json!(format!("{URI_PREFIX}{server}:{u}"));
        }
    }
    Some(sse::message_event(&v.to_string()))
}

/// Renames one list item for the aggregate view.
fn rename(server: &str, key: &str, mut item: Value) -> Value {
    if let Some(n) = item["name"].as_str() {
        item["name"] = json!(format!("{server}.{n}"));
    }
    let uri_field = if key == "resourceTemplates" { "uriTemplate" } else { "uri" };
    if let Some(u) = item[uri_field].as_str() {
        item[uri_field] = json!(format!("{URI_PREFIX}{server}:{u}"));
    }
    item
}

impl Proxy {
    fn member_call(&self, call: &Call, token: &SessionToken, m: &Member) -> Call {
        let mut c = call.clone();
        c.server = m.server.clone();
        c.session = Some(SessionToken {
            server: m.server.clone(),
            upstream_session: m.upstream_session.clone(),
            upstream_version: m.upstream_version.clone(),
            members: Vec::new(),
            upstream_modern: false,
            ..token.clone()
        });
        c
    }

    /// POSTs a message to a member's HTTP upstream, in the member's own session.
    async fn member_post(
        &self,
        rec: &ServerRecord,
        m: &Member,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<reqwest::Response, super::upstream::UpstreamError> {
        let url = Self::upstream_url(rec);
        self.upstream.send(reqwest::Method::POST, &url, headers, m.upstream_session.as_deref(), Some(body)).await
    }

    /// Sends one JSON-RPC message to a member's upstream (HTTP) and returns its answer message.
    async fn member_exchange(
        &self,
        rec: &ServerRecord,
        m: &Member,
        headers: &HeaderMap,
        msg: &Value,
    ) -> Result<Value, String> {
        if rec.spec.transport == Transport::Stdio {
            let child = self.stdio.child(rec).await.map_err(|e| e.message)?;
            let mut rx = child.call(msg.clone()).map_err(|e| e.message)?;
            while let Some(v) =
                tokio::time::timeout(MEMBER_TIMEOUT, rx.recv()).await.map_err(|_| "timed out".to_string())?
            {
                if v.get("result").is_some() || v.get("error").is_some() {
                    return Ok(v);
                }
            }
            return Err("the stdio server ended the call without an answer".into());
        }
        let resp =
            tokio::time::timeout(MEMBER_TIMEOUT, self.member_post(rec, m, headers, Bytes::from(msg.to_string())))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.message)?;
        let ct = resp.headers().get("content-type").cloned();
        let bytes = read_limited(resp, MAX_JSON_ANSWER).await?;
        answer_message(ct.as_ref(), &bytes).ok_or_else(|| "no JSON-RPC answer".to_string())
    }

    /// initialize on `/mcp`: initializes every usable server in parallel; those that fail drop out.
    pub(super) async fn aggregate_initialize(
        &self,
        call: &mut Call,
        headers: &HeaderMap,
        body: &Bytes,
        id: Value,
    ) -> (Response, Outcome) {
        let sealer = match self.sealer(call) {
            Ok(s) => s,
            Err(d) => return denied(d.with_id(id)),
        };
        if let Err(why) = self.cluster.is_ready() {
            return denied(stale(&Call { server: "*".into(), ..call.clone() }, &why).with_id(id));
        }
        let requested: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let protocol_version = requested["params"]["protocolVersion"]
            .as_str()
            .filter(|v| version::is_legacy(v))
            .unwrap_or(version::LEGACY[0])
            .to_string();
        let state = self.cluster.registry.load();
        let candidates: Vec<_> = state
            .registry
            .servers
            .keys()
            .filter_map(|name| {
                let c = Call { server: name.clone(), ..call.clone() };
                admit(&c, &state, Ok(())).ok()
            })
            .collect();
        let base: &Call = call;
        let pv: &str = &protocol_version;
        let inits = candidates.iter().map(|rec| async move {
            let c = Call { server: rec.name.clone(), ..base.clone() };
            let msg = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": pv, "capabilities": {},
                "clientInfo": {"name": "joch-aggregate", "version": env!("CARGO_PKG_VERSION")}}});
            let r: Result<Member, String> = async {
                let (sid, version) = if rec.spec.transport == Transport::Stdio {
                    let child = self.stdio.child(rec).await.map_err(|e| e.message)?;
                    (None, child.version().map(str::to_string))
                } else {
                    let resp = tokio::time::timeout(
                        MEMBER_TIMEOUT,
                        self.upstream.send(
                            reqwest::Method::POST,
                            &Self::upstream_url(rec),
                            headers,
                            None,
                            Some(Bytes::from(msg.to_string())),
                        ),
                    )
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.message)?;
                    let sid = header(resp.headers(), "mcp-session-id").map(str::to_string);
                    let ct = resp.headers().get("content-type").cloned();
                    let bytes = read_limited(resp, MAX_INITIALIZE_ANSWER).await?;
                    let answer = answer_message(ct.as_ref(), &bytes).ok_or("no initialize answer")?;
                    let version = answer["result"]["serverInfo"]["version"].as_str().map(str::to_string);
                    (sid, version)
                };
                check_pin(&c, rec, version.as_deref()).map_err(|d| d.message)?;
                Ok(Member { server: rec.name.clone(), upstream_session: sid, upstream_version: version })
            }
            .await;
            if let Err(e) = &r {
                tracing::warn!(server = %rec.name, error = %e, "aggregate session: server left out");
            }
            r.ok()
        });
        let members: Vec<Member> = futures::future::join_all(inits).await.into_iter().flatten().collect();
        // initialized, to every HTTP member (the stdio children had theirs from joch).
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let notes = members.iter().filter_map(|m| {
            let rec = state.registry.servers.get(&m.server)?;
            (rec.spec.transport != Transport::Stdio).then(|| {
                let mut h = headers.clone();
                if let Ok(v) = HeaderValue::from_str(&protocol_version) {
                    h.insert("mcp-protocol-version", v);
                }
                let (up, url, sid, body) = (
                    self.upstream.clone(),
                    Self::upstream_url(rec),
                    m.upstream_session.clone(),
                    Bytes::from(note.to_string()),
                );
                async move {
                    let _ = up.send(reqwest::Method::POST, &url, &h, sid.as_deref(), Some(body)).await;
                }
            })
        });
        futures::future::join_all(notes).await;
        let names: Vec<String> = members.iter().map(|m| m.server.clone()).collect();
        let token = SessionToken { members, ..new_session(call, protocol_version.clone()) };
        let (mut resp, outcome) = ok(
            id,
            json!({"protocolVersion": protocol_version,
                   "capabilities": {"tools": {"listChanged": true}, "prompts": {"listChanged": true}, "resources": {"listChanged": true}},
                   "serverInfo": {"name": "joch", "version": env!("CARGO_PKG_VERSION")},
                   "instructions": format!("joch aggregate endpoint over: {}. Tools and prompts are named SERVER.NAME.", names.join(", "))}),
        );
        hand_out(call, &sealer, token, &mut resp);
        (resp, outcome)
    }

    /// GET on `/mcp`: one stream merging every member's own messages (their sessions' streams
    /// upstream, the stdio children's routed notifications); a member that stops being
    /// admissible drops out of it alone. DELETE: ends every member's session. With a stdio
    /// member both happen on the session's owner (its children's messages are routed there).
    pub(super) async fn aggregate_stream_or_delete(
        &self,
        call: &mut Call,
        headers: &HeaderMap,
        method: reqwest::Method,
    ) -> (Response, Outcome) {
        let token = match self.check_origin(call, headers).and_then(|()| self.session(call, headers)) {
            Ok(t) => t,
            Err(d) => return denied(d),
        };
        let sid = header(headers, "mcp-session-id").unwrap_or_default().to_string();
        let state = self.cluster.registry.load();
        let stdio =
            |m: &Member| state.registry.servers.get(&m.server).is_some_and(|r| r.spec.transport == Transport::Stdio);
        call.session = Some(token.clone());
        if token.owner != self.cluster.id && token.members.iter().any(stdio) {
            return self.forward_to_owner(call, token.owner, headers, Bytes::new(), Value::Null).await;
        }
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("text/event-stream"));
        if let Ok(v) = HeaderValue::from_str(&token.protocol_version) {
            h.insert("mcp-protocol-version", v);
        }
        let (h, sid, state, base, token) = (&h, sid.as_str(), &state, &*call, &token);
        if method == reqwest::Method::DELETE {
            let ends = token.members.iter().map(|m| async move {
                let Some(rec) = state.registry.servers.get(&m.server) else { return };
                if rec.spec.transport == Transport::Stdio {
                    let orphaned = self.stdio.streams.remove(&member_key(sid, &m.server));
                    self.stdio.unsubscribe(rec, orphaned);
                } else if let Some(us) = m.upstream_session.as_deref() {
                    let url = Self::upstream_url(rec);
                    let _ = self.upstream.send(reqwest::Method::DELETE, &url, h, Some(us), None).await;
                }
            });
            futures::future::join_all(ends).await;
            return (StatusCode::OK.into_response(), Outcome::Forwarded { status: 200 });
        }
        let opens = token.members.iter().map(|m| async move {
            let mc = self.member_call(base, token, m);
            let rec = admit(&mc, state, Ok(())).ok()?;
            let events: futures::stream::BoxStream<'static, Bytes> = if rec.spec.transport == Transport::Stdio {
                let queue = self.stdio.streams.queue(&member_key(sid, &m.server), &m.server);
                Box::pin(
                    queue
                        .open(None)
                        .take_while(|r| std::future::ready(r.is_ok()))
                        .filter_map(|r| std::future::ready(r.ok())),
                )
            } else {
                let us = m.upstream_session.as_deref();
                let resp =
                    self.upstream.send(reqwest::Method::GET, &Self::upstream_url(&rec), h, us, None).await.ok()?;
                if !resp.status().is_success() || !is_type(resp.headers().get("content-type"), "text/event-stream") {
                    return None;
                }
                Box::pin(sse::events(resp.bytes_stream()))
            };
            let server = m.server.clone();
            let member = events
                .filter_map(move |ev| std::future::ready(member_event(&server, &ev)))
                .map(Ok::<_, std::convert::Infallible>)
                .take_until(self.inadmissible(&mc));
            Some(Box::pin(member) as futures::stream::BoxStream<'static, Result<Bytes, std::convert::Infallible>>)
        });
        let members: Vec<_> = futures::future::join_all(opens).await.into_iter().flatten().collect();
        if members.is_empty() {
            return super::no_server_stream();
        }
        (self.stream(call, futures::stream::select_all(members), None, None), Outcome::Forwarded { status: 200 })
    }

    /// Any other message on `/mcp`.
    pub(super) async fn aggregate_request(
        &self,
        call: &mut Call,
        headers: &HeaderMap,
        body: Bytes,
        parsed: &RpcBody,
        token: SessionToken,
        id: Value,
    ) -> (Response, Outcome) {
        let RpcBody::Single(m) = parsed else {
            return bad_request(
                jsonrpc::INVALID_REQUEST,
                "JSON-RPC batches are not accepted on the aggregate endpoint",
                None,
            );
        };
        let Some(method) = m.method.clone() else {
            return self.aggregate_answer(call, headers, &body, &token, m.id_value()).await;
        };
        if !m.is_request() {
            // initialized was sent to every member at initialize; other notifications stay here.
            return (StatusCode::ACCEPTED.into_response(), Outcome::Forwarded { status: 202 });
        }
        if method == "ping" {
            return ok(id, json!({}));
        }
        let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let state = self.cluster.registry.load();
        if let Some(key) = list_key(&method) {
            let lease = self.cluster.is_ready();
            if let Err(why) = lease {
                return denied(stale(&Call { server: "*".into(), ..call.clone() }, &why).with_id(id));
            }
            let mut request = msg.clone();
            if let Some(p) = request.get_mut("params").and_then(Value::as_object_mut) {
                p.remove("cursor");
            }
            let (base, method_name): (&Call, &str) = (call, &method);
            let fetches = token.members.iter().map(|mem| {
                let mc = self.member_call(base, &token, mem);
                let state = &state;
                let request = &request;
                async move {
                    let rec = admit(&mc, state, Ok(())).ok()?;
                    match self.member_exchange(&rec, mem, headers, request).await {
                        Ok(a) => Some((mem.server.clone(), a)),
                        Err(e) => {
                            tracing::warn!(server = %mem.server, error = %e, method = method_name, "aggregate list: server left out");
                            None
                        }
                    }
                }
            });
            let mut items = Vec::new();
            for (server, answer) in futures::future::join_all(fetches).await.into_iter().flatten() {
                for item in answer["result"][key].as_array().cloned().unwrap_or_default() {
                    items.push(rename(&server, key, item));
                }
            }
            return ok(id, json!({ key: items }));
        }
        let Some((server, field, inner)) = msg.get("params").and_then(|p| route(&method, p)) else {
            return ok_error(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                &format!("{method} is not available on the aggregate endpoint (names are SERVER.NAME)"),
            );
        };
        let Some(member) = token.members.iter().find(|mm| mm.server == server) else {
            return denied(
                self.deny(
                    &Call { server: server.clone(), ..call.clone() },
                    Reason::ServerNotRegistered,
                    "aggregate.members",
                    format!("MCP server {server:?} is not part of this session (re-initialize to pick up new servers)"),
                )
                .with_id(id),
            );
        };
        let mc = self.member_call(call, &token, member);
        call.target = Some(inner.clone());
        let rec = match admit(&mc, &state, self.cluster.is_ready()) {
            Ok(r) => r,
            Err(d) => return denied(d.with_id(id)),
        };
        let mut routed = msg.clone();
        if let Some(slot) = routed.pointer_mut(&format!("/params{field}")) {
            *slot = json!(inner);
        }
        let routed_body = Bytes::from(routed.to_string());
        if rec.spec.transport == Transport::Stdio {
            if token.owner != self.cluster.id {
                return self.forward_to_owner(call, token.owner, headers, body, id).await;
            }
            let key = member_key(header(headers, "mcp-session-id").unwrap_or_default(), &server);
            if self.stdio.streams.ended(&key) {
                return denied(self.ended_session(call).with_id(id));
            }
            let Ok(routed_parsed) = jsonrpc::parse(&routed_body, self.limits.max_json_depth) else {
                return rejected(protocol_error(
                    StatusCode::BAD_REQUEST,
                    id,
                    jsonrpc::INVALID_REQUEST,
                    "invalid request",
                    None,
                ));
            };
            return self.stdio_request(&mc, &rec, &routed_body, &routed_parsed, id, &key).await;
        }
        let resp = match self.member_post(&rec, member, headers, routed_body).await {
            Ok(r) => r,
            Err(e) => return denied(self.deny(&mc, e.reason, "upstream", e.message).with_id(id)),
        };
        let server = mc.server.clone();
        let transform: super::EventMap = Box::new(move |ev: Bytes| member_event(&server, &ev).unwrap_or(ev));
        self.relay_with(&mc, resp, Some(id), Some(transform)).await
    }

    /// The agent's answer to a member's server-to-client request (elicitation, sampling, roots):
    /// sent to the member that asked, with its own id, in its own session.
    async fn aggregate_answer(
        &self,
        call: &mut Call,
        headers: &HeaderMap,
        body: &Bytes,
        token: &SessionToken,
        id: Value,
    ) -> (Response, Outcome) {
        let Some((server, inner)) = unwrap_request_id(&id) else {
            return bad_request(jsonrpc::INVALID_REQUEST, "an answer to no request of this session", None);
        };
        let Some(member) = token.members.iter().find(|m| m.server == server) else {
            return bad_request(jsonrpc::INVALID_REQUEST, &format!("{server:?} is not part of this session"), None);
        };
        let mc = self.member_call(call, token, member);
        let rec = match admit(&mc, &self.cluster.registry.load(), self.cluster.is_ready()) {
            Ok(r) => r,
            Err(d) => return denied(d),
        };
        if rec.spec.transport == Transport::Stdio {
            // joch answers a stdio child's requests itself (see stdio.rs): nothing waits for this.
            return (StatusCode::ACCEPTED.into_response(), Outcome::Forwarded { status: 202 });
        }
        let mut answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        answer["id"] = inner;
        let resp = match self.member_post(&rec, member, headers, Bytes::from(answer.to_string())).await {
            Ok(r) => r,
            Err(e) => return denied(self.deny(&mc, e.reason, "upstream", e.message)),
        };
        self.relay(&mc, resp, None).await
    }
}

impl Proxy {
    /// A modern-era (stateless) message on `/mcp`: discover is answered by joch; lists fan out to
    /// every usable server, each in its own era; calls are routed back by the prefix.
    pub(super) async fn aggregate_modern(
        &self,
        call: &mut Call,
        headers: &HeaderMap,
        body: &Bytes,
        m: &jsonrpc::Message,
        id: Value,
    ) -> (Response, Outcome) {
        let (method, msg) = match modern::preamble(m, body, headers, &id) {
            Ok(x) => x,
            Err(r) => return *r,
        };
        if !m.is_request() {
            return (StatusCode::ACCEPTED.into_response(), Outcome::Forwarded { status: 202 });
        }
        if let Err(why) = self.cluster.is_ready() {
            return denied(stale(&Call { server: "*".into(), ..call.clone() }, &why).with_id(id));
        }
        let joch_info = json!({"name": "joch", "version": env!("CARGO_PKG_VERSION")});
        let state = self.cluster.registry.load();
        if method == "server/discover" {
            let result = modern::modernize(
                &method,
                json!({"supportedVersions": version::MODERN,
                       "capabilities": {"tools": {"listChanged": true}, "prompts": {"listChanged": true}, "resources": {"listChanged": true}}}),
                &joch_info,
            );
            return modern::json_answer(&json!({"jsonrpc": "2.0", "id": id, "result": result}));
        }
        if let Some(key) = list_key(&method) {
            let base: &Call = call;
            let (msg_ref, method_ref, state_ref) = (&msg, method.as_str(), &state);
            let fetches = state.registry.servers.keys().map(|name| async move {
                let mc = Call { server: name.clone(), ..base.clone() };
                let rec = admit(&mc, state_ref, Ok(())).ok()?;
                match self.member_answer(&mc, &rec, msg_ref.clone(), method_ref).await {
                    Ok(a) => Some((name.clone(), a)),
                    Err(d) => {
                        tracing::warn!(server = %name, reason = d.reason.as_str(), error = %d.message, method = method_ref, "aggregate list: server left out");
                        None
                    }
                }
            });
            let mut items = Vec::new();
            for (server, answer) in futures::future::join_all(fetches).await.into_iter().flatten() {
                for item in answer["result"][key].as_array().cloned().unwrap_or_default() {
                    items.push(rename(&server, key, item));
                }
            }
            let result = modern::modernize(&method, json!({ key: items }), &joch_info);
            return modern::json_answer(&json!({"jsonrpc": "2.0", "id": id, "result": result}));
        }
        if method == "subscriptions/listen" {
            return self.aggregate_listen(call, &state, msg, id).await;
        }
        let Some((server, field, inner)) = msg.get("params").and_then(|p| route(&method, p)) else {
            return ok_error(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                &format!("{method} is not available on the aggregate endpoint (names are SERVER.NAME)"),
            );
        };
        let mc = Call { server: server.clone(), target: Some(inner.clone()), ..call.clone() };
        call.target = Some(inner.clone());
        let rec = match admit(&mc, &state, Ok(())) {
            Ok(r) => r,
            Err(d) => return denied(d.with_id(id)),
        };
        let mut routed = msg.clone();
        if let Some(slot) = routed.pointer_mut(&format!("/params{field}")) {
            *slot = json!(inner);
        }
        if routed.pointer("/params/_meta/progressToken").is_some() {
            // Asked for progress: streamed as on `/mcp/{server}` (the names in a call's progress
            // and answer need no renaming).
            return self.member_stream(&mc, &rec, routed, &method, id, false).await;
        }
        let exchange = self.member_answer(&mc, &rec, routed, &method);
        match self.until_cut(&mc, exchange).await {
            Ok(Ok(mut answer)) => {
                answer["id"] = id;
                modern::json_answer(&answer)
            }
            Ok(Err(d)) | Err(d) => denied(d.with_id(id)),
        }
    }
}

impl Proxy {
    /// `subscriptions/listen` on `/mcp`: one listen per usable server (each in its own era, as
    /// on `/mcp/{server}`), merged into one stream behind one acknowledgement; resource URIs are
    /// split by member and wrapped back in updates. A member that fails to listen, or is
    /// quarantined later, drops out alone.
    async fn aggregate_listen(
        &self,
        call: &Call,
        state: &joch_raft_store::PublishedState,
        msg: Value,
        id: Value,
    ) -> (Response, Outcome) {
        // Resource URIs are the aggregate's (`joch+SERVER:URI`): split by member.
        let listen = modern::Listen::new(&msg, true, &id);
        let uris: Vec<(String, String)> = listen
            .uris
            .iter()
            .filter_map(|u| {
                let (s, inner) = u.strip_prefix(URI_PREFIX)?.split_once(':')?;
                Some((s.to_string(), inner.to_string()))
            })
            .collect();
        let (base, kinds, uris_ref, msg_ref, id_ref) = (call, listen.kinds, &uris, &msg, &id);
        let opens = state.registry.servers.keys().map(|name| async move {
            let mc = Call { server: name.clone(), ..base.clone() };
            let rec = admit(&mc, state, Ok(())).ok()?;
            let mine = uris_ref.iter().filter(|(s, _)| s == name).map(|(_, u)| u.clone()).collect();
            let mut member_msg = msg_ref.clone();
            member_msg["params"]["notifications"] =
                Value::Object(modern::Listen { kinds, uris: mine, id: id_ref.clone() }.honored());
            let (resp, _) =
                self.member_stream(&mc, &rec, member_msg, "subscriptions/listen", id_ref.clone(), false).await;
            if !is_type(resp.headers().get("content-type"), "text/event-stream") {
                tracing::warn!(server = %name, "aggregate listen: server left out (no listen stream)");
                return None;
            }
            let server = name.clone();
            let events = sse::events(resp.into_body().into_data_stream())
                .filter_map(move |ev| std::future::ready(member_listen_event(&server, &ev)))
                .map(Ok::<_, std::convert::Infallible>);
            Some((
                name.clone(),
                Box::pin(events) as futures::stream::BoxStream<'static, Result<Bytes, std::convert::Infallible>>,
            ))
        });
        let members: Vec<_> = futures::future::join_all(opens).await.into_iter().flatten().collect();
        let listening: Vec<&String> = members.iter().map(|(n, _)| n).collect();
        let honored_uris: Vec<String> =
            uris.iter().filter(|(s, _)| listening.contains(&s)).map(|(s, u)| format!("{URI_PREFIX}{s}:{u}")).collect();
        let ack = modern::Listen { kinds: listen.kinds, uris: honored_uris, id: id.clone() }.ack();
        let first = futures::stream::once(std::future::ready(Ok(ack)));
        let merged = futures::stream::select_all(members.into_iter().map(|(_, s)| s));
        (self.stream(call, first.chain(merged), Some(id), None), Outcome::Forwarded { status: 200 })
    }
}

/// A member's listen event as the aggregate listener sees it: its own acknowledgement and the
/// end of its listen dropped (joch acknowledges once, for all), resource URIs wrapped.
fn member_listen_event(server: &str, ev: &[u8]) -> Option<Bytes> {
    let v: Value = sse::json(ev)?;
    let method = v["method"].as_str()?;
    if v.get("id").is_some() || method == "notifications/subscriptions/acknowledged" {
        return None;
    }
    member_message(server, v)
}

fn ok_error(id: Value, code: i64, message: &str) -> (Response, Outcome) {
    let body = jsonrpc::error(id, code, message, None).to_string();
    (([("content-type", "application/json")], body).into_response(), Outcome::Forwarded { status: 200 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_round_trip_through_the_member_name() {
        for id in [json!(7), json!("abc"), json!("x:y")] {
            let wrapped = wrap_request_id("github", &id);
            assert_eq!(unwrap_request_id(&wrapped), Some(("github".to_string(), id)));
        }
        assert_eq!(unwrap_request_id(&json!(7)), None);
        assert_eq!(unwrap_request_id(&json!("other:1")), None);
        let ev = sse::message_event(r#"{"jsonrpc":"2.0","id":3,"method":"elicitation/create","params":{}}"#);
        let out = member_event("gh", &ev).unwrap();
        assert!(String::from_utf8_lossy(&out).contains(r#""id":"joch:gh:3""#));
        let answer = sse::message_event(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#);
        assert!(String::from_utf8_lossy(&member_event("gh", &answer).unwrap()).contains(r#""id":3"#));
    }

    #[test]
    fn a_members_listen_events_lose_its_own_ack_and_end_and_get_wrapped_uris() {
        let ev = |v: &str| sse::message_event(v);
        let ack = ev(r#"{"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{}}"#);
        assert!(member_listen_event("fs", &ack).is_none());
        assert!(member_listen_event("fs", &ev(r#"{"jsonrpc":"2.0","id":4,"result":{}}"#)).is_none());
        let upd = ev(r#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"file:///a"}}"#);
        assert!(String::from_utf8_lossy(&member_listen_event("fs", &upd).unwrap()).contains("joch+fs:file:///a"));
        assert!(member_listen_event("fs", b": keep-alive\n\n").is_none());
    }

    #[test]
    fn names_round_trip() {
        let t = rename("github", "tools", json!({"name": "search_issues", "inputSchema": {}}));
        assert_eq!(t["name"], "github.search_issues");
        let r = rename("docs", "resources", json!({"name": "readme", "uri": "file:///a/b.md"}));
        assert_eq!(r["uri"], "joch+docs:file:///a/b.md");
        assert_eq!(
            route("tools/call", &json!({"name": "github.search_issues"})),
            Some(("github".into(), "/name", "search_issues".into()))
        );
        assert_eq!(route("tools/call", &json!({"name": "github.a.b"})), Some(("github".into(), "/name", "a.b".into())));
        assert_eq!(
            route("resources/read", &json!({"uri": "joch+docs:file:///a/b.md"})),
            Some(("docs".into(), "/uri", "file:///a/b.md".into()))
        );
        assert_eq!(route("tools/call", &json!({"name": "nodot"})), None);
        assert_eq!(route("resources/read", &json!({"uri": "file:///x"})), None);
    }
}
