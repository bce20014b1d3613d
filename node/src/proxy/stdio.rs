//! stdio upstreams: one child process per server per node, started on first use, initialised
//! once by joch, and shared by every agent session on this node. Requests are multiplexed by
//! rewriting JSON-RPC ids (and progress tokens) to ones unique in the child, and mapped back on
//! the way out. A child that dies is restarted on the next request; a child whose server is
//! quarantined, deleted or no longer allowed stdio is stopped: stdin closed, then SIGTERM, then
//! SIGKILL. Its stderr goes to the node's log.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use joch_raft_store::model::resource::StdioSpec;
use joch_raft_store::{RegistryHandle, ServerRecord};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::deny::Reason;
use super::streams::Streams;
use super::upstream::UpstreamError;

/// How long a child may take to answer joch's initialize.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Each step of the stop sequence waits this long for the child to exit.
const STOP_STEP: Duration = Duration::from_secs(2);
/// Longest line accepted from a child.
const MAX_LINE: usize = 16 << 20;

/// The children of this node.
#[derive(Default)]
pub struct StdioPool {
    children: Mutex<HashMap<String, Arc<Child>>>,
    /// Serialises starts, so concurrent first requests start one child.
    starting: tokio::sync::Mutex<()>,
    /// Where the children's own messages (list changes, resource updates) go.
    pub streams: Arc<Streams>,
}

struct PendingCall {
    agent_id: Value,
    agent_token: Option<Value>,
    child_token: Option<String>,
    out: mpsc::UnboundedSender<Value>,
}

/// One running child.
pub struct Child {
    server: String,
    spec: StdioSpec,
    stdin: mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<HashMap<u64, PendingCall>>,
    tokens: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
    /// Set by the reader when the child's stdout ends (it exited or closed it).
    exited: AtomicBool,
    streams: Arc<Streams>,
    /// The child's answer to joch's initialize (`result`).
    pub init: Value,
    process: tokio::sync::Mutex<Option<tokio::process::Child>>,
}

fn unavailable(message: String) -> UpstreamError {
    UpstreamError { reason: Reason::UpstreamUnavailable, message }
}

impl Child {
    /// The child's `serverInfo.version`.
    pub fn version(&self) -> Option<&str> {
        self.init["serverInfo"]["version"].as_str()
    }

    fn alive(&self) -> bool {
        !self.exited.load(Ordering::Acquire) && !self.stdin.is_closed()
    }

    /// Sends a request; the receiver yields progress notifications, then the answer.
    pub fn call(&self, mut msg: Value) -> Result<mpsc::UnboundedReceiver<Value>, UpstreamError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let agent_id = std::mem::replace(&mut msg["id"], json!(id));
        let agent_token = msg.pointer("/params/_meta/progressToken").cloned();
        let child_token = agent_token.as_ref().map(|_| format!("joch-{id}"));
        if let Some(t) = &child_token {
            msg["params"]["_meta"]["progressToken"] = json!(t);
            self.tokens.lock().expect("tokens").insert(t.clone(), id);
        }
        let (out, rx) = mpsc::unbounded_channel();
        self.pending.lock().expect("pending").insert(id, PendingCall { agent_id, agent_token, child_token, out });
        let mut line = serde_json::to_vec(&msg).map_err(|e| unavailable(e.to_string()))?;
        line.push(b'\n');
        // Checked after registering: a child that exits from here on fails this call through
        // `fail_all`; one that exited before is caught here. No call waits on a dead child.
        if self.exited.load(Ordering::Acquire) || self.stdin.send(line).is_err() {
            self.pending.lock().expect("pending").remove(&id);
            return Err(unavailable(format!("the stdio server {:?} exited", self.server)));
        }
        Ok(rx)
    }

    /// Sends `resources/subscribe` or `resources/unsubscribe` for each URI on behalf of joch's
    /// sessions; the answers are not awaited (nobody waits for them).
    pub fn subscriptions(&self, method: &str, uris: impl IntoIterator<Item = String>) {
        for uri in uris {
            let _ = self.call(json!({"jsonrpc": "2.0", "id": 0, "method": method, "params": {"uri": uri}}));
        }
    }

    /// Sends a notification (no answer).
    pub fn notify(&self, msg: &Value) {
        let mut line = serde_json::to_vec(msg).unwrap_or_default();
        line.push(b'\n');
        let _ = self.stdin.send(line);
    }

    /// Routes one line from the child.
    fn route(&self, msg: Value) {
        let is_answer = msg.get("result").is_some() || msg.get("error").is_some();
        match (msg.get("id").and_then(Value::as_u64), msg.get("method").and_then(Value::as_str)) {
            (Some(id), None) if is_answer => {
                let Some(p) = self.pending.lock().expect("pending").remove(&id) else { return };
                if let Some(t) = &p.child_token {
                    self.tokens.lock().expect("tokens").remove(t);
                }
                let mut msg = msg;
                msg["id"] = p.agent_id;
                let _ = p.out.send(msg);
            }
            (_, Some("notifications/progress")) => {
                let Some(token) = msg.pointer("/params/progressToken").and_then(Value::as_str) else { return };
                let Some(id) = self.tokens.lock().expect("tokens").get(token).copied() else { return };
                let pending = self.pending.lock().expect("pending");
                if let Some(p) = pending.get(&id) {
                    let mut msg = msg.clone();
                    msg["params"]["progressToken"] = p.agent_token.clone().unwrap_or(Value::Null);
                    let _ = p.out.send(msg);
                }
            }
            (_, Some(method)) if msg.get("id").is_some() => {
                // A server-to-client request (sampling, roots, elicitation): refused. The child is
                // shared by every agent on this node and the request does not say which call it
                // belongs to; guessing could send one agent's prompt to another.
                let answer = if method == "ping" {
                    json!({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
                } else {
                    json!({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601,
                        "message": format!("{method} is not bridged to agents by joch for stdio servers: the server process is shared by every agent on the node, so the request cannot be attributed to one agent's call")}})
                };
                self.notify(&answer);
            }
            (None, Some(_)) => self.streams.publish(&self.server, &msg),
            _ => tracing::debug!(server = %self.server, "stdio server message without a request dropped"),
        }
    }

    /// Fails every pending call (the child is gone).
    fn fail_all(&self, why: &str) {
        let pending: Vec<PendingCall> = self.pending.lock().expect("pending").drain().map(|(_, p)| p).collect();
        for p in pending {
            let _ = p
                .out
                .send(json!({"jsonrpc": "2.0", "id": p.agent_id, "error": {"code": Reason::UpstreamUnavailable.code(),
                "message": why, "data": {"reason": Reason::UpstreamUnavailable.as_str(), "server": self.server}}}));
        }
    }

    /// Stops the child: close stdin, then SIGTERM, then SIGKILL, each after a grace period.
    pub async fn stop(&self) {
        if let Some(proc) = self.process.lock().await.take() {
            stop_process(proc, &self.server).await;
        }
    }
}

/// The stop sequence: close stdin, wait; SIGTERM, wait; SIGKILL.
async fn stop_process(mut proc: tokio::process::Child, server: &str) {
    drop(proc.stdin.take());
    if tokio::time::timeout(STOP_STEP, proc.wait()).await.is_ok() {
        return;
    }
    if let Some(pid) = proc.id() {
        let _ = tokio::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
    }
    if tokio::time::timeout(STOP_STEP, proc.wait()).await.is_ok() {
        return;
    }
    tracing::warn!(server, "stdio server ignored SIGTERM; killing it");
    let _ = proc.kill().await;
}

impl StdioPool {
    /// The running child for this server, started (and initialised) if needed.
    pub async fn child(&self, rec: &ServerRecord) -> Result<Arc<Child>, UpstreamError> {
        let spec =
            rec.spec.stdio.clone().ok_or_else(|| unavailable("no stdio command in the server's record".into()))?;
        let current = |this: &Self| {
            this.children.lock().expect("children").get(&rec.name).filter(|c| c.alive() && c.spec == spec).cloned()
        };
        if let Some(c) = current(self) {
            return Ok(c);
        }
        let _one = self.starting.lock().await;
        if let Some(c) = current(self) {
            return Ok(c);
        }
        let old = self.children.lock().expect("children").remove(&rec.name);
        if let Some(old) = old {
            old.stop().await;
        }
        let child = start(&rec.name, spec, self.streams.clone()).await?;
        self.children.lock().expect("children").insert(rec.name.clone(), child.clone());
        metrics::counter!("joch_stdio_starts_total").increment(1);
        Ok(child)
    }

    /// Stops children whose server is gone, quarantined or no longer allowed stdio. Runs until
    /// the registry handle is dropped.
    pub async fn reap(self: Arc<Self>, registry: RegistryHandle) {
        let mut changes = registry.subscribe();
        while changes.changed().await.is_ok() {
            let state = registry.load();
            let doomed: Vec<Arc<Child>> = {
                let mut children = self.children.lock().expect("children");
                let names: Vec<String> = children
                    .keys()
                    .filter(|n| match state.registry.servers.get(*n) {
                        None => true,
                        Some(r) => r.status.quarantine.is_some() || !r.spec.security.allow_stdio,
                    })
                    .cloned()
                    .collect();
                names.iter().filter_map(|n| children.remove(n)).collect()
            };
            for c in doomed {
                tracing::info!(server = %c.server, "stopping stdio server (quarantined, deleted or stdio no longer allowed)");
                c.stop().await;
            }
        }
    }

    /// Tells the running child of `rec` that nobody on this node subscribes to these URIs any
    /// more (their last session ended).
    pub fn unsubscribe(&self, rec: &ServerRecord, uris: Vec<String>) {
        let child = self.children.lock().expect("children").get(&rec.name).cloned();
        if let Some(child) = child.filter(|c| c.alive()) {
            child.subscriptions("resources/unsubscribe", uris);
        }
    }

    /// Stops every child (node shutdown).
    pub async fn stop_all(&self) {
        let all: Vec<Arc<Child>> = self.children.lock().expect("children").drain().map(|(_, c)| c).collect();
        futures::future::join_all(all.iter().map(|c| c.stop())).await;
    }
}

/// The environment a child gets: a minimal allow-list from the node, plus the record's `env`.
/// Never anything from the agent.
fn child_env(spec: &StdioSpec) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ["PATH", "HOME", "LANG", "LC_ALL", "TZ"]
        .iter()
        .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
        .collect();
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

async fn start(server: &str, spec: StdioSpec, streams: Arc<Streams>) -> Result<Arc<Child>, UpstreamError> {
    let mut proc = tokio::process::Command::new(&spec.command)
        .args(&spec.args)
        .env_clear()
        .envs(child_env(&spec))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| unavailable(format!("cannot start the stdio server {server:?} ({}): {e}", spec.command)))?;
    let pid = proc.id();
    let mut stdin = proc.stdin.take().expect("piped stdin");
    let stdout = proc.stdout.take().expect("piped stdout");
    let stderr = proc.stderr.take().expect("piped stderr");
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    let name = server.to_string();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "joch::stdio", server = %name, "{line}");
        }
    });
    tracing::info!(server, command = %spec.command, pid, "started stdio server");
    let send = |v: &Value| {
        let mut line = serde_json::to_vec(v).unwrap_or_default();
        line.push(b'\n');
        tx.send(line).is_ok()
    };
    // joch's own handshake with the child, before any agent request reaches it.
    let mut reader = BufReader::new(stdout);
    send(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": crate::mcp::version::LEGACY[0], "capabilities": {},
        "clientInfo": {"name": "joch", "version": env!("CARGO_PKG_VERSION")}}}));
    let init = tokio::time::timeout(START_TIMEOUT, async {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
                return Err("exited before answering initialize".to_string());
            }
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v.get("id") == Some(&json!(0)) {
                    return v.get("result").cloned().ok_or_else(|| format!("initialize failed: {}", v["error"]));
                }
            }
        }
    })
    .await
    .map_err(|_| format!("did not answer initialize within {START_TIMEOUT:?}"))
    .and_then(|r| r);
    let init = match init {
        Ok(v) => v,
        Err(e) => {
            stop_process(proc, server).await;
            return Err(unavailable(format!("stdio server {server:?}: {e}")));
        }
    };
    send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let child = Arc::new(Child {
        server: server.to_string(),
        spec,
        stdin: tx,
        pending: Mutex::new(HashMap::new()),
        tokens: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        exited: AtomicBool::new(false),
        streams,
        init,
        process: tokio::sync::Mutex::new(Some(proc)),
    });
    let routed = child.clone();
    tokio::spawn(async move {
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => break,
                Ok(n) if n > MAX_LINE => {
                    tracing::warn!(server = %routed.server, "stdio server sent a line over {MAX_LINE} bytes; dropped");
                }
                Ok(_) => match serde_json::from_str::<Value>(&line) {
                    Ok(v) => routed.route(v),
                    Err(_) => tracing::debug!(server = %routed.server, "non-JSON line on stdout dropped"),
                },
            }
        }
        tracing::warn!(server = %routed.server, "stdio server exited; it is restarted on the next request");
        routed.exited.store(true, Ordering::Release);
        routed.fail_all("the stdio server exited during the call");
        metrics::counter!("joch_stdio_exits_total").increment(1);
    });
    Ok(child)
}
