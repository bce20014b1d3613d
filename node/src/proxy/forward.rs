//! Forwarding over the mesh: a stdio session's requests, wherever they land, are relayed to the
//! node that owns the session (its child and the session's stream live there). The owner admits
//! the request, answers it, runs the stages and counts it; the relaying node only passes the
//! answer on as it streams in (an SSE answer stays a stream across nodes). If the owner is gone,
//! so is the session: 404, and the agent re-initializes.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::admission::Call;
use super::deny::Reason;
use super::exit::Answer;
use super::request::Inbound;
use super::Proxy;
use crate::mesh::{BodyStream, StreamHandler};

/// An MCP request relayed to the node that owns its session.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct McpForward {
    /// Server name (the path's `{server}`; empty for the aggregate endpoint).
    pub server: String,
    /// The agent's (sealed) session id.
    pub session_id: String,
    /// The agent's `MCP-Protocol-Version` header, if any.
    pub protocol_version: Option<String>,
    /// The request body, as received (empty for GET and DELETE).
    pub body: Vec<u8>,
    /// The HTTP method: POST (a message), GET (the session's server stream), DELETE (its end).
    pub method: String,
    /// The agent's `Last-Event-ID` header (GET: where to resume the stream).
    pub last_event_id: Option<String>,
    /// The agent's `Authorization` header: the owner authenticates the agent itself (the mesh
    /// is mutually authenticated, and the credential never leaves the cluster).
    pub authorization: Option<String>,
    /// The execution id this node recorded the request under: the owner records it under the
    /// same one, so `joch trace` finds both.
    pub exec: String,
    /// The trace context: the agent's trace and span (this node's span when the agent sent none).
    pub traceparent: String,
}

/// The head of the owner's answer. On the stream it is followed by the body, chunk by chunk as
/// the owner produces it.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct McpHead {
    /// HTTP status.
    pub status: u16,
    /// Content type.
    pub content_type: Option<String>,
}

impl Proxy {
    /// Relays the request to the node that owns the session.
    pub(super) async fn forward_to_owner(&self, call: &Call, owner: u64, inb: &Inbound) -> Answer {
        let req = McpForward {
            server: call.server.clone(),
            session_id: inb.session_id().unwrap_or_default().to_string(),
            protocol_version: inb.header("mcp-protocol-version").map(str::to_string),
            body: inb.body.to_vec(),
            method: inb.http_method.to_string(),
            last_event_id: inb.header("last-event-id").map(str::to_string),
            authorization: inb.header("authorization").map(str::to_string),
            exec: call.exec.id.to_string(),
            traceparent: call.exec.relay_traceparent(),
        };
        let Some(addr) = self.node.members.get(owner) else {
            return call
                .deny(
                    Reason::SessionUnknown,
                    "mcp.session.owner",
                    format!("the node that owned this session ({owner}) has left the cluster: re-initialize"),
                )
                .into();
        };
        metrics::counter!("joch_mcp_forwarded_total").increment(1);
        match self.node.mesh.call_streamed::<_, McpHead>(&addr.mesh, &req, self.limits.upstream_timeout).await {
            Ok((head, body)) => Answer::Relayed { owner, status: head.status, content_type: head.content_type, body },
            Err(e) => call
                .deny(
                    Reason::SessionUnknown,
                    "mcp.session.owner",
                    format!("the node that owns this session ({owner}) cannot be reached ({e}): re-initialize"),
                )
                .into(),
        }
    }
}

/// The proxy as the mesh's stream handler, serving relayed requests on the data plane's runtime
/// (the mesh runs on the control plane's: a burst of relayed traffic must not delay Raft).
pub struct Relayed {
    /// The proxy.
    pub proxy: Arc<Proxy>,
    /// The data plane's runtime.
    pub runtime: tokio::runtime::Handle,
}

impl StreamHandler for Relayed {
    type Request = McpForward;
    type Head = McpHead;

    async fn handle(&self, req: McpForward) -> (McpHead, BodyStream) {
        let proxy = self.proxy.clone();
        match self.runtime.spawn(async move { proxy.relayed(req).await }).await {
            Ok(answer) => answer,
            Err(_) => (McpHead { status: 503, content_type: None }, Box::pin(futures::stream::empty()) as BodyStream),
        }
    }
}

impl Proxy {
    /// Serves a request another node relayed here (its session's owner).
    async fn relayed(&self, req: McpForward) -> (McpHead, BodyStream) {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("accept", HeaderValue::from_static("application/json, text/event-stream"));
        let mut set = |name: &'static str, v: Option<&str>| {
            if let Some(v) = v.and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, v);
            }
        };
        set("mcp-session-id", Some(&req.session_id));
        set("mcp-protocol-version", req.protocol_version.as_deref());
        set("last-event-id", req.last_event_id.as_deref());
        set("authorization", req.authorization.as_deref());
        set("traceparent", Some(req.traceparent.as_str()));
        let http_method = super::routing::http_method(&req.method);
        let inbound = Inbound { server: req.server, http_method, headers, body: req.body.into(), exec: Some(req.exec) };
        let resp = self.serve(inbound).await;
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
        (head, Box::pin(body) as BodyStream)
    }
}
