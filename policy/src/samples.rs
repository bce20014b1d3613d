//! A synthetic but realistic rule set to measure decisions with (`cargo bench -p joch-policy`,
//! `joch-bench policy-decision`, `joch-bench proxy-latency --policy-rules`), and the calls and
//! facts they are measured on.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::{Action, Facts, Kind};

/// `rules` rules in policies of ten: half scoped to other teams' servers (`appliesTo.servers`),
/// a third fleet-wide rules naming servers (`mcp.server` lists), the rest fleet-wide guards every
/// call is checked against (tool globs, argument regexes and comparisons, agent labels, risk
/// tags, time windows). None denies the measured calls to `canned`, so each is decided in full.
pub fn synthetic(rules: usize) -> Vec<(String, Value)> {
    let policies = rules.div_ceil(10);
    (0..policies)
        .map(|p| {
            let kind = p % 6;
            let rules: Vec<Value> = (0..10.min(rules - p * 10))
                .map(|r| {
                    let id = format!("r{p}-{r}");
                    match (kind, r % 5) {
                        (0..=2, _) => json!({"id": id, "match": {"labels": {"mcp.action": "write", "tool": format!("op_{r}_*")}}, "decision": "DENY"}),
                        (3, _) | (4, 0..=1) => json!({"id": id,
                            "match": {"labels": {"mcp.server": [format!("svc-{p}"), format!("svc-{}", p + 1)], "mcp.action": "read"}},
                            "decision": "ALLOW"}),
                        (_, 0) => json!({"id": id, "when": {"tool": format!("delete_{r}*"), "agent.labels.env": "prod"},
                            "action": {"deny": true, "reason": "no deletes in prod"}}),
                        (_, 1) => json!({"id": id, "match": {"args": {"/repo": {"regex": format!("^secret-{p}/")}}}, "decision": "DENY"}),
                        (_, 2) => json!({"id": id, "match": {"labels": {"risk_tags": ["pci"], "mcp.action": "write"}},
                            "decision": "REQUIRE_APPROVAL"}),
                        (_, 3) => json!({"id": id, "match": {"args": {"/count": ">100000"}, "agents": {"matchLabels": {"team": format!("t{p}")}}},
                            "decision": "DENY"}),
                        _ => json!({"id": id, "match": {"time": {"days": ["sat", "sun"], "hours": "01:00-02:00"},
                            "labels": {"mcp.action": "write"}}, "decision": "DENY"}),
                    }
                })
                .collect();
            let mut spec = json!({"rules": rules});
            if kind <= 2 {
                spec["appliesTo"] = json!({"servers": {"names": [format!("svc-{p}")]}});
            }
            (format!("team-{p:04}"), spec)
        })
        .collect()
}

/// The calls decided in turn: (server, tool, action). None is denied by [`synthetic`]'s rules,
/// so each is decided in full.
pub const CALLS: [(&str, &str, Action); 3] =
    [("canned", "echo", Action::Write), ("svc-3", "search", Action::Read), ("svc-40", "op_1_x", Action::Write)];

/// What the calls' facts borrow: the agent's labels, the server's, risk tags, arguments.
pub struct Env {
    agent_labels: BTreeMap<String, String>,
    server_labels: BTreeMap<String, String>,
    tags: Vec<String>,
    args: Value,
}

impl Default for Env {
    fn default() -> Self {
        Env {
            agent_labels: [("env".to_string(), "prod".to_string()), ("team".to_string(), "t3".to_string())].into(),
            server_labels: BTreeMap::new(),
            tags: vec!["non_prod".to_string()],
            args: json!({"repo": "acme/widgets", "count": 12, "text": "x".repeat(64)}),
        }
    }
}

impl Env {
    /// The facts of one of [`CALLS`], on a Monday at noon (UTC).
    pub fn facts(&self, (server, tool, action): (&'static str, &'static str, Action)) -> Facts<'_> {
        Facts {
            agent: "bench-agent",
            agent_labels: &self.agent_labels,
            server,
            server_labels: &self.server_labels,
            trust_score: Some(0.9),
            schema_drift: Some(false),
            kind: Kind::Tool,
            method: "tools/call",
            name: tool,
            action,
            risk_tags: &self.tags,
            args: Some(&self.args),
            listing: false,
            now_ms: 1_764_590_400_000,
            result: None,
            args_scan: None,
        }
    }
}
