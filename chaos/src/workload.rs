//! The workload: registry writes and linearizable reads sent to random nodes by concurrent
//! workers, and steady MCP traffic (raw streamable HTTP in both eras, and the official Python
//! SDK client) through every node and through the balancer. Everything goes into the history.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use joch_proto::admin as pb;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::history::{Call, Clock, Fleet, History, Op, Outcome, RegOp, Ret, Srv, Via};

/// Servers that always exist (traffic goes to them; quarantined, pinned, read).
pub const FIXED: [&str; 4] = ["t0", "t1", "t2", "t3"];
/// Servers that come and go (added and deleted too).
pub const TRANSIENT: [&str; 3] = ["r0", "r1", "r2"];
/// How long a registry operation may take before its outcome counts as unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
const MODERN: &str = "2026-07-28";
const LEGACY: &str = "2025-11-25";

/// What the workload needs.
pub struct Ctx {
    pub cluster: Arc<Cluster>,
    pub clock: Arc<Clock>,
    pub history: Arc<History>,
    pub stop: Arc<AtomicBool>,
    /// `Authorization` values of agents 1 and 2 (index 0 and 1).
    pub agents: [String; 2],
    pub balancer: u16,
    pub upstream: u16,
    /// The SDK client: (python, client.py), when the venv is there.
    pub sdk: Option<(PathBuf, PathBuf)>,
    pub http: reqwest::Client,
    /// Each agent's current legacy session: (server, session id).
    sessions: Mutex<[Option<(String, String)>; 2]>,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cluster: Arc<Cluster>,
        clock: Arc<Clock>,
        history: Arc<History>,
        agents: [String; 2],
        balancer: u16,
        upstream: u16,
        sdk: Option<(PathBuf, PathBuf)>,
    ) -> anyhow::Result<Ctx> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).no_proxy().build()?;
        Ok(Ctx {
            cluster,
            clock,
            history,
            stop: Arc::new(AtomicBool::new(false)),
            agents,
            balancer,
            upstream,
            sdk,
            http,
            sessions: Mutex::new([None, None]),
        })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The upstream endpoint of server `name`.
    pub fn endpoint(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/u/{name}/mcp", self.upstream)
    }

    /// A running node, at random.
    fn running_node(&self, rng: &mut StdRng) -> Option<u64> {
        let up: Vec<u64> = self.cluster.ids().filter(|id| self.cluster.running(*id)).collect();
        (!up.is_empty()).then(|| up[rng.random_range(0..up.len())])
    }
}

/// The model's version string of `Pin(n)`.
pub fn version(n: u8) -> String {
    format!("1.{n}.0")
}

/// What a node answered to one operation.
struct Answer {
    /// None: no definite answer (see `failed`).
    ret: Option<Ret>,
    log_index: u64,
    fleet: Option<Fleet>,
    error: Option<String>,
    /// Failed for certain (a read): it did nothing. Otherwise a missing `ret` is an unknown outcome.
    failed: bool,
}

impl Answer {
    fn ret(ret: Ret) -> Answer {
        Answer { ret: Some(ret), log_index: 0, fleet: None, error: None, failed: false }
    }

    fn unknown(error: String) -> Answer {
        Answer { ret: None, log_index: 0, fleet: None, error: Some(error), failed: false }
    }
}

/// Runs one registry operation as `process` through node `node`: its record in the history's
/// shape (invoked, returned, outcome), not yet recorded.
pub async fn run_op(ctx: &Ctx, process: u64, node: u64, key: &str, op: Op) -> RegOp {
    let invoked = ctx.clock.now();
    let a = send_op(ctx, node, key, op).await;
    let returned = (a.ret.is_some() || a.failed).then(|| ctx.clock.now());
    RegOp {
        process,
        key: key.into(),
        node,
        op,
        invoked,
        returned,
        ret: a.ret,
        error: a.error,
        log_index: a.log_index,
        fleet: a.fleet,
    }
}

async fn send_op(ctx: &Ctx, node: u64, key: &str, op: Op) -> Answer {
    let c = &ctx.cluster;
    let mut reg = c.registry(node);
    let name = key.to_string();
    let write = |r: Result<tonic::Response<pb::WriteReply>, tonic::Status>| match r {
        Ok(r) => {
            let w = r.into_inner();
            let fleet = w.fleet.map(|f| Fleet {
                complete: f.complete,
                applied: f.members.iter().filter(|m| m.applied).map(|m| m.id).collect(),
                members: f.members.iter().map(|m| m.id).collect(),
                laggards_stop_by: (f.laggards_stop_by_unix_ms > 0)
                    .then(|| ctx.clock.at_unix_ms(f.laggards_stop_by_unix_ms)),
            });
            Answer { log_index: w.log_index, fleet, ..Answer::ret(Ret::Changed(w.changed)) }
        }
        Err(s) => status(s),
    };
    let fut = async {
        match op {
            Op::Add => {
                let req = pb::AddServerRequest { name, endpoint: ctx.endpoint(key), ..Default::default() };
                write(reg.add_server(c.req(req, OP_TIMEOUT)).await)
            }
            Op::Delete => write(reg.delete_server(c.req(pb::NameRequest { name }, OP_TIMEOUT)).await),
            Op::Quarantine => {
                let req = pb::QuarantineRequest { name, reason: "chaos".into() };
                write(reg.quarantine(c.req(req, OP_TIMEOUT)).await)
            }
            Op::Unquarantine => write(reg.unquarantine(c.req(pb::NameRequest { name }, OP_TIMEOUT)).await),
            Op::Pin(n) => write(reg.pin(c.req(pb::PinRequest { name, version: version(n) }, OP_TIMEOUT)).await),
            Op::Read => match reg.get_server(c.req(pb::GetRequest { name, stale: false }, OP_TIMEOUT)).await {
                Ok(r) => {
                    let s = r.into_inner();
                    let pin = s
                        .pin_server_version
                        .then(|| s.pinned_version.strip_prefix("1.")?.strip_suffix(".0")?.parse().ok())
                        .flatten();
                    Answer::ret(Ret::Value(Some(Srv { quarantined: s.quarantined, pin })))
                }
                Err(s) if s.code() == tonic::Code::NotFound => Answer::ret(Ret::Value(None)),
                // A read that failed changed nothing.
                Err(s) => Answer { failed: true, ..Answer::unknown(s.message().to_string()) },
            },
        }
    };
    match tokio::time::timeout(OP_TIMEOUT + Duration::from_secs(2), fut).await {
        Ok(a) => a,
        Err(_) => Answer::unknown("no answer in time".into()),
    }
}

/// A write's error: a definite answer of the registry, or an unknown outcome.
fn status(s: tonic::Status) -> Answer {
    match s.code() {
        tonic::Code::NotFound => Answer::ret(Ret::NotFound),
        tonic::Code::AlreadyExists => Answer::ret(Ret::Exists),
        // Anything else may have been applied (a node retries a forward whose answer was lost,
        // then gives up): the outcome is unknown.
        _ => Answer::unknown(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// A registry worker: random operations on random servers through random running nodes. Its
/// process id changes after an operation whose outcome is unknown (it stays open forever).
pub async fn registry_worker(ctx: Arc<Ctx>, worker: u64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(worker));
    let mut process = worker << 32;
    while !ctx.stopped() {
        let keys: Vec<&str> = FIXED.iter().chain(TRANSIENT.iter()).copied().collect();
        let key = keys[rng.random_range(0..keys.len())];
        let roll = rng.random_range(0..100);
        let op = match roll {
            0..=29 => Op::Read,
            30..=49 => Op::Quarantine,
            50..=69 => Op::Unquarantine,
            70..=84 => Op::Pin(rng.random_range(0..3)),
            85..=92 if TRANSIENT.contains(&key) => Op::Add,
            _ if TRANSIENT.contains(&key) => Op::Delete,
            _ => Op::Read,
        };
        let Some(node) = ctx.running_node(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let record = run_op(&ctx, process, node, key, op).await;
        let returned = record.returned;
        ctx.history.reg.lock().push(record);
        if returned.is_none() {
            process += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..150))).await;
    }
}

/// A call's JSON-RPC answer, from a JSON body or the last event of an SSE stream.
fn rpc_answer(body: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        return Some(v);
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .rfind(|v| v.get("id").is_some())
}

fn outcome(status: u16, body: &str) -> Outcome {
    match rpc_answer(body) {
        Some(v) if v.get("result").is_some() => Outcome::Ok,
        Some(v) if v.get("error").is_some() => Outcome::Denied {
            code: v["error"]["code"].as_i64().unwrap_or(0),
            message: v["error"]["message"].as_str().unwrap_or_default().chars().take(200).collect(),
        },
        _ => Outcome::Http(status),
    }
}

/// Where a call goes: a node's MCP URL or the balancer's.
fn base(ctx: &Ctx, via: Via) -> String {
    match via {
        Via::Node(id) => ctx.cluster.mcp_url(id),
        Via::Balancer => format!("http://127.0.0.1:{}", ctx.balancer),
    }
}

/// One POST of a JSON-RPC message; (status, session id header, body).
async fn post(
    ctx: &Ctx,
    url: &str,
    agent: usize,
    headers: &[(&str, String)],
    body: Value,
) -> Result<(u16, Option<String>, String), String> {
    let mut b = ctx
        .http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", &ctx.agents[agent]);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    let r = b.body(body.to_string()).send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let sid = r.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = r.text().await.map_err(|e| e.to_string())?;
    Ok((status, sid, text))
}

fn call_body(op: &str, modern: bool) -> Value {
    let mut params = json!({"name": "echo", "arguments": {"op": op}});
    if modern {
        params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": {"name": "chaos", "version": "1"}});
    }
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})
}

fn pick_via(ctx: &Ctx, rng: &mut StdRng) -> Via {
    if rng.random_bool(0.25) {
        return Via::Balancer;
    }
    let ids: Vec<u64> = ctx.cluster.ids().collect();
    Via::Node(ids[rng.random_range(0..ids.len())])
}

fn all_servers() -> Vec<&'static str> {
    FIXED.iter().chain(TRANSIENT.iter()).copied().collect()
}

/// Stateless modern-era calls by agent `agent` to random servers through random nodes.
pub async fn modern_traffic(ctx: Arc<Ctx>, agent: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (0xA0 + agent as u64));
    let servers = all_servers();
    let mut n = 0u64;
    while !ctx.stopped() {
        n += 1;
        let server = servers[rng.random_range(0..servers.len())];
        let via = pick_via(&ctx, &mut rng);
        let id = format!("A{}-m-{n}", agent + 1);
        let url = format!("{}/mcp/{server}", base(&ctx, via));
        let headers = [
            ("mcp-protocol-version", MODERN.to_string()),
            ("mcp-method", "tools/call".to_string()),
            ("mcp-name", "echo".to_string()),
        ];
        let sent = ctx.clock.now();
        let r = post(&ctx, &url, agent, &headers, call_body(&id, true)).await;
        let done = ctx.clock.now();
        let outcome = match r {
            Ok((status, _, body)) => outcome(status, &body),
            Err(e) => Outcome::Failed(e),
        };
        ctx.history.calls.lock().push(Call {
            id,
            agent: agent as u8 + 1,
            server: server.into(),
            via,
            era: "modern".into(),
            cross: false,
            sent,
            done,
            outcome,
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..60))).await;
    }
}

/// Legacy-era sessions of agent `agent`: opened on a random node, continued on random nodes;
/// now and then the other agent's session is tried with this agent's credential (it must be
/// refused, and never reach the upstream).
pub async fn legacy_traffic(ctx: Arc<Ctx>, agent: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (0xB0 + agent as u64));
    let mut n = 0u64;
    while !ctx.stopped() {
        let server = FIXED[rng.random_range(0..FIXED.len())];
        let via = pick_via(&ctx, &mut rng);
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": LEGACY,
            "capabilities": {}, "clientInfo": {"name": format!("chaos-agent-{}", agent + 1), "version": "1"}}});
        let sid = match post(&ctx, &format!("{}/mcp/{server}", base(&ctx, via)), agent, &[], init).await {
            Ok((200, Some(sid), _)) => sid,
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        ctx.sessions.lock()[agent] = Some((server.to_string(), sid.clone()));
        for k in 0..20 {
            if ctx.stopped() {
                break;
            }
            n += 1;
            // Every fifth call: the other agent's session, with this agent's credential.
            let cross = k % 5 == 4;
            let (target, session) = if cross {
                match ctx.sessions.lock()[1 - agent].clone() {
                    Some(s) => s,
                    None => continue,
                }
            } else {
                (server.to_string(), sid.clone())
            };
            let via = pick_via(&ctx, &mut rng);
            let id = format!("A{}-l-{n}", agent + 1);
            let url = format!("{}/mcp/{target}", base(&ctx, via));
            let headers = [("mcp-session-id", session), ("mcp-protocol-version", LEGACY.to_string())];
            let sent = ctx.clock.now();
            let r = post(&ctx, &url, agent, &headers, call_body(&id, false)).await;
            let done = ctx.clock.now();
            let (outcome, lost) = match r {
                Ok((status, _, body)) => (outcome(status, &body), status == 404),
                Err(e) => (Outcome::Failed(e), false),
            };
            ctx.history.calls.lock().push(Call {
                id,
                agent: agent as u8 + 1,
                server: target,
                via,
                era: "legacy".into(),
                cross,
                sent,
                done,
                outcome,
            });
            if lost && !cross {
                break;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..80))).await;
        }
    }
}

/// The official Python SDK client (`client.py probe`) through the balancer, one call per run.
pub async fn sdk_traffic(ctx: Arc<Ctx>, seed: u64) {
    let Some((python, script)) = ctx.sdk.clone() else { return };
    let mut rng = StdRng::seed_from_u64(seed ^ 0xC0);
    let mut n = 0u64;
    while !ctx.stopped() {
        n += 1;
        let server = FIXED[rng.random_range(0..FIXED.len())];
        let id = format!("A1-sdk-{n}");
        let calls = json!([["echo", {"op": id}]]).to_string();
        let token = ctx.agents[0].strip_prefix("Bearer ").unwrap_or_default().to_string();
        let sent = ctx.clock.now();
        let out = tokio::process::Command::new(&python)
            .arg(&script)
            .args(["probe", server, &calls, &format!("http://127.0.0.1:{}", ctx.balancer)])
            .env("JOCH_AGENT_TOKEN", token)
            .env("MCP_MODE", "auto")
            .kill_on_drop(true)
            .output();
        let outcome = match tokio::time::timeout(Duration::from_secs(60), out).await {
            Ok(Ok(o)) => {
                let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
                match &v["calls"]["echo"] {
                    Value::String(s) if *s == id => Outcome::Ok,
                    Value::Null => {
                        Outcome::Failed(String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").into())
                    }
                    other => Outcome::Denied { code: other["code"].as_i64().unwrap_or(0), message: other.to_string() },
                }
            }
            Ok(Err(e)) => Outcome::Failed(e.to_string()),
            Err(_) => Outcome::Failed("the SDK client did not finish in 60 s".into()),
        };
        let done = ctx.clock.now();
        ctx.history.calls.lock().push(Call {
            id,
            agent: 1,
            server: server.into(),
            via: Via::Balancer,
            era: "sdk".into(),
            cross: false,
            sent,
            done,
            outcome,
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(2000..6000))).await;
    }
}
