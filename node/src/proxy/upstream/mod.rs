//! The upstream clients: streamable-HTTP servers (`http.rs`) and stdio children (`stdio.rs`).
//! Both take an [`Admitted`](super::admission::Admitted) for every request: only admission can
//! make one. What an upstream answers goes back as an `Answer` through the exit.

pub mod credentials;
mod direct;
pub mod http;
pub mod stdio;

use axum::http::HeaderValue;
use serde_json::Value;

use super::admission::Admitted;
use super::deny::{Denial, Reason};
use crate::mcp::sse::{self, EventSplitter};

/// An upstream failure, classified.
#[derive(Debug, Clone)]
pub struct UpstreamError {
    /// Unavailable or timed out.
    pub reason: Reason,
    /// What happened.
    pub message: String,
}

impl UpstreamError {
    /// The upstream could not be reached or gave no usable answer.
    pub fn unavailable(message: impl Into<String>) -> UpstreamError {
        UpstreamError { reason: Reason::UpstreamUnavailable, message: message.into() }
    }

    /// joch could not get the credential it presents upstream.
    pub fn credentials(message: impl Into<String>) -> UpstreamError {
        UpstreamError { reason: Reason::UpstreamCredentials, message: message.into() }
    }

    /// The denial this failure is for the call.
    pub fn deny(self, adm: &Admitted) -> Denial {
        let rule = match (self.reason, adm.is_stdio()) {
            (Reason::StdioNotAllowed, _) => "node.stdio.allow",
            (Reason::UpstreamCredentials, true) => "mcpserver.spec.stdio.env",
            (Reason::UpstreamCredentials, false) => "mcpserver.spec.auth",
            (_, true) => "upstream.stdio",
            (_, false) => "upstream",
        };
        adm.deny(self.reason, rule, self.message)
    }
}

/// Why talking to an upstream did not give an answer: the call stopped being admissible (it is
/// re-validated before every send), or the upstream failed.
#[derive(Debug)]
pub enum Failure {
    /// The call is no longer admissible.
    Denied(Denial),
    /// The upstream failed.
    Upstream(UpstreamError),
}

impl Failure {
    /// The denial for the call.
    pub fn deny(self, adm: &Admitted) -> Denial {
        match self {
            Failure::Denied(d) => d,
            Failure::Upstream(e) => e.deny(adm),
        }
    }
}

impl From<UpstreamError> for Failure {
    fn from(e: UpstreamError) -> Failure {
        Failure::Upstream(e)
    }
}

impl From<Denial> for Failure {
    fn from(d: Denial) -> Failure {
        Failure::Denied(d)
    }
}

/// Whether a `content-type` is this media type (parameters such as `charset` ignored).
pub fn is_type(content_type: Option<&HeaderValue>, media: &str) -> bool {
    content_type.and_then(|c| c.to_str().ok()).is_some_and(|c| c.starts_with(media))
}

/// The JSON-RPC answer (an object with `result` or `error`) in a JSON or SSE body; `None` for
/// anything else, so callers may index the answer as an object whatever the upstream sent.
pub fn answer_message(content_type: Option<&HeaderValue>, bytes: &[u8]) -> Option<Value> {
    let is_answer = |v: &Value| v.is_object() && (v.get("result").is_some() || v.get("error").is_some());
    if !is_type(content_type, "text/event-stream") {
        return serde_json::from_slice::<Value>(bytes).ok().filter(is_answer);
    }
    let mut split = EventSplitter::default();
    let mut events = split.push(bytes).unwrap_or_default();
    events.extend(split.finish());
    events.iter().filter_map(|e| sse::json(e)).find(is_answer)
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
