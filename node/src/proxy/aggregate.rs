//! The aggregate endpoint `/mcp`: every server the caller may use, behind one session. Tools and
//! prompts are named `server.name`, resources `joch+server:URI` (and `server.name`), stable and
//! never rewritten when servers come and go. Lists fan out to every member and merge; a member
//! that fails or is not admissible drops out alone. Calls are routed back by the prefix. Every
//! member is reached through its own admission: a member call is an `Admitted` like any other.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};

use super::admission::{check_pin, Admitted, Call, Rpc};
use super::deny::Reason;
use super::exit::{Answer, Event, EventMap, Reply, Stream};
use super::modern::{validate, Listen};
use super::request::Inbound;
use super::session::{hand_out, new_session, no_server_stream};
use super::upstream::{answer_message, is_type, Failure, UpstreamError};
use super::{Proxy, MAX_INITIALIZE_ANSWER, MAX_JSON_ANSWER};
use crate::mcp::envelope;
use crate::mcp::jsonrpc::{self, Message};
use crate::mcp::session::{Member, SessionToken};
use crate::mcp::{sse, version};
use joch_raft_store::model::registry::VirtualServerRecord;
use joch_raft_store::model::resource::VirtualServerSpec;

/// Longest a member may take to answer initialize or a list.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(10);
/// Resource URIs are wrapped as `joch+SERVER:URI`.
const URI_PREFIX: &str = "joch+";
/// Ids of members' server-to-client requests are wrapped as `joch:SERVER:ID`.
const REQUEST_ID_PREFIX: &str = "joch:";

/// The list methods and the key of their items.
pub(crate) fn list_key(method: &str) -> Option<&'static str> {
    match method {
        "tools/list" => Some("tools"),
        "prompts/list" => Some("prompts"),
        "resources/list" => Some("resources"),
        "resources/templates/list" => Some("resourceTemplates"),
        _ => None,
    }
}

/// The server a call is about: its own, or on the aggregate endpoint and on a virtual server the
/// member the call routes to (empty when it routes to none: a list, an unknown name).
pub fn routed_server(call: &Call, state: &joch_raft_store::PublishedState) -> String {
    if !(call.server.is_empty() || call.view().is_some()) {
        return call.server.clone();
    }
    let (Some(rpc), Some(method)) = (call.rpc.as_ref(), call.method()) else { return String::new() };
    let view = call.view().and_then(|v| state.registry.virtual_servers.get(v));
    route(method, &rpc.msg, view.map(|v| &v.spec)).map(|r| r.0).unwrap_or_default()
}

/// Splits `server.name` (prompts, tools) or `joch+server:uri` (resources): the member, the
/// routed parameter, and the member's own name for it.
pub(crate) fn route(
    method: &str,
    m: &Message,
    view: Option<&VirtualServerSpec>,
) -> Option<(String, &'static str, String)> {
    if let Some(v) = view {
        // A virtual server exposes tools only, under the names it gives them.
        let t = (method == "tools/call").then(|| v.resolve(m.params.name.as_deref()?)).flatten()?;
        return Some((t.server.clone(), "name", t.tool.clone()));
    }
    match method {
        "tools/call" | "prompts/get" => {
            let (s, n) = m.params.name.as_deref()?.split_once('.')?;
            Some((s.to_string(), "name", n.to_string()))
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            let (s, u) = m.params.uri.as_deref()?.strip_prefix(URI_PREFIX)?.split_once(':')?;
            Some((s.to_string(), "uri", u.to_string()))
        }
        _ => None,
    }
}

/// The message routed to a member: the parameter renamed to the member's own name.
fn routed(rpc: &Rpc, field: &str, inner: &str) -> Arc<Rpc> {
    let mut v = rpc.value();
    if let Some(p) = v.get_mut("params").and_then(Value::as_object_mut) {
        p.insert(field.into(), json!(inner));
    }
    let body = Bytes::from(v.to_string());
    let mut msg = rpc.msg.clone();
    match field {
        "name" => msg.params.name = Some(inner.to_string()),
        _ => msg.params.uri = Some(inner.to_string()),
    }
    Arc::new(Rpc { msg, body })
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
    let obj = v.as_object_mut()?;
    if obj.contains_key("method") {
        if let Some(id) = obj.get("id").filter(|id| !id.is_null()).cloned() {
            obj.insert("id".into(), wrap_request_id(server, &id));
        }
    }
    if obj.get("method").and_then(Value::as_str) == Some("notifications/resources/updated") {
        let uri = obj.get("params").and_then(|p| p.get("uri")).and_then(Value::as_str).map(str::to_string);
        if let (Some(u), Some(p)) = (uri, obj.get_mut("params").and_then(Value::as_object_mut)) {
            p.insert("uri".into(), json!(format!("{URI_PREFIX}{server}:{u}")));
        }
    }
    Some(sse::message_event(&v.to_string()))
}

/// A member's listen event as the aggregate listener sees it: its own acknowledgement and the
/// end of its listen dropped (joch acknowledges once, for all), resource URIs wrapped.
fn member_listen_event(server: &str, ev: &[u8]) -> Option<Bytes> {
    let v: Value = sse::json(ev)?;
    let method = v.get("method")?.as_str()?;
    if v.get("id").is_some() || method == "notifications/subscriptions/acknowledged" {
        return None;
    }
    member_message(server, v)
}

/// Renames one list item for the aggregate view.
fn rename(server: &str, key: &str, mut item: Value) -> Value {
    let Some(obj) = item.as_object_mut() else { return item };
    if let Some(n) = obj.get("name").and_then(Value::as_str).map(str::to_string) {
        obj.insert("name".into(), json!(format!("{server}.{n}")));
    }
    let uri_field = if key == "resourceTemplates" { "uriTemplate" } else { "uri" };
    if let Some(u) = obj.get(uri_field).and_then(Value::as_str).map(str::to_string) {
        obj.insert(uri_field.into(), json!(format!("{URI_PREFIX}{server}:{u}")));
    }
    item
}

/// The member and the member's own name of an item of a merged list (`key`: `tools`, ...): the
/// inverse of [`rename`].
pub(crate) fn member_item(key: &str, item: &Value) -> Option<(String, String)> {
    match key {
        "tools" | "prompts" => {
            let (s, n) = item.get("name")?.as_str()?.split_once('.')?;
            Some((s.to_string(), n.to_string()))
        }
        _ => {
            let field = if key == "resourceTemplates" { "uriTemplate" } else { "uri" };
            let (s, u) = item.get(field)?.as_str()?.strip_prefix(URI_PREFIX)?.split_once(':')?;
            Some((s.to_string(), u.to_string()))
        }
    }
}

/// The items of every member's list answer, renamed (on a virtual server: its tools only, under
/// its names and descriptions).
fn merge(
    key: &str,
    answers: impl IntoIterator<Item = (String, Value)>,
    view: Option<&VirtualServerSpec>,
) -> Vec<Value> {
    let mut items = Vec::new();
    for (server, answer) in answers {
        let list = answer.get("result").and_then(|r| r.get(key)).and_then(Value::as_array).cloned().unwrap_or_default();
        match view {
            None => items.extend(list.into_iter().map(|item| rename(&server, key, item))),
            Some(_) if key != "tools" => {}
            Some(v) => {
                for mut item in list {
                    let Some(t) = item.get("name").and_then(Value::as_str).and_then(|n| v.exposing(&server, n)) else {
                        continue;
                    };
                    let (exposed, description) = (t.exposed().to_string(), t.description.clone());
                    if let Some(obj) = item.as_object_mut() {
                        obj.insert("name".into(), json!(exposed));
                        if let Some(d) = description {
                            obj.insert("description".into(), json!(d));
                        }
                    }
                    items.push(item);
                }
            }
        }
    }
    // A virtual server lists its tools in its own order.
    if let Some(v) = view {
        items.sort_by_key(|i| v.tools.iter().position(|t| Some(t.exposed()) == i.get("name").and_then(Value::as_str)));
    }
    items
}

/// The virtual server a call is to (`/mcp/v/NAME`), from the snapshot.
fn view_of(call: &Call, state: &joch_raft_store::PublishedState) -> Option<Arc<VirtualServerRecord>> {
    state.registry.virtual_servers.get(call.view()?).cloned()
}

fn ok_error(id: Value, code: i64, message: &str) -> Answer {
    Answer::Own(jsonrpc::error(id, code, message, None))
}

impl Proxy {
    /// Admits `call` to each member the registry has now (the ones that pass), for lists and
    /// listens of the modern era.
    fn admit_every_server(&self, call: &Call) -> Vec<Admitted> {
        self.member_names(call)
            .iter()
            .filter_map(|name| self.gate.admit(call.for_member(name, call.rpc.clone())).ok())
            .collect()
    }

    /// The servers behind `/mcp` (every registered one) or behind a virtual server (those it
    /// draws on that are registered).
    fn member_names(&self, call: &Call) -> Vec<String> {
        let state = self.gate.state();
        match call.view() {
            None => state.registry.servers.keys().cloned().collect(),
            Some(_) => view_of(call, &state)
                .map(|v| v.spec.servers().into_iter().filter(|s| state.registry.servers.contains_key(s)).collect())
                .unwrap_or_default(),
        }
    }

    /// POSTs a message to a member's HTTP upstream, in the member's own session.
    async fn member_post(
        &self,
        adm: &Admitted,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<super::upstream::http::Response, Failure> {
        let sid = adm.call().session.as_ref().and_then(|t| t.upstream_session.clone());
        self.upstream.send(adm, reqwest::Method::POST, headers, sid.as_deref(), Some(body)).await
    }

    /// Sends one JSON-RPC message to a member (HTTP or stdio) and returns its answer message.
    async fn member_exchange(&self, adm: &Admitted, headers: &HeaderMap, msg: &Value) -> Result<Value, Failure> {
        let timed_out =
            || Failure::from(UpstreamError { reason: Reason::UpstreamTimeout, message: "timed out".into() });
        if adm.is_stdio() {
            let child = self.stdio.child(adm).await?;
            let pending = child.call(msg.clone(), &adm.call().exec.traceparent())?;
            return tokio::time::timeout(MEMBER_TIMEOUT, pending.answer())
                .await
                .map_err(|_| timed_out())?
                .ok_or_else(|| UpstreamError::unavailable("the stdio server ended the call without an answer").into());
        }
        let resp = tokio::time::timeout(MEMBER_TIMEOUT, self.member_post(adm, headers, Bytes::from(msg.to_string())))
            .await
            .map_err(|_| timed_out())??;
        let ct = resp.headers().get("content-type").cloned();
        let bytes = self.upstream.read(resp, MAX_JSON_ANSWER).await?;
        Ok(answer_message(ct.as_ref(), &bytes).ok_or_else(|| UpstreamError::unavailable("no JSON-RPC answer"))?)
    }

    /// initialize on `/mcp`: initializes every usable server in parallel; those that fail drop out.
    pub(super) async fn aggregate_initialize(&self, call: &mut Call, inb: &Inbound) -> Reply {
        let sealer = match self.sealer(call) {
            Ok(s) => s,
            Err(d) => return d.into(),
        };
        if let Err(d) = self.gate.fresh(&Call { server: "*".into(), ..call.clone() }) {
            return d.into();
        }
        let protocol_version =
            super::session::requested_version(call).unwrap_or_else(|| version::LEGACY[0].to_string());
        let members: Vec<Admitted> = self
            .member_names(call)
            .iter()
            .filter_map(|name| self.gate.admit(call.for_member(name, None)).ok())
            .collect();
        let pv: &str = &protocol_version;
        let inits = members.iter().map(|adm| async move {
            let msg = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": pv, "capabilities": {},
                "clientInfo": {"name": "joch-aggregate", "version": env!("CARGO_PKG_VERSION")}}});
            let r: Result<Member, String> = async {
                let (sid, version) = if adm.is_stdio() {
                    let child = self.stdio.child(adm).await.map_err(|e| e.deny(adm).message)?;
                    (None, child.version().map(str::to_string))
                } else {
                    let resp = tokio::time::timeout(
                        MEMBER_TIMEOUT,
                        self.upstream.send(
                            adm,
                            reqwest::Method::POST,
                            &inb.headers,
                            None,
                            Some(Bytes::from(msg.to_string())),
                        ),
                    )
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.deny(adm).message)?;
                    let sid = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
                    let ct = resp.headers().get("content-type").cloned();
                    let bytes = self.upstream.read(resp, MAX_INITIALIZE_ANSWER).await.map_err(|e| e.message)?;
                    let answer = answer_message(ct.as_ref(), &bytes).ok_or("no initialize answer")?;
                    let version =
                        answer.pointer("/result/serverInfo/version").and_then(Value::as_str).map(str::to_string);
                    (sid, version)
                };
                check_pin(adm, version.as_deref()).map_err(|d| d.message)?;
                Ok(Member { server: adm.server().name.clone(), upstream_session: sid, upstream_version: version })
            }
            .await;
            if let Err(e) = &r {
                tracing::warn!(server = %adm.server().name, error = %e, "aggregate session: server left out");
            }
            r.ok().map(|m| (m, adm))
        });
        let joined: Vec<(Member, &Admitted)> = futures::future::join_all(inits).await.into_iter().flatten().collect();
        // initialized, to every HTTP member (the stdio children had theirs from joch).
        let note = Bytes::from(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string());
        let mut h = inb.headers.clone();
        if let Ok(v) = HeaderValue::from_str(&protocol_version) {
            h.insert("mcp-protocol-version", v);
        }
        let notes = joined.iter().filter(|(_, adm)| !adm.is_stdio()).map(|(m, adm)| {
            let (h, note) = (&h, note.clone());
            async move {
                let _ =
                    self.upstream.send(adm, reqwest::Method::POST, h, m.upstream_session.as_deref(), Some(note)).await;
            }
        });
        futures::future::join_all(notes).await;
        let members: Vec<Member> = joined.into_iter().map(|(m, _)| m).collect();
        let names: Vec<String> = members.iter().map(|m| m.server.clone()).collect();
        let token = SessionToken { members, ..new_session(call, protocol_version.clone()) };
        let result = json!({"protocolVersion": protocol_version,
               "capabilities": {"tools": {"listChanged": true}, "prompts": {"listChanged": true}, "resources": {"listChanged": true}},
               "serverInfo": {"name": "joch", "version": env!("CARGO_PKG_VERSION")},
               "instructions": format!("joch aggregate endpoint over: {}. Tools and prompts are named SERVER.NAME.", names.join(", "))});
        hand_out(call, &sealer, token, Answer::Message(jsonrpc::result(call.id(), result)))
    }

    /// GET on `/mcp`: one stream merging every member's own messages (their sessions' streams
    /// upstream, the stdio children's routed notifications); a member that stops being
    /// admissible drops out of it alone, and the whole stream ends if this node turns stale.
    /// DELETE: ends every member's session. With a stdio member both happen on the session's
    /// owner (its children's messages are routed there).
    pub(super) async fn aggregate_stream_or_delete(
        &self,
        call: &mut Call,
        inb: &Inbound,
        token: SessionToken,
    ) -> Reply {
        let sid = inb.session_id().unwrap_or_default().to_string();
        let owner = token.owner;
        let any_stdio = token.members.iter().any(|m| self.is_stdio(&m.server));
        let servers: Vec<String> = token.members.iter().map(|m| m.server.clone()).collect();
        call.session = Some(token);
        if owner != self.node.id && any_stdio {
            return self.forward_to_owner(call, owner, inb).await.into();
        }
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("text/event-stream"));
        if let Some(v) = call.session.as_ref().and_then(|t| HeaderValue::from_str(&t.protocol_version).ok()) {
            h.insert("mcp-protocol-version", v);
        }
        let members: Vec<Admitted> =
            servers.iter().filter_map(|s| self.gate.admit(call.for_member(s, None)).ok()).collect();
        let (h, sid) = (&h, sid.as_str());
        if inb.http_method == "DELETE" {
            let ends = members.iter().map(|adm| async move {
                if adm.is_stdio() {
                    let orphaned = self.stdio.streams.remove(&member_key(sid, &adm.server().name));
                    self.stdio.unsubscribe(adm, orphaned);
                } else if let Some(us) = adm.call().session.as_ref().and_then(|t| t.upstream_session.as_deref()) {
                    let _ = self.upstream.send(adm, reqwest::Method::DELETE, h, Some(us), None).await;
                }
            });
            futures::future::join_all(ends).await;
            return Answer::Status { status: StatusCode::OK, allow: None, upstream: false }.into();
        }
        let opens = members.into_iter().map(|adm| async move {
            let name: Arc<str> = Arc::from(adm.server().name.as_str());
            let events: futures::stream::BoxStream<'static, Bytes> = if adm.is_stdio() {
                let queue = self.stdio.streams.queue(&member_key(sid, &name), &name);
                Box::pin(
                    queue
                        .open(None)
                        .take_while(|r| std::future::ready(r.is_ok()))
                        .filter_map(|r| std::future::ready(r.ok())),
                )
            } else {
                let us = adm.call().session.as_ref().and_then(|t| t.upstream_session.clone());
                let resp = self.upstream.send(&adm, reqwest::Method::GET, h, us.as_deref(), None).await.ok()?;
                if !resp.status().is_success() || !is_type(resp.headers().get("content-type"), "text/event-stream") {
                    return None;
                }
                Box::pin(sse::events(resp.bytes_stream()))
            };
            let from = name.clone();
            let member = events
                .filter_map(move |ev| std::future::ready(member_event(&name, &ev)))
                .map(move |bytes| Event { from: Some(from.clone()), bytes })
                .take_until(adm.cut());
            Some(Box::pin(member) as futures::stream::BoxStream<'static, Event>)
        });
        let streams: Vec<_> = futures::future::join_all(opens).await.into_iter().flatten().collect();
        if streams.is_empty() {
            return no_server_stream().into();
        }
        let cut = self.gate.stale_cut(call);
        Answer::Stream(Stream::events(futures::stream::select_all(streams), None, cut)).into()
    }

    /// Any other message of the legacy era on `/mcp`.
    pub(super) async fn aggregate_request(&self, call: &mut Call, inb: &Inbound, token: SessionToken) -> Reply {
        let Some(rpc) = call.rpc.clone() else {
            return Answer::bad_request(jsonrpc::INVALID_REQUEST, "an empty request", None).into();
        };
        call.session = Some(token);
        let id = call.id();
        let Some(method) = rpc.msg.method.clone() else {
            return self.aggregate_answer(call, inb).await.into();
        };
        if !rpc.msg.is_request() {
            // initialized was sent to every member at initialize; other notifications stay here.
            return Answer::accepted(false).into();
        }
        if method == "ping" {
            return Answer::Own(jsonrpc::result(id, json!({}))).into();
        }
        if let Some(key) = list_key(&method) {
            if let Err(d) = self.gate.fresh(&Call { server: "*".into(), ..call.clone() }) {
                return d.into();
            }
            let mut request = rpc.value();
            if let Some(p) = request.get_mut("params").and_then(Value::as_object_mut) {
                p.remove("cursor");
            }
            let servers: Vec<String> =
                call.session.as_ref().map(|t| t.members.iter().map(|m| m.server.clone()).collect()).unwrap_or_default();
            let (request, method_name) = (&request, method.as_str());
            let fetches = servers.iter().map(|server| {
                let admitted = self.gate.admit(call.for_member(server, call.rpc.clone()));
                async move {
                    let adm = admitted.ok()?;
                    match self.member_exchange(&adm, &inb.headers, request).await {
                        Ok(a) => Some((server.clone(), a)),
                        Err(e) => {
                            let d = e.deny(&adm);
                            tracing::warn!(server = %server, error = %d.message, method = method_name, "aggregate list: server left out");
                            None
                        }
                    }
                }
            });
            let answers = futures::future::join_all(fetches).await.into_iter().flatten();
            let view = view_of(call, &self.gate.state());
            let items = merge(key, answers, view.as_ref().map(|v| &v.spec));
            return Answer::Message(jsonrpc::result(id, json!({ key: items }))).into();
        }
        let view = view_of(call, &self.gate.state());
        let Some((server, field, inner)) = route(&method, &rpc.msg, view.as_ref().map(|v| &v.spec)) else {
            return ok_error(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                &if call.view().is_some() {
                    format!("{method} is not available on a virtual server (it exposes its tools only, by the names it lists)")
                } else {
                    format!("{method} is not available on the aggregate endpoint (names are SERVER.NAME)")
                },
            )
            .into();
        };
        if !call.session.as_ref().is_some_and(|t| t.members.iter().any(|m| m.server == server)) {
            return Call { server: server.clone(), ..call.clone() }
                .deny(
                    Reason::ServerNotRegistered,
                    "aggregate.members",
                    format!("MCP server {server:?} is not part of this session (re-initialize to pick up new servers)"),
                )
                .into();
        }
        let owner = call.session.as_ref().map(|t| t.owner).unwrap_or(self.node.id);
        if owner != self.node.id && self.is_stdio(&server) {
            return self.forward_to_owner(call, owner, inb).await.into();
        }
        // From here on the request is the member's: its server, its own name for the target.
        *call = call.for_member(&server, Some(routed(&rpc, field, &inner)));
        let adm = match self.admit_call(call, &inb.headers).await {
            Ok(a) => a,
            Err(d) => return d.into(),
        };
        if adm.is_stdio() {
            let key = member_key(inb.session_id().unwrap_or_default(), &server);
            if self.stdio.streams.ended(&key) {
                return self.ended_session(call).into();
            }
            return adm.until_cut(self.stdio_request(&adm, &key)).await.unwrap_or_else(Answer::from).into();
        }
        let body = call.rpc.as_ref().map(|r| r.body.clone()).unwrap_or_default();
        let exchange = async {
            match self.member_post(&adm, &inb.headers, body).await {
                Ok(resp) => {
                    let name = server.clone();
                    let transform: EventMap = Box::new(move |ev: Bytes| member_event(&name, &ev).unwrap_or(ev));
                    self.relay_with(&adm, resp, Some(id.clone()), Some(transform)).await
                }
                Err(e) => e.deny(&adm).into(),
            }
        };
        adm.until_cut(exchange).await.unwrap_or_else(Answer::from).into()
    }

    /// The agent's answer to a member's server-to-client request (elicitation, sampling, roots):
    /// sent to the member that asked, with its own id, in its own session.
    async fn aggregate_answer(&self, call: &mut Call, inb: &Inbound) -> Answer {
        let Some((server, inner)) = unwrap_request_id(&call.id()) else {
            return Answer::bad_request(jsonrpc::INVALID_REQUEST, "an answer to no request of this session", None);
        };
        if !call.session.as_ref().is_some_and(|t| t.members.iter().any(|m| m.server == server)) {
            return Answer::bad_request(
                jsonrpc::INVALID_REQUEST,
                &format!("{server:?} is not part of this session"),
                None,
            );
        }
        let mut answer = call.rpc.as_ref().map(|r| r.value()).unwrap_or(Value::Null);
        if let Some(o) = answer.as_object_mut() {
            o.insert("id".into(), inner);
        }
        let body = Bytes::from(answer.to_string());
        let rpc = call.rpc.as_ref().map(|r| Arc::new(Rpc { msg: r.msg.clone(), body: body.clone() }));
        *call = call.for_member(&server, rpc);
        let adm = match self.gate.admit(call.clone()) {
            Ok(a) => a,
            Err(d) => return d.into(),
        };
        if adm.is_stdio() {
            // joch answers a stdio child's requests itself (see upstream/stdio.rs): nothing waits.
            return Answer::accepted(false);
        }
        match self.member_post(&adm, &inb.headers, body).await {
            Ok(resp) => self.relay(&adm, resp, None).await,
            Err(e) => e.deny(&adm).into(),
        }
    }

    /// A modern-era (stateless) message on `/mcp`: discover is answered by joch; lists fan out to
    /// every usable server, each in its own era; calls are routed back by the prefix.
    pub(super) async fn aggregate_modern(&self, call: &mut Call, inb: &Inbound) -> Reply {
        let Some(rpc) = call.rpc.clone() else {
            return Answer::bad_request(jsonrpc::INVALID_REQUEST, "an empty request", None).into();
        };
        let method = match validate::preamble(&rpc.msg, &inb.headers) {
            Ok(m) => m,
            Err(a) => return a.into(),
        };
        if !rpc.msg.is_request() {
            return Answer::accepted(false).into();
        }
        if let Err(d) = self.gate.fresh(&Call { server: "*".into(), ..call.clone() }) {
            return d.into();
        }
        let id = call.id();
        let joch_info = json!({"name": "joch", "version": env!("CARGO_PKG_VERSION")});
        if method == "server/discover" {
            let result = envelope::modernize(
                &method,
                json!({"supportedVersions": version::MODERN,
                       "capabilities": {"tools": {"listChanged": true}, "prompts": {"listChanged": true}, "resources": {"listChanged": true}}}),
                &joch_info,
            );
            return Answer::Own(jsonrpc::result(id, result)).into();
        }
        let msg = rpc.value();
        if let Some(key) = list_key(&method) {
            let members = self.admit_every_server(call);
            let (msg_ref, method_ref) = (&msg, method.as_str());
            let fetches = members.iter().map(|adm| async move {
                match self.member_answer(adm, msg_ref.clone(), method_ref).await {
                    Ok(a) => Some((adm.server().name.clone(), a)),
                    Err(d) => {
                        tracing::warn!(server = %adm.server().name, reason = d.reason.as_str(), error = %d.message, method = method_ref, "aggregate list: server left out");
                        None
                    }
                }
            });
            let answers = futures::future::join_all(fetches).await.into_iter().flatten();
            let view = view_of(call, &self.gate.state());
            let items = merge(key, answers, view.as_ref().map(|v| &v.spec));
            let result = envelope::modernize(&method, json!({ key: items }), &joch_info);
            return Answer::Message(jsonrpc::result(id, result)).into();
        }
        if method == "subscriptions/listen" {
            return self.aggregate_listen(call, msg).await.into();
        }
        let view = view_of(call, &self.gate.state());
        let Some((server, field, inner)) = route(&method, &rpc.msg, view.as_ref().map(|v| &v.spec)) else {
            return ok_error(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                &if call.view().is_some() {
                    format!("{method} is not available on a virtual server (it exposes its tools only, by the names it lists)")
                } else {
                    format!("{method} is not available on the aggregate endpoint (names are SERVER.NAME)")
                },
            )
            .into();
        };
        let member_rpc = routed(&rpc, field, &inner);
        let routed_msg = member_rpc.value();
        *call = call.for_member(&server, Some(member_rpc));
        let adm = match self.admit_call(call, &inb.headers).await {
            Ok(a) => a,
            Err(d) => return d.into(),
        };
        if rpc.msg.params.meta.progress_token.is_some() {
            // Asked for progress: streamed as on `/mcp/{server}` (the names in a call's progress
            // and answer need no renaming).
            return self.member_stream(&adm, routed_msg, &method, false).await.into();
        }
        match adm.until_cut(self.member_answer(&adm, routed_msg, &method)).await {
            Ok(Ok(mut answer)) => {
                if let Some(o) = answer.as_object_mut() {
                    o.insert("id".into(), id);
                }
                Answer::Message(answer).into()
            }
            Ok(Err(d)) | Err(d) => d.into(),
        }
    }

    /// `subscriptions/listen` on `/mcp`: one listen per usable server (each in its own era, as
    /// on `/mcp/{server}`), merged into one stream behind one acknowledgement; resource URIs are
    /// split by member and wrapped back in updates. A member that fails to listen, or stops being
    /// admissible later, drops out alone; the whole stream ends if this node turns stale.
    async fn aggregate_listen(&self, call: &Call, msg: Value) -> Answer {
        let id = call.id();
        // Resource URIs are the aggregate's (`joch+SERVER:URI`): split by member.
        let listen = Listen::new(&msg, true, &id);
        let uris: Vec<(String, String)> = listen
            .uris
            .iter()
            .filter_map(|u| {
                let (s, inner) = u.strip_prefix(URI_PREFIX)?.split_once(':')?;
                Some((s.to_string(), inner.to_string()))
            })
            .collect();
        let members = self.admit_every_server(call);
        let (kinds, uris_ref, msg_ref, id_ref) = (listen.kinds, &uris, &msg, &id);
        let opens = members.into_iter().map(|adm| async move {
            let name: Arc<str> = Arc::from(adm.server().name.as_str());
            let mine = uris_ref.iter().filter(|(s, _)| **s == *name).map(|(_, u)| u.clone()).collect();
            let mut member_msg = msg_ref.clone();
            let honored = Listen { kinds, uris: mine, id: id_ref.clone() }.honored();
            if let Some(p) = member_msg.get_mut("params").and_then(Value::as_object_mut) {
                p.insert("notifications".into(), Value::Object(honored));
            }
            let events = match self.listen_source(&adm, &member_msg, id_ref).await {
                Ok(e) => e,
                Err(_) => {
                    tracing::warn!(server = %name, "aggregate listen: server left out (no listen stream)");
                    return None;
                }
            };
            let (from, server) = (name.clone(), name.to_string());
            let member = events
                .filter_map(move |ev| std::future::ready(member_listen_event(&name, &ev)))
                .map(move |bytes| Event { from: Some(from.clone()), bytes })
                .take_until(adm.cut());
            Some((server, Box::pin(member) as futures::stream::BoxStream<'static, Event>))
        });
        let opened: Vec<_> = futures::future::join_all(opens).await.into_iter().flatten().collect();
        let honored_uris: Vec<String> = uris
            .iter()
            .filter(|(s, _)| opened.iter().any(|(n, _)| n == s))
            .map(|(s, u)| format!("{URI_PREFIX}{s}:{u}"))
            .collect();
        let ack = Listen { kinds: listen.kinds, uris: honored_uris, id: id.clone() }.ack();
        let first = futures::stream::once(std::future::ready(Event { from: None, bytes: ack }));
        let merged = futures::stream::select_all(opened.into_iter().map(|(_, s)| s));
        Answer::Stream(Stream::events(first.chain(merged), Some(id), self.gate.stale_cut(call)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(v: Value) -> Message {
        match jsonrpc::parse(v.to_string().as_bytes(), 64).unwrap() {
            jsonrpc::Body::Single(m) => m,
            jsonrpc::Body::Batch(_) => unreachable!(),
        }
    }

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
        assert!(member_event("gh", &sse::message_event("[1,2]")).is_none(), "not an object: dropped, no panic");
        let odd = sse::message_event(r#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":7}"#);
        assert!(member_event("gh", &odd).is_some());
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
        assert_eq!(rename("x", "tools", json!(5)), json!(5), "a non-object item is left alone");
        let call = |name: &str| msg(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name": name}}));
        assert_eq!(
            route("tools/call", &call("github.search_issues"), None),
            Some(("github".into(), "name", "search_issues".into()))
        );
        assert_eq!(route("tools/call", &call("github.a.b"), None), Some(("github".into(), "name", "a.b".into())));
        let read =
            msg(json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"joch+docs:file:///a/b.md"}}));
        assert_eq!(route("resources/read", &read, None), Some(("docs".into(), "uri", "file:///a/b.md".into())));
        assert_eq!(route("tools/call", &call("nodot"), None), None);
        let plain = msg(json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}));
        assert_eq!(route("resources/read", &plain, None), None);
        // A virtual server: its names, its tools only.
        let vs: VirtualServerSpec = serde_json::from_value(json!({"tools": [
            {"server": "github", "tool": "search_issues", "name": "find", "description": "Find issues"},
            {"server": "jira", "tool": "search_issues"}]}))
        .unwrap();
        assert_eq!(
            route("tools/call", &call("find"), Some(&vs)),
            Some(("github".into(), "name", "search_issues".into()))
        );
        assert_eq!(route("tools/call", &call("github.search_issues"), Some(&vs)), None);
        assert_eq!(route("resources/read", &read, Some(&vs)), None);
        let answers = vec![
            ("jira".to_string(), json!({"result": {"tools": [{"name": "search_issues"}, {"name": "delete"}]}})),
            ("github".to_string(), json!({"result": {"tools": [{"name": "search_issues", "description": "x"}]}})),
        ];
        assert_eq!(
            merge("tools", answers.clone(), Some(&vs)),
            vec![json!({"name": "find", "description": "Find issues"}), json!({"name": "search_issues"})]
        );
        assert!(merge("prompts", answers, Some(&vs)).is_empty());
    }
}
