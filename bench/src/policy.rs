//! The policy decision: a synthetic but realistic rule set (teams' policies scoped to their
//! servers, fleet-wide guards on tool names, arguments, agents' labels and time), compiled as the
//! state machine compiles it, then one decision at a time timed into an HDR histogram
//! (per-decision percentiles: the bar is a p99).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use joch_policy::{Action, Facts, Kind, Policy, PolicySet};
use serde_json::{json, Value};

use crate::common::write_results;

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

/// The rule set as manifests (`joch apply -f`).
pub fn manifests(rules: usize) -> String {
    synthetic(rules)
        .into_iter()
        .map(|(name, spec)| {
            serde_json::to_string(&json!({"apiVersion": "joch.dev/v1alpha1", "kind": "Policy",
                "metadata": {"name": name}, "spec": spec}))
            .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Times `iterations` decisions against `rules` rules.
pub fn decision(rules: usize, iterations: usize, out: Option<PathBuf>) -> anyhow::Result<()> {
    let t = Instant::now();
    let compiled: Vec<Arc<Policy>> = synthetic(rules)
        .iter()
        .map(|(n, s)| Policy::compile(n, s).map(Arc::new).map_err(|e| anyhow::anyhow!("{n}: {e:?}")))
        .collect::<Result<_, _>>()?;
    let set = PolicySet::new(compiled);
    let compile_ms = t.elapsed().as_secs_f64() * 1000.0;
    let agent_labels = [("env".to_string(), "prod".to_string()), ("team".to_string(), "t3".to_string())].into();
    let server_labels = Default::default();
    let tags = vec!["non_prod".to_string()];
    let args = json!({"repo": "acme/widgets", "count": 12, "text": "x".repeat(64)});
    let now = 1_764_590_400_000u64; // a Monday, 12:00 UTC
    let calls =
        [("canned", "echo", Action::Write), ("svc-3", "search", Action::Read), ("svc-40", "op_1_x", Action::Write)];
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    let mut denied = 0u64;
    for i in 0..iterations + iterations / 10 {
        let (server, tool, action) = calls[i % calls.len()];
        let f = Facts {
            agent: "bench-agent",
            agent_labels: &agent_labels,
            server,
            server_labels: &server_labels,
            trust_score: Some(0.9),
            schema_drift: Some(false),
            kind: Kind::Tool,
            method: "tools/call",
            name: tool,
            action,
            risk_tags: &tags,
            args: Some(&args),
            listing: false,
            now_ms: now,
            result: None,
            args_scan: None,
        };
        let t = Instant::now();
        let v = set.decide(&f, &[], None);
        let ns = t.elapsed().as_nanos() as u64;
        if i >= iterations / 10 {
            hist.record(ns.max(1))?;
            denied += u64::from(v.decision == joch_policy::Decision::Deny);
        }
    }
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let result = json!({
        "benchmark": "policy-decision", "date": date, "rules": rules, "policies": rules.div_ceil(10),
        "decisions": hist.len(), "denied": denied, "compile_ms": compile_ms,
        "us": {"p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "p999": us(0.999), "max": hist.max() as f64 / 1000.0,
               "mean": hist.mean() / 1000.0},
    });
    let md = format!(
        "# policy-decision ({date})\n\n{rules} rules in {} policies (`bench/src/policy.rs`: teams' policies scoped to \
         their servers, fleet-wide rules naming servers, fleet-wide guards on tool globs, argument regexes and \
         comparisons, agent labels, risk tags and time windows), compiled in {compile_ms:.1} ms. {} decisions of three \
         calls in turn (one timed at a time; {denied} of them denied), single thread:\n\n| p50 | p90 | p99 | p99.9 | max | mean |\n|---|---|---|---|---|---|\n| {:.2} µs | {:.2} µs | {:.2} µs \
         | {:.2} µs | {:.2} µs | {:.2} µs |\n",
        rules.div_ceil(10),
        hist.len(),
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        hist.max() as f64 / 1000.0,
        hist.mean() / 1000.0,
    );
    print!("{md}");
    write_results(out, "policy-decision", &result, &md)
}
