//! The request as the layers see it: the inbound HTTP request (which endpoint, which method, the
//! headers joch looks at, the body read whole under the size and time limits before any handler
//! runs; requests relayed by a peer arrive in the same shape, `forward.rs`), and the [`Call`]
//! the front makes of it once, which admission decides on and every stage reads.

use std::sync::Arc;

use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::Value;

use super::deny::{Denial, Reason};
use crate::auth::agent::Caller;
use crate::mcp::jsonrpc::Message;
use crate::mcp::session::SessionToken;

/// One request to the MCP endpoints.
pub struct Inbound {
    /// `{server}` of `/mcp/{server}`; empty for the aggregate `/mcp`.
    pub server: String,
    /// POST, GET or DELETE.
    pub http_method: &'static str,
    /// The request's headers.
    pub headers: HeaderMap,
    /// The body (empty for GET and DELETE).
    pub body: Bytes,
    /// The execution id a peer gave this request when it relayed it here (never taken from an
    /// agent's headers).
    pub exec: Option<String>,
}

impl Inbound {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Mcp-Session-Id` header.
    pub fn session_id(&self) -> Option<&str> {
        self.header("mcp-session-id")
    }

    /// On the aggregate endpoint, or a virtual server's (`v/NAME`): several servers behind one
    /// session.
    pub fn aggregate(&self) -> bool {
        self.server.is_empty() || self.server.starts_with("v/")
    }
}

/// A data-plane request, as the seam sees it: parsed once at the front, carried through.
#[derive(Debug, Clone)]
pub struct Call {
    /// Node handling it.
    pub node: u64,
    /// Server asked for (empty on the aggregate endpoint until a member is chosen).
    pub server: String,
    /// Who calls (authenticated at the front).
    pub caller: Arc<Caller>,
    /// HTTP method (POST, GET, DELETE).
    pub http_method: &'static str,
    /// The JSON-RPC message (a single one; `None` for GET, DELETE and batches).
    pub rpc: Option<Arc<Rpc>>,
    /// The session, when continuing one.
    pub session: Option<SessionToken>,
    /// The approval this call uses (set by the node holding it, once committed as used).
    pub approval: Option<Arc<str>>,
    /// Its execution: ids, trace context, and what the audit record will say.
    pub exec: Arc<crate::audit::exec::Exec>,
}

/// A JSON-RPC message as received: the light view (method, id, name or URI, envelope version,
/// progress token) read in one pass, and the bytes, forwarded as they are unless rewritten.
#[derive(Debug, Clone)]
pub struct Rpc {
    /// What joch reads of it.
    pub msg: Message,
    /// The message as received.
    pub body: Bytes,
}

impl Rpc {
    /// The message as a JSON tree, for the places that rewrite it (`null` if it is not JSON,
    /// which cannot happen for a parsed message).
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl Call {
    /// The virtual server called (`/mcp/v/NAME`: `server` is `v/NAME` until a member is chosen).
    pub fn view(&self) -> Option<&str> {
        self.server.strip_prefix("v/")
    }

    /// The JSON-RPC method, if any.
    pub fn method(&self) -> Option<&str> {
        self.rpc.as_ref().and_then(|r| r.msg.method.as_deref())
    }

    /// The tool or prompt name, or resource URI.
    pub fn target(&self) -> Option<&str> {
        self.rpc.as_ref().and_then(|r| r.msg.target_name())
    }

    /// The JSON-RPC id (`null` if none).
    pub fn id(&self) -> Value {
        self.rpc.as_ref().map(|r| r.msg.id_value()).unwrap_or(Value::Null)
    }

    /// A denial of this call.
    pub fn deny(&self, reason: Reason, rule: &str, message: impl Into<String>) -> Denial {
        Denial::new(reason, &self.server, self.node, rule, message).with_id(self.id())
    }

    /// The same call, aimed at one member of an aggregate session (`rpc`: the routed message).
    pub fn for_member(&self, server: &str, rpc: Option<Arc<Rpc>>) -> Call {
        let session = self.session.as_ref().map(|t| {
            let m = t.members.iter().find(|m| m.server == server);
            SessionToken {
                server: server.to_string(),
                upstream_session: m.and_then(|m| m.upstream_session.clone()),
                upstream_version: m.and_then(|m| m.upstream_version.clone()),
                members: Vec::new(),
                upstream_modern: false,
                ..t.clone()
            }
        });
        Call { server: server.to_string(), rpc, session, ..self.clone() }
    }
}
