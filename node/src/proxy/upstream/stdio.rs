//! stdio upstreams: one child process per server per node, started on first use, initialised
//! once by joch, and shared by every agent session on this node. Requests are multiplexed by
//! rewriting JSON-RPC ids (and progress tokens) to ones unique in the child, and mapped back on
//! the way out. A child that dies is restarted on the next request; a child whose server is
//! quarantined, deleted or no longer allowed stdio, and every child of a node that turns stale,
//! is stopped: stdin closed, then SIGTERM, then SIGKILL. Its stderr goes to the node's log, with
//! the values of the secrets in its environment replaced by `[secret NAME/KEY]`.
//!
//! A node runs only commands its own config allows ([`StdioAllow`]), from the absolute path it
//! checked; a child's environment is a short allow-list of the node's, the record's plain values,
//! and secrets opened on this node when the child starts (a new secret version restarts it).
//!
//! Bounded everywhere: the lines a child may send (read up to a limit, the rest skipped), the
//! messages waiting for its stdin, the progress waiting for a slow agent (dropped beyond that,
//! never the answer), and the time a call may stay silent. A call whose agent went away is
//! forgotten at once, and the child is told (`notifications/cancelled`).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use joch_raft_store::model::access::Access;
use joch_raft_store::model::resource::{EnvValue, StdioSpec};
use joch_raft_store::RegistryHandle;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::{Failure, UpstreamError};
use crate::cluster::lease::Lease;
use crate::config::stdio_allow::StdioAllow;
use crate::proxy::admission::Admitted;
use crate::proxy::deny::Reason;
use crate::proxy::streams::Streams;
use crate::secrets::Keyring;

/// How long a child may take to answer joch's initialize.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Each step of the stop sequence waits this long for the child to exit.
const STOP_STEP: Duration = Duration::from_secs(2);
/// Longest line accepted from a child.
pub const MAX_LINE: usize = 16 << 20;
/// Messages waiting to be written to a child's stdin.
const STDIN_BACKLOG: usize = 256;
/// Progress notifications of one call waiting for its agent.
const PROGRESS_BACKLOG: usize = 64;

/// The children of this node.
pub struct StdioPool {
    children: Mutex<HashMap<String, Arc<Child>>>,
    /// Serialises starts, so concurrent first requests start one child.
    starting: tokio::sync::Mutex<()>,
    /// Where the children's own messages (list changes, resource updates) go.
    pub streams: Arc<Streams>,
    /// How long a call may go without a message from the child.
    idle: Duration,
    /// What this node may run.
    allow: StdioAllow,
    /// Opens the secrets in children's environments.
    keyring: Arc<Keyring>,
    /// Where a server whose child died and was started again goes: discovered again (the
    /// program on disk may have changed under it).
    restarted: tokio::sync::mpsc::Sender<String>,
}

struct PendingCall {
    agent_id: Value,
    agent_token: Option<Value>,
    child_token: Option<String>,
    progress: mpsc::Sender<Value>,
    answer: oneshot::Sender<Value>,
}

/// One running child.
pub struct Child {
    server: String,
    spec: StdioSpec,
    /// The versions of the secrets in its environment when it started.
    secret_versions: Vec<Option<u64>>,
    stdin: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u64, PendingCall>>,
    tokens: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
    /// Set by the reader when the child's stdout ends (it exited or closed it).
    exited: AtomicBool,
    streams: Arc<Streams>,
    /// The child's answer to joch's initialize (`result`, always an object).
    pub init: Value,
    process: tokio::sync::Mutex<Option<tokio::process::Child>>,
    idle: Duration,
}

fn unavailable(message: String) -> UpstreamError {
    UpstreamError::unavailable(message)
}

/// One request in flight to a child: its progress notifications, then its answer.
pub struct ChildCall {
    child: Arc<Child>,
    id: u64,
    progress: mpsc::Receiver<Value>,
    answer: oneshot::Receiver<Value>,
    done: bool,
}

impl ChildCall {
    /// The next message of the call: a progress notification, or the answer (then `None`). A
    /// child silent for longer than the idle limit gets the call cancelled, and the caller an
    /// `upstream-timeout` error as the answer.
    pub async fn next(&mut self) -> Option<Value> {
        if self.done {
            return None;
        }
        let idle = self.child.idle;
        let next = async {
            tokio::select! {
                biased;
                Some(p) = self.progress.recv() => Some(p),
                a = &mut self.answer => a.ok(),
            }
        };
        match tokio::time::timeout(idle, next).await {
            Ok(Some(v)) => {
                if v.get("result").is_some() || v.get("error").is_some() {
                    self.done = true;
                }
                Some(v)
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(_) => {
                self.done = true;
                let agent_id = self.child.pending.lock().get(&self.id).map(|p| p.agent_id.clone());
                self.child.forget(self.id, true);
                Some(
                    json!({"jsonrpc": "2.0", "id": agent_id.unwrap_or(Value::Null), "error": {"code": Reason::UpstreamTimeout.code(),
                    "message": format!("the stdio server {:?} sent nothing for {idle:?}; the call was cancelled", self.child.server),
                    "data": {"reason": Reason::UpstreamTimeout.as_str(), "server": self.child.server}}}),
                )
            }
        }
    }

    /// The answer, skipping progress.
    pub async fn answer(mut self) -> Option<Value> {
        while let Some(v) = self.next().await {
            if v.get("result").is_some() || v.get("error").is_some() {
                return Some(v);
            }
        }
        None
    }

    /// Every message of the call as a stream.
    pub fn into_stream(self) -> impl futures::Stream<Item = Value> + Send + 'static {
        futures::stream::unfold(self, |mut c| async move { c.next().await.map(|v| (v, c)) })
    }
}

impl Drop for ChildCall {
    fn drop(&mut self) {
        if !self.done {
            // The agent went away before the answer: forget the call, tell the child.
            self.child.forget(self.id, true);
        }
    }
}

impl Child {
    /// The server it runs.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The child's `serverInfo.version`.
    pub fn version(&self) -> Option<&str> {
        self.init.get("serverInfo")?.get("version")?.as_str()
    }

    fn alive(&self) -> bool {
        !self.exited.load(Ordering::Acquire) && !self.stdin.is_closed()
    }

    fn write(&self, msg: &Value) -> Result<(), UpstreamError> {
        let mut line = serde_json::to_vec(msg).map_err(|e| unavailable(e.to_string()))?;
        line.push(b'\n');
        if self.exited.load(Ordering::Acquire) {
            return Err(unavailable(format!("the stdio server {:?} exited", self.server)));
        }
        self.stdin.try_send(line).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => unavailable(format!(
                "the stdio server {:?} is not reading its input ({STDIN_BACKLOG} messages waiting)",
                self.server
            )),
            mpsc::error::TrySendError::Closed(_) => unavailable(format!("the stdio server {:?} exited", self.server)),
        })
    }

    /// Sends a request (its id and progress token rewritten, the W3C `traceparent` in
    /// `params._meta`: a child has no HTTP headers); the call yields progress notifications, then
    /// the answer with the agent's id.
    pub fn call(self: &Arc<Self>, mut msg: Value, traceparent: &str) -> Result<ChildCall, UpstreamError> {
        if !msg.is_object() {
            return Err(unavailable("a request must be a JSON object".into()));
        }
        crate::mcp::envelope::set_meta(&mut msg, "traceparent", json!(traceparent));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let agent_id = std::mem::replace(&mut msg["id"], json!(id));
        let agent_token = msg.pointer("/params/_meta/progressToken").cloned();
        let child_token = agent_token.as_ref().map(|_| format!("joch-{id}"));
        if let Some(t) = &child_token {
            crate::mcp::envelope::set_meta(&mut msg, "progressToken", json!(t));
            self.tokens.lock().insert(t.clone(), id);
        }
        let (progress_tx, progress) = mpsc::channel(PROGRESS_BACKLOG);
        let (answer_tx, answer) = oneshot::channel();
        self.pending
            .lock()
            .insert(id, PendingCall { agent_id, agent_token, child_token, progress: progress_tx, answer: answer_tx });
        let call = ChildCall { child: self.clone(), id, progress, answer, done: false };
        // Registered first: a child that exits from here on fails this call through `fail_all`;
        // one that exited before is caught by `write`. No call waits on a dead child.
        self.write(&msg)?;
        Ok(call)
    }

    /// Forgets a call (answered elsewhere, timed out, or its agent left); with `cancel`, tells
    /// the child.
    fn forget(&self, id: u64, cancel: bool) {
        let Some(p) = self.pending.lock().remove(&id) else { return };
        if let Some(t) = &p.child_token {
            self.tokens.lock().remove(t);
        }
        if cancel {
            let note = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": id, "reason": "the caller went away"}});
            let _ = self.write(&note);
        }
    }

    /// Sends `resources/subscribe` or `resources/unsubscribe` for each URI on behalf of joch's
    /// sessions; nobody waits for the answers (their ids are not the child's call ids).
    pub fn subscriptions(&self, method: &str, uris: impl IntoIterator<Item = String>) {
        for uri in uris {
            let n = self.next_id.fetch_add(1, Ordering::Relaxed);
            let _ = self.write(&json!({"jsonrpc": "2.0", "id": format!("joch-sub-{n}"), "method": method,
                "params": {"uri": uri}}));
        }
    }

    /// Routes one message from the child.
    fn route(&self, msg: Value) {
        if !msg.is_object() {
            tracing::debug!(server = %self.server, "stdio server sent a non-object message; dropped");
            return;
        }
        let is_answer = msg.get("result").is_some() || msg.get("error").is_some();
        match (msg.get("id").and_then(Value::as_u64), msg.get("method").and_then(Value::as_str)) {
            (Some(id), None) if is_answer => {
                let Some(p) = self.pending.lock().remove(&id) else { return };
                if let Some(t) = &p.child_token {
                    self.tokens.lock().remove(t);
                }
                let mut msg = msg;
                msg["id"] = p.agent_id;
                let _ = p.answer.send(msg);
            }
            (_, Some("notifications/progress")) => {
                let Some(token) = msg.pointer("/params/progressToken").and_then(Value::as_str) else { return };
                let Some(id) = self.tokens.lock().get(token).copied() else { return };
                let pending = self.pending.lock();
                if let Some(p) = pending.get(&id) {
                    let mut msg = msg.clone();
                    if let Some(params) = msg.get_mut("params").and_then(Value::as_object_mut) {
                        params.insert("progressToken".into(), p.agent_token.clone().unwrap_or(Value::Null));
                    }
                    if p.progress.try_send(msg).is_err() {
                        metrics::counter!("joch_stdio_progress_dropped_total").increment(1);
                    }
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
                let _ = self.write(&answer);
            }
            (None, Some(_)) => self.streams.publish(&self.server, &msg),
            _ => tracing::debug!(server = %self.server, "stdio server message without a request dropped"),
        }
    }

    /// Fails every pending call (the child is gone).
    fn fail_all(&self, why: &str) {
        let pending: Vec<PendingCall> = self.pending.lock().drain().map(|(_, p)| p).collect();
        self.tokens.lock().clear();
        for p in pending {
            let _ = p.answer.send(json!({"jsonrpc": "2.0", "id": p.agent_id, "error": {
                "code": Reason::UpstreamUnavailable.code(), "message": why,
                "data": {"reason": Reason::UpstreamUnavailable.as_str(), "server": self.server}}}));
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
    /// A pool whose calls may stay silent for at most `idle`, running what `allow` allows.
    pub fn new(
        idle: Duration,
        allow: StdioAllow,
        keyring: Arc<Keyring>,
        restarted: tokio::sync::mpsc::Sender<String>,
    ) -> StdioPool {
        StdioPool {
            restarted,
            children: Mutex::default(),
            starting: tokio::sync::Mutex::new(()),
            streams: Arc::new(Streams::default()),
            idle,
            allow,
            keyring,
        }
    }

    /// What this node may run.
    pub fn allow(&self) -> &StdioAllow {
        &self.allow
    }

    /// The running child for the admitted call's server, started (and initialised) if needed.
    pub async fn child(&self, adm: &Admitted) -> Result<Arc<Child>, Failure> {
        adm.revalidate()?;
        let rec = adm.server();
        let spec =
            rec.spec.stdio.clone().ok_or_else(|| unavailable("no stdio command in the server's record".into()))?;
        let access = adm.access();
        let versions = secret_versions(&spec, &access);
        let current = |this: &Self| {
            this.children
                .lock()
                .get(&rec.name)
                .filter(|c| c.alive() && c.spec == spec && c.secret_versions == versions)
                .cloned()
        };
        if let Some(c) = current(self) {
            return Ok(c);
        }
        let _one = self.starting.lock().await;
        if let Some(c) = current(self) {
            return Ok(c);
        }
        let old = self.children.lock().remove(&rec.name);
        let died = old.as_ref().is_some_and(|c| !c.alive());
        if let Some(old) = old {
            old.stop().await;
        }
        let program = self
            .allow
            .check(&spec.command)
            .map_err(|message| UpstreamError { reason: Reason::StdioNotAllowed, message })?;
        let env = Env::open(&spec, &access, &self.keyring)?;
        let child = start(&rec.name, &program, spec, env, versions, self.streams.clone(), self.idle).await?;
        self.children.lock().insert(rec.name.clone(), child.clone());
        metrics::counter!("joch_stdio_starts_total").increment(1);
        if died && self.restarted.try_send(rec.name.clone()).is_err() {
            metrics::counter!("joch_discovery_dropped_total").increment(1);
        }
        Ok(child)
    }

    /// Stops children whose server is gone, quarantined or no longer allowed stdio, and every
    /// child when this node turns stale (it cannot know what was quarantined meanwhile). Runs
    /// until the registry or the lease goes away.
    pub async fn reap(self: Arc<Self>, registry: RegistryHandle, lease: Arc<Lease>) {
        let mut changes = registry.subscribe();
        let mut stale = lease.subscribe();
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                r = stale.changed() => if r.is_err() { return },
            }
            let stale_now = *stale.borrow_and_update() && lease.check(Instant::now()).is_err();
            let state = registry.load();
            let doomed: Vec<Arc<Child>> = {
                let mut children = self.children.lock();
                let names: Vec<String> = children
                    .keys()
                    .filter(|n| {
                        stale_now
                            || match state.registry.servers.get(*n) {
                                None => true,
                                Some(r) => r.status.quarantine.is_some() || !r.spec.security.allow_stdio,
                            }
                    })
                    .cloned()
                    .collect();
                names.iter().filter_map(|n| children.remove(n)).collect()
            };
            for c in doomed {
                tracing::info!(server = %c.server, stale = stale_now,
                    "stopping stdio server (quarantined, deleted, stdio no longer allowed, or this node is stale)");
                c.fail_all("the stdio server was stopped: its server is no longer admissible on this node");
                c.stop().await;
            }
        }
    }

    /// Tells the running child of the admitted call's server that nobody on this node subscribes
    /// to these URIs any more (their last session ended).
    pub fn unsubscribe(&self, adm: &Admitted, uris: Vec<String>) {
        if uris.is_empty() || adm.revalidate().is_err() {
            return;
        }
        let child = self.children.lock().get(&adm.server().name).cloned();
        if let Some(child) = child.filter(|c| c.alive()) {
            child.subscriptions("resources/unsubscribe", uris);
        }
    }

    /// Stops every child (node shutdown).
    pub async fn stop_all(&self) {
        let all: Vec<Arc<Child>> = self.children.lock().drain().map(|(_, c)| c).collect();
        futures::future::join_all(all.iter().map(|c| c.stop())).await;
    }
}

/// The versions of the secrets a spec's environment names (`None`: missing).
fn secret_versions(spec: &StdioSpec, access: &Access) -> Vec<Option<u64>> {
    spec.env
        .values()
        .filter_map(|v| match v {
            EnvValue::SecretRef(r) => Some(access.secrets.get(&r.name).map(|s| s.version)),
            EnvValue::Value(_) => None,
        })
        .collect()
}

/// The environment a child gets: a minimal allow-list from the node, plus the record's `env`
/// (secrets opened here). Never anything from the agent.
struct Env {
    vars: Vec<(String, String)>,
    /// Secret values and what to write instead where the child prints them.
    redact: Vec<(String, String)>,
}

/// Secret values shorter than this are not searched for in stderr (they would match anything).
const MIN_REDACTED: usize = 4;

impl Env {
    fn open(spec: &StdioSpec, access: &Access, keyring: &Keyring) -> Result<Env, UpstreamError> {
        let mut vars: Vec<(String, String)> = ["PATH", "HOME", "LANG", "LC_ALL", "TZ"]
            .iter()
            .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
            .collect();
        let mut redact = Vec::new();
        for (k, v) in &spec.env {
            match v {
                EnvValue::Value(v) => vars.push((k.clone(), v.clone())),
                EnvValue::SecretRef(r) => {
                    let (value, _) = keyring
                        .value(access, r, k)
                        .map_err(|e| UpstreamError::credentials(format!("environment variable {k}: {e}")))?;
                    if value.len() >= MIN_REDACTED {
                        redact.push((value.clone(), format!("[secret {}/{}]", r.name, r.key_or(k))));
                    }
                    vars.push((k.clone(), value));
                }
            }
        }
        // Longest first, so a value containing another is replaced whole.
        redact.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        Ok(Env { vars, redact })
    }
}

/// A line of a child's stderr with the secrets it was given replaced.
fn redacted(line: &str, redact: &[(String, String)]) -> String {
    let mut out = line.to_string();
    for (value, with) in redact {
        if out.contains(value.as_str()) {
            out = out.replace(value.as_str(), with);
        }
    }
    out
}

/// What reading one line gave.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// A line (in the buffer, with its newline).
    Line,
    /// A line longer than the limit: skipped, the buffer left empty.
    TooLong,
    /// End of the stream (a last unterminated line, if any, is in the buffer).
    Eof,
}

/// Reads one line into `buf` (cleared first), keeping at most `max` bytes of it: a longer line
/// is read to its end and dropped, never held whole.
pub async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(if too_long { Line::TooLong } else { Line::Eof });
        }
        let (take, end) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        if !too_long {
            if buf.len() + take > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&avail[..take]);
            }
        }
        r.consume(take);
        if end {
            return Ok(if too_long { Line::TooLong } else { Line::Line });
        }
    }
}

async fn start(
    server: &str,
    program: &std::path::Path,
    spec: StdioSpec,
    env: Env,
    secret_versions: Vec<Option<u64>>,
    streams: Arc<Streams>,
    idle: Duration,
) -> Result<Arc<Child>, UpstreamError> {
    let mut proc = tokio::process::Command::new(program)
        .args(&spec.args)
        .env_clear()
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| unavailable(format!("cannot start the stdio server {server:?} ({}): {e}", spec.command)))?;
    let pid = proc.id();
    let (Some(mut stdin), Some(stdout), Some(stderr)) = (proc.stdin.take(), proc.stdout.take(), proc.stderr.take())
    else {
        stop_process(proc, server).await;
        return Err(unavailable(format!("the stdio server {server:?} started without its pipes")));
    };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STDIN_BACKLOG);
    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    let name = server.to_string();
    let redact = env.redact;
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr);
        let mut buf = Vec::new();
        while let Ok(Line::Line | Line::TooLong) = read_line_bounded(&mut lines, &mut buf, 64 << 10).await {
            let line = redacted(String::from_utf8_lossy(&buf).trim_end(), &redact);
            tracing::info!(target: "joch::stdio", server = %name, "{line}");
        }
    });
    tracing::info!(server, command = %program.display(), pid, "started stdio server");
    let send = |v: &Value| {
        let mut line = serde_json::to_vec(v).unwrap_or_default();
        line.push(b'\n');
        tx.try_send(line).is_ok()
    };
    // joch's own handshake with the child, before any agent request reaches it.
    let mut reader = BufReader::new(stdout);
    send(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": crate::mcp::version::LEGACY[0], "capabilities": {},
        "clientInfo": {"name": "joch", "version": env!("CARGO_PKG_VERSION")}}}));
    let mut buf = Vec::new();
    let init = tokio::time::timeout(START_TIMEOUT, async {
        loop {
            match read_line_bounded(&mut reader, &mut buf, MAX_LINE).await.map_err(|e| e.to_string())? {
                Line::Eof => return Err("exited before answering initialize".to_string()),
                Line::TooLong => continue,
                Line::Line => {}
            }
            if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                if v.get("id") == Some(&json!(0)) {
                    return match v.get("result") {
                        Some(r) if r.is_object() => Ok(r.clone()),
                        Some(_) => Err("its initialize result is not a JSON object".to_string()),
                        None => Err(format!("initialize failed: {}", v.get("error").cloned().unwrap_or(Value::Null))),
                    };
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
        secret_versions,
        stdin: tx,
        pending: Mutex::new(HashMap::new()),
        tokens: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        exited: AtomicBool::new(false),
        streams,
        init,
        process: tokio::sync::Mutex::new(Some(proc)),
        idle,
    });
    let routed = child.clone();
    tokio::spawn(async move {
        let mut buf = Vec::new();
        loop {
            match read_line_bounded(&mut reader, &mut buf, MAX_LINE).await {
                Ok(Line::Line) => match serde_json::from_slice::<Value>(&buf) {
                    Ok(v) => routed.route(v),
                    Err(_) => tracing::debug!(server = %routed.server, "non-JSON line on stdout dropped"),
                },
                Ok(Line::TooLong) => {
                    tracing::warn!(server = %routed.server, "stdio server sent a line over {MAX_LINE} bytes; dropped");
                    metrics::counter!("joch_stdio_lines_dropped_total").increment(1);
                }
                Ok(Line::Eof) | Err(_) => break,
            }
        }
        tracing::warn!(server = %routed.server, "stdio server exited; it is restarted on the next request");
        routed.exited.store(true, Ordering::Release);
        routed.fail_all("the stdio server exited during the call");
        metrics::counter!("joch_stdio_exits_total").increment(1);
    });
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_up_to_the_limit_and_longer_ones_skipped() {
        let data = format!("short\n{}\nafter\ntail", "x".repeat(100));
        let mut r = BufReader::with_capacity(8, data.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(read_line_bounded(&mut r, &mut buf, 50).await.unwrap(), Line::Line);
        assert_eq!(buf, b"short\n");
        assert_eq!(read_line_bounded(&mut r, &mut buf, 50).await.unwrap(), Line::TooLong);
        assert!(buf.is_empty(), "a long line is never held");
        assert_eq!(read_line_bounded(&mut r, &mut buf, 50).await.unwrap(), Line::Line);
        assert_eq!(buf, b"after\n");
        assert_eq!(read_line_bounded(&mut r, &mut buf, 50).await.unwrap(), Line::Eof);
        assert_eq!(buf, b"tail");
    }
}
