//! Upstream streamable-HTTP servers. On an MCP worker (`crate::workers`), a plain-`http`
//! upstream is reached over the worker's own HTTP/1.1 keep-alive connections (`direct.rs`),
//! driven on its thread; everything else (https and h2 upstreams, discovery, relayed requests)
//! through reqwest's pooled clients, one per worker and one shared. Connect and first-byte
//! timeouts, and bodies read under a size and a time limit, either way. Every request takes an
//! [`Admitted`] and re-validates it (cheap when nothing changed since admission). The agent's own
//! credentials are never forwarded; the only `Authorization` an upstream sees is the one its
//! `spec.auth` names ([`Credentials`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::credentials::Credentials;
use super::direct;
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
    urls: Arc<parking_lot::RwLock<std::collections::HashMap<String, Arc<Endpoint>>>>,
    /// The workers' own connections to plain-`http` upstreams.
    direct: Arc<direct::Pools>,
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
            direct: Arc::new(direct::Pools::new(workers, limits.upstream_connect_timeout)),
            unreachable: Arc::default(),
            reconnected,
        })
    }

    /// Sends a request to the admitted call's server; returns once the upstream's status and
    /// headers arrived (within the upstream timeout). On a worker, a plain-`http` upstream is
    /// reached over the worker's own connections (`direct.rs`); anything else through reqwest.
    pub async fn send(
        &self,
        adm: &Admitted,
        method: reqwest::Method,
        incoming: &HeaderMap,
        upstream_session: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<Response, Failure> {
        adm.revalidate()?;
        let endpoint = self.endpoint(adm.endpoint())?;
        let mut headers = HeaderMap::with_capacity(FORWARDED.len() + 4);
        for name in FORWARDED {
            if let Some(v) = incoming.get(name) {
                headers.insert(name, v.clone());
            }
        }
        if incoming.get("accept").is_none() {
            headers.insert("accept", HeaderValue::from_static("application/json, text/event-stream"));
        }
        if let Some(sid) = upstream_session.and_then(|s| HeaderValue::from_str(s).ok()) {
            headers.insert("mcp-session-id", sid);
        }
        // The agent's trace, with joch's span as the parent (W3C Trace Context).
        let exec = &adm.call().exec;
        if let Ok(v) = HeaderValue::from_str(&exec.traceparent()) {
            headers.insert("traceparent", v);
        }
        if let Some((name, value)) = self.credentials.header(adm).await? {
            headers.insert(name, value);
        }
        let sent = std::time::Instant::now();
        let worker = crate::workers::current().filter(|w| *w < self.direct.workers());
        let answer = match (worker, &endpoint.direct) {
            (Some(w), Some(target)) => {
                let send = self.direct.send(w, target, method, headers, body);
                match tokio::time::timeout(self.timeout, send).await {
                    Err(_) => Err(None),
                    Ok(Ok(r)) => Ok(Response::Direct(r)),
                    Ok(Err(e)) => Err(Some((matches!(e, direct::Error::Connect(_)), false, e.to_string()))),
                }
            }
            _ => {
                let mut req = self.client().request(method, endpoint.url.clone()).headers(headers);
                if let Some(b) = body {
                    req = req.body(b);
                }
                match tokio::time::timeout(self.timeout, req.send()).await {
                    Err(_) => Err(None),
                    Ok(Ok(r)) => Ok(Response::Pooled(r)),
                    Ok(Err(e)) => Err(Some((e.is_connect(), e.is_timeout(), chain(&e)))),
                }
            }
        };
        exec.note(|n| n.upstream_us += sent.elapsed().as_micros() as u64);
        match answer {
            Err(None) => Err(Failure::Upstream(UpstreamError {
                reason: Reason::UpstreamTimeout,
                message: format!("the upstream did not answer within {:?}", self.timeout),
            })),
            Err(Some((connect, timeout, message))) => {
                if connect {
                    self.unreachable(&adm.server().name, true);
                }
                let reason = if timeout { Reason::UpstreamTimeout } else { Reason::UpstreamUnavailable };
                Err(Failure::Upstream(UpstreamError { reason, message: format!("upstream request failed: {message}") }))
            }
            Ok(r) => {
                if r.status() == reqwest::StatusCode::UNAUTHORIZED {
                    self.credentials.refused(&adm.server().name);
                }
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
    fn endpoint(&self, endpoint: &str) -> Result<Arc<Endpoint>, Failure> {
        if let Some(u) = self.urls.read().get(endpoint) {
            return Ok(u.clone());
        }
        let url = reqwest::Url::parse(endpoint).map_err(|e| {
            Failure::Upstream(UpstreamError::unavailable(format!("the endpoint {endpoint:?} is not a URL: {e}")))
        })?;
        let e = Arc::new(Endpoint { direct: direct::Target::of(&url), url });
        let mut urls = self.urls.write();
        if urls.len() > 10_000 {
            urls.clear();
        }
        urls.insert(endpoint.to_string(), e.clone());
        Ok(e)
    }

    /// Reads a whole (non-stream) body, at most `limit` bytes and within the upstream timeout:
    /// an upstream that sends its headers and then stalls does not hold the call forever.
    pub async fn read(&self, resp: Response, limit: usize) -> Result<Bytes, UpstreamError> {
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

/// An endpoint, parsed: its URL, and how a worker reaches it directly (plain `http`).
struct Endpoint {
    url: reqwest::Url,
    direct: Option<direct::Target>,
}

/// An upstream's answer, from a worker's own connection or from reqwest.
pub enum Response {
    /// From a worker's own connection.
    Direct(direct::Response),
    /// From reqwest's pool.
    Pooled(reqwest::Response),
}

impl Response {
    /// Its status.
    pub fn status(&self) -> StatusCode {
        match self {
            Response::Direct(r) => r.head.status,
            Response::Pooled(r) => r.status(),
        }
    }

    /// Its headers.
    pub fn headers(&self) -> &HeaderMap {
        match self {
            Response::Direct(r) => &r.head.headers,
            Response::Pooled(r) => r.headers(),
        }
    }

    /// Its body, chunk by chunk as it arrives.
    pub fn bytes_stream(self) -> BoxStream<'static, Result<Bytes, String>> {
        match self {
            Response::Direct(r) => r.body.map(|c| c.map_err(|e| chain(&e))).boxed(),
            Response::Pooled(r) => r.bytes_stream().map(|c| c.map_err(|e| chain(&e))).boxed(),
        }
    }
}

/// An error and its sources, as one line.
pub(super) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        message.push_str(&format!(": {s}"));
        src = s.source();
    }
    message
}
