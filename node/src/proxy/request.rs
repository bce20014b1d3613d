//! The inbound request, as the front reads it: which endpoint, which HTTP method, the headers
//! joch looks at, and the body (read whole under the size and time limits before any handler
//! runs). Requests relayed by a peer arrive in the same shape (`forward.rs`).

use axum::http::HeaderMap;
use bytes::Bytes;

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

    /// On the aggregate endpoint.
    pub fn aggregate(&self) -> bool {
        self.server.is_empty()
    }
}
