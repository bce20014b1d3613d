//! The front: the MCP routes, the request body read under its limits, the node's concurrency
//! limit, and for each request: origin, protocol version, the JSON-RPC body parsed once, the
//! server's existence, the session; then the layer for its endpoint and era. Every answer goes
//! out through the exit, and every request is finished (counted, logged) once.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;

use super::admission::{Call, Rpc};
use super::deny::{Denial, Reason};
use super::exit::{Answer, Reply};
use super::request::Inbound;
use super::stages::Outcome;
use super::Proxy;
use crate::auth::agent::Caller;
use crate::mcp::jsonrpc::{self, Body as RpcBody, Message};
use crate::mcp::session::{SessionError, SessionToken};
use crate::mcp::version;

impl Proxy {
    /// The MCP routes. Bodies are read whole, under the size limit and the client timeout,
    /// before any handler runs; beyond `proxy.max_concurrent_requests` a node answers 503.
    pub fn router(self: Arc<Self>) -> Router {
        let limit = self.limits.max_body_bytes;
        Router::new()
            .route("/.well-known/oauth-protected-resource", get(resource_metadata))
            .route("/.well-known/oauth-protected-resource/{*resource}", get(resource_metadata))
            .route("/mcp/{server}", post(server_route).get(server_route).delete(server_route))
            .route("/mcp", post(aggregate_route).get(aggregate_route).delete(aggregate_route))
            .route("/mcp/v/{name}", post(virtual_route).get(virtual_route).delete(virtual_route))
            .merge(self.catalog.clone().router())
            .layer(axum::middleware::from_fn_with_state(self.clone(), read_body))
            .layer(axum::middleware::from_fn_with_state(self.clone(), concurrency))
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self)
    }

    /// Serves one request (received here, or relayed by a peer) and finishes it. Who calls is
    /// settled first: without a valid credential nothing else about the request is looked at.
    pub(crate) async fn serve(&self, inbound: Inbound) -> Response {
        let started = Instant::now();
        let access = self.node.registry.load().registry.access.clone();
        let (call, reply) = match self.agents.authenticate(&access, inbound.header("authorization")) {
            Ok(caller) => {
                let mut call = self.call(
                    inbound.server.clone(),
                    inbound.http_method,
                    caller,
                    &inbound.headers,
                    inbound.exec.as_deref(),
                );
                let reply = match inbound.http_method {
                    "POST" => self.post(&mut call, &inbound).await,
                    _ => self.stream_or_delete(&mut call, &inbound).await,
                };
                (call, reply)
            }
            Err(why) => {
                let call = self.call(
                    inbound.server.clone(),
                    inbound.http_method,
                    Caller::unauthenticated(),
                    &inbound.headers,
                    inbound.exec.as_deref(),
                );
                let challenge = format!("Bearer resource_metadata=\"{}\"", self.metadata_url(&inbound));
                let d =
                    call.deny(Reason::Unauthenticated, "agent.credential", why.to_string()).with_challenge(challenge);
                (call, Reply::from(d))
            }
        };
        let (resp, outcome) = self.exit.respond(&call, reply).await;
        self.finish(&call, &outcome, started);
        resp
    }

    /// Where this node's protected-resource metadata is (RFC 9728), as the agent addressed it.
    fn metadata_url(&self, inb: &Inbound) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let host = inb.header("host").unwrap_or("localhost");
        format!("{scheme}://{host}/.well-known/oauth-protected-resource")
    }

    fn check_origin(&self, call: &Call, inb: &Inbound) -> Result<(), Denial> {
        match inb.header("origin") {
            None => Ok(()),
            Some(o) if self.limits.allowed_origins.iter().any(|a| a == o) => Ok(()),
            Some(o) => Err(call.deny(
                Reason::OriginNotAllowed,
                "proxy.allowed_origins",
                format!("origin {o:?} is not allowed (proxy.allowed_origins)"),
            )),
        }
    }

    /// A request to a server that is not registered is answered 404 before anything else about
    /// it is settled (a session, a handshake): the client learns what is wrong at once.
    fn registered(&self, call: &Call) -> Result<(), Denial> {
        let reg = &self.node.registry.load().registry;
        if let Some(v) = call.view() {
            if reg.virtual_servers.contains_key(v) {
                return Ok(());
            }
            return Err(call.deny(
                Reason::ServerNotRegistered,
                "registry.registered",
                format!("virtual server {v:?} does not exist"),
            ));
        }
        if call.server.is_empty() || reg.servers.contains_key(&call.server) {
            return Ok(());
        }
        Err(call.deny(
            Reason::ServerNotRegistered,
            "registry.registered",
            format!("MCP server {:?} is not registered", call.server),
        ))
    }

    /// Opens the session a request names, bound to this server and caller.
    pub(super) fn session(&self, call: &Call, inb: &Inbound) -> Result<SessionToken, Denial> {
        let Some(id) = inb.session_id() else {
            return Err(call.deny(
                Reason::SessionRequired,
                "mcp.session",
                "Bad Request: Mcp-Session-Id header is required (send initialize first)",
            ));
        };
        let token = self.sealer(call)?.open(id, crate::cluster::now_ms()).map_err(|e| match e {
            SessionError::Expired => call.deny(
                Reason::SessionUnknown,
                "proxy.session_max_age",
                "Session not found: it expired (proxy.session_max_age); re-initialize",
            ),
            SessionError::Invalid => {
                call.deny(Reason::SessionUnknown, "mcp.session", "Session not found: re-initialize")
            }
        })?;
        if token.server != call.server || token.caller != call.caller.principal() {
            return Err(call.deny(Reason::SessionUnknown, "mcp.session", "Session not found: re-initialize"));
        }
        Ok(token)
    }

    /// A stdio session ended with DELETE.
    pub(super) fn ended_session(&self, call: &Call) -> Denial {
        call.deny(Reason::SessionUnknown, "mcp.session", "Session not found: it was ended (DELETE); re-initialize")
    }

    pub(super) async fn post(&self, call: &mut Call, inb: &Inbound) -> Reply {
        if let Err(d) = self.check_origin(call, inb) {
            return d.into();
        }
        let header_version = inb.header("mcp-protocol-version");
        if let Some(v) = header_version {
            if !version::is_legacy(v) && !version::is_modern(v) {
                let all: Vec<&str> = version::MODERN.iter().chain(version::LEGACY.iter()).copied().collect();
                return Answer::bad_request(
                    jsonrpc::UNSUPPORTED_VERSION,
                    "Unsupported protocol version",
                    Some(serde_json::json!({"supported": all, "requested": v})),
                )
                .into();
            }
        }
        let m = match jsonrpc::parse(&inb.body, self.limits.max_json_depth) {
            Ok(RpcBody::Single(m)) => m,
            Ok(RpcBody::Batch(v)) => return self.batch(call, inb, &v).await,
            Err(e) => return Answer::bad_request(e.code(), &e.to_string(), None).into(),
        };
        let modern = header_version.is_some_and(version::is_modern)
            || m.method.as_deref() == Some("server/discover")
            || m.is_modern();
        let initialize = m.method.as_deref() == Some("initialize");
        call.rpc = Some(Arc::new(Rpc { msg: m, body: inb.body.clone() }));
        // The guardians see the agent's message before anything is decided about it
        // (`guardian/`): a modified message replaces the request for everything after, so
        // admission and the policies decide on what is really sent. A request a peer relayed
        // here was shown to them by that peer.
        let guarded;
        let inb = match self.guard(call, inb).await {
            Err(d) => return d.into(),
            Ok(None) => inb,
            Ok(Some(g)) => {
                guarded = g;
                &guarded
            }
        };
        // A call a policy holds for an approval, from a client that takes SSE (`held.rs`).
        if let Some(held) = self.held_stream(call, inb) {
            return held;
        }
        if modern {
            if call.view().is_some() {
                if let Err(d) = self.registered(call) {
                    return d.into();
                }
            }
            return match inb.aggregate() {
                true => self.aggregate_modern(call, inb).await,
                false => self.modern(call, inb).await,
            };
        }
        if let Err(d) = self.registered(call) {
            return d.into();
        }
        if initialize {
            return match inb.aggregate() {
                true => self.aggregate_initialize(call, inb).await,
                false => self.initialize(call, inb).await,
            };
        }
        let token = match self.session(call, inb) {
            Ok(t) => t,
            Err(d) => return d.into(),
        };
        match inb.aggregate() {
            true => self.aggregate_request(call, inb, token).await,
            false => self.session_request(call, inb, token).await,
        }
    }

    /// The guardians' outbound hooks on the agent's message (`call.rpc`); `Some`: the request
    /// as a guardian modified it (`call.rpc` is updated too).
    async fn guard(&self, call: &mut Call, inb: &Inbound) -> Result<Option<Inbound>, Denial> {
        if inb.exec.is_some() || !self.guardian.any() {
            return Ok(None);
        }
        let server = self.guardian.server_of(call);
        let Some(body) = self.guardian.outbound(call, &server).await? else { return Ok(None) };
        let m = match jsonrpc::parse(&body, self.limits.max_json_depth) {
            Ok(RpcBody::Single(m)) => m,
            _ => {
                return Err(call.deny(
                    Reason::GuardianDenied,
                    "hook",
                    "a guardian's modification is not one JSON-RPC message; denied (modify_invalid)",
                ))
            }
        };
        call.rpc = Some(Arc::new(Rpc { msg: m, body: body.clone() }));
        Ok(Some(Inbound {
            server: inb.server.clone(),
            http_method: inb.http_method,
            headers: inb.headers.clone(),
            body,
            exec: None,
        }))
    }

    /// A JSON-RPC batch: only at 2025-03-26, only in a session with an HTTP upstream (passed on
    /// as it is).
    async fn batch(&self, call: &mut Call, inb: &Inbound, msgs: &[Message]) -> Reply {
        if msgs.iter().any(|m| m.method.as_deref() == Some("initialize")) {
            return Answer::bad_request(
                jsonrpc::INVALID_REQUEST,
                "initialize must not be part of a JSON-RPC batch",
                None,
            )
            .into();
        }
        if let Err(d) = self.registered(call) {
            return d.into();
        }
        if self.guardian.guards(&call.server) {
            // Each message of a batch would need its own verdict, and a batch is all or nothing.
            return Answer::bad_request(
                jsonrpc::INVALID_REQUEST,
                &format!("JSON-RPC batches are not accepted for {:?}: a guardian hook sees its messages one by one; send them singly", call.server),
                None,
            )
            .into();
        }
        let token = match self.session(call, inb) {
            Ok(t) => t,
            Err(d) => return d.into(),
        };
        let v = inb.header("mcp-protocol-version").unwrap_or(&token.protocol_version).to_string();
        if !version::batches_allowed(&v) {
            return Answer::bad_request(
                jsonrpc::INVALID_REQUEST,
                &format!("JSON-RPC batches are not allowed at protocol version {v}"),
                None,
            )
            .into();
        }
        if inb.aggregate() {
            return Answer::bad_request(
                jsonrpc::INVALID_REQUEST,
                "JSON-RPC batches are not accepted on the aggregate endpoint",
                None,
            )
            .into();
        }
        self.session_batch(call, inb, token).await
    }

    /// GET (the session's server stream) and DELETE (its end).
    async fn stream_or_delete(&self, call: &mut Call, inb: &Inbound) -> Reply {
        if let Err(d) = self.check_origin(call, inb).and_then(|()| self.registered(call)) {
            return d.into();
        }
        let token = match self.session(call, inb) {
            Ok(t) => t,
            Err(d) => return d.into(),
        };
        match inb.aggregate() {
            true => self.aggregate_stream_or_delete(call, inb, token).await,
            false => self.session_stream_or_delete(call, inb, token).await,
        }
    }
}

/// RFC 9728 protected-resource metadata: the MCP endpoints of this fleet (as the agent addressed
/// it) and the identity providers whose tokens it accepts. Agent tokens minted by `joch agent
/// create` need no authorization server.
async fn resource_metadata(State(p): State<Arc<Proxy>>, headers: HeaderMap) -> Response {
    let scheme = if p.tls { "https" } else { "http" };
    let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    let issuers: Vec<String> = p.node.registry.load().registry.access.idps.values().map(|i| i.issuer.clone()).collect();
    let body = serde_json::json!({
        "resource": format!("{scheme}://{host}/mcp"),
        "authorization_servers": issuers,
        "bearer_methods_supported": ["header"],
        "resource_name": "joch MCP gateway",
    });
    ([("content-type", "application/json")], body.to_string()).into_response()
}

/// The HTTP method as the proxy names it (anything but GET and DELETE is handled as a POST).
pub(super) fn http_method(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "DELETE" => "DELETE",
        _ => "POST",
    }
}

async fn server_route(
    State(p): State<Arc<Proxy>>,
    Path(server): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    p.serve(Inbound { server, http_method: http_method(method.as_str()), headers, body, exec: None }).await
}

async fn virtual_route(
    State(p): State<Arc<Proxy>>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    p.serve(Inbound {
        server: format!("v/{name}"),
        http_method: http_method(method.as_str()),
        headers,
        body,
        exec: None,
    })
    .await
}

async fn aggregate_route(State(p): State<Arc<Proxy>>, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    p.serve(Inbound { server: String::new(), http_method: http_method(method.as_str()), headers, body, exec: None })
        .await
}

/// Denies a request before it reached a handler (limits), counted like any other.
fn early(p: &Proxy, call: Call, d: Denial) -> Response {
    let (resp, outcome) = super::exit::Exit::denied(&call, d);
    p.finish(&call, &outcome, Instant::now());
    resp
}

fn server_of(path: &str) -> &str {
    path.strip_prefix("/mcp").unwrap_or_default().trim_start_matches('/')
}

/// The node's concurrency limit: beyond `proxy.max_concurrent_requests` requests in flight
/// (open streams included), a request is answered 503 with `Retry-After` at once, never queued.
async fn concurrency(
    State(p): State<Arc<Proxy>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(permit) = p.in_flight.clone().try_acquire_owned() else {
        let server = server_of(req.uri().path()).to_string();
        let call = p.call(server, http_method(req.method().as_str()), Caller::unauthenticated(), req.headers(), None);
        let d = call.deny(
            Reason::NodeOverloaded,
            "proxy.max_concurrent_requests",
            format!(
                "node {} is at its limit of {} concurrent requests; retry shortly or on another node",
                p.node.id, p.limits.max_concurrent_requests
            ),
        );
        return early(&p, call, d);
    };
    let resp = next.run(req).await;
    // The permit lives as long as the answer's body: a stream holds it until it ends.
    let (parts, body) = resp.into_parts();
    let body = Body::new(HoldPermit { body, _permit: permit });
    Response::from_parts(parts, body)
}

/// A body that holds a permit until it is dropped.
struct HoldPermit {
    body: Body,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl http_body::Body for HoldPermit {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Reads the request body under `proxy.max_body_bytes` and `proxy.client_timeout`: a body too
/// large gets 413, one that does not arrive in time 408, both as JSON-RPC errors.
async fn read_body(State(p): State<Arc<Proxy>>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = req.into_parts();
    let server = server_of(parts.uri.path()).to_string();
    let limit = p.limits.max_body_bytes;
    let deny = |reason, rule: &str, message: String| {
        let call =
            p.call(server.clone(), http_method(parts.method.as_str()), Caller::unauthenticated(), &parts.headers, None);
        let d = call.deny(reason, rule, message);
        early(&p, call, d)
    };
    match tokio::time::timeout(p.limits.client_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => deny(
            Reason::RequestTimeout,
            "proxy.client_timeout",
            format!("the request body did not arrive within {:?}", p.limits.client_timeout),
        ),
        Ok(Err(e)) if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) => {
            deny(Reason::BodyTooLarge, "proxy.max_body_bytes", format!("request body larger than {limit} bytes"))
        }
        Ok(Err(_)) => {
            // The client went away mid-body: nobody to answer.
            let call = p.call(
                server.clone(),
                http_method(parts.method.as_str()),
                Caller::unauthenticated(),
                &parts.headers,
                None,
            );
            p.finish(&call, &Outcome::Rejected { status: 400 }, Instant::now());
            StatusCode::BAD_REQUEST.into_response()
        }
        Ok(Ok(bytes)) => next.run(axum::extract::Request::from_parts(parts, Body::from(bytes))).await,
    }
}
