//! What can be asked of a node's audit trail, and its answers (sent over the mesh as they are).

use serde::{Deserialize, Serialize};

use crate::record::{Kind, Outcome, Record};

/// Which records.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// From (microseconds since the epoch, inclusive).
    pub since_us: u64,
    /// Until (exclusive; `u64::MAX`: no end).
    pub until_us: u64,
    /// Server (on `/mcp`: the member called).
    pub server: Option<String>,
    /// Agent name.
    pub agent: Option<String>,
    /// Tool or prompt name, or resource URI.
    pub tool: Option<String>,
    /// Policy that decided.
    pub policy: Option<String>,
    /// Execution id.
    pub exec: Option<String>,
    /// Trace id.
    pub trace: Option<String>,
    /// Outcome.
    pub outcome: Option<Outcome>,
    /// Kind.
    pub kind: Option<Kind>,
    /// At most this many (the newest, or the oldest with `oldest_first`).
    pub limit: usize,
    /// Oldest first (a trace reads in time order); otherwise newest first.
    pub oldest_first: bool,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            since_us: 0,
            until_us: u64::MAX,
            server: None,
            agent: None,
            tool: None,
            policy: None,
            exec: None,
            trace: None,
            outcome: None,
            kind: None,
            limit: 100,
            oldest_first: false,
        }
    }
}

impl Query {
    /// Whether a record matches (the time range is checked by the scan).
    pub fn matches(&self, r: &Record) -> bool {
        fn eq(want: &Option<String>, got: &str) -> bool {
            want.as_deref().is_none_or(|w| w == got)
        }
        eq(&self.server, &r.server)
            && eq(&self.agent, &r.agent)
            && eq(&self.tool, &r.target)
            && eq(&self.policy, &r.policy)
            && eq(&self.exec, &r.exec)
            && eq(&self.trace, &r.trace)
            && self.outcome.is_none_or(|o| o == r.outcome)
            && self.kind.is_none_or(|k| k == r.kind)
    }
}

/// One node's answer to a [`Query`].
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Page {
    /// The records, in the order asked for.
    pub records: Vec<Record>,
    /// More records matched than the limit allowed.
    pub more: bool,
    /// Records read to answer.
    pub scanned: u64,
}

/// What to count calls by.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// Agent name.
    Agent,
    /// Tool (or prompt, resource).
    Tool,
    /// Server.
    Server,
}

impl GroupBy {
    /// Parses `agent`, `tool`, `server`.
    pub fn parse(s: &str) -> Option<GroupBy> {
        match s {
            "agent" | "agents" => Some(GroupBy::Agent),
            "tool" | "tools" => Some(GroupBy::Tool),
            "server" | "servers" | "mcpserver" => Some(GroupBy::Server),
            _ => None,
        }
    }
}

/// Calls counted from the rollups: since a time until now, optionally of one server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SummaryQuery {
    /// From (microseconds since the epoch).
    pub since_us: u64,
    /// One server only.
    pub server: Option<String>,
    /// One agent only.
    pub agent: Option<String>,
    /// Grouped by.
    pub by: GroupBy,
}

/// Calls of one group.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    /// Agent, tool or server.
    pub key: String,
    /// Requests to a server (allowed or not).
    pub calls: u64,
    /// Of which denied.
    pub denied: u64,
    /// Of which answered with an error.
    pub errors: u64,
    /// The first call counted (microseconds; minute precision for whole minutes).
    pub first_us: u64,
    /// The last call counted (the same precision).
    pub last_us: u64,
    /// Sum of the upstream's time to answer (microseconds) over `timed` calls.
    pub upstream_us: u64,
    /// Calls that reached the upstream.
    pub timed: u64,
}

impl Group {
    /// Adds another node's counts of the same group.
    pub fn merge(&mut self, o: &Group) {
        self.first_us = if self.calls == 0 {
            o.first_us
        } else if o.calls == 0 {
            self.first_us
        } else {
            self.first_us.min(o.first_us)
        };
        self.last_us = self.last_us.max(o.last_us);
        self.calls += o.calls;
        self.denied += o.denied;
        self.errors += o.errors;
        self.upstream_us += o.upstream_us;
        self.timed += o.timed;
    }
}

/// Per-minute counts of one (server, agent, tool).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests.
    pub calls: u64,
    /// Denied.
    pub denied: u64,
    /// Errors.
    pub errors: u64,
    /// Sum of the upstream's time to answer (microseconds) over the calls that reached it.
    pub upstream_us: u64,
    /// Calls that reached the upstream (the denominator of the mean).
    pub timed: u64,
}

/// The counts as stored before they had latency (decoded when the longer form does not fit).
#[derive(Deserialize)]
struct CountsV1 {
    calls: u64,
    denied: u64,
    errors: u64,
}

impl Counts {
    /// Decodes stored counts, of either form (a corrupt value counts nothing).
    pub fn decode(bytes: &[u8]) -> Counts {
        postcard::from_bytes::<Counts>(bytes)
            .or_else(|_| {
                postcard::from_bytes::<CountsV1>(bytes).map(|c| Counts {
                    calls: c.calls,
                    denied: c.denied,
                    errors: c.errors,
                    ..Counts::default()
                })
            })
            .unwrap_or_default()
    }

    /// Adds one record's outcome and upstream time (0: it did not reach the upstream).
    pub fn add(&mut self, o: Outcome, upstream_us: u64) {
        self.calls += 1;
        match o {
            Outcome::Denied => self.denied += 1,
            Outcome::Error | Outcome::TimedOut | Outcome::Cut => self.errors += 1,
            _ => {}
        }
        if upstream_us > 0 {
            self.upstream_us += upstream_us;
            self.timed += 1;
        }
    }

    /// Adds other counts.
    pub fn merge(&mut self, o: Counts) {
        self.calls += o.calls;
        self.denied += o.denied;
        self.errors += o.errors;
        self.upstream_us += o.upstream_us;
        self.timed += o.timed;
    }
}

/// The result of checking a node's chain.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// First and last seq checked (0: none).
    pub first_seq: u64,
    /// Last seq.
    pub last_seq: u64,
    /// Hash of the last record (hex).
    pub head: String,
    /// What is wrong, record by record (at most 20; empty: the chain verifies).
    pub problems: Vec<Problem>,
}

/// One broken link.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// The record's seq.
    pub seq: u64,
    /// Its time (µs).
    pub time_us: u64,
    /// What is wrong.
    pub problem: String,
}

/// Buckets of the gate histograms: half-octaves, bucket `i` holding the values `v` with
/// `floor(2 * log2(v + 1)) == i` (a quantile read from them is within a factor of 1.42).
pub const BUCKETS: usize = 64;

/// The histogram bucket of a value.
pub fn bucket(v: u64) -> usize {
    ((2.0 * ((v as f64) + 1.0).log2()).floor() as usize).min(BUCKETS - 1)
}

/// The largest value bucket `i` holds.
pub fn bucket_upper(i: usize) -> u64 {
    (2f64.powf((i as f64 + 1.0) / 2.0).ceil() as u64).saturating_sub(1).max(1)
}

/// What seed 003's rollout gates are computed from, per minute of one node (added up across
/// minutes and nodes).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GateCounts {
    /// Requests decided (the registry's checks and the policies).
    pub decisions: u64,
    /// Histogram of decision times, microseconds (`BUCKETS` half-octaves; empty: none).
    pub decide_us: Vec<u64>,
    /// Writes that ran without an approval although an audit-mode policy would have stopped them.
    pub unapproved_writes: u64,
    /// Requests for servers that are not registered.
    pub unknown_servers: u64,
    /// Approvals decided.
    pub approvals: u64,
    /// Histogram of how long approvals waited, seconds.
    pub approval_wait_s: Vec<u64>,
    /// Tool results that reached the output stage.
    pub results: u64,
    /// Of which quarantined by it (the content guard, once it exists).
    pub quarantined: u64,
}

fn hist_add(h: &mut Vec<u64>, v: u64) {
    if h.is_empty() {
        h.resize(BUCKETS, 0);
    }
    h[bucket(v)] += 1;
}

fn hist_merge(h: &mut Vec<u64>, o: &[u64]) {
    if o.is_empty() {
        return;
    }
    if h.is_empty() {
        h.resize(BUCKETS, 0);
    }
    for (a, b) in h.iter_mut().zip(o) {
        *a += b;
    }
}

/// The value at quantile `q` of a histogram (the upper bound of its bucket); `None`: empty.
pub fn quantile(h: &[u64], q: f64) -> Option<u64> {
    let n: u64 = h.iter().sum();
    if n == 0 {
        return None;
    }
    let rank = ((n as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in h.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(bucket_upper(i));
        }
    }
    None
}

impl GateCounts {
    /// Adds what one record says.
    pub fn add(&mut self, r: &Record) {
        match r.kind {
            Kind::Request => {
                if r.decide_us > 0 {
                    self.decisions += 1;
                    hist_add(&mut self.decide_us, r.decide_us);
                }
                if r.unapproved_write() {
                    self.unapproved_writes += 1;
                }
                if r.code == -32001 {
                    self.unknown_servers += 1;
                }
                if r.method == "tools/call" && matches!(r.outcome, Outcome::Result | Outcome::Error) {
                    self.results += 1;
                    if r.verdicts.iter().any(|v| v.verdict == "quarantine") {
                        self.quarantined += 1;
                    }
                }
            }
            Kind::ApprovalDecided => {
                self.approvals += 1;
                hist_add(&mut self.approval_wait_s, r.latency_us / 1_000_000);
            }
            Kind::ApprovalRequested | Kind::Dropped => {}
        }
    }

    /// Adds other counts.
    pub fn merge(&mut self, o: &GateCounts) {
        self.decisions += o.decisions;
        hist_merge(&mut self.decide_us, &o.decide_us);
        self.unapproved_writes += o.unapproved_writes;
        self.unknown_servers += o.unknown_servers;
        self.approvals += o.approvals;
        hist_merge(&mut self.approval_wait_s, &o.approval_wait_s);
        self.results += o.results;
        self.quarantined += o.quarantined;
    }
}
