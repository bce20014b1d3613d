//! Upstream streamable-HTTP servers: one pooled client (HTTP/1.1 and h2, keep-alive), connect and
//! first-byte timeouts. The agent's own credentials are never forwarded.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;

use super::deny::Reason;
use crate::config::ProxyLimits;

/// Headers joch passes upstream (everything else, notably `Authorization` and cookies, stays).
const FORWARDED: [&str; 6] =
    ["content-type", "accept", "mcp-protocol-version", "last-event-id", "mcp-method", "mcp-name"];

/// The upstream client.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    timeout: Duration,
}

/// An upstream failure, classified.
#[derive(Debug)]
pub struct UpstreamError {
    /// Unavailable or timed out.
    pub reason: Reason,
    /// What happened.
    pub message: String,
}

impl Upstream {
    /// A client with these limits.
    pub fn new(limits: &ProxyLimits) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(limits.upstream_connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Upstream { client, timeout: limits.upstream_timeout })
    }

    /// Sends a request; returns once the upstream's status and headers arrived.
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        incoming: &HeaderMap,
        upstream_session: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut req = self.client.request(method, url);
        for name in FORWARDED {
            if let Some(v) = incoming.get(name) {
                req = req.header(name, v);
            }
        }
        if incoming.get("accept").is_none() {
            req = req.header("accept", "application/json, text/event-stream");
        }
        if let Some(sid) = upstream_session {
            req = req.header("mcp-session-id", sid);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        match tokio::time::timeout(self.timeout, req.send()).await {
            Err(_) => Err(UpstreamError {
                reason: Reason::UpstreamTimeout,
                message: format!("the upstream did not answer within {:?}", self.timeout),
            }),
            Ok(Err(e)) => {
                let reason = if e.is_timeout() { Reason::UpstreamTimeout } else { Reason::UpstreamUnavailable };
                let mut message = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    message.push_str(&format!(": {s}"));
                    src = s.source();
                }
                Err(UpstreamError { reason, message: format!("upstream request failed: {message}") })
            }
            Ok(Ok(r)) => Ok(r),
        }
    }
}
