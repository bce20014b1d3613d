//! What a run records: every registry operation (invocation and outcome), every MCP call an
//! agent made, every request the upstream received, every fault. All times are milliseconds on
//! one monotonic clock started with the run; the checkers read nothing else.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The run's clock: milliseconds since the start, and the mapping of Unix milliseconds (what a
/// node reports, e.g. "stops serving by") onto it.
#[derive(Debug)]
pub struct Clock {
    start: Instant,
    unix0_ms: f64,
}

impl Clock {
    pub fn new() -> Clock {
        let start = Instant::now();
        let unix0_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0);
        Clock { start, unix0_ms }
    }

    /// Now, in ms since the start.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    /// A Unix time in ms, on this clock.
    pub fn at_unix_ms(&self, unix_ms: u64) -> f64 {
        unix_ms as f64 - self.unix0_ms
    }
}

/// A registry operation on one server (the linearizability model's operations).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Register the server (CreateServer: refused when it exists).
    Add,
    Delete,
    Quarantine,
    Unquarantine,
    /// Pin to version `1.N.0`.
    Pin(u8),
    /// Linearizable read (GetServer, not stale).
    Read,
}

/// What a server looks like to the model.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Srv {
    pub quarantined: bool,
    pub pin: Option<u8>,
}

/// An operation's outcome.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// A write was applied; whether it changed anything.
    Changed(bool),
    /// The server does not exist.
    NotFound,
    /// It exists (Add).
    Exists,
    /// A read's answer.
    Value(Option<Srv>),
}

/// The fleet acknowledgement of a write that changes what nodes admit.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Fleet {
    pub complete: bool,
    /// Members that confirmed they applied it.
    pub applied: Vec<u64>,
    /// Members listed (confirmed or not).
    pub members: Vec<u64>,
    /// When not complete: the time (run clock) by which the others stop serving.
    pub laggards_stop_by: Option<f64>,
}

/// One registry operation as it happened.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RegOp {
    /// The logical process (a worker; a new one after an outcome that is unknown).
    pub process: u64,
    pub key: String,
    /// The node it was sent to.
    pub node: u64,
    pub op: Op,
    pub invoked: f64,
    /// None: no answer (timed out, connection lost): the outcome is unknown.
    pub returned: Option<f64>,
    pub ret: Option<Ret>,
    /// The error, for an unknown outcome or a definite failure.
    pub error: Option<String>,
    /// The log index of an applied write.
    pub log_index: u64,
    pub fleet: Option<Fleet>,
}

impl RegOp {
    /// A write that was applied (acknowledged to the operator).
    pub fn acked(&self) -> bool {
        matches!(self.ret, Some(Ret::Changed(_)))
    }

    /// Whether it may have taken effect: applied, or without an answer (not refused, not failed).
    pub fn may_have_applied(&self) -> bool {
        match (self.returned, self.ret) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(_), Some(r)) => !matches!(r, Ret::NotFound | Ret::Exists),
        }
    }
}

/// Which way an MCP call went in.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Node(u64),
    /// Through the round-robin balancer: any node.
    Balancer,
}

/// How an MCP call ended for the agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The tool answered.
    Ok,
    /// A JSON-RPC error (joch's denial codes, or the upstream's).
    Denied { code: i64, message: String },
    /// An HTTP status without a JSON-RPC answer.
    Http(u16),
    /// Transport error or timeout.
    Failed(String),
}

/// One MCP call by an agent.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Call {
    /// The op id in the call's arguments (`A<agent>-...`).
    pub id: String,
    pub agent: u8,
    pub server: String,
    pub via: Via,
    /// modern | legacy | sdk
    pub era: String,
    /// An attempt to use another agent's session (must be refused).
    pub cross: bool,
    pub sent: f64,
    pub done: f64,
    pub outcome: Outcome,
}

/// A request the upstream received.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Received {
    pub at: f64,
    pub server: String,
    pub method: String,
    /// The op id of a tools/call.
    pub op: Option<String>,
    /// The upstream's own session id (legacy era).
    pub session: Option<String>,
}

/// A fault as the nemesis applied it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct FaultEvent {
    pub at: f64,
    /// start | heal | skip
    pub phase: String,
    pub fault: String,
    pub detail: String,
}

/// Everything recorded, shared by the workload, the upstream and the nemesis.
#[derive(Default)]
pub struct History {
    pub reg: Mutex<Vec<RegOp>>,
    pub calls: Mutex<Vec<Call>>,
    pub received: Mutex<Vec<Received>>,
    pub faults: Mutex<Vec<FaultEvent>>,
}

impl History {
    pub fn fault(&self, clock: &Clock, phase: &str, fault: &str, detail: String) {
        let at = clock.now();
        eprintln!("chaos: {:>8.1}s {phase:<5} {fault} {detail}", at / 1000.0);
        self.faults.lock().push(FaultEvent { at, phase: phase.into(), fault: fault.into(), detail });
    }

    /// Writes each part as JSON lines into `dir`.
    pub fn save(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        fn lines<T: Serialize>(path: std::path::PathBuf, items: &[T]) -> anyhow::Result<()> {
            let mut out = String::new();
            for i in items {
                out.push_str(&serde_json::to_string(i)?);
                out.push('\n');
            }
            std::fs::write(path, out)?;
            Ok(())
        }
        lines(dir.join("registry-ops.jsonl"), &self.reg.lock())?;
        lines(dir.join("mcp-calls.jsonl"), &self.calls.lock())?;
        lines(dir.join("upstream-received.jsonl"), &self.received.lock())?;
        lines(dir.join("faults.jsonl"), &self.faults.lock())?;
        Ok(())
    }
}
