//! The policy decision: a synthetic but realistic rule set (teams' policies scoped to their
//! servers, fleet-wide guards on tool names, arguments, agents' labels and time), compiled as the
//! state machine compiles it, then one decision at a time timed into an HDR histogram
//! (per-decision percentiles: the bar is a p99).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use joch_policy::samples::{synthetic, Env, CALLS};
use joch_policy::{Policy, PolicySet};
use serde_json::json;

use crate::common::write_results;

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
    let env = Env::default();
    // As a request is decided (from each call's plan, found after its first), then in full
    // (every candidate rule's every condition, as `explain` decides).
    let mut rows = Vec::new();
    for planned in [true, false] {
        let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
        let mut denied = 0u64;
        for i in 0..iterations + iterations / 10 {
            let f = env.facts(CALLS[i % CALLS.len()]);
            let t = Instant::now();
            let v = if planned { set.decide(&f, &[], None) } else { set.decide_in_full(&f, &[], None) };
            let ns = t.elapsed().as_nanos() as u64;
            if i >= iterations / 10 {
                hist.record(ns.max(1))?;
                denied += u64::from(v.decision == joch_policy::Decision::Deny);
            }
        }
        rows.push((if planned { "from the plan (requests)" } else { "in full (explain)" }, hist, denied));
    }
    let us = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let json_row = |h: &hdrhistogram::Histogram<u64>| {
        json!({"p50": us(h, 0.5), "p90": us(h, 0.9), "p99": us(h, 0.99), "p999": us(h, 0.999),
               "max": h.max() as f64 / 1000.0, "mean": h.mean() / 1000.0})
    };
    let (planned, full) = (&rows[0], &rows[1]);
    let result = json!({
        "benchmark": "policy-decision", "date": date, "rules": rules, "policies": rules.div_ceil(10),
        "decisions": planned.1.len(), "denied": planned.2, "compile_ms": compile_ms,
        "us": json_row(&planned.1), "us_in_full": json_row(&full.1),
    });
    let mut md = format!(
        "# policy-decision ({date})\n\n{rules} rules in {} policies (`policy/src/samples.rs`: teams' policies scoped to \
         their servers, fleet-wide rules naming servers, fleet-wide guards on tool globs, argument regexes and \
         comparisons, agent labels, risk tags and time windows), compiled in {compile_ms:.1} ms. {} decisions of three \
         calls in turn each way (one timed at a time; {} of them denied), single thread:\n\n\
         | decided | p50 | p90 | p99 | p99.9 | max | mean |\n|---|---|---|---|---|---|---|\n",
        rules.div_ceil(10),
        planned.1.len(),
        planned.2,
    );
    for (name, h, _) in &rows {
        md.push_str(&format!(
            "| {name} | {:.2} µs | {:.2} µs | {:.2} µs | {:.2} µs | {:.2} µs | {:.2} µs |\n",
            us(h, 0.5),
            us(h, 0.9),
            us(h, 0.99),
            us(h, 0.999),
            h.max() as f64 / 1000.0,
            h.mean() / 1000.0,
        ));
    }
    print!("{md}");
    write_results(out, "policy-decision", &result, &md)
}
