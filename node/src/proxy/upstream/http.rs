//! Upstream streamable-HTTP servers: pooled clients (HTTP/1.1 and h2, keep-alive), one per MCP
//! worker (`crate::workers`: a worker's calls use connections driven on its own thread) and one
//! for everything else (discovery, relayed requests); connect and first-byte timeouts, and bodies
//! read under a size and a time limit. Every request takes an [`Admitted`] and re-validates it (cheap when nothing changed since admission). The agent's own
//! credentials are never forwarded; the only `Authorization` an upstream sees is the one its
//! `spec.auth` names ([`Credentials`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::HeaderMap;

use super::credentials::Credentials;
use super::{Failure, UpstreamError};
use crate::config::ProxyLimits;
use crate::proxy::admission::Admitted;
use crate::proxy::deny::Reason;

/// Headers joch passes upstream (everything else, notably `Authorization` and cookies, stays).
const FORWARDED: [&str; 6] =
    ["content-type", "accept", "mcp-protocol-version", "last-event-id", "mcp-method", "mcp-name"];

/// The upstream client.
#[derive(Clone)]
pub struct Upstream {
    /// `[shared, worker 0, worker 1, ...]`.
    clients: Arc<[reqwest::Client]>,
    timeout: Duration,
    credentials: Arc<Credentials>,
    /// Endpoints parsed once (parsing, IDNA included, showed in every request's profile).
    urls: Arc<parking_lot::RwLock<std::collections::HashMap<String, reqwest::Url>>>,
    /// Servers this node could not connect to, and how many (the request path reads the count).
    unreachable: Arc<(std::sync::atomic::AtomicUsize, parking_lot::Mutex<std::collections::HashSet<String>>)>,
    /// Where a server that answers again after being unreachable goes: discovered again (what
    /// came back may not be what went away).
    reconnected: tokio::sync::mpsc::Sender<String>,
}

impl Upstream {
    /// Clients with these limits: one shared and one per MCP worker (`workers`).
    pub fn new(
        limits: &ProxyLimits,
        workers: usize,
        credentials: Arc<Credentials>,
        reconnected: tokio::sync::mpsc::Sender<String>,
    ) -> anyhow::Result<Self> {
        let client = || {
            reqwest::Client::builder()
                .connect_timeout(limits.upstream_connect_timeout)
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(64)
                .tcp_nodelay(true)
                .redirect(reqwest::redirect::Policy::none())
                // Upstreams are reached as registered: never through a proxy named by the
                // environment (HTTP_PROXY and the like), which would also be looked up per request.
                .no_proxy()
                .build()
        };
        let clients = (0..=workers).map(|_| client()).collect::<Result<Vec<_>, _>>()?;
        Ok(Upstream {
            clients: clients.into(),
            timeout: limits.upstream_timeout,
            credentials,
            urls: Arc::default(),
            unreachable: Arc::default(),
            reconnected,
        })
    }

    /// Sends a request to the admitted call's server; returns once the upstream's status and
    /// headers arrived (within the upstream timeout).
    pub async fn send(
        &self,
        adm: &Admitted,
        method: reqwest::Method,
        incoming: &HeaderMap,
        upstream_session: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, Failure> {
        adm.revalidate()?;
        let mut req = self.client().request(method, self.url(adm.endpoint())?);
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
        // The agent's trace, with joch's span as the parent (W3C Trace Context).
        let exec = &adm.call().exec;
        req = req.header("traceparent", exec.traceparent());
        if let Some((name, value)) = self.credentials.header(adm).await? {
            req = req.header(name, value);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let sent = std::time::Instant::now();
        let answer = tokio::time::timeout(self.timeout, req.send()).await;
        exec.note(|n| n.upstream_us += sent.elapsed().as_micros() as u64);
        if let Ok(Ok(r)) = &answer {
            if r.status() == reqwest::StatusCode::UNAUTHORIZED {
                self.credentials.refused(&adm.server().name);
            }
        }
        match answer {
            Err(_) => Err(Failure::Upstream(UpstreamError {
                reason: Reason::UpstreamTimeout,
                message: format!("the upstream did not answer within {:?}", self.timeout),
            })),
            Ok(Err(e)) => {
                if e.is_connect() {
                    self.unreachable(&adm.server().name, true);
                }
                let reason = if e.is_timeout() { Reason::UpstreamTimeout } else { Reason::UpstreamUnavailable };
                let mut message = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    message.push_str(&format!(": {s}"));
                    src = s.source();
                }
                Err(Failure::Upstream(UpstreamError { reason, message: format!("upstream request failed: {message}") }))
            }
            Ok(Ok(r)) => {
                self.unreachable(&adm.server().name, false);
                Ok(r)
            }
        }
    }

    /// The client of the worker this runs on, or the shared one.
    fn client(&self) -> &reqwest::Client {
        let i = crate::workers::current().map_or(0, |w| w + 1);
        self.clients.get(i).unwrap_or(&self.clients[0])
    }

    /// Notes that `server` could (not) be connected to; one that connects again after it could
    /// not is queued to be discovered again.
    fn unreachable(&self, server: &str, down: bool) {
        use std::sync::atomic::Ordering;
        let (count, set) = &*self.unreachable;
        if !down && count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut set = set.lock();
        let changed = if down { set.insert(server.to_string()) } else { set.remove(server) };
        count.store(set.len(), Ordering::Relaxed);
        if changed && !down && self.reconnected.try_send(server.to_string()).is_err() {
            metrics::counter!("joch_discovery_dropped_total").increment(1);
        }
    }

    /// The endpoint, parsed (once per distinct endpoint; bounded by the registry).
    fn url(&self, endpoint: &str) -> Result<reqwest::Url, Failure> {
        if let Some(u) = self.urls.read().get(endpoint) {
            return Ok(u.clone());
        }
        let u = reqwest::Url::parse(endpoint).map_err(|e| {
            Failure::Upstream(UpstreamError::unavailable(format!("the endpoint {endpoint:?} is not a URL: {e}")))
        })?;
        let mut urls = self.urls.write();
        if urls.len() > 10_000 {
            urls.clear();
        }
        urls.insert(endpoint.to_string(), u.clone());
        Ok(u)
    }

    /// Reads a whole (non-stream) body, at most `limit` bytes and within the upstream timeout:
    /// an upstream that sends its headers and then stalls does not hold the call forever.
    pub async fn read(&self, resp: reqwest::Response, limit: usize) -> Result<Bytes, UpstreamError> {
        let read = async {
            let mut out = BytesMut::new();
            let mut s = resp.bytes_stream();
            while let Some(chunk) = s.next().await {
                let chunk =
                    chunk.map_err(|e| UpstreamError::unavailable(format!("reading the upstream's answer: {e}")))?;
                if out.len() + chunk.len() > limit {
                    return Err(UpstreamError::unavailable(format!("the upstream's answer exceeds {limit} bytes")));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(out.freeze())
        };
        match tokio::time::timeout(self.timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError {
                reason: Reason::UpstreamTimeout,
                message: format!("the upstream did not finish its answer within {:?}", self.timeout),
            }),
        }
    }
}
