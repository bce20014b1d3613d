//! One audit record: what a node did with one request (or one step of an execution: an approval
//! asked for or decided, records dropped under overload).

use serde::{Deserialize, Serialize};

/// What a record is about.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    /// A request, allowed or not (one per request, written by the node that handled it).
    #[default]
    Request,
    /// A call was held for an approval (the node holding it writes this).
    ApprovalRequested,
    /// The held call's approval was decided (approved, denied or timed out).
    ApprovalDecided,
    /// Records this node could not write because its writer fell behind (`reason` says how
    /// many): the gap is itself recorded, in the chain.
    Dropped,
}

/// How a request ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// The upstream answered with a result.
    #[default]
    Result,
    /// The upstream answered with an error (a JSON-RPC error, or a tool result with `isError`).
    Error,
    /// Cut while in flight: the server stopped being admissible (quarantine, delete, re-pin,
    /// stale node) or the node shut down.
    Cut,
    /// joch refused it (the record's code, rule and reason say why).
    Denied,
    /// The upstream did not answer in time.
    TimedOut,
    /// Malformed or not allowed before admission (framing, version, method).
    Rejected,
    /// Answered by joch itself (ping, the aggregate's own answers, a notification).
    Answered,
    /// Relayed to the node owning the session, which writes the request's record.
    Relayed,
}

impl Outcome {
    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Result => "result",
            Outcome::Error => "error",
            Outcome::Cut => "cut",
            Outcome::Denied => "denied",
            Outcome::TimedOut => "timedOut",
            Outcome::Rejected => "rejected",
            Outcome::Answered => "answered",
            Outcome::Relayed => "relayed",
        }
    }

    /// Parses a name (case-insensitive; `timed-out` and `timedout` too).
    pub fn parse(s: &str) -> Option<Outcome> {
        let s = s.to_ascii_lowercase().replace(['-', '_'], "");
        Some(match s.as_str() {
            "result" | "ok" => Outcome::Result,
            "error" => Outcome::Error,
            "cut" => Outcome::Cut,
            "denied" | "deny" => Outcome::Denied,
            "timedout" | "timeout" => Outcome::TimedOut,
            "rejected" => Outcome::Rejected,
            "answered" => Outcome::Answered,
            "relayed" => Outcome::Relayed,
            _ => return None,
        })
    }

    /// Every outcome, for messages.
    pub const ALL: [Outcome; 8] = [
        Outcome::Result,
        Outcome::Error,
        Outcome::Cut,
        Outcome::Denied,
        Outcome::TimedOut,
        Outcome::Rejected,
        Outcome::Answered,
        Outcome::Relayed,
    ];
}

/// A verdict of a stage or hook on the request or its answer (the content guard's and guardian
/// hooks' land here).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// Who decided (`guard`, `hook:NAME`).
    pub by: String,
    /// allow | deny | modify | annotate.
    pub verdict: String,
    /// Rule or detector.
    pub rule: String,
    /// How long it took, microseconds.
    pub micros: u64,
}

/// One audit record. Empty strings and zeros mean "does not apply".
///
/// Stored with postcard (field order is the format: add fields only at the end, behind a new
/// format version in `store.rs`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Position in this node's chain (assigned by the writer, from 1, without gaps).
    pub seq: u64,
    /// When the request finished (a stream: when it ended), microseconds since the Unix epoch;
    /// kept non-decreasing along the chain by the writer.
    pub time_us: u64,
    /// Node that handled it.
    pub node: u64,
    /// What it is about.
    pub kind: Kind,
    /// The execution id shown to the agent (`exec-` and 16 hex digits).
    pub exec: String,
    /// W3C trace id (32 hex digits): the agent's `traceparent`, or one joch started.
    pub trace: String,
    /// Agent name (`anonymous`, or empty when the caller was not authenticated).
    pub agent: String,
    /// The agent's labels.
    pub agent_labels: Vec<(String, String)>,
    /// How the agent was identified: `token:NAME` or `idp:ISSUER:SUBJECT`.
    pub subject: String,
    /// A digest of the MCP session id (never the id itself: it is a credential).
    pub session: String,
    /// Server called (on `/mcp`: the member the call went to; empty: none).
    pub server: String,
    /// Endpoint when not `/mcp/{server}`: `/mcp` or `v/NAME`.
    pub endpoint: String,
    /// HTTP method.
    pub http: String,
    /// JSON-RPC method.
    pub method: String,
    /// Tool or prompt name, or resource URI.
    pub target: String,
    /// SHA-256 (first 16 hex digits) of the arguments as sent; empty when none.
    pub args_digest: String,
    /// The arguments themselves, only when the server's `audit.recordArguments` is on.
    pub args: Option<String>,
    /// The decision: allow | deny | require_approval | allow_with_constraints | audit (a policy
    /// in audit mode would have denied).
    pub decision: String,
    /// Policy that decided (empty: the registry's own checks, or none).
    pub policy: String,
    /// Rule or check that decided.
    pub rule: String,
    /// The JSON-RPC error code of a denial (0: none).
    pub code: i64,
    /// The reason given (denials), or a note.
    pub reason: String,
    /// How it ended.
    pub outcome: Outcome,
    /// HTTP status sent to the agent.
    pub status: u16,
    /// Whole time in joch, microseconds.
    pub latency_us: u64,
    /// Time until the upstream answered (headers, or the first event of a stream), microseconds.
    pub upstream_us: u64,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Bytes sent back to the agent.
    pub bytes_out: u64,
    /// The approval id (approval records, and calls that used one).
    pub approval: String,
    /// Verdicts of the guard and hooks, and what audit-only policies would have decided
    /// (`by: policy:NAME`).
    pub verdicts: Vec<Verdict>,
    /// Time the decision took (the registry's checks and the policies), microseconds; 0: not
    /// decided here.
    pub decide_us: u64,
    /// `read` or `write` for a capability call (how the policies saw it); empty otherwise.
    pub action: String,
    /// The agent's span id (16 hex digits) from its `traceparent`: the parent of joch's span
    /// (which is the end of `exec`); empty when the agent sent none.
    pub parent_span: String,
    /// The JSON-RPC request as received: the writer takes `params.arguments` from it for the
    /// digest (and `args` when `keep_args`), off the request path. Never stored.
    #[serde(skip)]
    pub request: Option<bytes::Bytes>,
    /// Keep the arguments themselves (the server's `audit.recordArguments`). Never stored.
    #[serde(skip)]
    pub keep_args: bool,
}

impl Record {
    /// Fills `args_digest` (and `args` if kept) from the request, and lets go of it.
    pub(crate) fn digest_args(&mut self) {
        let Some(body) = self.request.take() else { return };
        #[derive(serde::Deserialize)]
        struct Msg<'a> {
            #[serde(borrow, default)]
            params: Option<Params<'a>>,
        }
        #[derive(serde::Deserialize)]
        struct Params<'a> {
            #[serde(borrow, default)]
            arguments: Option<&'a serde_json::value::RawValue>,
        }
        let Some(raw) = serde_json::from_slice::<Msg<'_>>(&body).ok().and_then(|m| m.params?.arguments) else {
            return;
        };
        let d = ring::digest::digest(&ring::digest::SHA256, raw.get().as_bytes());
        self.args_digest = crate::store::hex(&d.as_ref()[..8]);
        if self.keep_args {
            self.args = Some(raw.get().to_string());
        }
    }

    /// Whether this record counts as a call for the rollups (a request to a server).
    pub(crate) fn counts(&self) -> bool {
        self.kind == Kind::Request && !self.server.is_empty() && self.outcome != Outcome::Relayed
    }

    /// A write that ran without an approval although a policy in audit mode would have denied
    /// it or required an approval (seed 003's "unapproved high-risk writes").
    pub fn unapproved_write(&self) -> bool {
        self.kind == Kind::Request
            && self.action == "write"
            && self.approval.is_empty()
            && matches!(self.outcome, Outcome::Result | Outcome::Error)
            && self
                .verdicts
                .iter()
                .any(|v| v.by.starts_with("policy:") && matches!(v.verdict.as_str(), "deny" | "require_approval"))
    }
}
