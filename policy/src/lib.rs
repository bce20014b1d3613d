//! Policies: the decision on every call.
//!
//! A Policy manifest comes in the two shapes the seeds show, and both compile to one model
//! ([`Policy`]): seed 000's `appliesTo` + `rules[].when/action`, and seed 003's `version: v1` +
//! `rules[].id/match/decision/constraints`. Compiling happens once, when a policy is applied (the
//! state machine compiles every policy it stores, so a bad policy never enters the registry, and
//! publishes the compiled [`PolicySet`] with the snapshot); a request is decided in memory from
//! the compiled form ([`PolicySet::decide`]), never from YAML.
//!
//! Precedence is **deny-overrides**: each applicable policy's verdict is its most severe matching
//! rule (DENY > REQUIRE_APPROVAL > ALLOW_WITH_CONSTRAINTS > ALLOW), or its `defaultDecision`
//! when none matched; the call's decision is the most severe verdict of all policies; when two
//! are equally severe the first policy by name, then the first rule in file order, is named as the
//! one that decided. Order-independent across policies (several teams' policies compose without
//! an order between files), deterministic, and a DENY can never be undone by another policy's
//! ALLOW. Constraints of every matching constrained rule are merged to the tightest bounds.
//!
//! This crate depends on nothing of joch's: the state machine, the proxy and the CLI share it.

mod compile;
mod eval;
pub mod matcher;
mod plan;
pub mod samples;

pub use compile::{Enforcement, Pattern, Policy, Rule, FAMILIES};
pub use eval::{Facts, Kind, Match, PolicySet, Verdict};

use serde::{Deserialize, Serialize};

/// A problem in a policy, located by field path (`spec.rules[2].match.labels.mcp.action`) and,
/// where the rule has one, its id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{field}: {}{message}", .rule.as_ref().map(|r| format!("rule {r:?}: ")).unwrap_or_default())]
pub struct PolicyError {
    /// Where, as a path from the manifest's top (`spec.rules[0].decision`).
    pub field: String,
    /// The id of the rule it is in.
    pub rule: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl PolicyError {
    /// A problem at `field`.
    pub fn at(field: &str, message: String) -> PolicyError {
        PolicyError { field: field.to_string(), rule: None, message }
    }

    fn in_rule(mut self, id: &str) -> PolicyError {
        self.rule.get_or_insert_with(|| id.to_string());
        self
    }
}

/// What a rule (or a policy's default) decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Decision {
    /// Execute (and log the evidence).
    Allow,
    /// Execute within bounds (runtime, retries, network allow-list).
    AllowWithConstraints,
    /// Hold until an operator approves.
    RequireApproval,
    /// Refuse, with the rule's reason.
    Deny,
}

impl Decision {
    /// The name seed 003 uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "ALLOW",
            Decision::AllowWithConstraints => "ALLOW_WITH_CONSTRAINTS",
            Decision::RequireApproval => "REQUIRE_APPROVAL",
            Decision::Deny => "DENY",
        }
    }

    /// Whether the caller may see (list) what this decision is about: everything but a DENY.
    pub fn visible(self) -> bool {
        self != Decision::Deny
    }
}

/// Bounds on an allowed call (ALLOW_WITH_CONSTRAINTS, and a REQUIRE_APPROVAL once approved).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraints {
    /// The upstream call is cancelled after this many seconds.
    pub max_runtime_sec: Option<u64>,
    /// Identical calls (same agent, tool, arguments) allowed again after one failed.
    pub max_retries: Option<u32>,
    /// Hosts the upstream may be reached at (`*.example.com` allowed).
    pub network_allowlist: Option<Vec<String>>,
    /// How long a held call waits for an approval, in seconds.
    pub approval_timeout_sec: Option<u64>,
    /// Calls per minute, fleet-wide, per agent, tool or server (all of them hold).
    pub rate_limits: Vec<RateLimit>,
}

/// A rate limit: `per_minute` calls per `per`, fleet-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Calls allowed per minute.
    pub per_minute: u32,
    /// What is counted.
    pub per: RatePer,
    /// `POLICY/RULE` that set it (each rule's limit counts on its own).
    pub rule: String,
}

/// What a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RatePer {
    /// Each agent's calls.
    Agent,
    /// Each tool's calls (`server.tool`), whoever calls.
    Tool,
    /// Each server's calls.
    Server,
}

impl Constraints {
    /// Whether no bound is set.
    pub fn is_empty(&self) -> bool {
        *self == Constraints::default()
    }

    /// The tightest of both.
    pub fn merge(&mut self, o: &Constraints) {
        fn min<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        self.max_runtime_sec = min(self.max_runtime_sec, o.max_runtime_sec);
        self.max_retries = min(self.max_retries, o.max_retries);
        self.approval_timeout_sec = min(self.approval_timeout_sec, o.approval_timeout_sec);
        for l in &o.rate_limits {
            if !self.rate_limits.contains(l) {
                self.rate_limits.push(l.clone());
            }
        }
        self.network_allowlist = match (self.network_allowlist.take(), &o.network_allowlist) {
            (Some(a), Some(b)) => Some(a.into_iter().filter(|h| b.contains(h)).collect()),
            (a, b) => a.or_else(|| b.clone()),
        };
    }

    /// Whether `host` may be reached under the allow-list.
    pub fn host_allowed(&self, host: &str) -> bool {
        let Some(list) = &self.network_allowlist else { return true };
        let host = host.to_ascii_lowercase();
        list.iter().any(|p| {
            let p = p.to_ascii_lowercase();
            match p.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => host == p,
            }
        })
    }
}

/// Whether a tool reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Declared `readOnlyHint: true` (or set so in the registry); prompts and resources.
    Read,
    /// Everything else (the MCP specification's default for a tool: not read-only).
    Write,
}

impl Action {
    /// `read` or `write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
        }
    }

    /// From a tool's `annotations` as the upstream declares them: `readOnlyHint: true` is a
    /// read; anything else (absent annotations included) a write, as the specification's
    /// defaults say.
    pub fn from_annotations(annotations: Option<&serde_json::Value>) -> Action {
        match annotations.and_then(|a| a.get("readOnlyHint")).and_then(|v| v.as_bool()) {
            Some(true) => Action::Read,
            _ => Action::Write,
        }
    }
}

#[cfg(test)]
mod tests;
