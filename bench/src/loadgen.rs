//! An open-loop load generator for MCP over streamable HTTP. Requests are scheduled at a fixed
//! rate, whatever the answers do. A request that had to wait for its connection (the previous
//! answer was late) is measured from the time it was due, not from when it could be sent: a
//! gateway that queues cannot hide it (no coordinated omission, as in wrk2). A request whose
//! connection was free when it came due is measured from its send, so the generator's own wake-up
//! delay is not counted as the gateway's. Each of `connections` keep-alive HTTP/1.1 connections (one per target,
//! for several targets) takes every `connections`-th slot of the schedule; the legacy era opens
//! one session per connection first (on the first target; the others continue it, as behind a
//! round-robin balancer), the modern era sends stateless requests. Latencies go to an HDR
//! histogram (microseconds, 3 significant digits).
//!
//! The generator runs on its own single-threaded runtime, so its cost on the shared cores is
//! small and steady. The schedule is kept by a pacing thread (the OS sleep, tens of
//! microseconds precise), not by the runtime's timer, whose millisecond ticks would be measured as
//! latency.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::json;

/// The protocol era of the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Era {
    /// 2025-11-25: a session per connection.
    Legacy,
    /// 2026-07-28: stateless requests.
    Modern,
}

/// One load run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// MCP endpoint URLs (`http://host:port/path`); with several, each connection rotates over
    /// them (a round-robin balancer).
    pub targets: Vec<String>,
    /// The era.
    pub era: Era,
    /// Offered rate, requests per second.
    pub rate: f64,
    /// Measured duration (after `warmup`).
    pub duration: Duration,
    /// Unmeasured time first, at the same rate.
    pub warmup: Duration,
    /// Keep-alive connections.
    pub connections: usize,
    /// Size of the `text` argument of each `tools/call echo`.
    pub payload: usize,
    /// `Authorization` header value, if any.
    pub bearer: Option<String>,
    /// The tool called and its arguments; `None`: `echo` with a `text` of `payload` bytes.
    pub tool: Option<(String, serde_json::Value)>,
}

impl Spec {
    fn tool_name(&self) -> &str {
        self.tool.as_ref().map(|(n, _)| n.as_str()).unwrap_or("echo")
    }
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// Offered rate.
    pub offered_rps: f64,
    /// Answers per second within the measured window.
    pub achieved_rps: f64,
    /// Successful answers measured.
    pub ok: u64,
    /// Failed requests (status, body, connection) measured.
    pub errors: u64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 90th.
    pub p90_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// 99.9th.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// First error seen, if any.
    pub first_error: Option<String>,
}

impl Outcome {
    /// Whether this rate was sustained: every request answered, nearly the offered rate, p99 under
    /// `p99_bound`.
    pub fn sustained(&self, p99_bound_ms: f64) -> bool {
        let total = self.ok + self.errors;
        total > 0
            && (self.errors as f64) <= 0.001 * total as f64
            && self.achieved_rps >= 0.95 * self.offered_rps
            && self.p99_ms <= p99_bound_ms
    }
}

struct Target {
    authority: String,
    path: String,
}

fn parse(url: &str) -> anyhow::Result<Target> {
    let rest = url.strip_prefix("http://").with_context(|| format!("{url}: only http:// targets"))?;
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    Ok(Target { authority: authority.to_string(), path })
}

async fn connect(t: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream =
        tokio::net::TcpStream::connect(&t.authority).await.with_context(|| format!("connecting to {}", t.authority))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The body of the measured call.
fn call_body(spec: &Spec, id: u64) -> Bytes {
    let mut params = match &spec.tool {
        Some((name, args)) => json!({"name": name, "arguments": args}),
        None => json!({"name": "echo", "arguments": {"text": "x".repeat(spec.payload)}}),
    };
    let era = spec.era;
    if era == Era::Modern {
        params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": {"name": "joch-bench", "version": "1"}});
    }
    Bytes::from(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}).to_string())
}

fn request(
    t: &Target,
    era: Era,
    session: Option<&str>,
    bearer: Option<&str>,
    body: Bytes,
    method: &str,
    tool: &str,
) -> hyper::Request<Full<Bytes>> {
    let mut b = hyper::Request::post(&t.path)
        .header("host", &t.authority)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(a) = bearer {
        b = b.header("authorization", a);
    }
    match era {
        Era::Legacy => {
            if let Some(s) = session {
                b = b.header("mcp-session-id", s).header("mcp-protocol-version", "2025-11-25");
            }
        }
        Era::Modern => {
            b = b.header("mcp-protocol-version", "2026-07-28").header("mcp-method", method);
            if method == "tools/call" {
                b = b.header("mcp-name", tool);
            }
        }
    }
    b.body(Full::new(body)).expect("a well-formed request")
}

/// Opens a legacy session on `t` over `s`; returns its id.
async fn open_session(s: &mut SendRequest<Full<Bytes>>, t: &Target, bearer: Option<&str>) -> anyhow::Result<String> {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25",
        "capabilities": {}, "clientInfo": {"name": "joch-bench", "version": "1"}}});
    let r =
        s.send_request(request(t, Era::Legacy, None, bearer, Bytes::from(init.to_string()), "initialize", "")).await?;
    let status = r.status();
    let sid = r.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = r.into_body().collect().await?.to_bytes();
    match sid {
        Some(sid) if status.is_success() => Ok(sid),
        _ => bail!("initialize at {}{}: {status} {}", t.authority, t.path, String::from_utf8_lossy(&body)),
    }
}

struct Conn {
    targets: Vec<(Target, SendRequest<Full<Bytes>>)>,
    session: Option<String>,
}

async fn open(spec: &Spec) -> anyhow::Result<Conn> {
    let mut targets = Vec::new();
    for url in &spec.targets {
        let t = parse(url)?;
        let s = connect(&t).await?;
        targets.push((t, s));
    }
    let session = match spec.era {
        Era::Legacy => {
            let (t, s) = &mut targets[0];
            Some(open_session(s, t, spec.bearer.as_deref()).await?)
        }
        Era::Modern => None,
    };
    Ok(Conn { targets, session })
}

/// Keeps the schedule: slot `i` is due at `start + i / rate` and goes to connection
/// `i % connections` when due, until `end` or `stop`.
fn pace(
    rate: f64,
    start: Instant,
    end: Instant,
    stop: Arc<AtomicBool>,
    slots: Vec<tokio::sync::mpsc::UnboundedSender<(u64, Instant)>>,
) {
    let n = slots.len() as u64;
    let mut i: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due >= end || stop.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if slots[(i % n) as usize].send((i / n, due)).is_err() {
            return;
        }
        i += 1;
    }
}

/// Serves one connection's slots as they come due.
async fn worker(
    spec: Spec,
    mut conn: Conn,
    measure_from: Instant,
    mut slots: tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>,
) -> (Histogram<u64>, u64, u64, Option<String>) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds");
    let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
    // One body for every call of the connection (a connection has one call in flight at a time,
    // so the JSON-RPC id may repeat): the generator's cost per request stays small.
    let body = call_body(&spec, 1);
    let mut free_at = Instant::now();
    while let Some((j, due)) = slots.recv().await {
        let picked = Instant::now();
        let from = if free_at <= due { picked } else { due };
        let ti = (j as usize) % conn.targets.len();
        let (t, s) = &mut conn.targets[ti];
        let req = request(
            t,
            spec.era,
            conn.session.as_deref(),
            spec.bearer.as_deref(),
            body.clone(),
            "tools/call",
            spec.tool_name(),
        );
        let result = async {
            s.ready().await?;
            let r = s.send_request(req).await?;
            let status = r.status();
            let bytes = r.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        }
        .await;
        let done = Instant::now();
        free_at = done;
        let measured = due >= measure_from;
        match result {
            Ok((status, bytes)) if status.is_success() && answered(&bytes) => {
                if measured {
                    ok += 1;
                    let _ = hist.record((done - from).as_micros().max(1) as u64);
                }
            }
            other => {
                if measured {
                    errors += 1;
                    if first_error.is_none() {
                        first_error = Some(match other {
                            Ok((status, bytes)) => {
                                format!("{status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)]))
                            }
                            Err(e) => e.to_string(),
                        });
                    }
                }
                // A broken connection is replaced (the next slots wait for it: that counts).
                if s.is_closed() {
                    if let Ok(fresh) = connect(t).await {
                        *s = fresh;
                    }
                }
            }
        }
    }
    (hist, ok, errors, first_error)
}

/// Runs `spec` on a dedicated single-threaded runtime (in a thread of its own).
pub fn run(spec: Spec) -> anyhow::Result<Outcome> {
    std::thread::spawn(move || run_until(spec, Arc::new(AtomicBool::new(false))))
        .join()
        .map_err(|_| anyhow::anyhow!("the load generator panicked"))?
}

/// Runs `spec` on this thread (its own single-threaded runtime) until its duration is over or
/// `stop` is set (a background load).
pub fn run_until(spec: Spec, stop: Arc<AtomicBool>) -> anyhow::Result<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run_local(spec, stop))
}

async fn run_local(spec: Spec, stop: Arc<AtomicBool>) -> anyhow::Result<Outcome> {
    if spec.rate <= 0.0 || spec.connections == 0 || spec.targets.is_empty() {
        bail!("a load needs a rate, connections and a target");
    }
    let mut conns = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections {
        conns.push(open(&spec).await?);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let mut tasks = Vec::new();
    let mut senders = Vec::new();
    for c in conns {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        senders.push(tx);
        tasks.push(tokio::task::spawn_local(worker(spec.clone(), c, measure_from, rx)));
    }
    let rate = spec.rate;
    let pacer = std::thread::spawn(move || pace(rate, start, end, stop, senders));
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let (mut ok, mut errors, mut first_error) = (0, 0, None);
    for t in tasks {
        let (h, o, e, f) = t.await?;
        hist.add(&h)?;
        ok += o;
        errors += e;
        first_error = first_error.or(f);
    }
    let _ = pacer.join();
    // Answers arrive after `end` for slots due before it: the window is the schedule's.
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    Ok(Outcome {
        offered_rps: spec.rate,
        achieved_rps: ok as f64 / spec.duration.as_secs_f64(),
        ok,
        errors,
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        first_error,
    })
}

/// Whether an answer body is a JSON-RPC result (JSON, or SSE carrying one).
pub fn answered(body: &[u8]) -> bool {
    body.windows(8).any(|w| w == b"\"result\"")
}
