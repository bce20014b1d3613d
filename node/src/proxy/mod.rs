//! The MCP proxy (data plane): `/mcp/{server}` for each registered server, legacy-era streamable
//! HTTP (protocol versions 2025-03-26, 2025-06-18, 2025-11-25) to streamable-HTTP upstreams.
//!
//! Every request goes through `pipeline` (the seam) and is decided from the in-memory registry
//! snapshot. Sessions are sealed (`mcp::session`), so any node continues a session another node
//! created. Streams are forwarded event by event and cut when their server is quarantined.
//! This module never touches RocksDB.
//!
//! The official Rust SDK (rmcp) is not used here: an intermediary needs byte-level control that
//! its typed client/server services hide: forwarding SSE event by event as the upstream wrote it,
//! keeping the upstream's status codes and headers, rewriting ids and progress tokens for a shared
//! stdio child, cutting a stream mid-way on a quarantine, and sealing its own session ids. The
//! protocol pieces joch needs are small (`crate::mcp`) and checked against the SDKs end to end.

mod aggregate;
pub mod deny;
mod modern;
pub mod pipeline;
pub mod stdio;
mod streams;
pub mod upstream;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::cluster::{now_ms, ClusterNode, DataPlane};
use crate::config::ProxyLimits;
use crate::mcp::jsonrpc::{self, Body as RpcBody};
use crate::mcp::session::{Sealer, SessionToken};
use crate::mcp::sse::{self, EventSplitter};
use crate::mcp::version;
use crate::mesh::message::{McpForward, McpHead};
use deny::{protocol_error, Denial, Reason};
use joch_raft_store::model::resource::Transport;
use pipeline::{admit, check_pin, Call, Outcome, Stage, Telemetry};
use stdio::StdioPool;
use upstream::Upstream;

/// A rewrite applied to each SSE event on its way (e.g. an era translation of the answer); an
/// event rewritten to nothing (empty) is dropped.
pub(crate) type EventMap = Box<dyn Fn(Bytes) -> Bytes + Send + Sync>;

/// Identity of callers until agent authentication exists (issue 4).
pub const ANONYMOUS: &str = "anonymous";

/// Largest initialize answer joch reads whole (to check the pinned version).
pub(crate) const MAX_INITIALIZE_ANSWER: usize = 1 << 20;
/// Largest JSON (non-stream) answer joch passes on.
pub(crate) const MAX_JSON_ANSWER: usize = 64 << 20;

/// The proxy of one node.
pub struct Proxy {
    cluster: Arc<ClusterNode>,
    upstream: Upstream,
    limits: ProxyLimits,
    stages: Vec<Arc<dyn Stage>>,
    stdio: Arc<StdioPool>,
    eras: modern::Eras,
}

impl Proxy {
    /// A proxy over this node's cluster handle; it also answers MCP requests peers forward here.
    pub fn new(cluster: Arc<ClusterNode>, limits: ProxyLimits) -> anyhow::Result<Arc<Self>> {
        let upstream = Upstream::new(&limits)?;
        let stdio = Arc::new(StdioPool::default());
        tokio::spawn(stdio.clone().reap(cluster.registry.clone()));
        let proxy = Arc::new(Proxy {
            cluster: cluster.clone(),
            upstream,
            limits,
            stages: vec![Arc::new(Telemetry)],
            stdio,
            eras: modern::Eras::default(),
        });
        let weak: std::sync::Weak<dyn DataPlane> = Arc::downgrade(&proxy) as std::sync::Weak<Proxy>;
        cluster.set_data_plane(weak);
        Ok(proxy)
    }

    /// Stops every stdio child (node shutdown).
    pub async fn shutdown(&self) {
        self.stdio.stop_all().await;
    }

    /// The MCP routes. Bodies are read whole, under the size limit and the client timeout,
    /// before any handler runs.
    pub fn router(self: Arc<Self>) -> Router {
        let limit = self.limits.max_body_bytes;
        Router::new()
            .route("/mcp/{server}", post(post_mcp).get(get_mcp).delete(delete_mcp))
            .route("/mcp", post(post_aggregate).get(get_aggregate).delete(delete_aggregate))
            .layer(axum::middleware::from_fn_with_state(self.clone(), read_body))
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self)
    }

    pub(crate) fn call(&self, server: String, http_method: &'static str) -> Call {
        Call {
            node: self.cluster.id,
            server,
            caller: ANONYMOUS.into(),
            http_method,
            method: None,
            target: None,
            session: None,
        }
    }

    fn finish(&self, call: &Call, outcome: &Outcome, started: Instant) {
        for s in &self.stages {
            s.on_finish(call, outcome, started.elapsed());
        }
    }

    fn deny(&self, call: &Call, reason: Reason, rule: &str, message: impl Into<String>) -> Denial {
        Denial::new(reason, &call.server, call.node, rule, message)
    }

    /// Admission: the registry checks, then every stage.
    fn admit(&self, call: &Call) -> Result<Arc<joch_raft_store::ServerRecord>, Denial> {
        let state = self.cluster.registry.load();
        let rec = admit(call, &state, self.cluster.is_ready())?;
        for s in &self.stages {
            s.on_request(call, &rec)?;
        }
        Ok(rec)
    }

    /// Runs a forwarded exchange, unless the server stops being admissible first (quarantined,
    /// deleted, re-pinned away from the session's version): then the exchange is dropped, which
    /// closes the upstream request, and the denial is the answer.
    async fn until_cut<T>(&self, call: &Call, exchange: impl std::future::Future<Output = T>) -> Result<T, Denial> {
        let registry = &self.cluster.registry;
        tokio::select! {
            r = exchange => Ok(r),
            d = first_denial(registry, registry.subscribe(), call) => Err(d),
        }
    }

    /// Resolves (with the denial) when `call`'s server stops being admissible: quarantined,
    /// deleted, re-pinned away from the session's version. Owns what it needs (for streams that
    /// outlive the request); `until_cut` borrows instead, on the hot path.
    fn inadmissible(&self, call: &Call) -> impl std::future::Future<Output = Denial> + Send + 'static {
        let registry = self.cluster.registry.clone();
        let changes = registry.subscribe();
        let call = call.clone();
        async move { first_denial(&registry, changes, &call).await }
    }

    fn sealer(&self, call: &Call) -> Result<Sealer, Denial> {
        match self.cluster.registry.load().registry.cluster_key {
            Some(k) => Ok(Sealer::new(&k)),
            None => {
                Err(self.deny(call, Reason::ControlPlaneStale, "cluster.key", "the cluster is not initialised yet"))
            }
        }
    }

    fn check_origin(&self, call: &Call, headers: &HeaderMap) -> Result<(), Denial> {
        match headers.get("origin").and_then(|o| o.to_str().ok()) {
            None => Ok(()),
            Some(o) if self.limits.allowed_origins.iter().any(|a| a == o) => Ok(()),
            Some(o) => Err(self.deny(
                call,
                Reason::OriginNotAllowed,
                "proxy.allowed_origins",
                format!("origin {o:?} is not allowed (proxy.allowed_origins)"),
            )),
        }
    }

    /// Opens the session a request names, bound to this server and caller.
    fn session(&self, call: &Call, headers: &HeaderMap) -> Result<SessionToken, Denial> {
        let Some(id) = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) else {
            return Err(self.deny(
                call,
                Reason::SessionRequired,
                "mcp.session",
                "Bad Request: Mcp-Session-Id header is required (send initialize first)",
            ));
        };
        let token = self
            .sealer(call)?
            .open(id)
            .map_err(|_| self.deny(call, Reason::SessionUnknown, "mcp.session", "Session not found: re-initialize"))?;
        if token.server != call.server || token.caller != call.caller {
            return Err(self.deny(call, Reason::SessionUnknown, "mcp.session", "Session not found: re-initialize"));
        }
        Ok(token)
    }

    fn ended_session(&self, call: &Call) -> Denial {
        self.deny(
            call,
            Reason::SessionUnknown,
            "mcp.session",
            "Session not found: it was ended (DELETE); re-initialize",
        )
    }

    fn upstream_url(rec: &joch_raft_store::ServerRecord) -> String {
        rec.spec.endpoint.as_ref().map(|e| e.url.clone()).unwrap_or_default()
    }
}

/// Waits for registry changes until one makes `call` inadmissible; returns that denial.
async fn first_denial(
    registry: &joch_raft_store::RegistryHandle,
    mut changes: tokio::sync::watch::Receiver<u64>,
    call: &Call,
) -> Denial {
    loop {
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
        if let Err(d) = admit(call, &registry.load(), Ok(())) {
            metrics::counter!("joch_mcp_streams_cut_total", "reason" => d.reason.as_str()).increment(1);
            return d;
        }
    }
}

/// Reads the request body under `proxy.max_body_bytes` and `proxy.client_timeout`: a body too
/// large gets 413, one that does not arrive in time 408, both as JSON-RPC errors.
async fn read_body(State(p): State<Arc<Proxy>>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = req.into_parts();
    let server = parts.uri.path().strip_prefix("/mcp").unwrap_or_default().trim_start_matches('/').to_string();
    let http_method = match parts.method.as_str() {
        "GET" => "GET",
        "DELETE" => "DELETE",
        _ => "POST",
    };
    let call = p.call(server, http_method);
    let started = Instant::now();
    let limit = p.limits.max_body_bytes;
    let fail = |d: Denial| {
        let outcome = Outcome::Denied(d.reason);
        p.finish(&call, &outcome, started);
        d.into_response()
    };
    match tokio::time::timeout(p.limits.client_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => fail(p.deny(
            &call,
            Reason::RequestTimeout,
            "proxy.client_timeout",
            format!("the request body did not arrive within {:?}", p.limits.client_timeout),
        )),
        Ok(Err(e)) if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) => {
            fail(p.deny(
                &call,
                Reason::BodyTooLarge,
                "proxy.max_body_bytes",
                format!("request body larger than {limit} bytes"),
            ))
        }
        Ok(Err(_)) => {
            // The client went away mid-body: nobody to answer.
            let outcome = Outcome::Rejected { status: 400 };
            p.finish(&call, &outcome, started);
            StatusCode::BAD_REQUEST.into_response()
        }
        Ok(Ok(bytes)) => next.run(axum::extract::Request::from_parts(parts, Body::from(bytes))).await,
    }
}

/// A new session for this call, owned by this node.
fn new_session(call: &Call, protocol_version: String) -> SessionToken {
    SessionToken {
        owner: call.node,
        server: call.server.clone(),
        upstream_session: None,
        upstream_version: None,
        protocol_version,
        caller: call.caller.clone(),
        created_ms: now_ms(),
        members: Vec::new(),
        upstream_modern: false,
    }
}

/// Seals `token` into the answer's `Mcp-Session-Id` and records it on the call.
fn hand_out(call: &mut Call, sealer: &Sealer, token: SessionToken, resp: &mut Response) {
    if let Ok(v) = HeaderValue::from_str(&sealer.seal(&token)) {
        resp.headers_mut().insert("mcp-session-id", v);
    }
    call.session = Some(token);
}

/// A protocol error answered with 400 before anything is forwarded.
fn bad_request(code: i64, message: &str, data: Option<Value>) -> (Response, Outcome) {
    rejected(protocol_error(StatusCode::BAD_REQUEST, Value::Null, code, message, data))
}

fn unsupported_version(requested: &str, supported: &[&str]) -> Response {
    protocol_error(
        StatusCode::BAD_REQUEST,
        Value::Null,
        jsonrpc::UNSUPPORTED_VERSION,
        "Unsupported protocol version",
        Some(json!({"supported": supported, "requested": requested})),
    )
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn post_mcp(
    State(p): State<Arc<Proxy>>,
    Path(server): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let mut call = p.call(server, "POST");
    let (resp, outcome) = p.post(&mut call, &headers, body).await;
    p.finish(&call, &outcome, started);
    resp
}

async fn post_aggregate(
    State(p): State<Arc<Proxy>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let mut call = p.call(String::new(), "POST");
    let (resp, outcome) = p.post(&mut call, &headers, body).await;
    p.finish(&call, &outcome, started);
    resp
}

async fn get_aggregate(State(p): State<Arc<Proxy>>, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let mut call = p.call(String::new(), "GET");
    let (resp, outcome) = p.aggregate_stream_or_delete(&mut call, &headers, reqwest::Method::GET).await;
    p.finish(&call, &outcome, started);
    resp
}

async fn delete_aggregate(State(p): State<Arc<Proxy>>, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let mut call = p.call(String::new(), "DELETE");
    let (resp, outcome) = p.aggregate_stream_or_delete(&mut call, &headers, reqwest::Method::DELETE).await;
    p.finish(&call, &outcome, started);
    resp
}

async fn get_mcp(State(p): State<Arc<Proxy>>, Path(server): Path<String>, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let mut call = p.call(server, "GET");
    let (resp, outcome) = p.stream_or_delete(&mut call, &headers, reqwest::Method::GET).await;
    p.finish(&call, &outcome, started);
    resp
}

async fn delete_mcp(State(p): State<Arc<Proxy>>, Path(server): Path<String>, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let mut call = p.call(server, "DELETE");
    let (resp, outcome) = p.stream_or_delete(&mut call, &headers, reqwest::Method::DELETE).await;
    p.finish(&call, &outcome, started);
    resp
}

/// 405 to a GET, as a server without a stream of its own answers.
fn no_server_stream() -> (Response, Outcome) {
    let mut r = StatusCode::METHOD_NOT_ALLOWED.into_response();
    r.headers_mut().insert("allow", HeaderValue::from_static("POST, DELETE"));
    (r, Outcome::Rejected { status: 405 })
}

fn denied(d: Denial) -> (Response, Outcome) {
    let r = d.reason;
    (d.into_response(), Outcome::Denied(r))
}

fn rejected(resp: Response) -> (Response, Outcome) {
    let status = resp.status().as_u16();
    (resp, Outcome::Rejected { status })
}

impl Proxy {
    async fn post(
        &self,
        call: &mut Call,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> (Response, Outcome) {
        if let Err(d) = self.check_origin(call, headers) {
            return denied(d);
        }
        let body = match body {
            Ok(b) => b,
            Err(e) => return bad_request(jsonrpc::PARSE_ERROR, &e.body_text(), None),
        };
        let header_version = header(headers, "mcp-protocol-version");
        if let Some(v) = header_version {
            if !version::is_legacy(v) && !version::is_modern(v) {
                let all: Vec<&str> = version::MODERN.iter().chain(version::LEGACY.iter()).copied().collect();
                return rejected(unsupported_version(v, &all));
            }
        }
        let parsed = match jsonrpc::parse(&body, self.limits.max_json_depth) {
            Ok(b) => b,
            Err(e) => return bad_request(e.code(), &e.to_string(), None),
        };
        let (id, is_initialize) = match &parsed {
            RpcBody::Single(m) => {
                call.method = m.method.clone();
                call.target = m.target_name();
                let modern = header_version.is_some_and(version::is_modern)
                    || m.method.as_deref() == Some("server/discover")
                    || m.has_envelope(modern::META_VERSION);
                if modern {
                    if call.server.is_empty() {
                        return self.aggregate_modern(call, headers, &body, m, m.id_value()).await;
                    }
                    return self.modern(call, headers, body.clone(), m, m.id_value()).await;
                }
                (m.id_value(), m.method.as_deref() == Some("initialize"))
            }
            RpcBody::Batch(v) => (Value::Null, v.iter().any(|m| m.method.as_deref() == Some("initialize"))),
        };
        if is_initialize {
            if matches!(parsed, RpcBody::Batch(_)) {
                return bad_request(jsonrpc::INVALID_REQUEST, "initialize must not be part of a JSON-RPC batch", None);
            }
            if call.server.is_empty() {
                return self.aggregate_initialize(call, headers, &body, id).await;
            }
            return self.initialize(call, headers, body, id).await;
        }
        let token = match self.session(call, headers) {
            Ok(t) => t,
            Err(d) => return denied(d.with_id(id)),
        };
        if let RpcBody::Batch(_) = parsed {
            let v = header(headers, "mcp-protocol-version").unwrap_or(&token.protocol_version);
            if !version::batches_allowed(v) {
                return bad_request(
                    jsonrpc::INVALID_REQUEST,
                    &format!("JSON-RPC batches are not allowed at protocol version {v}"),
                    None,
                );
            }
        }
        if call.server.is_empty() {
            return self.aggregate_request(call, headers, body, &parsed, token, id).await;
        }
        let upstream_session = token.upstream_session.clone();
        let owner = token.owner;
        let upstream_modern = token.upstream_modern;
        call.session = Some(token);
        let rec = match self.admit(call) {
            Ok(r) => r,
            Err(d) => return denied(d.with_id(id)),
        };
        if upstream_modern {
            let c: &Call = call;
            return match self.until_cut(c, self.legacy_to_modern(c, &rec, &parsed, &body, id.clone())).await {
                Ok(r) => r,
                Err(d) => denied(d.with_id(id)),
            };
        }
        if rec.spec.transport == Transport::Stdio {
            if owner != self.cluster.id {
                return self.forward_to_owner(call, owner, headers, body, id).await;
            }
            let c: &Call = call;
            let key = header(headers, "mcp-session-id").unwrap_or_default();
            if self.stdio.streams.ended(key) {
                return denied(self.ended_session(c).with_id(id));
            }
            return match self.until_cut(c, self.stdio_request(c, &rec, &body, &parsed, id.clone(), key)).await {
                Ok(r) => r,
                Err(d) => denied(d.with_id(id)),
            };
        }
        let c: &Call = call;
        let exchange = async {
            match self
                .upstream
                .send(
                    reqwest::Method::POST,
                    &Self::upstream_url(&rec),
                    headers,
                    upstream_session.as_deref(),
                    Some(body),
                )
                .await
            {
                Ok(resp) => self.relay(c, resp, Some(id.clone())).await,
                Err(e) => denied(self.deny(c, e.reason, "upstream", e.message).with_id(id.clone())),
            }
        };
        match self.until_cut(c, exchange).await {
            Ok(r) => r,
            Err(d) => denied(d.with_id(id)),
        }
    }

    /// initialize: forwarded without a session; the answer is read whole (it is small) so the
    /// upstream's version can be checked against the pin before the session is handed out.
    async fn initialize(&self, call: &mut Call, headers: &HeaderMap, body: Bytes, id: Value) -> (Response, Outcome) {
        let rec = match self.admit(call) {
            Ok(r) => r,
            Err(d) => return denied(d.with_id(id)),
        };
        let sealer = match self.sealer(call) {
            Ok(s) => s,
            Err(d) => return denied(d.with_id(id)),
        };
        if rec.spec.transport == Transport::Stdio {
            return self.stdio_initialize(call, &rec, &sealer, &body, id).await;
        }
        let url = Self::upstream_url(&rec);
        let agent_body = body.clone();
        let resp = match self.upstream.send(reqwest::Method::POST, &url, headers, None, Some(body)).await {
            Ok(r) => r,
            Err(e) => return denied(self.deny(call, e.reason, "upstream", e.message).with_id(id)),
        };
        let status = resp.status();
        let content_type = resp.headers().get("content-type").cloned();
        let upstream_session = header(resp.headers(), "mcp-session-id").map(str::to_string);
        let bytes = match read_limited(resp, MAX_INITIALIZE_ANSWER).await {
            Ok(b) => b,
            Err(message) => {
                return denied(self.deny(call, Reason::UpstreamUnavailable, "upstream", message).with_id(id))
            }
        };
        if !status.is_success() {
            // A modern-only upstream refuses initialize with -32022: joch speaks its era for the caller.
            let refused = answer_message(content_type.as_ref(), &bytes)
                .and_then(|a| a["error"]["code"].as_i64())
                .is_some_and(|c| c == jsonrpc::UNSUPPORTED_VERSION);
            if refused {
                if let Some(r) = self.initialize_via_modern(call, &rec, &sealer, &agent_body, id.clone()).await {
                    return r;
                }
            }
            return (
                passthrough(status, content_type, Body::from(bytes)),
                Outcome::Forwarded { status: status.as_u16() },
            );
        }
        let message = answer_message(content_type.as_ref(), &bytes);
        let result = message.as_ref().and_then(|m| m.get("result"));
        let upstream_version = result.and_then(|r| r["serverInfo"]["version"].as_str()).map(str::to_string);
        let protocol_version =
            result.and_then(|r| r["protocolVersion"].as_str()).unwrap_or(version::LEGACY_DEFAULT).to_string();
        if result.is_some() {
            if let Err(d) = check_pin(call, &rec, upstream_version.as_deref()) {
                // End the upstream session we will not hand out.
                if let Some(sid) = upstream_session {
                    let up = self.upstream.clone();
                    let h = headers.clone();
                    tokio::spawn(async move {
                        let _ = up.send(reqwest::Method::DELETE, &url, &h, Some(&sid), None).await;
                    });
                }
                return denied(d.with_id(id));
            }
        }
        let token = SessionToken { upstream_session, upstream_version, ..new_session(call, protocol_version) };
        let mut out = passthrough(status, content_type, Body::from(bytes));
        hand_out(call, &sealer, token, &mut out);
        (out, Outcome::Forwarded { status: status.as_u16() })
    }

    /// GET (the server's stream) and DELETE (end the session).
    async fn stream_or_delete(
        &self,
        call: &mut Call,
        headers: &HeaderMap,
        method: reqwest::Method,
    ) -> (Response, Outcome) {
        let token = match self.check_origin(call, headers).and_then(|()| self.session(call, headers)) {
            Ok(t) => t,
            Err(d) => return denied(d),
        };
        let upstream_session = token.upstream_session.clone();
        let upstream_modern = token.upstream_modern;
        let owner = token.owner;
        call.session = Some(token);
        let rec = match self.admit(call) {
            Ok(r) => r,
            Err(d) => return denied(d),
        };
        if rec.spec.transport == Transport::Stdio {
            // The session's server stream and its buffer live on the node that runs the child.
            if owner != self.cluster.id {
                return self.forward_to_owner(call, owner, headers, Bytes::new(), Value::Null).await;
            }
            let key = header(headers, "mcp-session-id").unwrap_or_default();
            if self.stdio.streams.ended(key) {
                return denied(self.ended_session(call));
            }
            if method == reqwest::Method::GET {
                let source = self.stdio.streams.queue(key, &call.server).open(header(headers, "last-event-id"));
                return (self.stream(call, source, None, None), Outcome::Forwarded { status: 200 });
            }
            let orphaned = self.stdio.streams.remove(key);
            self.stdio.unsubscribe(&rec, orphaned);
            return (StatusCode::OK.into_response(), Outcome::Forwarded { status: 200 });
        }
        if upstream_modern {
            // A modern-only upstream has no sessions: the session's stream is a listen to it,
            // and there is nothing to end but joch's own (stateless) session.
            if method == reqwest::Method::GET {
                if let Some(r) = self.listen_as_session_stream(call, &rec).await {
                    return r;
                }
                return no_server_stream();
            }
            return (StatusCode::OK.into_response(), Outcome::Forwarded { status: 200 });
        }
        let resp = match self
            .upstream
            .send(method, &Self::upstream_url(&rec), headers, upstream_session.as_deref(), None)
            .await
        {
            Ok(r) => r,
            Err(e) => return denied(self.deny(call, e.reason, "upstream", e.message)),
        };
        self.relay(call, resp, None).await
    }

    /// Passes an upstream answer on: SSE event by event (cut on quarantine), JSON whole.
    async fn relay(&self, call: &Call, resp: reqwest::Response, request_id: Option<Value>) -> (Response, Outcome) {
        self.relay_with(call, resp, request_id, None).await
    }

    /// [`Proxy::relay`], each SSE event rewritten by `transform` on its way.
    async fn relay_with(
        &self,
        call: &Call,
        resp: reqwest::Response,
        request_id: Option<Value>,
        transform: Option<EventMap>,
    ) -> (Response, Outcome) {
        let status = resp.status();
        let outcome = Outcome::Forwarded { status: status.as_u16() };
        let content_type = resp.headers().get("content-type").cloned();
        if status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT {
            return (status.into_response(), outcome);
        }
        let is_sse = is_type(content_type.as_ref(), "text/event-stream");
        if is_sse && status.is_success() {
            return (self.stream(call, resp.bytes_stream(), request_id, transform), outcome);
        }
        match read_limited(resp, MAX_JSON_ANSWER).await {
            Ok(bytes) => {
                let mut bytes = bytes;
                for s in &self.stages {
                    s.on_event(call, &mut bytes);
                }
                (passthrough(status, content_type, Body::from(bytes)), outcome)
            }
            Err(message) => denied(self.deny(call, Reason::UpstreamUnavailable, "upstream", message)),
        }
    }

    /// Forwards an SSE stream event by event. The stream ends when the upstream ends it, the
    /// agent goes away, or the server is quarantined, deleted or re-pinned away from the session's
    /// version (then a POST stream's pending request gets the denial as its answer first).
    ///
    /// `source` is the upstream's SSE body as it arrives (an HTTP response, a stdio child's
    /// messages already framed as events, or a session's server stream).
    fn stream<S, E>(&self, call: &Call, source: S, request_id: Option<Value>, transform: Option<EventMap>) -> Response
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
        let registry = self.cluster.registry.clone();
        let mut changes = registry.subscribe();
        let stages = self.stages.clone();
        let call = call.clone();
        let keepalive = self.limits.keepalive;
        tokio::spawn(async move {
            metrics::gauge!("joch_mcp_open_streams").increment(1.0);
            let mut upstream = std::pin::pin!(source);
            let mut split = EventSplitter::default();
            let mut ka = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
            let cut = 'relay: loop {
                tokio::select! {
                    chunk = upstream.next() => match chunk {
                        Some(Ok(b)) => match split.push(&b) {
                            Ok(events) => {
                                for mut ev in events {
                                    if let Some(t) = &transform {
                                        ev = t(ev);
                                        if ev.is_empty() {
                                            continue;
                                        }
                                    }
                                    for s in &stages {
                                        s.on_event(&call, &mut ev);
                                    }
                                    if tx.send(Ok(ev)).await.is_err() {
                                        break 'relay None;
                                    }
                                }
                                ka.reset();
                            }
                            Err(e) => {
                                tracing::warn!(server = %call.server, error = %e, "closing stream");
                                break None;
                            }
                        },
                        Some(Err(e)) => {
                            tracing::debug!(server = %call.server, error = %e, "upstream stream ended with an error");
                            break None;
                        }
                        None => {
                            if let Some(rest) = split.finish() {
                                let rest = match &transform {
                                    Some(t) => t(rest),
                                    None => rest,
                                };
                                if !rest.is_empty() {
                                    let _ = tx.send(Ok(rest)).await;
                                }
                            }
                            break None;
                        }
                    },
                    r = changes.changed() => {
                        if r.is_err() {
                            break None;
                        }
                        // The aggregate stream (no server) is cut member by member by its sources.
                        if call.server.is_empty() {
                            continue;
                        }
                        let state = registry.load();
                        if let Err(d) = admit(&call, &state, Ok(())) {
                            break Some(d);
                        }
                    }
                    _ = ka.tick() => {
                        if tx.send(Ok(Bytes::from_static(b": keep-alive\n\n"))).await.is_err() {
                            break None;
                        }
                    }
                    _ = tx.closed() => break None,
                }
            };
            if let Some(d) = cut {
                metrics::counter!("joch_mcp_streams_cut_total", "reason" => d.reason.as_str()).increment(1);
                tracing::info!(server = %call.server, reason = d.reason.as_str(), "stream cut");
                if let Some(id) = request_id {
                    let _ = tx.send(Ok(sse::message_event(&d.with_id(id).body().to_string()))).await;
                }
            }
            metrics::gauge!("joch_mcp_open_streams").decrement(1.0);
        });
        let body = Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let mut r = Response::new(body);
        r.headers_mut().insert("content-type", HeaderValue::from_static("text/event-stream"));
        r.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache, no-transform"));
        r.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
        r
    }
}

impl Proxy {
    /// initialize for a stdio server: answered from the child's own handshake with joch.
    async fn stdio_initialize(
        &self,
        call: &mut Call,
        rec: &joch_raft_store::ServerRecord,
        sealer: &Sealer,
        body: &[u8],
        id: Value,
    ) -> (Response, Outcome) {
        let child = match self.stdio.child(rec).await {
            Ok(c) => c,
            Err(e) => return denied(self.deny(call, e.reason, "upstream.stdio", e.message).with_id(id)),
        };
        if let Err(d) = check_pin(call, rec, child.version()) {
            return denied(d.with_id(id));
        }
        let requested = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["params"]["protocolVersion"].as_str().map(str::to_string))
            .filter(|v| version::is_legacy(v));
        let mut result = child.init.clone();
        let protocol_version = requested
            .or_else(|| result["protocolVersion"].as_str().map(str::to_string))
            .unwrap_or_else(|| version::LEGACY_DEFAULT.into());
        result["protocolVersion"] = json!(protocol_version);
        let token = SessionToken {
            upstream_version: child.version().map(str::to_string),
            ..new_session(call, protocol_version)
        };
        let body = json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string();
        let mut out = ([("content-type", "application/json")], body).into_response();
        hand_out(call, sealer, token, &mut out);
        (out, Outcome::Forwarded { status: 200 })
    }

    /// A request for a stdio server on the node that runs its child.
    async fn stdio_request(
        &self,
        call: &Call,
        rec: &joch_raft_store::ServerRecord,
        body: &[u8],
        parsed: &RpcBody,
        id: Value,
        session_key: &str,
    ) -> (Response, Outcome) {
        let RpcBody::Single(m) = parsed else {
            return bad_request(jsonrpc::INVALID_REQUEST, "JSON-RPC batches are not bridged to stdio servers", None);
        };
        // The child is shared: its subscriptions are the union of its sessions'. An update goes
        // to the sessions that subscribed; the child hears unsubscribe only from the last one.
        match (m.method.as_deref(), m.target_name()) {
            (Some("resources/subscribe"), Some(uri)) => self.stdio.streams.subscribe(session_key, &call.server, &uri),
            (Some("resources/unsubscribe"), Some(uri))
                if self.stdio.streams.unsubscribe(session_key, &call.server, &uri) =>
            {
                let answer = json!({"jsonrpc": "2.0", "id": id, "result": {}}).to_string();
                return (([("content-type", "application/json")], answer).into_response(), Outcome::Answered);
            }
            _ => {}
        }
        if !m.is_request() {
            // Notifications (initialized: joch already sent it; cancellations) and answers to
            // server requests are accepted and not forwarded.
            return (StatusCode::ACCEPTED.into_response(), Outcome::Forwarded { status: 202 });
        }
        let child = match self.stdio.child(rec).await {
            Ok(c) => c,
            Err(e) => return denied(self.deny(call, e.reason, "upstream.stdio", e.message).with_id(id)),
        };
        let Ok(msg) = serde_json::from_slice::<Value>(body) else {
            return rejected(protocol_error(StatusCode::BAD_REQUEST, id, jsonrpc::PARSE_ERROR, "parse error", None));
        };
        let wants_progress = msg.pointer("/params/_meta/progressToken").is_some();
        let mut rx = match child.call(msg) {
            Ok(rx) => rx,
            Err(e) => return denied(self.deny(call, e.reason, "upstream.stdio", e.message).with_id(id)),
        };
        if wants_progress {
            // Progress notifications, then the answer, as SSE events.
            let source = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
                .map(|v: Value| Ok::<_, Infallible>(sse::message_event(&v.to_string())));
            return (self.stream(call, source, Some(id), None), Outcome::Forwarded { status: 200 });
        }
        while let Some(v) = rx.recv().await {
            if v.get("result").is_some() || v.get("error").is_some() {
                let mut bytes = Bytes::from(v.to_string());
                for s in &self.stages {
                    s.on_event(call, &mut bytes);
                }
                return (
                    ([("content-type", "application/json")], bytes).into_response(),
                    Outcome::Forwarded { status: 200 },
                );
            }
        }
        denied(
            self.deny(
                call,
                Reason::UpstreamUnavailable,
                "upstream.stdio",
                "the stdio server ended the call without an answer",
            )
            .with_id(id),
        )
    }

    /// Sends a request over the mesh to the node that owns the session (its stdio child lives
    /// there). If that node is gone, the session is too: 404, and the agent re-initializes.
    async fn forward_to_owner(
        &self,
        call: &Call,
        owner: u64,
        headers: &HeaderMap,
        body: Bytes,
        id: Value,
    ) -> (Response, Outcome) {
        let req = McpForward {
            server: call.server.clone(),
            session_id: header(headers, "mcp-session-id").unwrap_or_default().to_string(),
            protocol_version: header(headers, "mcp-protocol-version").map(str::to_string),
            body: body.to_vec(),
            method: call.http_method.to_string(),
            last_event_id: header(headers, "last-event-id").map(str::to_string),
        };
        metrics::counter!("joch_mcp_forwarded_total").increment(1);
        match self.cluster.forward_mcp(owner, req, self.limits.upstream_timeout).await {
            Ok(Some((head, body))) => {
                let status = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
                let mut r = Response::new(Body::from_stream(body.map(Ok::<_, Infallible>)));
                *r.status_mut() = status;
                if let Some(ct) = head.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                    r.headers_mut().insert("content-type", ct);
                }
                (r, Outcome::Forwarded { status: status.as_u16() })
            }
            Ok(None) => denied(
                self.deny(
                    call,
                    Reason::SessionUnknown,
                    "mcp.session.owner",
                    format!("the node that owned this session ({owner}) has left the cluster: re-initialize"),
                )
                .with_id(id),
            ),
            Err(e) => denied(
                self.deny(
                    call,
                    Reason::SessionUnknown,
                    "mcp.session.owner",
                    format!("the node that owns this session ({owner}) cannot be reached ({e}): re-initialize"),
                )
                .with_id(id),
            ),
        }
    }
}

impl DataPlane for Proxy {
    fn forwarded(&self, req: McpForward) -> futures::future::BoxFuture<'_, (McpHead, crate::mesh::BodyStream)> {
        Box::pin(async move {
            let started = Instant::now();
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static("application/json"));
            headers.insert("accept", HeaderValue::from_static("application/json, text/event-stream"));
            if let Ok(v) = HeaderValue::from_str(&req.session_id) {
                headers.insert("mcp-session-id", v);
            }
            if let Some(v) = req.protocol_version.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert("mcp-protocol-version", v);
            }
            if let Some(v) = req.last_event_id.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert("last-event-id", v);
            }
            let (call, resp, outcome) = match req.method.as_str() {
                "GET" | "DELETE" => {
                    let (name, method) = match req.method.as_str() {
                        "GET" => ("GET", reqwest::Method::GET),
                        _ => ("DELETE", reqwest::Method::DELETE),
                    };
                    let mut call = self.call(req.server, name);
                    let (resp, outcome) = if call.server.is_empty() {
                        self.aggregate_stream_or_delete(&mut call, &headers, method).await
                    } else {
                        self.stream_or_delete(&mut call, &headers, method).await
                    };
                    (call, resp, outcome)
                }
                _ => {
                    let mut call = self.call(req.server, "POST");
                    let (resp, outcome) = self.post(&mut call, &headers, Ok(Bytes::from(req.body))).await;
                    (call, resp, outcome)
                }
            };
            self.finish(&call, &outcome, started);
            let head = McpHead {
                status: resp.status().as_u16(),
                content_type: resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string),
            };
            // The body goes back as it is produced: an SSE answer stays a stream across the mesh.
            let body = resp
                .into_body()
                .into_data_stream()
                .take_while(|c| std::future::ready(c.is_ok()))
                .filter_map(|c| std::future::ready(c.ok()));
            (head, Box::pin(body) as crate::mesh::BodyStream)
        })
    }
}

/// Whether a `content-type` is this media type (parameters such as `charset` ignored).
fn is_type(content_type: Option<&HeaderValue>, media: &str) -> bool {
    content_type.and_then(|c| c.to_str().ok()).is_some_and(|c| c.starts_with(media))
}

/// The JSON-RPC answer (an object with `result` or `error`) in a JSON or SSE body; `None` for
/// anything else, so callers may index the answer as an object whatever the upstream sent.
fn answer_message(content_type: Option<&HeaderValue>, bytes: &[u8]) -> Option<Value> {
    let is_answer = |v: &Value| v.is_object() && (v.get("result").is_some() || v.get("error").is_some());
    let is_sse = is_type(content_type, "text/event-stream");
    if !is_sse {
        return serde_json::from_slice::<Value>(bytes).ok().filter(is_answer);
    }
    let mut split = EventSplitter::default();
    let mut events = split.push(bytes).unwrap_or_default();
    events.extend(split.finish());
    events.iter().filter_map(|e| sse::json(e)).find(is_answer)
}

async fn read_limited(resp: reqwest::Response, limit: usize) -> Result<Bytes, String> {
    let mut out = bytes::BytesMut::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| format!("reading the upstream's answer: {e}"))?;
        if out.len() + chunk.len() > limit {
            return Err(format!("the upstream's answer exceeds {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

fn passthrough(status: reqwest::StatusCode, content_type: Option<HeaderValue>, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    if let Some(ct) = content_type {
        r.headers_mut().insert("content-type", ct);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_rpc_answers_are_answers() {
        let json = HeaderValue::from_static("application/json");
        let sse = HeaderValue::from_static("text/event-stream");
        assert!(answer_message(Some(&json), br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).is_some());
        for junk in [&b"42"[..], b"[1,2]", b"\"x\"", b"{}", b"{\"id\":1}", b"not json"] {
            assert!(answer_message(Some(&json), junk).is_none(), "{}", String::from_utf8_lossy(junk));
        }
        let events = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\ndata: 7\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"error\":{}}\n\n";
        assert_eq!(answer_message(Some(&sse), events).unwrap()["id"], 2);
    }
}
