//! `joch-bench all`: the whole suite, one command. Every joch figure is measured beside the same
//! call made directly and through a bare nginx hop, in the same run, because absolute numbers on
//! a shared 2-core machine move from run to run. Writes `bench/results/<date>/suite/` (JSON, a
//! markdown report, PNG plots).
//!
//! Scenarios: (1) added latency and maximum sustainable rate, open loop, direct / nginx / one joch
//! node / three behind a round-robin balancer, both eras; (2) a stdio upstream pooled by joch
//! against a process per call; (3) quarantine propagation, send to acknowledgement to denied on
//! every node, idle and under traffic, with 1 and with many registered servers; (4) admin write
//! latency and throughput; (5) memory; (6) the cost of continuing a session on another node.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use joch_proto::admin::registry_client::RegistryClient;
use joch_proto::admin::{AddServerRequest, ApplyRequest, NameRequest, QuarantineRequest};
use serde_json::{json, Value};

use crate::common::{ms, stats, stats_json, Cluster, Stats};
use crate::floor::Nginx;
use crate::loadgen::{self, Era};
use crate::procs;

/// How long and how hard.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Measured seconds per rate step.
    pub step: Duration,
    /// Keep-alive connections of the load.
    pub connections: usize,
    /// Propagation trials per condition.
    pub trials: usize,
    /// Servers registered for the "many servers" conditions.
    pub many_servers: usize,
    /// Only these scenarios (1..=6), if given.
    pub only: Option<Vec<u32>>,
    /// The p99 bound of a sustained rate, ms.
    pub p99_bound_ms: f64,
    /// Payload of each call, bytes.
    pub payload: usize,
}

/// Offered rates of the sweep (each run stops after the first rate it does not sustain).
const RATES: [f64; 17] = [
    500.0, 1000.0, 2000.0, 3000.0, 4000.0, 6000.0, 8000.0, 10000.0, 12000.0, 15000.0, 18000.0, 22000.0, 26000.0,
    30000.0, 40000.0, 50000.0, 65000.0,
];

/// The canned upstream as a process of its own; stopped on drop.
pub struct Upstream {
    child: Child,
    /// Its MCP URL.
    pub url: String,
    /// HOST:PORT.
    pub addr: String,
}

impl Upstream {
    /// Starts `joch-bench canned` on a free port.
    pub fn start() -> anyhow::Result<Upstream> {
        let dir = tempfile::TempDir::new()?;
        let f = dir.path().join("addr");
        let child = Command::new(std::env::current_exe()?)
            .args(["canned", "--listen", "127.0.0.1:0", "--addr-file"])
            .arg(&f)
            .stdout(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&f) {
                if !a.is_empty() {
                    break a;
                }
            }
            if Instant::now() > deadline {
                bail!("the canned upstream did not start");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(Upstream { child, url: format!("http://{addr}/mcp"), addr })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One point of a rate sweep.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Point {
    #[serde(flatten)]
    pub outcome: loadgen::Outcome,
    /// CPU seconds the gateway's processes used per 1,000 answered requests (none for direct).
    pub cpu_s_per_1000: Option<f64>,
}

/// A sweep of one target in one era.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sweep {
    pub target: String,
    pub era: Era,
    pub points: Vec<Point>,
    /// The highest rate sustained (p99 under the bound, nearly all answered).
    pub max_sustained_rps: f64,
}

/// What a sweep loads: a path to the upstream, how it is called, whose CPU counts.
struct Route<'a> {
    name: &'a str,
    targets: Vec<String>,
    bearer: Option<String>,
    pids: Vec<u32>,
    tool: Option<(String, Value)>,
}

fn sweep(r: Route, era: Era, s: &Settings, rates: &[f64]) -> anyhow::Result<Sweep> {
    let Route { name, targets, bearer, pids, tool } = r;
    let pids = &pids[..];
    let mut points = Vec::new();
    let mut best = 0.0;
    for &rate in rates {
        let spec = loadgen::Spec {
            targets: targets.clone(),
            era,
            rate,
            duration: s.step,
            warmup: Duration::from_secs(1),
            connections: s.connections,
            payload: s.payload,
            bearer: bearer.clone(),
            tool: tool.clone(),
        };
        let cpu0 = procs::cpu_total(pids);
        let o = loadgen::run(spec)?;
        let cpu = procs::cpu_total(pids) - cpu0;
        let cpu_s_per_1000 = (!pids.is_empty() && o.ok > 0).then(|| cpu / (o.ok as f64 / 1000.0));
        let ok = o.sustained(s.p99_bound_ms);
        eprintln!(
            "  {name} {era:?} {rate} rps: achieved {:.0}, p50 {:.3} ms, p99 {:.3} ms, errors {}{}",
            o.achieved_rps,
            o.p50_ms,
            o.p99_ms,
            o.errors,
            o.first_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
        );
        points.push(Point { outcome: o, cpu_s_per_1000 });
        if !ok {
            break;
        }
        best = rate;
    }
    Ok(Sweep { target: name.to_string(), era, points, max_sustained_rps: best })
}

/// Offered rates against the Python upstream (it saturates far earlier).
const PY_RATES: [f64; 8] = [50.0, 100.0, 200.0, 300.0, 500.0, 800.0, 1200.0, 2000.0];

/// The test suite's fastmcp server (Python, the MCP SDK's stack), if the venv is there.
pub struct PyUpstream {
    child: Child,
    /// Its MCP URL.
    pub url: String,
}

impl PyUpstream {
    /// Starts it, or `None` without the venv (`scripts/setup` makes it).
    pub fn start() -> Option<PyUpstream> {
        let python = std::env::var_os("JOCH_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/joch-venv/bin/python")
        });
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/tests/e2e/fastmcp_server.py");
        if !python.exists() || !script.exists() {
            eprintln!("bench: no venv with fastmcp ({}): the Python upstream is skipped", python.display());
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let child = Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let up = PyUpstream { child, url: format!("http://127.0.0.1:{port}/mcp") };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                eprintln!("bench: the fastmcp server did not listen: skipped");
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(up)
    }
}

impl Drop for PyUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Scenario 1.
fn rates(
    c: &Cluster,
    up: &Upstream,
    nginx: &Nginx,
    python: Option<&PyUpstream>,
    s: &Settings,
) -> anyhow::Result<Vec<Sweep>> {
    let one = vec![format!("{}/mcp/canned", c.mcp(1))];
    let three: Vec<String> = (1..=3).map(|i| format!("{}/mcp/canned", c.mcp(i))).collect();
    let mut out = Vec::new();
    for era in [Era::Legacy, Era::Modern] {
        let route = |name, targets: Vec<String>, bearer: Option<String>, pids: Vec<u32>, tool| Route {
            name,
            targets,
            bearer,
            pids,
            tool,
        };
        out.push(sweep(route("direct", vec![up.url.clone()], None, vec![], None), era, s, &RATES)?);
        out.push(sweep(route("nginx", vec![nginx.url.clone()], None, nginx.pids(), None), era, s, &RATES)?);
        out.push(sweep(route("joch, one node", one.clone(), c.bearer(), vec![c.pid(1)], None), era, s, &RATES)?);
        let three_nodes = route("joch, three nodes round-robin", three.clone(), c.bearer(), c.pids(), None);
        out.push(sweep(three_nodes, era, s, &RATES)?);
        // For realism: a real Python SDK server (fastmcp) upstream, where it is installed.
        if let Some(py) = python {
            let add = Some(("add".to_string(), json!({"a": 1, "b": 2})));
            let via = vec![format!("{}/mcp/python", c.mcp(1))];
            let direct = route("direct (fastmcp, Python)", vec![py.url.clone()], None, vec![], add.clone());
            out.push(sweep(direct, era, s, &PY_RATES)?);
            let through = route("joch, one node (fastmcp, Python)", via, c.bearer(), vec![c.pid(1)], add);
            out.push(sweep(through, era, s, &PY_RATES)?);
        }
    }
    Ok(out)
}

/// Scenario 1's row with governance on (policies and the guard applied by the caller).
fn governed(c: &Cluster, s: &Settings) -> anyhow::Result<Vec<Sweep>> {
    let mut out = Vec::new();
    for era in [Era::Legacy, Era::Modern] {
        let route = Route {
            name: GOVERNED,
            targets: vec![format!("{}/mcp/canned", c.mcp(1))],
            bearer: c.bearer(),
            pids: vec![c.pid(1)],
            tool: None,
        };
        out.push(sweep(route, era, s, &RATES)?);
    }
    Ok(out)
}

/// The name of scenario 1's row with governance on.
pub const GOVERNED: &str = "joch, one node, 1,000 policy rules + content guard";

/// A minimal HTTP/1.1 client for probes and sequential calls (one keep-alive connection).
struct Probe {
    authority: String,
    path: String,
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    bearer: Option<String>,
}

impl Probe {
    async fn open(url: &str, bearer: Option<String>) -> anyhow::Result<Probe> {
        let rest = url.strip_prefix("http://").context("http URL")?;
        let (authority, path) =
            rest.split_once('/').map(|(a, p)| (a.to_string(), format!("/{p}"))).context("a path")?;
        let stream = tokio::net::TcpStream::connect(&authority).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Probe { authority, path, send, bearer })
    }

    /// POSTs `body` with these headers; status, headers, body.
    async fn post(&mut self, headers: &[(&str, &str)], body: String) -> anyhow::Result<(u16, hyper::HeaderMap, Bytes)> {
        let mut b = hyper::Request::post(&self.path)
            .header("host", &self.authority)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(a) = &self.bearer {
            b = b.header("authorization", a);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send.ready().await?;
        let r = self.send.send_request(b.body(Full::new(Bytes::from(body)))?).await?;
        let (parts, body) = r.into_parts();
        Ok((parts.status.as_u16(), parts.headers, body.collect().await?.to_bytes()))
    }

    /// A modern stateless `tools/call echo`: whether it was answered with a result.
    async fn modern_call(&mut self) -> anyhow::Result<bool> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}}});
        let h = [("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"), ("mcp-name", "echo")];
        let (status, _, bytes) = self.post(&h, body.to_string()).await?;
        Ok(status == 200 && loadgen::answered(&bytes))
    }

    /// A legacy session: initialize here; returns the session id.
    async fn initialize(&mut self) -> anyhow::Result<String> {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25",
            "capabilities": {}, "clientInfo": {"name": "joch-bench", "version": "1"}}});
        let (status, headers, body) = self.post(&[], init.to_string()).await?;
        let sid = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        match sid {
            Some(s) if status == 200 => Ok(s),
            _ => bail!("initialize: {status} {}", String::from_utf8_lossy(&body)),
        }
    }

    /// A legacy `tools/call echo` in session `sid`; its latency.
    async fn legacy_call(&mut self, sid: &str) -> anyhow::Result<Duration> {
        let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}});
        let t = Instant::now();
        let (status, _, bytes) =
            self.post(&[("mcp-session-id", sid), ("mcp-protocol-version", "2025-11-25")], body.to_string()).await?;
        let took = t.elapsed();
        if status != 200 || !loadgen::answered(&bytes) {
            bail!("call: {status} {}", String::from_utf8_lossy(&bytes));
        }
        Ok(took)
    }
}

/// One propagation trial's times, from the quarantine's send.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trial {
    pub ack_ms: f64,
    /// When each node first denied.
    pub denied_ms: Vec<f64>,
    /// When the last node denied.
    pub all_denied_ms: f64,
}

/// Probes every node continuously (sequential modern calls to `server`); reports each node's
/// first denial after `armed` is set and records when. Runs on its own thread and runtime.
struct Probes {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
    /// Per node: (allowed now?, time of the first denial since the last reset).
    state: Arc<parking_lot::Mutex<Vec<NodeProbe>>>,
}

/// A node's probe: whether its last call was allowed, and its first denial since the last reset.
type NodeProbe = (bool, Option<Instant>);

impl Probes {
    fn start(urls: Vec<String>, bearer: Option<String>) -> Probes {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(parking_lot::Mutex::new(vec![(true, None); urls.len()]));
        let (st, s2) = (stop.clone(), state.clone());
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for (i, url) in urls.into_iter().enumerate() {
                    let (st, state, bearer) = (st.clone(), s2.clone(), bearer.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut p = None;
                        while !st.load(Ordering::Relaxed) {
                            if p.is_none() {
                                p = Probe::open(&url, bearer.clone()).await.ok();
                            }
                            let Some(probe) = p.as_mut() else { continue };
                            match probe.modern_call().await {
                                Ok(allowed) => {
                                    let now = Instant::now();
                                    let mut s = state.lock();
                                    s[i].0 = allowed;
                                    if !allowed && s[i].1.is_none() {
                                        s[i].1 = Some(now);
                                    }
                                }
                                Err(_) => p = None,
                            }
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
        Probes { stop, handle: Some(handle), state }
    }

    fn reset(&self) {
        for s in self.state.lock().iter_mut() {
            s.1 = None;
        }
    }

    fn all_allowed(&self) -> bool {
        self.state.lock().iter().all(|s| s.0)
    }

    fn denials(&self) -> Vec<Option<Instant>> {
        self.state.lock().iter().map(|s| s.1).collect()
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Scenario 3: `trials` quarantines of `server` through a follower.
async fn propagation(c: &Cluster, server: &str, trials: usize) -> anyhow::Result<Vec<Trial>> {
    let urls: Vec<String> = (1..=3).map(|i| format!("{}/mcp/{server}", c.mcp(i))).collect();
    let probes = Probes::start(urls, c.bearer());
    let status = joch_proto::admin::cluster_client::ClusterClient::new(c.channel(1).await?)
        .status(c.req(joch_proto::admin::Empty {}))
        .await?
        .into_inner();
    let follower = status.members.iter().map(|m| m.id).find(|id| *id != status.leader).context("a follower")?;
    let mut reg = RegistryClient::new(c.channel(follower).await?);
    let mut out = Vec::new();
    for i in 0..trials {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !probes.all_allowed() {
            if Instant::now() > deadline {
                bail!("trial {i}: the nodes did not serve {server} again after the unquarantine");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        probes.reset();
        let t0 = Instant::now();
        let r = reg.quarantine(c.req(QuarantineRequest { name: server.into(), reason: format!("bench {i}") })).await?;
        let ack = t0.elapsed();
        if !r.into_inner().fleet.is_some_and(|f| f.complete) {
            bail!("trial {i}: the quarantine was not acknowledged by every member");
        }
        let denied = loop {
            let d = probes.denials();
            if d.iter().all(Option::is_some) {
                break d
                    .into_iter()
                    .map(|t| t.map(|t| t.saturating_duration_since(t0)).unwrap_or_default())
                    .collect::<Vec<_>>();
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("trial {i}: not every node denied within 10 s");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        let all = denied.iter().max().copied().unwrap_or_default();
        out.push(Trial { ack_ms: ms(ack), denied_ms: denied.iter().map(|d| ms(*d)).collect(), all_denied_ms: ms(all) });
        reg.unquarantine(c.req(NameRequest { name: server.into() })).await?;
    }
    Ok(out)
}

/// Registers `n` more servers, 500 per manifest (as the issue measured).
async fn register_many(c: &Cluster, n: usize, prefix: &str) -> anyhow::Result<Duration> {
    let mut reg = RegistryClient::new(c.channel(1).await?);
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut text = String::new();
        for i in chunk {
            text.push_str(&format!(
                "---\napiVersion: joch.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: {prefix}{i}\nspec:\n  endpoint:\n    url: http://127.0.0.1:9/s{i}\n"
            ));
        }
        reg.apply(c.req(ApplyRequest { source: "bench".into(), text })).await?;
    }
    Ok(t.elapsed())
}

fn trial_stats(trials: &[Trial]) -> Value {
    let d = |f: &dyn Fn(&Trial) -> f64| {
        stats_json(&stats(trials.iter().map(|t| Duration::from_secs_f64(f(t) / 1000.0)).collect()))
    };
    json!({"trials": trials.len(), "ack": d(&|t| t.ack_ms), "denied_on_every_node": d(&|t| t.all_denied_ms)})
}

/// Scenario 4: sequential write latency and concurrent throughput.
async fn admin_writes(
    c: &Cluster,
    prefix: &str,
    sequential: usize,
    concurrent: usize,
    per_task: usize,
) -> anyhow::Result<Value> {
    let mut reg = RegistryClient::new(c.channel(2).await?);
    let mut lat = Vec::new();
    for i in 0..sequential {
        let t = Instant::now();
        reg.add_server(c.req(AddServerRequest {
            name: format!("{prefix}seq{i}"),
            endpoint: "http://127.0.0.1:9/mcp".into(),
            ..Default::default()
        }))
        .await?;
        lat.push(t.elapsed());
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..concurrent {
        let mut reg = RegistryClient::new(c.channel(1 + (k as u64 % 3)).await?);
        let reqs: Vec<_> = (0..per_task)
            .map(|i| {
                c.req(AddServerRequest {
                    name: format!("{prefix}c{k}x{i}"),
                    endpoint: "http://127.0.0.1:9/mcp".into(),
                    ..Default::default()
                })
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            for r in reqs {
                reg.add_server(r).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let took = t.elapsed();
    let total = concurrent * per_task;
    Ok(json!({"sequential_latency": stats_json(&stats(lat)), "concurrent_writers": concurrent, "writes": total,
              "throughput_per_s": (total as f64 / took.as_secs_f64()).round()}))
}

/// Scenario 5: resident memory of node 1 idle, with `servers` registered, with 1,000 sessions
/// and with `streams` open server streams.
async fn memory(c: &Cluster, streams: usize) -> anyhow::Result<Value> {
    let pid = c.pid(1);
    let idle = procs::rss_mib(pid);
    register_many(c, 1000, "mem").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_servers = procs::rss_mib(pid);
    let url = format!("{}/mcp/canned", c.mcp(1));
    let mut p = Probe::open(&url, c.bearer()).await?;
    let mut sids = Vec::new();
    for _ in 0..1000 {
        sids.push(p.initialize().await?);
    }
    let with_sessions = procs::rss_mib(pid);
    // Open server streams (GET), each on its own connection, held open.
    let (authority, path) = url.strip_prefix("http://").and_then(|r| r.split_once('/')).context("url")?;
    let mut held = Vec::new();
    for sid in sids.iter().cycle().take(streams) {
        let stream = tokio::net::TcpStream::connect(authority).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut b = hyper::Request::get(format!("/{path}"))
            .header("host", authority)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", sid.as_str())
            .header("mcp-protocol-version", "2025-11-25");
        if let Some(a) = c.bearer() {
            b = b.header("authorization", a);
        }
        let r = send.send_request(b.body(Full::new(Bytes::new()))?).await?;
        if r.status() != 200 {
            bail!("a server stream was refused: {}", r.status());
        }
        held.push((send, r));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_streams = procs::rss_mib(pid);
    drop(held);
    Ok(json!({"idle_mib": idle, "with_1000_servers_mib": with_servers, "with_1000_sessions_mib": with_sessions,
              "open_streams": streams, "with_streams_mib": with_streams,
              "per_1000_streams_mib": ((with_streams - with_sessions) / streams as f64 * 1000.0 * 10.0).round() / 10.0}))
}

/// Scenario 6 and the HTTP half of 2: sequential legacy calls of a session created on node 1,
/// made on node 1 and on node 2.
async fn continuation(c: &Cluster, server: &str, n: usize) -> anyhow::Result<(Stats, Stats)> {
    let mut home = Probe::open(&format!("{}/mcp/{server}", c.mcp(1)), c.bearer()).await?;
    let mut away = Probe::open(&format!("{}/mcp/{server}", c.mcp(2)), c.bearer()).await?;
    let sid = home.initialize().await?;
    for _ in 0..100 {
        home.legacy_call(&sid).await?;
        away.legacy_call(&sid).await?;
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..n {
        a.push(home.legacy_call(&sid).await?);
        b.push(away.legacy_call(&sid).await?);
    }
    Ok((stats(a), stats(b)))
}

/// Scenario 2's other half: a stdio server started for every call (initialize, call, exit).
fn process_per_call(n: usize) -> anyhow::Result<Stats> {
    use std::io::{BufRead, BufReader, Write};
    let exe = std::env::current_exe()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let mut child =
            Command::new(&exe).args(["canned", "--stdio"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        writeln!(
            stdin,
            r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"2025-11-25","capabilities":{{}},"clientInfo":{{"name":"b","version":"1"}}}}}}"#
        )?;
        lines.next().context("initialize answer")??;
        writeln!(stdin, r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#)?;
        writeln!(
            stdin,
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hi"}}}}}}"#
        )?;
        lines.next().context("call answer")??;
        drop(stdin);
        child.wait()?;
        out.push(t.elapsed());
    }
    Ok(stats(out))
}

fn stats_ms(s: &Stats) -> String {
    format!("p50 {} ms, p99 {} ms (n {})", ms(s.median), ms(s.p99), s.n)
}

/// Runs the suite against `joch`; writes results into `out`.
pub async fn all(joch: PathBuf, s: Settings, out: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&out)?;
    let version = crate::common::run(&joch, &["--version"])?;
    let up = Upstream::start()?;
    let nginx = Nginx::start(&up.addr)?;
    let exe_dir = std::env::current_exe()?.parent().context("bench dir")?.display().to_string();
    let (c, _) = Cluster::up_with(&joch, 3, &["--stdio-allow", &exe_dir, "--no-demo"])?;
    c.cli(&["mcp", "add", "canned", "--endpoint", &up.url])?;
    c.cli(&["mcp", "add", "victim", "--endpoint", &up.url])?;
    let exe = std::env::current_exe()?.display().to_string();
    c.cli(&[
        "mcp",
        "add",
        "stdio",
        "--transport",
        "stdio",
        "--command",
        &exe,
        "--arg",
        "canned",
        "--arg",
        "--stdio",
        "--allow-stdio",
    ])?;

    let runs = |n: u32| s.only.as_ref().is_none_or(|o| o.contains(&n));
    let mut sweeps = Vec::new();
    if runs(1) {
        eprintln!("1/6 added latency and maximum rate (open loop, {} connections)", s.connections);
        let python = PyUpstream::start();
        if let Some(py) = &python {
            c.cli(&["mcp", "add", "python", "--endpoint", &py.url])?;
        }
        sweeps = rates(&c, &up, &nginx, python.as_ref(), &s)?;
    }

    let mut stdio = Value::Null;
    let mut stdio_lines = Vec::new();
    if runs(2) {
        eprintln!("2/6 stdio upstream: pooled by joch vs a process per call");
        let (pooled, away) = continuation(&c, "stdio", 2000).await?;
        let per_call = process_per_call(200)?;
        stdio = json!({"pooled_by_joch": stats_json(&pooled), "pooled_forwarded_from_another_node": stats_json(&away),
                       "process_per_call": stats_json(&per_call)});
        stdio_lines = vec![("stdio pooled by joch", stats_ms(&pooled)), ("a process per call", stats_ms(&per_call))];
    }

    let mut propagation_result = Value::Null;
    if runs(3) {
        eprintln!("3/6 quarantine propagation ({} trials per condition)", s.trials);
        let traffic = || {
            BackgroundLoad::start(loadgen::Spec {
                targets: (1..=3).map(|i| format!("{}/mcp/canned", c.mcp(i))).collect(),
                era: Era::Modern,
                rate: 1500.0,
                duration: Duration::from_secs(3600),
                warmup: Duration::ZERO,
                connections: 8,
                payload: s.payload,
                bearer: c.bearer(),
                tool: None,
            })
        };
        let idle_1 = propagation(&c, "victim", s.trials).await?;
        let load = traffic();
        let busy_1 = propagation(&c, "victim", s.trials).await?;
        drop(load);
        let reg_many = register_many(&c, s.many_servers, "bulk").await?;
        let idle_many = propagation(&c, "victim", s.trials).await?;
        let load = traffic();
        let busy_many = propagation(&c, "victim", s.trials).await?;
        drop(load);
        propagation_result = json!({"one_server_idle": trial_stats(&idle_1), "one_server_1500rps": trial_stats(&busy_1),
            "many_servers_idle": trial_stats(&idle_many), "many_servers_1500rps": trial_stats(&busy_many),
            "many_servers": s.many_servers, "registering_them_s": reg_many.as_secs_f64(),
            "raw": {"one_server_idle": idle_1, "one_server_1500rps": busy_1,
                    "many_servers_idle": idle_many, "many_servers_1500rps": busy_many}});
    }

    let mut writes = Value::Null;
    if runs(4) {
        eprintln!("4/6 admin writes");
        writes = admin_writes(&c, "w", 200, 8, 50).await?;
    }

    let mut mem = Value::Null;
    if runs(5) {
        eprintln!("5/6 memory");
        let (cm, _) = Cluster::up_with(&joch, 3, &["--no-demo"])?;
        cm.cli(&["mcp", "add", "canned", "--endpoint", &up.url])?;
        mem = memory(&cm, 1000).await?;
    }

    let mut cont = Value::Null;
    if runs(6) {
        eprintln!("6/6 session continuation");
        let (http_home, http_away) = continuation(&c, "canned", 2000).await?;
        let (stdio_home, stdio_away) = continuation(&c, "stdio", 2000).await?;
        cont = json!({"http_same_node": stats_json(&http_home), "http_other_node": stats_json(&http_away),
                      "stdio_owner_node": stats_json(&stdio_home), "stdio_other_node_via_mesh": stats_json(&stdio_away)});
    }

    if runs(1) {
        // Last, because it changes the cluster for good: one node again with governance on
        // beyond what every run has (audit trail, the guard's stage): the 1,000 synthetic
        // policy rules of `policy-decision` and the content guard scanning `canned`'s results.
        eprintln!("1/6 (again) added latency and maximum rate with 1,000 policy rules and the content guard");
        let mut change = crate::policy::manifests(1000);
        change.push_str(&format!(
            "\n---\napiVersion: joch.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: canned\nspec:\n  endpoint: {{ url: \"{}\" }}\n  \
             scanning: {{ promptInjectionScan: true, redactFieldsInResults: [secrets, pii] }}\n",
            up.url
        ));
        let f = tempfile::NamedTempFile::new()?;
        std::fs::write(f.path(), change)?;
        c.cli(&["apply", "-f", &f.path().display().to_string()])?;
        sweeps.extend(governed(&c, &s)?);
    }

    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let result = json!({
        "benchmark": "suite", "date": date, "joch": joch.display().to_string(), "joch_version": version.trim(),
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "settings": {"step_s": s.step.as_secs_f64(), "connections": s.connections, "trials": s.trials,
                     "many_servers": s.many_servers, "p99_bound_ms": s.p99_bound_ms, "payload": s.payload},
        "rates": sweeps,
        "stdio": stdio,
        "propagation": propagation_result,
        "admin_writes": writes,
        "memory": mem,
        "continuation": cont,
    });
    std::fs::write(out.join("suite.json"), serde_json::to_vec_pretty(&result)?)?;
    crate::plot::rates(&result, &out.join("latency-vs-rate.png"))?;
    crate::plot::propagation(&result, &out.join("propagation.png"))?;
    let md = crate::report::markdown(&result, &stdio_lines);
    std::fs::write(out.join("README.md"), &md)?;
    print!("{md}");
    eprintln!("results written to {}", out.display());
    Ok(())
}

/// A load that runs in the background until dropped.
struct BackgroundLoad {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundLoad {
    fn start(spec: loadgen::Spec) -> BackgroundLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let _ = loadgen::run_until(spec, st);
        });
        BackgroundLoad { stop, handle: Some(handle) }
    }
}

impl Drop for BackgroundLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Where the suite writes by default.
pub fn default_out() -> PathBuf {
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    Path::new(env!("CARGO_MANIFEST_DIR")).join("results").join(&date[..10]).join("suite")
}
