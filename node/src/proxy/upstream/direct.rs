//! A worker's own HTTP/1.1 connections to plain-`http` upstreams: the request path's client.
//!
//! Each MCP worker (`crate::workers`) keeps its idle keep-alive connections per upstream
//! authority; a connection is driven by a task on that worker's runtime, so a call's exchange
//! runs on the thread that read it. A request takes an idle connection (or opens one) and the
//! connection goes back to its worker's pool when the answer's body has been read to its end;
//! an answer dropped before its end closes the connection. Compared with reqwest's pooled client
//! this skips, per request, the client's and connector's clones, the pool's checkout futures and
//! the URL's conversion (each showed in the profile of a loaded node, `docs/benchmarks.md`).
//!
//! Only plain `http` endpoints, and only from a worker thread: everything else (https, h2,
//! discovery, relayed requests) goes through reqwest (`http.rs`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body::Body as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

/// Idle connections a worker keeps per upstream (as reqwest's `pool_max_idle_per_host`).
const MAX_IDLE: usize = 64;
/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The idle connections of every worker, by upstream authority (`host:port`).
pub struct Pools {
    workers: Box<[Mutex<Idles>]>,
    connect_timeout: Duration,
}

/// One worker's idle connections, by upstream authority.
type Idles = HashMap<Box<str>, Vec<Idle>>;

struct Idle {
    send: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Error {
    /// The upstream could not be connected to.
    Connect(String),
    /// The exchange failed after the connection was made.
    Exchange(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect(m) => write!(f, "error trying to connect: {m}"),
            Error::Exchange(m) => write!(f, "{m}"),
        }
    }
}

/// An endpoint this client serves: a plain-`http` URL, split once.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port` (the pool's key and the address connected to).
    authority: Box<str>,
    /// The `Host` header.
    host: HeaderValue,
    /// Path and query (origin form).
    path: Uri,
}

impl Target {
    /// The target of `url`, if it is a plain-`http` URL with a host this client can reach.
    pub fn of(url: &reqwest::Url) -> Option<Target> {
        if url.scheme() != "http" || !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        // An IPv6 host comes bracketed (`[::1]`), as an authority wants it.
        let authority = format!("{host}:{port}");
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        Some(Target {
            authority: authority.into(),
            host: HeaderValue::from_str(&host_header).ok()?,
            path: path.parse().ok()?,
        })
    }
}

impl Pools {
    /// Pools for `workers` workers.
    pub fn new(workers: usize, connect_timeout: Duration) -> Pools {
        Pools { workers: (0..workers).map(|_| Mutex::default()).collect(), connect_timeout }
    }

    /// How many workers these pools serve.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Sends a request to `target` on worker `worker`'s connections (the caller runs on it).
    pub async fn send(
        self: &Arc<Self>,
        worker: usize,
        target: &Target,
        method: Method,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response, Error> {
        let mut req = Request::new(Full::new(body.unwrap_or_default()));
        *req.method_mut() = method;
        *req.uri_mut() = target.path.clone();
        *req.headers_mut() = headers;
        req.headers_mut().insert(http::header::HOST, target.host.clone());
        // An idle connection may have been closed by the upstream meanwhile: a request it did
        // not take is sent again on another (or a new) connection.
        loop {
            let (mut send, fresh) = match self.idle(worker, target) {
                Some(s) => (s, false),
                None => (self.connect(target).await?, true),
            };
            if send.ready().await.is_err() {
                if fresh {
                    return Err(Error::Exchange("the upstream closed the connection".into()));
                }
                continue;
            }
            match send.try_send_request(req).await {
                Ok(resp) => {
                    let (head, body) = resp.into_parts();
                    let back = Back { pools: self.clone(), worker, authority: target.authority.clone(), send };
                    return Ok(Response { head, body: Body { body, back: Some(back) } });
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if !fresh => req = r,
                    _ => return Err(Error::Exchange(super::http::chain(e.error()))),
                },
            }
        }
    }

    fn idle(&self, worker: usize, target: &Target) -> Option<SendRequest<Full<Bytes>>> {
        let mut pool = self.workers.get(worker)?.lock();
        let conns = pool.get_mut(&target.authority)?;
        while let Some(c) = conns.pop() {
            if !c.send.is_closed() && c.since.elapsed() < IDLE_TIMEOUT {
                return Some(c.send);
            }
        }
        None
    }

    async fn connect(&self, target: &Target) -> Result<SendRequest<Full<Bytes>>, Error> {
        let connect = async {
            let tcp =
                tokio::net::TcpStream::connect(&*target.authority).await.map_err(|e| Error::Connect(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| Error::Connect(super::http::chain(&e)))?;
            // Driven on this worker's runtime; it ends when the connection closes or its last
            // handle is dropped.
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(send)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(Error::Connect(format!("no connection within {:?}", self.connect_timeout))),
        }
    }

    fn put_back(&self, worker: usize, authority: Box<str>, send: SendRequest<Full<Bytes>>) {
        if send.is_closed() {
            return;
        }
        let Some(pool) = self.workers.get(worker) else { return };
        let mut pool = pool.lock();
        let conns = pool.entry(authority).or_default();
        if conns.len() < MAX_IDLE {
            conns.push(Idle { send, since: Instant::now() });
        }
    }
}

/// A connection to hand back to its worker's pool once its answer is read to its end.
struct Back {
    pools: Arc<Pools>,
    worker: usize,
    authority: Box<str>,
    send: SendRequest<Full<Bytes>>,
}

/// An upstream's answer: its head, and its body as it arrives.
pub struct Response {
    /// Status and headers.
    pub head: http::response::Parts,
    /// The body.
    pub body: Body,
}

/// An answer's body: a stream of data chunks; at its end the connection goes back to the pool.
pub struct Body {
    body: Incoming,
    back: Option<Back>,
}

impl futures::Stream for Body {
    type Item = Result<Bytes, hyper::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => return Poll::Ready(Some(Ok(data))),
                    // Trailers: nothing joch passes on.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => {
                    self.back = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    if let Some(b) = self.back.take() {
                        b.pools.put_back(b.worker, b.authority, b.send);
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt;

    use super::*;

    /// A real HTTP/1.1 server on loopback: answers `GET /big` with 4 MiB, `GET /close` with
    /// `Connection: close`, anything else with its path and query; counts connections.
    async fn server() -> (Target, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: reqwest::Url = format!("http://{}/mcp?x=1", listener.local_addr().unwrap()).parse().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let mut resp = match req.uri().path() {
                        "/big" => http::Response::new(Full::new(Bytes::from(vec![b'x'; 4 << 20]))),
                        _ => http::Response::new(Full::new(Bytes::from(req.uri().to_string()))),
                    };
                    if req.uri().path() == "/close" {
                        resp.headers_mut().insert("connection", HeaderValue::from_static("close"));
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service));
            }
        });
        (Target::of(&url).unwrap(), conns)
    }

    fn at(target: &Target, path: &str) -> Target {
        Target { path: path.parse().unwrap(), ..target.clone() }
    }

    async fn get(pools: &Arc<Pools>, target: &Target) -> Result<(StatusCode, Vec<u8>), Error> {
        let resp = pools.send(0, target, Method::GET, HeaderMap::new(), None).await?;
        let mut body = Vec::new();
        let mut s = resp.body;
        while let Some(c) = s.next().await {
            body.extend_from_slice(&c.unwrap());
        }
        Ok((resp.head.status, body))
    }

    use http::StatusCode;

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_is_read() {
        let (target, conns) = server().await;
        let pools = Arc::new(Pools::new(1, Duration::from_secs(5)));
        for _ in 0..5 {
            let (status, body) = get(&pools, &target).await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, b"/mcp?x=1", "the origin form, query included, is what the upstream sees");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_closed_or_half_read_connection_is_not_used_again() {
        let (target, conns) = server().await;
        let pools = Arc::new(Pools::new(1, Duration::from_secs(5)));
        // The upstream closes after its answer: the next request opens a new connection.
        get(&pools, &at(&target, "/close")).await.unwrap();
        assert_eq!(get(&pools, &target).await.unwrap().1, b"/mcp?x=1");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        // An answer dropped before its end: its connection is not handed out again.
        let resp = pools.send(0, &at(&target, "/big"), Method::GET, HeaderMap::new(), None).await.unwrap();
        let mut body = resp.body;
        assert!(body.next().await.unwrap().is_ok());
        drop(body);
        assert_eq!(get(&pools, &target).await.unwrap().1, b"/mcp?x=1");
        assert_eq!(conns.load(Ordering::SeqCst), 3);
        // A big answer read to its end leaves its connection usable.
        assert_eq!(get(&pools, &at(&target, "/big")).await.unwrap().1.len(), 4 << 20);
        get(&pools, &target).await.unwrap();
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_upstream_that_is_not_listening_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let target = Target::of(&format!("http://127.0.0.1:{port}/mcp").parse().unwrap()).unwrap();
        let pools = Arc::new(Pools::new(1, Duration::from_secs(5)));
        assert!(matches!(get(&pools, &target).await, Err(Error::Connect(_))));
    }

    #[test]
    fn only_plain_http_urls_are_targets() {
        let t = |u: &str| Target::of(&u.parse().unwrap());
        assert!(t("https://example.com/mcp").is_none());
        assert!(t("http://user:pw@example.com/mcp").is_none());
        let v6 = t("http://[::1]:9000/a/b?c=d").unwrap();
        assert_eq!(
            (&*v6.authority, v6.host.to_str().unwrap(), v6.path.to_string().as_str()),
            ("[::1]:9000", "[::1]:9000", "/a/b?c=d")
        );
        let default = t("http://example.com").unwrap();
        assert_eq!(
            (&*default.authority, default.host.to_str().unwrap(), default.path.to_string().as_str()),
            ("example.com:80", "example.com", "/")
        );
    }
}
