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
}

impl Counts {
    /// Adds one record's outcome.
    pub fn add(&mut self, o: Outcome) {
        self.calls += 1;
        match o {
            Outcome::Denied => self.denied += 1,
            Outcome::Error | Outcome::TimedOut | Outcome::Cut => self.errors += 1,
            _ => {}
        }
    }

    /// Adds other counts.
    pub fn merge(&mut self, o: Counts) {
        self.calls += o.calls;
        self.denied += o.denied;
        self.errors += o.errors;
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
